"""Settings: read once at start from TOML (or the environment), validated into typed objects.

Nothing else in the package reads environment variables or files: everything that can be
configured arrives here, is checked with an error that names the offending key, and is
handed on as frozen dataclasses.
"""

from __future__ import annotations

import fnmatch
import hashlib
import ipaddress
import os
import re
import tomllib
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .models import MODELS, base_model

UPSTREAM_TYPES = ("acedata", "xhuoapi", "defapi", "mock")

DEFAULT_BASE_URLS = {
    "acedata": "https://api.acedata.cloud",
    "xhuoapi": "https://api.xhuoapi.ai/v1",
    "defapi": "https://api.defapi.org",
    "mock": "mock://local",
}

# Apps written for OpenAI send these names; each lands on the Nano Banana model closest in
# what it can do. Patterns are fnmatch globs, tried in order, first match wins.
DEFAULT_ALIASES: dict[str, str] = {
    "gpt-image-*-mini": "nano-banana",
    "gpt-image-*": "nano-banana-2",
    "chatgpt-image-*": "nano-banana-2",
    "dall-e-2": "nano-banana",
    "dall-e-3": "nano-banana-2",
}

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


class ConfigError(ValueError):
    """The configuration cannot be used; the message names the key at fault."""


@dataclass(frozen=True)
class UpstreamConfig:
    """One provider account group: a type, where it lives, and the tokens bought for it."""

    name: str
    type: str
    base_url: str
    tokens: tuple[str, ...]
    weight: float = 1.0
    priority: int = 0
    max_concurrency: int | None = None
    timeout_seconds: float = 300.0
    models: Mapping[str, str] = field(default_factory=dict)
    poll_interval_seconds: float = 2.0
    poll_max_interval_seconds: float = 10.0
    poll_deadline_seconds: float = 480.0
    not_found_grace_seconds: float = 30.0
    mock_latency_seconds: float = 0.0


@dataclass(frozen=True)
class ClientConfig:
    """A caller allowed in (a team), known by name in metrics and logs, with its limits.

    Exactly one of `key` (the key itself) and `key_sha256` (its hex SHA-256, so a config
    file need not hold the secret) is set. A limit of None means unlimited.
    """

    name: str
    key: str | None = None
    # False: this client's requests never read or fill the identical-request cache.
    cache: bool = True
    key_sha256: str | None = None
    requests_per_minute: int | None = None
    images_per_day: int | None = None
    budget_usd_per_day: float | None = None
    max_concurrent_requests: int | None = None
    # Models this client may use (gateway names after aliasing; fnmatch patterns). Empty: all.
    models: tuple[str, ...] = ()

    @property
    def digest(self) -> str:
        """The key's SHA-256 as lower-case hex, however the key was given."""
        if self.key_sha256 is not None:
            return self.key_sha256
        return hashlib.sha256((self.key or "").encode()).hexdigest()


@dataclass(frozen=True)
class PoolConfig:
    """How the pool retries, benches and cools tokens."""

    max_attempts: int = 4
    deadline_seconds: float = 540.0
    bench_seconds: float = 3600.0
    cooldown_seconds: float = 5.0
    cooldown_max_seconds: float = 300.0
    breaker_threshold: int = 3
    upstream_breaker_threshold: int = 5
    breaker_seconds: float = 30.0
    retry_backoff_seconds: float = 0.25


@dataclass(frozen=True)
class ImagesConfig:
    """How OpenAI requests become upstream jobs and how answers are shaped."""

    default_model: str = "nano-banana"
    aliases: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_ALIASES))
    allow_partial: bool = False
    download_max_bytes: int = 64 * 1024 * 1024
    download_timeout_seconds: float = 120.0
    # Per input image. The upstreams refuse images over 10 MB; refusing them here says so
    # before the upload is paid for twice.
    upload_max_bytes: int = 10 * 1024 * 1024
    stream_keepalive_seconds: float = 10.0
    # Image links and image_url inputs may not point at internal addresses unless allowed.
    allow_private_networks: bool = False
    allowed_networks: tuple[str, ...] = ()


