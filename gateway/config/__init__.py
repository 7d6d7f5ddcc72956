"""Settings: read once at start from TOML (or the environment), validated into typed objects.

Nothing else in the package reads environment variables or files: everything that can be
configured arrives here, is checked with an error that names the offending key, and is
handed on as frozen pydantic models. Each setting is declared once, in `sections` and
`schema`; the allowed keys, defaults, error messages and the README's reference
(`python -m gateway.config.reference`) all come from those declarations.
"""

from __future__ import annotations

from .errors import ConfigError
from .load import config_from_env, load_config, parse_config
from .schema import (
    DEFAULT_BASE_URLS,
    UPSTREAM_TYPES,
    ClientConfig,
    Config,
    UpstreamConfig,
)
from .sections import (
    DEFAULT_ALIASES,
    AdminConfig,
    CacheConfig,
    ImagesConfig,
    ModelsConfig,
    PoolConfig,
    PricesConfig,
    ServerConfig,
    UsageConfig,
)

__all__ = [
    "DEFAULT_ALIASES",
    "DEFAULT_BASE_URLS",
    "UPSTREAM_TYPES",
    "AdminConfig",
    "CacheConfig",
    "ClientConfig",
    "Config",
    "ConfigError",
    "ImagesConfig",
    "ModelsConfig",
    "PoolConfig",
    "PricesConfig",
    "ServerConfig",
    "UpstreamConfig",
    "UsageConfig",
    "config_from_env",
    "load_config",
    "parse_config",
]
