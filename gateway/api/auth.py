"""Caller keys: who is calling, for access and for per-team metering."""

from __future__ import annotations

import hmac
from collections.abc import Sequence

from starlette.requests import Request

from ..config import ClientConfig
from ..errors import GatewayError

ANONYMOUS = "anonymous"


def bearer(request: Request) -> str | None:
    """The key from 'Authorization: Bearer KEY' (or the api-key header some clients use)."""
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return request.headers.get("api-key") or None


class ClientAuth:
    """Checks caller keys against the configured clients; open when none are configured."""

    def __init__(self, clients: Sequence[ClientConfig]) -> None:
        self._clients = [(c.name, c.key.encode()) for c in clients]

    @property
    def open(self) -> bool:
        """True when no client keys are configured."""
        return not self._clients

    def client_for(self, request: Request) -> str:
        """The calling client's name, or a 401 in OpenAI's words."""
        if self.open:
            return ANONYMOUS
        key = bearer(request)
        if key is None:
            raise GatewayError(
                401,
                "You didn't provide an API key. You need to provide your API key in an "
                "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
                code="invalid_api_key",
            )
        found = None
        # Compare against every key in constant time, so timing says nothing about keys.
        for name, expected in self._clients:
            if hmac.compare_digest(expected, key.encode()):
                found = name
        if found is None:
            raise GatewayError(
                401,
                "Incorrect API key provided. Check the key your gateway operator gave you.",
                code="invalid_api_key",
            )
        return found


def check_admin(request: Request, admin_key: str | None) -> None:
    """404 when no admin key is configured (the endpoint does not exist), 401 on a bad key."""
    if not admin_key:
        raise GatewayError(404, "Admin endpoints are disabled: set [admin] key.", code="not_found")
    key = bearer(request) or request.headers.get("x-admin-key")
    if key is None or not hmac.compare_digest(admin_key.encode(), key.encode()):
        raise GatewayError(401, "Admin key missing or wrong.", code="invalid_api_key")