@dataclass(frozen=True)
class CacheConfig:
    """Identical-request cache and coalescing settings."""

    enabled: bool = True
    # How long a result with image bytes is served again.
    ttl_seconds: float = 3600.0
    # Upstream image links can expire: a cached link is never served older than this.
    url_ttl_seconds: float = 900.0
    max_entries: int = 1024
    # Bound on the image bytes held in process (and per entry in Redis). Modest by default,
    # so memory stays predictable next to many big images in flight; raise it where memory
    # allows (url answers hold links only, a few hundred bytes an entry).
    max_bytes: int = 64 * 1024 * 1024
    # Set to share the cache and the coalescing lock between replicas.
    redis_url: str | None = None
    redis_prefix: str = "nbg:"
    # How long a replica waits on Redis before falling back to its own cache.
    redis_timeout_seconds: float = 0.5


@dataclass(frozen=True)
class PricesConfig:
    """What one image costs (USD, as estimated from the reseller's price list), by gateway
    model name (variants such as 'nano-banana-pro:official' may have their own) and
    resolution. A model missing here has no estimated cost."""

    table: Mapping[str, Mapping[str, float]] = field(default_factory=dict)


@dataclass(frozen=True)
class UsageConfig:
    """Where the per-request usage log goes: 'stdout', 'off', or a file path (appended)."""

    log: str = "stdout"


@dataclass(frozen=True)
class AdminConfig:
    """Access to /admin/*: off unless a key is set."""

    key: str | None = None
    # When set, /metrics on the main port needs it (as a Bearer token).
    metrics_key: str | None = None


@dataclass(frozen=True)
class ServerConfig:
    """Process-level settings."""

    # SIGTERM: stop accepting, let in-flight requests run this long, then answer 503.
    shutdown_grace_seconds: float = 600.0
    log_level: str = "info"
    # uvicorn's line per HTTP request. Off by default: the usage log already has a line per
    # image request (with its request id), and a second line costs CPU on every request.
    access_log: bool = False
    # When set, /metrics is served on this port only (not on the API port).
    metrics_port: int | None = None
    # Address for metrics_port; None: the same address as the API (--host).
    metrics_host: str | None = None


