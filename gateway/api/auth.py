"""Caller keys: who is calling, for access and for per-team metering; which models a
client may use."""

from __future__ import annotations

import fnmatch
import hashlib
import hmac
from collections.abc import Sequence

from starlette.requests import Request

from ..config import ClientConfig
from ..errors import GatewayError
from ..models import base_model

ANONYMOUS = "anonymous"
# Who calls an open gateway (no [[clients]]): no key, no limits.
ANONYMOUS_CLIENT = ClientConfig(name=ANONYMOUS)


def bearer(request: Request) -> str | None:
    """The key from 'Authorization: Bearer KEY' (or the api-key header some clients use)."""
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return request.headers.get("api-key") or None


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

    def identify(self, request: Request) -> ClientConfig:
        """The calling client (with its limits), or a 401 in OpenAI's words."""
        if self.open:
            return ANONYMOUS_CLIENT
        key = bearer(request)
        if key is None:
            raise GatewayError(
                401,
                "You didn't provide an API key. You need to provide your API key in an "
                "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
                code="invalid_api_key",
            )
        digest = hashlib.sha256(key.encode()).digest()
        found = None
        # Compare against every digest in constant time, so timing says nothing about keys.
        for expected, client in self._clients:
            if hmac.compare_digest(expected, digest):
                found = client
        if found is None:
            raise GatewayError(
                401,
                "Incorrect API key provided. Check the key your gateway operator gave you.",
                code="invalid_api_key",
            )
        return found


def model_allowed(client: ClientConfig, model: str) -> bool:
    """Whether the client may use a gateway model (after aliasing); no list means any."""
    if not client.models:
        return True
    names = {model, base_model(model)}
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in client.models for name in names)


def check_model(client: ClientConfig, model: str) -> None:
    """403 (OpenAI's status for a permission the key lacks) when the model is not allowed.

    403 rather than 404: the model exists and the app developer should learn that their key
    is what stands in the way, not a typo.
    """
    if not model_allowed(client, model):
        raise GatewayError(
            403,
            f"Client '{client.name}' is not allowed to use model '{model}'. "
            f"Allowed: {', '.join(client.models)}.",
            param="model",
            code="model_not_allowed",
        )


def key_matches(given: str | None, expected: str) -> bool:
    """Whether a presented operator key (admin, metrics) is the configured one, compared in
    constant time."""
    return given is not None and hmac.compare_digest(expected.encode(), given.encode())


def check_admin(request: Request, admin_key: str | None) -> None:
    """404 when no admin key is configured (the endpoint does not exist), 401 on a bad key."""
    if not admin_key:
        raise GatewayError(404, "Admin endpoints are disabled: set [admin] key.", code="not_found")
    if not key_matches(bearer(request) or request.headers.get("x-admin-key"), admin_key):
        raise GatewayError(401, "Admin key missing or wrong.", code="invalid_api_key")
