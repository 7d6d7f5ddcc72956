"""The single-table sections: [admin], [models], [pool], [images], [cache], [prices],
[usage] and [server]. Each field is declared once: type, default, bounds, one line of doc.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from ..models import MODELS, base_model
from .errors import reason
from .fields import (
    Flag,
    Key,
    ModelName,
    Network,
    Number,
    RedisURL,
    Section,
    Source,
    Text,
    WholeNumber,
    invalid,
    setting,
)

# Apps written for OpenAI send these names; each lands on the Nano Banana model closest in
# what it can do. Patterns are fnmatch globs, tried in order, first match wins.
#   *-mini      the cheap tier -> nano-banana (Gemini 2.5 Flash Image: the cheapest, 1K)
#   *-flare*    the fast tier (gpt-image-2.5-flare, -2.6-flare, dated ones too) ->
#               nano-banana-2 (Gemini 3.1 Flash Image: fast, up to 4K)
#   *-sunburst* the most capable tier -> nano-banana-pro (Gemini 3 Pro Image)
#   the rest (gpt-image-1, -1.5, -2, -2.5, -2.6, dated; chatgpt-image-latest) ->
#               nano-banana-2, the all-round model
DEFAULT_ALIASES: dict[str, str] = {
    "gpt-image-*-mini*": "nano-banana",
    "gpt-image-*-flare*": "nano-banana-2",
    "gpt-image-*-sunburst*": "nano-banana-pro",
    "gpt-image-*": "nano-banana-2",
    "chatgpt-image-*": "nano-banana-2",
    "dall-e-2": "nano-banana",
    "dall-e-3": "nano-banana-2",
}

MiB = 1024 * 1024


def with_default_aliases(configured: Mapping[str, str]) -> dict[str, str]:
    """Configured aliases first (so they can override a default pattern), then the defaults."""
    return {**configured, **{k: v for k, v in DEFAULT_ALIASES.items() if k not in configured}}


class AdminConfig(Section):
    """Access to /admin/*: off unless a key is set."""

    key: Key | None = setting(
        None, "enables /admin/upstreams", example="${GATEWAY_ADMIN_KEY}", active=True, secret=True
    )
    metrics_key: Key | None = setting(
        None,
        "then /metrics needs Authorization: Bearer <it>",
        example="${GATEWAY_METRICS_KEY}",
        secret=True,
    )


class ModelsConfig(Section):
    """[models] as written: Config.images holds the result (with the default aliases)."""

    default: ModelName = setting("nano-banana", "for requests that name no model")
    aliases: Mapping[str, ModelName] = setting(
        factory=dict,
        doc="added before the defaults (gpt-image-*, ...)",
        example={"my-app-model": "nano-banana-pro"},
        active=True,
    )


class PoolConfig(Section):
    """How the pool retries, benches and cools tokens."""

    max_attempts: WholeNumber = setting(4, "upstream calls one request may make", ge=1)
    deadline_seconds: Number = setting(
        540.0, "whole request; inside the OpenAI SDK's default 600 s timeout", ge=0.1
    )
    bench_seconds: Number = setting(
        3600.0, "a token refused as invalid or used up rests this long", ge=0
    )
    cooldown_seconds: Number = setting(
        5.0, "a 429 without retry-after cools this long, doubling", ge=0
    )
    cooldown_max_seconds: Number = setting(300.0, "the longest cooldown", ge=0)
    breaker_threshold: WholeNumber = setting(
        3, "provider failures in a row on one token, its siblings fine, that break it", ge=1
    )
    upstream_breaker_threshold: WholeNumber = setting(
        5, "provider failures in a row (5xx, timeouts, connections) that break an upstream", ge=1
    )
    probe_interval_seconds: Number = setting(
        0.5, "a broken upstream or token takes a trial call this soon (doubling per failure)", ge=0
    )
    breaker_seconds: Number = setting(5.0, "the longest wait between two trial calls", ge=0)
    panic_concurrency: WholeNumber = setting(
        2, "calls at once to a broken upstream when no healthy one is left (panic)", ge=1
    )
    panic_wait_seconds: Number = setting(
        2.0, "how long a request waits for a panic call before a 503", ge=0
    )
    retry_backoff_seconds: Number = setting(
        0.25, "first wait before a retry (doubles, at most 2 s)", ge=0
    )


class ImagesConfig(Section):
    """How OpenAI requests become upstream jobs and how answers are shaped."""

    allow_partial: Flag = setting(False, "answer with fewer images than `n` instead of a 502")
    strict_size: Flag = setting(
        False,
        "a size above what the model makes is a 400 instead of its largest picture",
    )
    download_max_bytes: WholeNumber = setting(
        64 * MiB, "largest image downloaded from an upstream link", ge=1024
    )
    download_timeout_seconds: Number = setting(120.0, "one image download", ge=0.1)
    upload_max_bytes: WholeNumber = setting(
        10 * MiB, "per input image: the upstreams refuse larger ones", ge=1024
    )
    stream_keepalive_seconds: Number = setting(
        10.0, "a stream sends a keep-alive this often while it waits", ge=0.05
    )
    allow_private_networks: Flag = setting(
        False, "let image links / image_url inputs reach internal addresses"
    )
    allowed_networks: tuple[Network, ...] = setting(
        (), "...except into these CIDRs", example=("10.20.0.0/16",)
    )
    # Older spellings of [models] default and aliases (which win when both are set).
    default_model: ModelName = setting(
        "nano-banana", "for requests that name no model", legacy="[models] default"
    )
    aliases: Mapping[str, ModelName] = setting(
        factory=lambda: dict(DEFAULT_ALIASES),
        doc="alias (fnmatch glob) -> gateway model",
        legacy="[models] aliases",
    )

    @field_validator("aliases")
    @classmethod
    def _defaults_after(cls, value: Mapping[str, str]) -> dict[str, str]:
        return with_default_aliases(value)


class CacheConfig(Section):
    """Identical-request cache and coalescing settings."""

    enabled: Flag = setting(True, "false: no cache, no coalescing")
    ttl_seconds: Number = setting(3600.0, "results whose image bytes the gateway holds", ge=0)
    url_ttl_seconds: Number = setting(
        900.0, "results that are only upstream links (links expire)", ge=0
    )
    max_entries: WholeNumber = setting(1024, "entries held in process", ge=0)
    max_bytes: WholeNumber = setting(
        64 * MiB, "in-process bound, counted in image bytes (raise it freely)", ge=0
    )
    # Older spellings of [redis] url, prefix and timeout_seconds ([redis] wins).
    redis_url: RedisURL | None = setting(None, legacy="[redis] url", secret=True)
    redis_prefix: Text = setting("nbg:", legacy="[redis] prefix")
    redis_timeout_seconds: Number = setting(0.5, legacy="[redis] timeout_seconds", ge=0.01)

    @field_validator("redis_prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        return value or str(cls.model_fields["redis_prefix"].default)


# USD per image, checked like any other number setting.
Price = Annotated[Number, Field(ge=0)]
_PRICE = TypeAdapter(Price)


class PricesConfig(BaseModel):
    """What one image costs (USD, as estimated from the reseller's price list), by gateway
    model name (variants such as 'nano-banana-pro:official' may have their own) and
    resolution. A model missing here has no estimated cost.

    In TOML the [prices] table is `table` itself: each key a model, each value a price or
    a table naming a price for every resolution the model makes.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    table: Mapping[str, Mapping[str, Price]] = setting(
        factory=dict, doc="model -> resolution -> USD per image"
    )

    # The reference's example lines: (model, price, comment, shown as a live line).
    EXAMPLES: ClassVar[tuple[tuple[str, Any, str, bool], ...]] = (
        ("nano-banana", 0.039, "", True),
        ("nano-banana-pro", {"1K": 0.134, "2K": 0.134, "4K": 0.24}, "per resolution", True),
        ("nano-banana-pro:official", 0.30, "a variant's own price", False),
    )

    @model_validator(mode="before")
    @classmethod
    def _from_document(cls, data: Any, info: ValidationInfo) -> Any:
        # In a document the keys are the models; in code they arrive as table=...
        if isinstance(info.context, Source) and isinstance(data, dict):
            return {"table": _per_resolution(data)}
        return data

    @field_validator("table", mode="before")
    @classmethod
    def _table(cls, value: Any) -> Any:
        return _per_resolution(value) if isinstance(value, dict) else value


def _per_resolution(prices: dict[Any, Any]) -> dict[str, Any]:
    return {str(model): _model_prices(str(model), price) for model, price in prices.items()}


def _model_prices(model: str, value: Any) -> Any:
    """One model's prices as {resolution: price}, every resolution it makes present."""
    spec = MODELS.get(base_model(model))
    if spec is None:
        raise invalid(f"{model!r} is not one of {', '.join(MODELS)}", at=model)
    if not isinstance(value, dict):
        price = _price(value, model)
        return {r: price for r in spec.resolutions}
    per: dict[str, Any] = {}
    for resolution, price in value.items():
        upper = str(resolution).upper()
        if upper not in spec.resolutions:
            at = f"{model}.{resolution}"
            raise invalid(f"{spec.name} makes {', '.join(spec.resolutions)}", at=at)
        per[upper] = _price(price, f"{model}.{resolution}")
    missing = [r for r in spec.resolutions if r not in per]
    if missing:
        raise invalid("no price (the model makes it)", at=f"{model}.{missing[0]}")
    return per


def _price(value: Any, at: str) -> float:
    try:
        return _PRICE.validate_python(value)
    except ValidationError as exc:
        raise invalid(reason(exc.errors()[0]), at=at) from None


class UsageConfig(Section):
    """Where the per-request usage log goes."""

    log: Text = setting("stdout", 'the JSON usage log: "stdout", "off", or a file path (appended)')

    @field_validator("log")
    @classmethod
    def _log(cls, value: str) -> str:
        if not value:
            return str(cls.model_fields["log"].default)
        if value != value.strip() or not value.strip():
            raise ValueError("'stdout', 'off', or a file path (no spaces around it)")
        return value


class ServerConfig(Section):
    """Process-level settings."""

    shutdown_grace_seconds: Number = setting(
        600.0,
        "SIGTERM: stop accepting, let in-flight requests run this long, then answer 503 "
        "(the process exits about 5 s later)",
        ge=0,
    )
    log_level: Literal["critical", "error", "warning", "info", "debug"] = setting(
        "info", "log level"
    )
    access_log: Flag = setting(False, "uvicorn's line per HTTP request (the usage log has its own)")
    metrics_port: WholeNumber | None = setting(
        None, "serve /metrics here only (not on the API port)", ge=1, le=65535, example=9100
    )
    metrics_host: Text | None = setting(
        None, "address for metrics_port; absent: the --host address", example="0.0.0.0"
    )
    # A client that stops sending holds its socket (and the process's file limit) until
    # one of these closes it; honest clients send a head in milliseconds.
    header_timeout_seconds: Number = setting(
        20.0,
        "request line + headers must arrive within this, counted from the connect (or, on a "
        "kept-alive connection, from the request's first byte)",
        ge=0.1,
    )
    body_timeout_seconds: Number = setting(
        60.0,
        "the whole body must arrive within this after the headers (10 MB in 60 s needs "
        "1.4 Mbit/s: raise it for slow uplinks)",
        ge=0.1,
    )
    max_header_bytes: WholeNumber = setting(
        64 * 1024, "a larger request head (URL + header names and values) gets a 431", ge=1024
    )
    public_base_url: Text | None = setting(
        None,
        "the gateway's address as the providers can reach it: uploads are then hosted here "
        "for a provider that takes only links",
        example="https://images-gw.example.com",
    )

    @field_validator("metrics_host")
    @classmethod
    def _host(cls, value: str | None) -> str | None:
        return value or None

    @field_validator("public_base_url")
    @classmethod
    def _public(cls, value: str | None) -> str | None:
        if not value:
            return None
        if not value.startswith(("http://", "https://")):
            raise ValueError(f"{value!r} is not an http(s) URL")
        return value.rstrip("/")
