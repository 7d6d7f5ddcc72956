"""Reading a config: a TOML file or the environment, validated into a Config.

This is the one place the gateway reads its environment and its config file: everything
else is handed the Config built here.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from .errors import ConfigError, from_validation_error
from .fields import Source
from .schema import Config
from .state import STATE_SUBDIR

# Environment-only start-up: one upstream per provider with tokens in <PREFIX>_API_TOKENS.
_ENV_UPSTREAMS = (("acedata", "ACEDATA"), ("xhuoapi", "XHUOAPI"), ("defapi", "DEFAPI"))


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
    for kind, prefix in _ENV_UPSTREAMS:
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
    # Env values are literal secrets: no ${VAR} expansion, so a '$' in a token survives.
    return parse_config(raw, env, source="environment", expand=False)


def parse_config(
    raw: Mapping[str, Any], env: Mapping[str, str], *, source: str = "config", expand: bool = True
) -> Config:
    """Validate a TOML-shaped mapping into a Config. Pure: env is passed in.

    GATEWAY_REDIS_URL, GATEWAY_STATE_DIR and GATEWAY_DATABASE_URL fill [redis] url,
    [state] dir and [state] database_url where the
    document leaves them out; an env with neither HOME nor XDG_STATE_HOME (a config built
    in code) keeps state in memory."""
    try:
        config = Config.model_validate(_from_env(raw, env), context=Source(env, expand))
    except ValidationError as exc:
        raise from_validation_error(exc, Config) from None
    if not raw.get("upstreams"):
        source = f"{source} (no upstream configured: built-in mock)"
    return config.named(source)


def _from_env(raw: Mapping[str, Any], env: Mapping[str, str]) -> dict[str, Any]:
    """The document with the settings the environment may give filled in."""
    doc = dict(raw)
    redis = doc.get("redis")
    if env.get("GATEWAY_REDIS_URL") and not _names_redis(doc) and _fillable(redis):
        doc["redis"] = {**(redis or {}), "url": env["GATEWAY_REDIS_URL"]}
    state = doc.get("state")
    if state is None or (isinstance(state, Mapping) and "dir" not in state):
        doc["state"] = state = {**(state or {}), "dir": default_state_dir(env)}
    url = env.get("GATEWAY_DATABASE_URL")
    if url and isinstance(state, Mapping) and "database_url" not in state:
        doc["state"] = {**state, "database_url": url}
    return doc


def _names_redis(doc: Mapping[str, Any]) -> bool:
    """Whether the document names a Redis URL itself ([redis] url or the older spelling)."""
    redis, cache = doc.get("redis"), doc.get("cache")
    return (isinstance(redis, Mapping) and "url" in redis) or (
        isinstance(cache, Mapping) and "redis_url" in cache
    )


def _fillable(section: Any) -> bool:
    """A section the environment may add to: absent, or a table (anything else is left for
    validation to name)."""
    return section is None or isinstance(section, Mapping)


def default_state_dir(env: Mapping[str, str]) -> str:
    """GATEWAY_STATE_DIR, else the XDG state directory of the user; "" (memory only) when
    the environment names no home at all."""
    if "GATEWAY_STATE_DIR" in env:
        return env["GATEWAY_STATE_DIR"]
    if env.get("XDG_STATE_HOME"):
        return str(Path(env["XDG_STATE_HOME"]) / STATE_SUBDIR)
    if env.get("HOME"):
        return str(Path(env["HOME"]) / ".local" / "state" / STATE_SUBDIR)
    return ""
