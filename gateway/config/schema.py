"""The arrays of tables ([[upstreams]], [[clients]]) and Config, the whole document.

Field order is the order of the README's reference. Rules that need the whole document
(unique names and keys, a budget needs prices, [models] over [images]) live on Config.
"""

from __future__ import annotations

import hashlib
import re
import urllib.parse
from collections.abc import Iterator, Mapping
from typing import Any, Literal, get_args

from pydantic import PrivateAttr, ValidationInfo, field_validator, model_validator

from .fields import (
    Flag,
    Key,
    KeyDigest,
    Label,
    ModelPattern,
    NonEmpty,
    Number,
    Section,
    Source,
    Text,
    Token,
    WholeNumber,
    invalid,
    setting,
)
from .sections import (
    AdminConfig,
    CacheConfig,
    ImagesConfig,
    ModelsConfig,
    PoolConfig,
    PricesConfig,
    ServerConfig,
    UsageConfig,
    with_default_aliases,
)
from .state import BatchConfig, RedisConfig, StateConfig

UpstreamType = Literal["acedata", "xhuoapi", "defapi", "mock"]
# The provider-call fields the gateway chooses (gateway/upstreams/forms.py Field).
ProviderField = Literal["model", "aspect_ratio", "resolution", "count", "inline_images"]
UPSTREAM_TYPES: tuple[str, ...] = get_args(UpstreamType)

DEFAULT_BASE_URLS = {
    "acedata": "https://api.acedata.cloud",
    "xhuoapi": "https://api.xhuoapi.ai/v1",
    "defapi": "https://api.defapi.org",
    "mock": "mock://local",
}

_HTTP_URL = re.compile(r"https?://[^/\s?#]+(/[^\s?#]*)?")
# sha256("sk-team-b-key"): an example digest for the reference.
_EXAMPLE_DIGEST = hashlib.sha256(b"sk-team-b-key").hexdigest()


class UpstreamConfig(Section):
    """One provider account group: a type, where it lives, and the tokens bought for it."""

    name: NonEmpty = setting(doc="unique; used in logs and metric labels", example="ace-main")
    type: UpstreamType = setting(doc="the provider's API", example="acedata")
    base_url: Text = setting(
        "",
        "optional; defaults per type (below)",
        example="https://api.acedata.cloud",
        validate_default=True,
    )
    tokens: tuple[Token, ...] = setting(
        doc="each a slot in the pool; a mock needs none",
        example=("${ACEDATA_TOKEN}", "another-token"),
        secret=True,
    )
    priority: WholeNumber = setting(
        0, "lower is tried first (or `order`)", ge=-1000, accepts=("priority", "order")
    )
    weight: Number = setting(1.0, "share within one priority", ge=0.001, example=2)
    max_concurrency: WholeNumber | None = setting(
        None, "calls in flight per token; absent: unlimited", ge=1, example=16
    )
    max_connections: WholeNumber | None = setting(
        None,
        "open connections to the provider at most; absent: half the open-file limit",
        ge=1,
        example=4096,
    )
    timeout_seconds: Number = setting(300.0, "one upstream HTTP call", ge=0.01)
    models: Mapping[str, Text] = setting(
        factory=dict,
        doc="gateway name -> provider name",
        example={"nano-banana-pro": "nano-banana-pro:official"},
    )
    fields: tuple[ProviderField, ...] = setting(
        (),
        "fields to send beyond the provider's documented defaults (see Providers)",
        example=("aspect_ratio", "resolution"),
    )
    poll_interval_seconds: Number = setting(
        2.0, "defapi: first wait between task polls (grows 1.5x)", ge=0.01, active=False
    )
    poll_max_interval_seconds: Number = setting(
        10.0, "defapi: the longest wait between polls", ge=0.01, active=False
    )
    poll_deadline_seconds: Number = setting(
        480.0, "defapi: a task not done by then fails", ge=0.01, active=False
    )
    not_found_grace_seconds: Number = setting(
        30.0,
        "defapi: a new task may answer 404 this long; after it, polled slower to the deadline",
        ge=0,
        active=False,
    )
    mock_latency_seconds: Number = setting(0.0, "mock: seconds each call takes", ge=0, active=False)

    @classmethod
    def prepare(cls, data: dict[str, Any]) -> dict[str, Any]:
        if "priority" in data and "order" in data:
            raise invalid("set priority or order, not both")
        if data.get("type") == "mock" and not data.get("tokens"):
            data = {**data, "tokens": ["mock"]}
        return data

    @field_validator("base_url")
    @classmethod
    def _base_url(cls, value: str, info: ValidationInfo) -> str:
        kind = info.data.get("type")
        if kind is None:
            return value  # the type is wrong, and says so
        url = value or DEFAULT_BASE_URLS[kind]
        if kind != "mock" and not _HTTP_URL.fullmatch(url):
            raise ValueError(f"{url!r} is not an http(s) URL")
        return url.rstrip("/")

    @field_validator("tokens")
    @classmethod
    def _tokens(cls, value: tuple[str, ...], info: ValidationInfo) -> tuple[str, ...]:
        if not value:
            name = info.data.get("name")
            raise ValueError(f"{name!r} needs at least one token" if name else "needs a token")
        if len(set(value)) != len(value):
            raise ValueError("the same token is listed twice")
        return value


