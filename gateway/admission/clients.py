"""Who is calling: caller keys checked against the configured clients (the teams metered
and limited by name), and which models a client may use."""

from __future__ import annotations

import fnmatch
import hashlib
import hmac
from collections.abc import Sequence

from ..config import ClientConfig
from ..errors import ModelNotAllowed, Unauthenticated
from ..models import base_model

ANONYMOUS = "anonymous"
# Who calls an open gateway (no [[clients]]): no key, no limits.
ANONYMOUS_CLIENT = ClientConfig(name=ANONYMOUS)


class ClientAuth:
    """Checks caller keys against the configured clients; open when none are configured.

    Keys are kept and compared as SHA-256 digests, so a client configured by `key_sha256`
    and one configured by `key` are checked the same way, and the comparison takes the same
    time whichever client (if any) the key belongs to.
    """

    def __init__(self, clients: Sequence[ClientConfig]) -> None:
        self._clients = [(bytes.fromhex(c.digest), c) for c in clients]

    @property
    def open(self) -> bool:
        """True when no client keys are configured."""
        return not self._clients

    def identify(self, key: str | None) -> ClientConfig:
        """The client a presented key belongs to (with its limits), or Unauthenticated."""
        if self.open:
            return ANONYMOUS_CLIENT
        if key is None:
            raise Unauthenticated(
                "You didn't provide an API key. You need to provide your API key in an "
                "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
            )
        digest = hashlib.sha256(key.encode()).digest()
        found = None
        # Compare against every digest in constant time, so timing says nothing about keys.
        for expected, client in self._clients:
            if hmac.compare_digest(expected, digest):
                found = client
        if found is None:
            raise Unauthenticated(
                "Incorrect API key provided. Check the key your gateway operator gave you."
            )
        return found


def model_allowed(client: ClientConfig, model: str) -> bool:
    """Whether the client may use a gateway model (after aliasing); no list means any."""
    if not client.models:
        return True
    names = {model, base_model(model)}
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in client.models for name in names)


def check_model(client: ClientConfig, model: str) -> None:
    """ModelNotAllowed when the client may not use the model.

    Not ModelNotFound: the model exists, and the app developer should learn that their key
    is what stands in the way, not a typo.
    """
    if not model_allowed(client, model):
        raise ModelNotAllowed(client.name, model, client.models)