@dataclass(frozen=True)
class Config:
    """Everything the gateway needs, validated."""

    upstreams: tuple[UpstreamConfig, ...]
    clients: tuple[ClientConfig, ...] = ()
    pool: PoolConfig = field(default_factory=PoolConfig)
    images: ImagesConfig = field(default_factory=ImagesConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    admin: AdminConfig = field(default_factory=AdminConfig)
    server: ServerConfig = field(default_factory=ServerConfig)
    prices: PricesConfig = field(default_factory=PricesConfig)
    usage: UsageConfig = field(default_factory=UsageConfig)
    source: str = "defaults"

    @property
    def mock_only(self) -> bool:
        """True when every upstream is the offline mock: worth shouting about."""
        return all(u.type == "mock" for u in self.upstreams)

    def secrets(self) -> tuple[str, ...]:
        """Every secret string, so error and log text can be scrubbed of them."""
        found = [t for u in self.upstreams for t in u.tokens]
        # A key given as its SHA-256 is not a secret: only plain keys are scrubbed.
        found += [c.key for c in self.clients if c.key]
        if self.admin.key:
            found.append(self.admin.key)
        if self.admin.metrics_key:
            found.append(self.admin.metrics_key)
        if self.cache.redis_url:
            # A Redis password sits in the URL: redis://:PASSWORD@host or user:PASSWORD@.
            password = urllib.parse.urlsplit(self.cache.redis_url).password
            if password:
                found.append(password)
        return tuple(s for s in found if s)


# --------------------------------------------------------------------------- loading


def load_config(path: str | None, environ: Mapping[str, str] | None = None) -> Config:
    """Load from a TOML file, or from the environment when no path is given."""
    env = os.environ if environ is None else environ
    if path is None:
        return config_from_env(env)
    try:
        with open(path, "rb") as fh:
            raw = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    return parse_config(raw, env, source=path)


def config_from_env(env: Mapping[str, str]) -> Config:
    """Build a config from *_API_TOKENS variables; the offline mock when there are none."""
    raw: dict[str, Any] = {"upstreams": []}
    for kind, prefix in (("acedata", "ACEDATA"), ("xhuoapi", "XHUOAPI"), ("defapi", "DEFAPI")):
        tokens = [t.strip() for t in env.get(f"{prefix}_API_TOKENS", "").split(",") if t.strip()]
        if not tokens:
            continue
        entry: dict[str, Any] = {"name": kind, "type": kind, "tokens": tokens}
        if env.get(f"{prefix}_BASE_URL"):
            entry["base_url"] = env[f"{prefix}_BASE_URL"]
        raw["upstreams"].append(entry)
    clients = []
    for i, item in enumerate(x.strip() for x in env.get("GATEWAY_CLIENT_KEYS", "").split(",")):
        if not item:
            continue
        name, sep, key = item.partition(":")
        clients.append(
            {"name": name, "key": key} if sep else {"name": f"client-{i + 1}", "key": item}
        )
    if clients:
        raw["clients"] = clients
    if env.get("GATEWAY_ADMIN_KEY"):
        raw.setdefault("admin", {})["key"] = env["GATEWAY_ADMIN_KEY"]
    if env.get("GATEWAY_METRICS_KEY"):
        raw.setdefault("admin", {})["metrics_key"] = env["GATEWAY_METRICS_KEY"]
    if env.get("GATEWAY_REDIS_URL"):
        raw["cache"] = {"redis_url": env["GATEWAY_REDIS_URL"]}
    # Env values are literal secrets: no ${VAR} expansion, so a '$' in a token survives.
    return parse_config(raw, {}, source="environment", expand=False)


def parse_config(
    raw: Mapping[str, Any], env: Mapping[str, str], *, source: str = "config", expand: bool = True
) -> Config:
    """Validate a TOML-shaped mapping into a Config. Pure: env is passed in."""
    _only_keys(
        raw,
        "",
        {
            "upstreams",
            "clients",
            "pool",
            "images",
            "cache",
            "admin",
            "server",
            "models",
            "prices",
            "usage",
        },
    )
    upstream_items = _list_of_tables(raw, "upstreams")
    upstreams = [
        _parse_upstream(item, f"upstreams[{i}]", env, expand)
        for i, item in enumerate(upstream_items)
    ]
    if not upstreams:
        upstreams = [
            UpstreamConfig(name="mock", type="mock", base_url="mock://local", tokens=("mock",))
        ]
        source = f"{source} (no upstream configured: built-in mock)"
    names = [u.name for u in upstreams]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(f"upstreams: name {dupes[0]!r} is used more than once")

    prices = _parse_prices(_table(raw, "prices"))
    clients = [
        _parse_client(item, f"clients[{i}]", env, expand, prices)
        for i, item in enumerate(_list_of_tables(raw, "clients"))
    ]
    client_names = [c.name for c in clients]
    if len(set(client_names)) != len(client_names):
        raise ConfigError("clients: every client needs a unique name")
    # Compared as digests, so a key and another client's key_sha256 of it also clash.
    digests = [c.digest for c in clients]
    if len(set(digests)) != len(digests):
        raise ConfigError("clients: two clients share one key")

    return Config(
        upstreams=tuple(upstreams),
        clients=tuple(clients),
        pool=_parse_pool(_table(raw, "pool")),
        images=_parse_images(_table(raw, "images"), _table(raw, "models")),
        cache=_parse_cache(_table(raw, "cache"), env, expand),
        admin=_parse_admin(_table(raw, "admin"), env, expand),
        server=_parse_server(_table(raw, "server")),
        prices=prices,
        usage=_parse_usage(_table(raw, "usage")),
        source=source,
    )


# --------------------------------------------------------------------------- sections


def _parse_upstream(
    item: Mapping[str, Any], where: str, env: Mapping[str, str], expand: bool
) -> UpstreamConfig:
    _only_keys(
        item,
        where,
        {
            "name",
            "type",
            "base_url",
            "tokens",
            "weight",
            "priority",
            "order",
            "max_concurrency",
            "timeout_seconds",
            "models",
            "poll_interval_seconds",
            "poll_max_interval_seconds",
            "poll_deadline_seconds",
            "not_found_grace_seconds",
            "mock_latency_seconds",
        },
    )
    name = _required_str(item, "name", where)
    kind = _required_str(item, "type", where)
    if kind not in UPSTREAM_TYPES:
        raise ConfigError(f"{where}.type: {kind!r} is not one of {', '.join(UPSTREAM_TYPES)}")
    base_url = _str(item, "base_url", where) or DEFAULT_BASE_URLS[kind]
    if kind != "mock" and not re.fullmatch(r"https?://[^/\s?#]+(/[^\s?#]*)?", base_url):
        raise ConfigError(f"{where}.base_url: {base_url!r} is not an http(s) URL")
    raw_tokens = item.get("tokens", [])
    if not isinstance(raw_tokens, list) or not all(isinstance(t, str) for t in raw_tokens):
        raise ConfigError(f"{where}.tokens: must be a list of strings")
    tokens = [
        _expand(t, f"{where}.tokens[{i}]", env) if expand else t for i, t in enumerate(raw_tokens)
    ]
    if kind == "mock":
        tokens = tokens or ["mock"]
    for i, token in enumerate(tokens):
        if not token.strip() or token != token.strip():
            raise ConfigError(f"{where}.tokens[{i}]: empty, or has spaces around it")
    if not tokens:
        raise ConfigError(f"{where}.tokens: {name!r} needs at least one token")
    if len(set(tokens)) != len(tokens):
        raise ConfigError(f"{where}.tokens: the same token is listed twice")
    models = item.get("models", {})
    if not isinstance(models, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in models.items()
    ):
        raise ConfigError(f"{where}.models: must be a table of model = upstream-model-name")
    if "priority" in item and "order" in item:
        raise ConfigError(f"{where}: set priority or order, not both")
    priority_key = "order" if "order" in item else "priority"
    max_conc = item.get("max_concurrency")
    if max_conc is not None:
        max_conc = _int(item, "max_concurrency", where, 0, minimum=1)
    return UpstreamConfig(
        name=name,
        type=kind,
        base_url=base_url.rstrip("/"),
        tokens=tuple(tokens),
        weight=_num(item, "weight", where, 1.0, minimum=0.001),
        priority=_int(item, priority_key, where, 0, minimum=-1000),
        max_concurrency=max_conc,
        timeout_seconds=_num(item, "timeout_seconds", where, 300.0, minimum=0.01),
        models=dict(models),
        poll_interval_seconds=_num(item, "poll_interval_seconds", where, 2.0, minimum=0.01),
        poll_max_interval_seconds=_num(
            item, "poll_max_interval_seconds", where, 10.0, minimum=0.01
        ),
        poll_deadline_seconds=_num(item, "poll_deadline_seconds", where, 480.0, minimum=0.01),
        not_found_grace_seconds=_num(item, "not_found_grace_seconds", where, 30.0, minimum=0.0),
        mock_latency_seconds=_num(item, "mock_latency_seconds", where, 0.0, minimum=0.0),
    )


def _parse_client(
    item: Mapping[str, Any],
    where: str,
    env: Mapping[str, str],
    expand: bool,
    prices: PricesConfig | None = None,
) -> ClientConfig:
    _only_keys(
        item,
        where,
        {
            "name",
            "key",
            "key_sha256",
            "cache",
            "requests_per_minute",
            "images_per_day",
            "budget_usd_per_day",
            "max_concurrent_requests",
            "models",
        },
    )
    name = _required_str(item, "name", where)
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", name):
        raise ConfigError(f"{where}.name: use letters, digits, '-', '_' or '.' (it is a label)")
    if "key" in item and "key_sha256" in item:
        raise ConfigError(f"{where}.key: set key or key_sha256, not both")
    key: str | None = None
    digest: str | None = None
    if "key_sha256" in item:
        digest = _required_str(item, "key_sha256", where)
        digest = _expand(digest, f"{where}.key_sha256", env) if expand else digest
        if not re.fullmatch(r"[0-9a-fA-F]{64}", digest):
            raise ConfigError(
                f"{where}.key_sha256: must be 64 hex digits (e.g. the output of "
                '`printf %s "$KEY" | sha256sum`)'
            )
        digest = digest.lower()
    else:
        if "key" not in item:
            raise ConfigError(f"{where}.key: required (or key_sha256, the key's SHA-256)")
        key = _required_str(item, "key", where)
        key = _expand(key, f"{where}.key", env) if expand else key
        if len(key) < 8:
            raise ConfigError(f"{where}.key: too short (at least 8 characters)")
    cache = item.get("cache", True)
    if not isinstance(cache, bool):
        raise ConfigError(f"{where}.cache: must be true or false")
    budget = None
    if item.get("budget_usd_per_day") is not None:
        budget = _num(item, "budget_usd_per_day", where, 0.0, minimum=0.0)
        if prices is None or not prices.table:
            raise ConfigError(
                f"{where}.budget_usd_per_day: needs a [prices] table to estimate costs with"
            )
    return ClientConfig(
        name=name,
        key=key,
        cache=cache,
        key_sha256=digest,
        requests_per_minute=_opt_int(item, "requests_per_minute", where),
        images_per_day=_opt_int(item, "images_per_day", where),
        budget_usd_per_day=budget,
        max_concurrent_requests=_opt_int(item, "max_concurrent_requests", where),
        models=_model_patterns(item.get("models", []), f"{where}.models"),
    )


def _opt_int(t: Mapping[str, Any], key: str, where: str) -> int | None:
    """An optional limit: absent means unlimited; present must be a whole number >= 1."""
    if t.get(key) is None:
        return None
    return _int(t, key, where, 0, minimum=1)


def _model_patterns(value: Any, where: str) -> tuple[str, ...]:
    """Gateway model names or fnmatch patterns; each must name at least one known model."""
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(f"{where}: must be a list of model names or patterns")
    for i, pattern in enumerate(value):
        if any(c in pattern for c in "*?["):
            if not any(fnmatch.fnmatchcase(m, pattern) for m in MODELS):
                raise ConfigError(f"{where}[{i}]: {pattern!r} matches none of {', '.join(MODELS)}")
        elif base_model(pattern) not in MODELS:
            raise ConfigError(
                f"{where}[{i}]: {pattern!r} is not one of {', '.join(MODELS)} "
                "(list gateway models, not the aliases that lead to them)"
            )
    return tuple(value)


def _parse_prices(t: Mapping[str, Any]) -> PricesConfig:
    """`model = price` or `model = { 1K = price, 2K = price, 4K = price }`, in USD per image."""
    table: dict[str, dict[str, float]] = {}
    for model, value in t.items():
        where = f"prices.{model}"
        spec = MODELS.get(base_model(model))
        if spec is None:
            raise ConfigError(f"{where}: {model!r} is not one of {', '.join(MODELS)}")
        if isinstance(value, dict):
            per: dict[str, float] = {}
            for resolution in value:
                upper = str(resolution).upper()
                if upper not in spec.resolutions:
                    raise ConfigError(
                        f"{where}.{resolution}: {spec.name} makes {', '.join(spec.resolutions)}"
                    )
                per[upper] = _num(value, resolution, where, 0.0, minimum=0.0)
            missing = [r for r in spec.resolutions if r not in per]
            if missing:
                raise ConfigError(f"{where}.{missing[0]}: no price (the model makes it)")
            table[model] = per
        else:
            price = _num(t, model, "prices", 0.0, minimum=0.0)
            table[model] = {r: price for r in spec.resolutions}
    return PricesConfig(table=table)


def _parse_usage(t: Mapping[str, Any]) -> UsageConfig:
    _only_keys(t, "usage", {"log"})
    log = _str(t, "log", "usage") or UsageConfig().log
    if not log.strip() or log != log.strip():
        raise ConfigError("usage.log: 'stdout', 'off', or a file path")
    return UsageConfig(log=log)


def _parse_pool(t: Mapping[str, Any]) -> PoolConfig:
    w = "pool"
    _only_keys(t, w, set(PoolConfig.__dataclass_fields__))
    d = PoolConfig()
    return PoolConfig(
        max_attempts=_int(t, "max_attempts", w, d.max_attempts, minimum=1),
        deadline_seconds=_num(t, "deadline_seconds", w, d.deadline_seconds, minimum=0.1),
        bench_seconds=_num(t, "bench_seconds", w, d.bench_seconds, minimum=0.0),
        cooldown_seconds=_num(t, "cooldown_seconds", w, d.cooldown_seconds, minimum=0.0),
        cooldown_max_seconds=_num(
            t, "cooldown_max_seconds", w, d.cooldown_max_seconds, minimum=0.0
        ),
        breaker_threshold=_int(t, "breaker_threshold", w, d.breaker_threshold, minimum=1),
        upstream_breaker_threshold=_int(
            t, "upstream_breaker_threshold", w, d.upstream_breaker_threshold, minimum=1
        ),
        breaker_seconds=_num(t, "breaker_seconds", w, d.breaker_seconds, minimum=0.0),
        retry_backoff_seconds=_num(
            t, "retry_backoff_seconds", w, d.retry_backoff_seconds, minimum=0.0
        ),
    )


def _parse_images(t: Mapping[str, Any], models: Mapping[str, Any]) -> ImagesConfig:
    w = "images"
    _only_keys(t, w, set(ImagesConfig.__dataclass_fields__))
    _only_keys(models, "models", {"default", "aliases"})
    d = ImagesConfig()
    aliases = dict(DEFAULT_ALIASES)
    extra = models.get("aliases", t.get("aliases", {}))
    if not isinstance(extra, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in extra.items()
    ):
        raise ConfigError("models.aliases: must be a table of alias = model")
    # Configured aliases come first so they can override a default pattern.
    aliases = {**extra, **{k: v for k, v in aliases.items() if k not in extra}}
    default_model = models.get("default", t.get("default_model", d.default_model))
    if not isinstance(default_model, str) or base_model(default_model) not in MODELS:
        raise ConfigError(f"models.default: must be one of {', '.join(MODELS)}")
    for alias, target in extra.items():
        if base_model(target) not in MODELS:
            raise ConfigError(
                f"models.aliases.{alias}: {target!r} is not one of {', '.join(MODELS)}"
            )
    allow_partial = t.get("allow_partial", d.allow_partial)
    if not isinstance(allow_partial, bool):
        raise ConfigError("images.allow_partial: must be true or false")
    allow_private = t.get("allow_private_networks", d.allow_private_networks)
    if not isinstance(allow_private, bool):
        raise ConfigError("images.allow_private_networks: must be true or false")
    networks = t.get("allowed_networks", [])
    if not isinstance(networks, list) or not all(isinstance(n, str) for n in networks):
        raise ConfigError("images.allowed_networks: must be a list of CIDR strings")
    for i, net in enumerate(networks):
        try:
            ipaddress.ip_network(net, strict=False)
        except ValueError:
            raise ConfigError(
                f"images.allowed_networks[{i}]: {net!r} is not a network like 10.1.0.0/16"
            ) from None
    return ImagesConfig(
        default_model=default_model,
        aliases=aliases,
        allow_partial=allow_partial,
        download_max_bytes=_int(t, "download_max_bytes", w, d.download_max_bytes, minimum=1024),
        download_timeout_seconds=_num(
            t, "download_timeout_seconds", w, d.download_timeout_seconds, minimum=0.1
        ),
        upload_max_bytes=_int(t, "upload_max_bytes", w, d.upload_max_bytes, minimum=1024),
        stream_keepalive_seconds=_num(
            t, "stream_keepalive_seconds", w, d.stream_keepalive_seconds, minimum=0.05
        ),
        allow_private_networks=allow_private,
        allowed_networks=tuple(networks),
    )


def _parse_cache(t: Mapping[str, Any], env: Mapping[str, str], expand: bool) -> CacheConfig:
    w = "cache"
    _only_keys(t, w, set(CacheConfig.__dataclass_fields__))
    d = CacheConfig()
    enabled = t.get("enabled", True)
    if not isinstance(enabled, bool):
        raise ConfigError("cache.enabled: must be true or false")
    redis_url = _str(t, "redis_url", w)
    if redis_url is not None and expand:
        redis_url = _expand(redis_url, "cache.redis_url", env)
    if redis_url is not None and not re.match(r"^(redis|rediss|unix)://", redis_url):
        raise ConfigError("cache.redis_url: must start with redis://, rediss:// or unix://")
    return CacheConfig(
        enabled=enabled,
        ttl_seconds=_num(t, "ttl_seconds", w, d.ttl_seconds, minimum=0.0),
        url_ttl_seconds=_num(t, "url_ttl_seconds", w, d.url_ttl_seconds, minimum=0.0),
        max_entries=_int(t, "max_entries", w, d.max_entries, minimum=0),
        max_bytes=_int(t, "max_bytes", w, d.max_bytes, minimum=0),
        redis_url=redis_url or None,
        redis_prefix=_str(t, "redis_prefix", w) or d.redis_prefix,
        redis_timeout_seconds=_num(
            t, "redis_timeout_seconds", w, d.redis_timeout_seconds, minimum=0.01
        ),
    )


def _parse_admin(t: Mapping[str, Any], env: Mapping[str, str], expand: bool) -> AdminConfig:
    _only_keys(t, "admin", {"key", "metrics_key"})
    return AdminConfig(
        key=_opt_secret(t, "key", "admin", env, expand),
        metrics_key=_opt_secret(t, "metrics_key", "admin", env, expand),
    )


def _parse_server(t: Mapping[str, Any]) -> ServerConfig:
    _only_keys(
        t,
        "server",
        {"shutdown_grace_seconds", "log_level", "access_log", "metrics_port", "metrics_host"},
    )
    level = _str(t, "log_level", "server") or "info"
    access_log = t.get("access_log", False)
    if not isinstance(access_log, bool):
        raise ConfigError("server.access_log: must be true or false")
    if level not in ("critical", "error", "warning", "info", "debug"):
        raise ConfigError("server.log_level: one of critical, error, warning, info, debug")
    metrics_port = None
    if t.get("metrics_port") is not None:
        metrics_port = _int(t, "metrics_port", "server", 0, minimum=1)
        if metrics_port > 65535:
            raise ConfigError("server.metrics_port: must be a port number (1-65535)")
    return ServerConfig(
        shutdown_grace_seconds=_num(t, "shutdown_grace_seconds", "server", 600.0, minimum=0.0),
        log_level=level,
        access_log=access_log,
        metrics_port=metrics_port,
        metrics_host=_str(t, "metrics_host", "server") or None,
    )


# --------------------------------------------------------------------------- helpers


def _expand(value: str, where: str, env: Mapping[str, str]) -> str:
    def sub(m: re.Match[str]) -> str:
        var = m.group(1)
        if var not in env or env[var] == "":
            raise ConfigError(f"{where}: environment variable {var} is not set")
        return env[var]

    return _ENV_REF.sub(sub, value)


def _opt_secret(
    t: Mapping[str, Any], key: str, where: str, env: Mapping[str, str], expand: bool
) -> str | None:
    value = _str(t, key, where)
    if value is None:
        return None
    value = _expand(value, f"{where}.{key}", env) if expand else value
    if len(value) < 8:
        raise ConfigError(f"{where}.{key}: too short (at least 8 characters)")
    return value


def _only_keys(t: Mapping[str, Any], where: str, allowed: set[str]) -> None:
    unknown = sorted(set(t) - allowed)
    if unknown:
        prefix = f"{where}." if where else ""
        raise ConfigError(
            f"{prefix}{unknown[0]}: unknown setting (allowed: {', '.join(sorted(allowed))})"
        )


def _table(raw: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = raw.get(key, {})
    if not isinstance(value, dict):
        raise ConfigError(f"{key}: must be a table ([{key}])")
    return value


def _list_of_tables(raw: Mapping[str, Any], key: str) -> list[Mapping[str, Any]]:
    value = raw.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise ConfigError(f"{key}: must be an array of tables ([[{key}]])")
    return value


def _required_str(t: Mapping[str, Any], key: str, where: str) -> str:
    value = _str(t, key, where, required=True)
    assert value is not None  # _str raised otherwise
    return value


def _str(t: Mapping[str, Any], key: str, where: str, *, required: bool = False) -> str | None:
    value = t.get(key)
    if value is None:
        if required:
            raise ConfigError(f"{where}.{key}: required")
        return None
    if not isinstance(value, str) or (required and not value.strip()):
        raise ConfigError(f"{where}.{key}: must be a non-empty string")
    return value


def _num(t: Mapping[str, Any], key: str, where: str, default: float, *, minimum: float) -> float:
    value = t.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{where}.{key}: must be a number")
    if value < minimum:
        raise ConfigError(f"{where}.{key}: must be at least {minimum}")
    return float(value)


def _int(t: Mapping[str, Any], key: str, where: str, default: int, *, minimum: int) -> int:
    value = t.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{where}.{key}: must be a whole number")
    if value < minimum:
        raise ConfigError(f"{where}.{key}: must be at least {minimum}")
    return value