class ClientConfig(Section):
    """A caller allowed in (a team), known by name in metrics and logs, with its limits.

    In a document exactly one of `key` (the key itself) and `key_sha256` (its hex SHA-256,
    so a config file need not hold the secret) is set. A limit of None means unlimited.
    """

    name: Label = setting(doc="the `client` label in metrics and the usage log", example="team-a")
    key: Key | None = setting(
        None,
        "what the caller sends as its API key",
        example="${TEAM_A_KEY}",
        active=True,
        secret=True,
    )
    key_sha256: KeyDigest | None = setting(
        None, "instead of key: its SHA-256", example=_EXAMPLE_DIGEST
    )
    requests_per_minute: WholeNumber | None = setting(
        None, "limits: absent = unlimited; counted per process (below)", ge=1, example=60
    )
    images_per_day: WholeNumber | None = setting(
        None, "images upstreams made for the team, per UTC day", ge=1, example=1000
    )
    budget_usd_per_day: Number | None = setting(
        None, "estimated cost per UTC day; needs [prices]", ge=0, example=50.0
    )
    max_concurrent_requests: WholeNumber | None = setting(
        None, "its requests in flight at once", ge=1, example=8
    )
    models: tuple[ModelPattern, ...] = setting(
        (),
        "gateway models after aliasing (globs); empty: all",
        example=("nano-banana", "nano-banana-2*"),
    )
    cache: Flag = setting(True, "false: never read or fill the identical-request cache")

    @classmethod
    def prepare(cls, data: dict[str, Any]) -> dict[str, Any]:
        if "key" in data and "key_sha256" in data:
            raise invalid("set key or key_sha256, not both", at="key")
        return data

    @model_validator(mode="after")
    def _has_a_key(self, info: ValidationInfo) -> ClientConfig:
        # Built in code a client may have no key (the anonymous one); in a document, never.
        if isinstance(info.context, Source) and self.key is None and self.key_sha256 is None:
            raise invalid("required (or key_sha256, the key's SHA-256)", at="key")
        return self

    @property
    def digest(self) -> str:
        """The key's SHA-256 as lower-case hex, however the key was given."""
        if self.key_sha256 is not None:
            return self.key_sha256
        return hashlib.sha256((self.key or "").encode()).hexdigest()


BUILTIN_MOCK = UpstreamConfig(name="mock", type="mock", base_url="mock://local", tokens=("mock",))


