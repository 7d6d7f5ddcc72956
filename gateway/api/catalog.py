"""GET /v1/models and /v1/models/{model}: the Nano Banana models the upstreams serve, and
the names OpenAI apps send that lead to them, as the calling client may use them."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ..admission.clients import ClientAuth, model_allowed
from ..config import Config
from ..errors import ModelNotFound
from ..models import MODELS
from ..pool import Pool
from ..translate import resolve_model
from .auth import bearer

# Names OpenAI apps send, listed by /v1/models so SDK users can see they are understood.
_OPENAI_NAMES = (
    "gpt-image-1",
    "gpt-image-1.5",
    "gpt-image-1-mini",
    "gpt-image-2",
    "gpt-image-2-mini",
    "gpt-image-2.5-flare",
    "gpt-image-2.5-sunburst",
    "gpt-image-2.6-flare",
    "gpt-image-2.6-sunburst",
    "chatgpt-image-latest",
    "dall-e-2",
    "dall-e-3",
)
_MOCK_WARNING = (
    "No upstream tokens are configured: this gateway answers with offline placeholder "
    "images from its built-in mock upstream."
)
_CREATED = 1_700_000_000


def model_entries(config: Config, pool: Pool) -> list[dict[str, object]]:
    """Every model the upstreams serve, then every alias and OpenAI name that resolves."""
    served = {m for u in pool.upstreams for m in u.models()}
    owner = "nano-banana-gateway (mock)" if config.mock_only else "google"
    entries: list[dict[str, object]] = [
        {"id": name, "object": "model", "created": _CREATED, "owned_by": owner}
        for name in MODELS
        if name in served
    ]
    aliases = dict(config.images.aliases)
    names = [a for a in aliases if not any(c in a for c in "*?[")]
    for name in [*names, *_OPENAI_NAMES]:
        if any(e["id"] == name for e in entries):
            continue
        try:
            target = resolve_model(name, config.images.default_model, aliases)
        except ModelNotFound:
            continue
        entries.append(
            {
                "id": name,
                "object": "model",
                "created": _CREATED,
                "owned_by": "nano-banana-gateway",
                "alias_for": target,
            }
        )
    return entries


class ModelEndpoints:
    """The models list, filtered per client."""

    def __init__(self, config: Config, pool: Pool, auth: ClientAuth) -> None:
        self._config = config
        self._pool = pool
        self._auth = auth

    def _entries_for(self, request: Request) -> list[dict[str, object]]:
        caller = self._auth.identify(bearer(request))
        return [
            e
            for e in model_entries(self._config, self._pool)
            if model_allowed(caller, str(e.get("alias_for") or e["id"]))
        ]

    async def models(self, request: Request) -> Response:
        """GET /v1/models (only the models the calling client may use)."""
        body: dict[str, object] = {"object": "list", "data": self._entries_for(request)}
        if self._config.mock_only:
            body["warning"] = _MOCK_WARNING
        return JSONResponse(body)

    async def model(self, request: Request) -> Response:
        """GET /v1/models/{model}"""
        wanted = request.path_params["model"]
        for entry in self._entries_for(request):
            if entry["id"] == wanted:
                return JSONResponse(entry)
        raise ModelNotFound(wanted, f"The model '{wanted}' does not exist")