class Config(Section):
    """Everything the gateway needs, validated. The fields are the document's tables."""

    _source: str = PrivateAttr("defaults")

    upstreams: tuple[UpstreamConfig, ...] = setting(
        (), "provider accounts; none at all: the built-in offline mock", validate_default=True
    )
    clients: tuple[ClientConfig, ...] = setting(
        (), "if any are listed, callers must send one of these keys"
    )
    admin: AdminConfig = setting(
        factory=AdminConfig, doc="access to /admin/*: off unless a key is set"
    )
    models: ModelsConfig = setting(
        factory=ModelsConfig, doc="which model a request's `model` lands on"
    )
    pool: PoolConfig = setting(factory=PoolConfig, doc='retries, benches, cooling: see "The pool"')
    images: ImagesConfig = setting(
        factory=ImagesConfig, doc="how requests become upstream jobs", validate_default=True
    )
    cache: CacheConfig = setting(factory=CacheConfig, doc='see "Cache" below')
    prices: PricesConfig = setting(
        factory=PricesConfig, doc="USD per image returned; a model missing here has no cost"
    )
    usage: UsageConfig = setting(factory=UsageConfig, doc="the per-request usage log")
    server: ServerConfig = setting(factory=ServerConfig, doc="process-level settings")
    redis: RedisConfig = setting(
        factory=RedisConfig, doc='state shared by replicas: see "Running several replicas"'
    )
    state: StateConfig = setting(factory=StateConfig, doc="what one process keeps on disk")
    batch: BatchConfig = setting(factory=BatchConfig, doc='the Batch API: see "Batches"')

    @field_validator("upstreams")
    @classmethod
    def _upstreams(cls, value: tuple[UpstreamConfig, ...]) -> tuple[UpstreamConfig, ...]:
        names = [u.name for u in value]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"name {dupes[0]!r} is used more than once")
        return value or (BUILTIN_MOCK,)

    @field_validator("clients")
    @classmethod
    def _clients(cls, value: tuple[ClientConfig, ...]) -> tuple[ClientConfig, ...]:
        names = [c.name for c in value]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"name {dupes[0]!r} is used more than once")
        # Compared as digests, so a key and another client's key_sha256 of it also clash.
        digests = [c.digest for c in value]
        if len(set(digests)) != len(digests):
            raise ValueError("two clients share one key")
        return value

    @field_validator("images")
    @classmethod
    def _models_over_images(cls, value: ImagesConfig, info: ValidationInfo) -> ImagesConfig:
        # [models] is the newer spelling of [images] default_model / aliases and wins.
        models = info.data.get("models")
        if not isinstance(models, ModelsConfig):
            return value
        update: dict[str, Any] = {}
        if "default" in models.model_fields_set:
            update["default_model"] = models.default
        if "aliases" in models.model_fields_set:
            update["aliases"] = with_default_aliases(models.aliases)
        return value.model_copy(update=update) if update else value

    @model_validator(mode="after")
    def _redis_from_cache(self) -> Config:
        # [cache] redis_url / redis_prefix / redis_timeout_seconds are the older spelling of
        # [redis]: honoured when [redis] does not say otherwise.
        cache, redis = self.cache.model_fields_set, self.redis.model_fields_set
        update: dict[str, Any] = {}
        for old, new in (
            ("redis_url", "url"),
            ("redis_prefix", "prefix"),
            ("redis_timeout_seconds", "timeout_seconds"),
        ):
            if old in cache and new not in redis:
                update[new] = getattr(self.cache, old)
        if update:
            object.__setattr__(self, "redis", self.redis.model_copy(update=update))
        return self

    @model_validator(mode="after")
    def _budgets_need_prices(self) -> Config:
        for i, client in enumerate(self.clients):
            if client.budget_usd_per_day is not None and not self.prices.table:
                raise invalid(
                    "needs a [prices] table to estimate costs with",
                    at=f"clients[{i}].budget_usd_per_day",
                )
        return self

    @property
    def source(self) -> str:
        """Where this config was read from: a path, "environment", or "defaults"."""
        return self._source

    def named(self, source: str) -> Config:
        """This config, saying it was read from `source`."""
        copy = self.model_copy()
        copy._source = source
        return copy

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        yield from super().__repr_args__()
        yield "source", self._source

    @property
    def mock_only(self) -> bool:
        """True when every upstream is the offline mock: worth shouting about."""
        return all(u.type == "mock" for u in self.upstreams)

    def secrets(self) -> tuple[str, ...]:
        """Every secret string, so error and log text can be scrubbed of them."""
        # The built-in mock's placeholder token is no secret: scrubbing "mock" would turn
        # the start-up banner into "upstream [redacted]: type=[redacted]".
        found = [t for u in self.upstreams if u.type != "mock" for t in u.tokens]
        # A key given as its SHA-256 is not a secret: only plain keys are scrubbed.
        found += [c.key for c in self.clients if c.key]
        if self.admin.key:
            found.append(self.admin.key)
        if self.admin.metrics_key:
            found.append(self.admin.metrics_key)
        if self.redis.url:
            # A Redis password sits in the URL: redis://:PASSWORD@host or user:PASSWORD@.
            password = urllib.parse.urlsplit(self.redis.url).password
            if password:
                found.append(password)
        if self.state.database_url:
            password = urllib.parse.urlsplit(self.state.database_url).password
            if password:
                found.append(password)
        return tuple(s for s in found if s)
