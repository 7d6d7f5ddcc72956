"""Table tests for settings: TOML (parse_config / load_config) and the environment."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from gateway.config import (
    DEFAULT_ALIASES,
    Config,
    ConfigError,
    config_from_env,
    load_config,
    parse_config,
)

# The shape of deploy/kubernetes/configmap.yaml's config.toml.
EXAMPLE_TOML = """
[[upstreams]]
name = "acedata"
type = "acedata"
base_url = "https://api.acedata.cloud"
tokens = ["${ACEDATA_TOKEN}"]
weight = 2
priority = 0
max_concurrency = 16

[[upstreams]]
name = "xhuoapi"
type = "xhuoapi"
base_url = "https://api.xhuoapi.ai/v1"
tokens = ["${XHUOAPI_TOKEN}"]
weight = 1
priority = 0
max_concurrency = 8

[[upstreams]]
name = "defapi"
type = "defapi"
base_url = "https://api.defapi.org"
tokens = ["${DEFAPI_TOKEN}"]
weight = 1
priority = 1
max_concurrency = 8

[[clients]]
name = "default"
key = "${GATEWAY_CLIENT_KEY}"

[admin]
key = "${GATEWAY_ADMIN_KEY}"

[cache]
ttl_seconds = 3600
"""

EXAMPLE_ENV = {
    "ACEDATA_TOKEN": "ace-token-0001",
    "XHUOAPI_TOKEN": "xhuo-token-0001",
    "DEFAPI_TOKEN": "dk-0123456789abcdef",
    "GATEWAY_CLIENT_KEY": "sk-client-0123456789",
    "GATEWAY_ADMIN_KEY": "admin-0123456789",
}

ONE_UPSTREAM = """
[[upstreams]]
name = "ace"
type = "acedata"
tokens = ["tok-1"]
"""


def parse(toml_text: str, env: dict[str, str] | None = None) -> Config:
    """parse_config on TOML text, as load_config does for a file."""
    return parse_config(tomllib.loads(toml_text), env or {}, source="test")


# --------------------------------------------------------------------------- parse_config


def test_parse_config_example() -> None:
    config = parse(EXAMPLE_TOML, EXAMPLE_ENV)
    assert [(u.name, u.type, u.base_url, u.tokens) for u in config.upstreams] == [
        ("acedata", "acedata", "https://api.acedata.cloud", ("ace-token-0001",)),
        ("xhuoapi", "xhuoapi", "https://api.xhuoapi.ai/v1", ("xhuo-token-0001",)),
        ("defapi", "defapi", "https://api.defapi.org", ("dk-0123456789abcdef",)),
    ]
    assert [(u.weight, u.priority, u.max_concurrency) for u in config.upstreams] == [
        (2.0, 0, 16),
        (1.0, 0, 8),
        (1.0, 1, 8),
    ]
    assert [(c.name, c.key) for c in config.clients] == [("default", "sk-client-0123456789")]
    assert config.admin.key == "admin-0123456789"
    assert config.cache.ttl_seconds == 3600.0
    assert config.cache.enabled is True
    assert config.mock_only is False
    assert config.source == "test"
    assert set(config.secrets()) == set(EXAMPLE_ENV.values())


def test_parse_config_shipped_configmap_parses() -> None:
    """The TOML shipped in deploy/ is accepted when its variables are set."""
    import yaml  # PyYAML: part of the test extra

    path = Path(__file__).resolve().parents[1] / "deploy" / "kubernetes" / "configmap.yaml"
    text = yaml.safe_load(path.read_text())["data"]["config.toml"]
    # The ConfigMap's redis_url and database_url carry passwords from the Secret.
    env = {**EXAMPLE_ENV, "REDIS_PASSWORD": "redis0123456789", "POSTGRES_PASSWORD": "pg0123456789"}
    config = parse(text, env)
    assert {u.type for u in config.upstreams} <= {"acedata", "xhuoapi", "defapi"}
    assert all(t in EXAMPLE_ENV.values() for u in config.upstreams for t in u.tokens)


@pytest.mark.parametrize(
    ("kind", "base_url"),
    [
        pytest.param("acedata", "https://api.acedata.cloud", id="acedata"),
        pytest.param("xhuoapi", "https://api.xhuoapi.ai/v1", id="xhuoapi"),
        pytest.param("defapi", "https://api.defapi.org", id="defapi"),
        pytest.param("mock", "mock://local", id="mock"),
    ],
)
def test_parse_config_default_base_url(kind: str, base_url: str) -> None:
    config = parse(f'[[upstreams]]\nname = "u"\ntype = "{kind}"\ntokens = ["tok-1"]\n')
    assert config.upstreams[0].base_url == base_url
    assert config.upstreams[0].type == kind


@pytest.mark.parametrize(
    ("tokens_toml", "env", "expected"),
    [
        pytest.param('["literal-token"]', {}, ("literal-token",), id="literal"),
        pytest.param('["${A}"]', {"A": "tok-a"}, ("tok-a",), id="one-var"),
        pytest.param(
            '["${A}", "${B}", "tok-c"]',
            {"A": "tok-a", "B": "tok-b"},
            ("tok-a", "tok-b", "tok-c"),
            id="vars-and-literal",
        ),
        pytest.param('["sk-${A}-x"]', {"A": "mid"}, ("sk-mid-x",), id="embedded-var"),
        pytest.param('["${A}${B}"]', {"A": "ab", "B": "cd"}, ("abcd",), id="two-vars-in-one"),
        pytest.param('["$A"]', {"A": "x"}, ("$A",), id="bare-dollar-is-literal"),
    ],
)
def test_parse_config_token_expansion(
    tokens_toml: str, env: dict[str, str], expected: tuple[str, ...]
) -> None:
    config = parse(f'[[upstreams]]\nname = "u"\ntype = "acedata"\ntokens = {tokens_toml}\n', env)
    assert config.upstreams[0].tokens == expected


def test_parse_config_upstream_defaults_and_options() -> None:
    config = parse(
        """
        [[upstreams]]
        name = "ace"
        type = "acedata"
        base_url = "https://proxy.example.com/ace/"
        tokens = ["tok-1", "tok-2"]
        order = 3
        timeout_seconds = 120
        models = { "nano-banana-pro" = "nano-banana-pro-hd" }

        [[upstreams]]
        name = "def"
        type = "defapi"
        tokens = ["dk-1"]
        poll_interval_seconds = 0.5
        poll_deadline_seconds = 60
        """
    )
    ace, defapi = config.upstreams
    assert ace.base_url == "https://proxy.example.com/ace"
    assert ace.tokens == ("tok-1", "tok-2")
    assert ace.priority == 3
    assert ace.timeout_seconds == 120.0
    assert dict(ace.models) == {"nano-banana-pro": "nano-banana-pro-hd"}
    assert (defapi.weight, defapi.priority, defapi.max_concurrency) == (1.0, 0, None)
    assert (defapi.poll_interval_seconds, defapi.poll_deadline_seconds) == (0.5, 60.0)
    assert defapi.timeout_seconds == 300.0


def test_parse_config_models_and_sections() -> None:
    config = parse(
        ONE_UPSTREAM
        + """
        [models]
        default = "nano-banana-2"
        aliases = { "gpt-image-1" = "nano-banana-pro", "my-model" = "nano-banana" }

        [images]
        allow_partial = true

        [pool]
        max_attempts = 2

        [cache]
        enabled = false
        ttl_seconds = 60
        max_entries = 10

        [server]
        log_level = "debug"
        """
    )
    assert config.images.default_model == "nano-banana-2"
    aliases = list(config.images.aliases.items())
    # Configured aliases come first so that they win over the default patterns.
    assert aliases[:2] == [("gpt-image-1", "nano-banana-pro"), ("my-model", "nano-banana")]
    assert set(DEFAULT_ALIASES) <= set(config.images.aliases)
    assert config.images.allow_partial is True
    assert config.pool.max_attempts == 2
    assert (config.cache.enabled, config.cache.ttl_seconds, config.cache.max_entries) == (
        False,
        60.0,
        10,
    )
    assert config.server.log_level == "debug"


@pytest.mark.parametrize(
    "toml_text",
    [
        pytest.param("", id="empty-file"),
        pytest.param("upstreams = []", id="empty-upstream-list"),
        pytest.param('[[clients]]\nname = "a"\nkey = "sk-0123456789"\n', id="clients-only"),
        pytest.param("[cache]\nttl_seconds = 10\n", id="cache-only"),
    ],
)
def test_parse_config_without_upstreams_is_builtin_mock(toml_text: str) -> None:
    config = parse(toml_text)
    assert [(u.name, u.type, u.base_url) for u in config.upstreams] == [
        ("mock", "mock", "mock://local")
    ]
    assert config.mock_only is True
    assert "mock" in config.source


def test_parse_config_mock_upstream_needs_no_tokens() -> None:
    config = parse('[[upstreams]]\nname = "m"\ntype = "mock"\n')
    assert config.upstreams[0].tokens == ("mock",)
    assert config.mock_only is True


@pytest.mark.parametrize(
    ("toml_text", "env", "key"),
    [
        pytest.param("[foo]\nbar = 1\n", {}, "foo", id="unknown-section"),
        pytest.param("debug = true\n", {}, "debug", id="unknown-top-level-key"),
        pytest.param('upstreams = "acedata"\n', {}, "upstreams", id="upstreams-not-array"),
        pytest.param(
            '[upstreams]\nname = "a"\ntype = "acedata"\n', {}, "upstreams", id="upstreams-table"
        ),
        pytest.param(
            ONE_UPSTREAM + "tokenz = []\n", {}, "upstreams[0].tokenz", id="upstream-unknown-key"
        ),
        pytest.param(
            '[[upstreams]]\ntype = "acedata"\ntokens = ["t"]\n',
            {},
            "upstreams[0].name",
            id="missing-name",
        ),
        pytest.param(
            '[[upstreams]]\nname = ""\ntype = "acedata"\ntokens = ["t"]\n',
            {},
            "upstreams[0].name",
            id="empty-name",
        ),
        pytest.param(
            '[[upstreams]]\nname = "a"\ntokens = ["t"]\n', {}, "upstreams[0].type", id="no-type"
        ),
        pytest.param(
            '[[upstreams]]\nname = "a"\ntype = "openai"\ntokens = ["t"]\n',
            {},
            "upstreams[0].type",
            id="unknown-type",
        ),
        pytest.param(
            ONE_UPSTREAM + '[[upstreams]]\nname = "b"\ntype = "AceData"\ntokens = ["t"]\n',
            {},
            "upstreams[1].type",
            id="second-upstream-bad-type",
        ),
        pytest.param(
            ONE_UPSTREAM + '[[upstreams]]\nname = "ace"\ntype = "defapi"\ntokens = ["t"]\n',
            {},
            "'ace'",
            id="duplicate-upstream-name",
        ),
        pytest.param(
            '[[upstreams]]\nname = "a"\ntype = "acedata"\ntokens = ["${ACE}"]\n',
            {},
            "upstreams[0].tokens[0]",
            id="missing-env-var",
        ),
        pytest.param(
            '[[upstreams]]\nname = "a"\ntype = "acedata"\ntokens = ["ok", "${ACE}"]\n',
            {"ACE": ""},
            "upstreams[0].tokens[1]",
            id="empty-env-var",
        ),
        pytest.param(
            '[[upstreams]]\nname = "a"\ntype = "acedata"\ntokens = ["t"]\n'
            'base_url = "ftp://api.acedata.cloud"\n',
            {},
            "upstreams[0].base_url",
            id="base-url-ftp",
        ),
        pytest.param(
            '[[upstreams]]\nname = "a"\ntype = "defapi"\ntokens = ["t"]\n'
            'base_url = "api.defapi.org"\n',
            {},
            "upstreams[0].base_url",
            id="base-url-no-scheme",
        ),
        pytest.param(
            '[[upstreams]]\nname = "a"\ntype = "xhuoapi"\ntokens = ["t"]\nbase_url = "https://"\n',
            {},
            "upstreams[0].base_url",
            id="base-url-no-host",
        ),
        pytest.param(
            '[[upstreams]]\nname = "a"\ntype = "acedata"\ntokens = ["t"]\nbase_url = 443\n',
            {},
            "upstreams[0].base_url",
            id="base-url-number",
        ),
        pytest.param(
            '[[upstreams]]\nname = "a"\ntype = "acedata"\ntokens = ["t"]\n'
            'base_url = "https://api acedata.cloud"\n',
            {},
            "upstreams[0].base_url",
            id="base-url-space-in-host",
        ),
        pytest.param(
            '[[upstreams]]\nname = "a"\ntype = "acedata"\ntokens = []\n',
            {},
            "upstreams[0].tokens",
            id="empty-token-list",
        ),
        pytest.param(
            '[[upstreams]]\nname = "a"\ntype = "acedata"\n',
            {},
            "upstreams[0].tokens",
            id="no-tokens",
        ),
        pytest.param(
            '[[upstreams]]\nname = "a"\ntype = "acedata"\ntokens = "tok-1"\n',
            {},
            "upstreams[0].tokens",
            id="tokens-not-list",
        ),
        pytest.param(
            '[[upstreams]]\nname = "a"\ntype = "acedata"\ntokens = ["t", 2]\n',
            {},
            "upstreams[0].tokens",
            id="token-not-string",
        ),
        pytest.param(
            '[[upstreams]]\nname = "a"\ntype = "acedata"\ntokens = ["${A}", "${B}"]\n',
            {"A": "same", "B": "same"},
            "upstreams[0].tokens",
            id="duplicate-token",
        ),
        pytest.param(
            '[[upstreams]]\nname = "a"\ntype = "acedata"\ntokens = [""]\n',
            {},
            "upstreams[0].tokens",
            id="empty-token-string",
        ),
        pytest.param(
            ONE_UPSTREAM + "priority = 1\norder = 2\n",
            {},
            "upstreams[0]",
            id="priority-and-order",
        ),
        pytest.param(
            ONE_UPSTREAM + "priority = 1.5\n", {}, "upstreams[0].priority", id="priority-float"
        ),
        pytest.param(ONE_UPSTREAM + 'order = "first"\n', {}, "upstreams[0].order", id="order-str"),
        pytest.param(ONE_UPSTREAM + "weight = 0\n", {}, "upstreams[0].weight", id="weight-zero"),
        pytest.param(
            ONE_UPSTREAM + 'weight = "heavy"\n', {}, "upstreams[0].weight", id="weight-string"
        ),
        pytest.param(ONE_UPSTREAM + "weight = true\n", {}, "upstreams[0].weight", id="weight-bool"),
        pytest.param(
            ONE_UPSTREAM + "max_concurrency = 0\n",
            {},
            "upstreams[0].max_concurrency",
            id="max-concurrency-zero",
        ),
        pytest.param(
            ONE_UPSTREAM + "timeout_seconds = -1\n",
            {},
            "upstreams[0].timeout_seconds",
            id="timeout-negative",
        ),
        pytest.param(
            ONE_UPSTREAM + "models = { nano-banana = 1 }\n",
            {},
            "upstreams[0].models",
            id="models-value-not-string",
        ),
        pytest.param(
            ONE_UPSTREAM + '[[clients]]\nname = "a"\n', {}, "clients[0].key", id="client-no-key"
        ),
        pytest.param(
            ONE_UPSTREAM + '[[clients]]\nname = "a"\nkey = "short"\n',
            {},
            "clients[0].key",
            id="client-key-short",
        ),
        pytest.param(
            ONE_UPSTREAM + '[[clients]]\nname = "team a"\nkey = "sk-0123456789"\n',
            {},
            "clients[0].name",
            id="client-name-space",
        ),
        pytest.param(
            ONE_UPSTREAM + '[[clients]]\nkey = "sk-0123456789"\n',
            {},
            "clients[0].name",
            id="client-no-name",
        ),
        pytest.param(
            ONE_UPSTREAM + '[[clients]]\nname = "a"\nkey = "sk-0123456789"\nsecret = "x"\n',
            {},
            "clients[0].secret",
            id="client-unknown-key",
        ),
        pytest.param(
            ONE_UPSTREAM + '[[clients]]\nname = "a"\nkey = "${KEY_A}"\n',
            {},
            "clients[0].key",
            id="client-key-missing-env",
        ),
        pytest.param(
            ONE_UPSTREAM + '[[clients]]\nname = "a"\nkey = "sk-0123456789"\n'
            '[[clients]]\nname = "a"\nkey = "sk-9876543210"\n',
            {},
            "clients",
            id="client-duplicate-name",
        ),
        pytest.param(
            ONE_UPSTREAM + '[[clients]]\nname = "a"\nkey = "sk-0123456789"\n'
            '[[clients]]\nname = "b"\nkey = "sk-0123456789"\n',
            {},
            "clients",
            id="client-duplicate-key",
        ),
        pytest.param(ONE_UPSTREAM + '[admin]\nkey = "short"\n', {}, "admin.key", id="admin-short"),
        pytest.param(
            ONE_UPSTREAM + '[admin]\nkey = "${ADMIN}"\n', {}, "admin.key", id="admin-missing-env"
        ),
        pytest.param(
            ONE_UPSTREAM + '[admin]\nuser = "root"\n', {}, "admin.user", id="admin-unknown-key"
        ),
        pytest.param(
            ONE_UPSTREAM + "[cache]\nttl_seconds = -5\n",
            {},
            "cache.ttl_seconds",
            id="cache-ttl-negative",
        ),
        pytest.param(
            ONE_UPSTREAM + '[cache]\nttl_seconds = "1h"\n',
            {},
            "cache.ttl_seconds",
            id="cache-ttl-string",
        ),
        pytest.param(
            ONE_UPSTREAM + '[cache]\nenabled = "yes"\n', {}, "cache.enabled", id="cache-enabled"
        ),
        pytest.param(
            ONE_UPSTREAM + "[cache]\nsize = 10\n", {}, "cache.size", id="cache-unknown-key"
        ),
        pytest.param(ONE_UPSTREAM + 'cache = "on"\n', {}, "cache", id="cache-not-table"),
        pytest.param(
            ONE_UPSTREAM + "[pool]\nmax_attempts = 0\n",
            {},
            "pool.max_attempts",
            id="pool-max-attempts-zero",
        ),
        pytest.param(
            ONE_UPSTREAM + "[pool]\nretries = 3\n", {}, "pool.retries", id="pool-unknown-key"
        ),
        pytest.param(
            ONE_UPSTREAM + '[server]\nlog_level = "loud"\n',
            {},
            "server.log_level",
            id="server-log-level",
        ),
        pytest.param(
            ONE_UPSTREAM + '[images]\nallow_partial = "yes"\n',
            {},
            "images.allow_partial",
            id="images-allow-partial",
        ),
        pytest.param(
            ONE_UPSTREAM + '[models]\ndefault = ""\n',
            {},
            "models.default",
            id="models-default-empty",
        ),
        pytest.param(
            ONE_UPSTREAM + '[models]\naliases = "gpt-image-1"\n',
            {},
            "models.aliases",
            id="models-aliases-not-table",
        ),
        pytest.param(
            ONE_UPSTREAM + '[models]\nfallback = "nano-banana"\n',
            {},
            "models.fallback",
            id="models-unknown-key",
        ),
        pytest.param(
            ONE_UPSTREAM + '[models]\ndefault = "gpt-4"\n',
            {},
            "models.default",
            id="models-default-unknown-model",
        ),
        pytest.param(
            ONE_UPSTREAM + '[models]\naliases = { "gpt-image-1" = "nano-banana-9" }\n',
            {},
            "models.aliases",
            id="models-alias-target-unknown",
        ),
    ],
)
def test_parse_config_errors_name_the_key(toml_text: str, env: dict[str, str], key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse(toml_text, env)
    assert key in str(caught.value)


def test_parse_config_missing_env_var_names_the_variable() -> None:
    with pytest.raises(ConfigError) as caught:
        parse(EXAMPLE_TOML, {k: v for k, v in EXAMPLE_ENV.items() if k != "DEFAPI_TOKEN"})
    assert "upstreams[2].tokens[0]" in str(caught.value)
    assert "DEFAPI_TOKEN" in str(caught.value)


def test_parse_config_priority_and_order_message_names_both() -> None:
    with pytest.raises(ConfigError) as caught:
        parse(ONE_UPSTREAM + "priority = 1\norder = 2\n")
    message = str(caught.value)
    assert "priority" in message
    assert "order" in message


def test_parse_config_without_expansion_keeps_dollar_literal() -> None:
    raw = tomllib.loads('[[upstreams]]\nname = "a"\ntype = "acedata"\ntokens = ["t${X}"]\n')
    config = parse_config(raw, {}, expand=False)
    assert config.upstreams[0].tokens == ("t${X}",)


# --------------------------------------------------------------------------- config_from_env


@pytest.mark.parametrize(
    ("env", "upstreams"),
    [
        pytest.param({}, [("mock", "mock", "mock://local", ("mock",))], id="nothing-is-mock"),
        pytest.param(
            {"ACEDATA_API_TOKENS": ""},
            [("mock", "mock", "mock://local", ("mock",))],
            id="empty-is-mock",
        ),
        pytest.param(
            {"ACEDATA_API_TOKENS": "tok-a"},
            [("acedata", "acedata", "https://api.acedata.cloud", ("tok-a",))],
            id="acedata",
        ),
        pytest.param(
            {"ACEDATA_API_TOKENS": " tok-a , tok-b,,"},
            [("acedata", "acedata", "https://api.acedata.cloud", ("tok-a", "tok-b"))],
            id="acedata-comma-separated",
        ),
        pytest.param(
            {"XHUOAPI_API_TOKENS": "x1,x2"},
            [("xhuoapi", "xhuoapi", "https://api.xhuoapi.ai/v1", ("x1", "x2"))],
            id="xhuoapi",
        ),
        pytest.param(
            {"DEFAPI_API_TOKENS": "dk-1"},
            [("defapi", "defapi", "https://api.defapi.org", ("dk-1",))],
            id="defapi",
        ),
        pytest.param(
            {"ACEDATA_API_TOKENS": "tok-a", "ACEDATA_BASE_URL": "https://ace.internal:8443/"},
            [("acedata", "acedata", "https://ace.internal:8443", ("tok-a",))],
            id="base-url-override",
        ),
        pytest.param(
            {"DEFAPI_API_TOKENS": "dk-1", "ACEDATA_API_TOKENS": "a", "XHUOAPI_API_TOKENS": "x"},
            [
                ("acedata", "acedata", "https://api.acedata.cloud", ("a",)),
                ("xhuoapi", "xhuoapi", "https://api.xhuoapi.ai/v1", ("x",)),
                ("defapi", "defapi", "https://api.defapi.org", ("dk-1",)),
            ],
            id="all-three",
        ),
        pytest.param(
            {"ACEDATA_API_TOKENS": "tok${HOME}$x"},
            [("acedata", "acedata", "https://api.acedata.cloud", ("tok${HOME}$x",))],
            id="dollar-kept-literal",
        ),
    ],
)
def test_config_from_env_upstreams(
    env: dict[str, str], upstreams: list[tuple[str, str, str, tuple[str, ...]]]
) -> None:
    config = config_from_env(env)
    assert [(u.name, u.type, u.base_url, u.tokens) for u in config.upstreams] == upstreams
    assert config.mock_only is (upstreams[0][1] == "mock")
    assert config.source.startswith("environment")


@pytest.mark.parametrize(
    ("value", "clients"),
    [
        pytest.param("", [], id="empty"),
        pytest.param(
            "team-a:sk-team-a-0123,team-b:sk-team-b-0123",
            [("team-a", "sk-team-a-0123"), ("team-b", "sk-team-b-0123")],
            id="named",
        ),
        pytest.param(
            " team-a:sk-team-a-0123 , ",
            [("team-a", "sk-team-a-0123")],
            id="spaces-and-trailing-comma",
        ),
        pytest.param("sk-anonymous-0123", [("client-1", "sk-anonymous-0123")], id="unnamed"),
        pytest.param("ops:key:with:colons", [("ops", "key:with:colons")], id="colon-in-key"),
    ],
)
def test_config_from_env_client_keys(value: str, clients: list[tuple[str, str]]) -> None:
    config = config_from_env({"GATEWAY_CLIENT_KEYS": value})
    assert [(c.name, c.key) for c in config.clients] == clients


def test_config_from_env_admin_key_and_secrets() -> None:
    config = config_from_env(
        {
            "ACEDATA_API_TOKENS": "tok-a",
            "GATEWAY_CLIENT_KEYS": "team-a:sk-team-a-0123",
            "GATEWAY_ADMIN_KEY": "admin-0123456789",
        }
    )
    assert config.admin.key == "admin-0123456789"
    assert set(config.secrets()) == {"tok-a", "sk-team-a-0123", "admin-0123456789"}


def test_config_from_env_without_admin_key() -> None:
    assert config_from_env({}).admin.key is None


@pytest.mark.parametrize(
    ("env", "key"),
    [
        pytest.param(
            {"ACEDATA_API_TOKENS": "a", "ACEDATA_BASE_URL": "not-a-url"},
            "upstreams[0].base_url",
            id="bad-base-url",
        ),
        pytest.param({"GATEWAY_CLIENT_KEYS": "team-a:short"}, "clients[0].key", id="short-key"),
        pytest.param(
            {"GATEWAY_CLIENT_KEYS": "team a:sk-0123456789"}, "clients[0].name", id="bad-name"
        ),
        pytest.param({"GATEWAY_ADMIN_KEY": "short"}, "admin.key", id="short-admin-key"),
        pytest.param({"ACEDATA_API_TOKENS": "a,a"}, "upstreams[0].tokens", id="duplicate-token"),
    ],
)
def test_config_from_env_errors_name_the_key(env: dict[str, str], key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        config_from_env(env)
    assert key in str(caught.value)


# --------------------------------------------------------------------------- load_config


def test_load_config_reads_a_toml_file(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text(EXAMPLE_TOML, encoding="utf-8")
    config = load_config(str(path), EXAMPLE_ENV)
    assert [u.name for u in config.upstreams] == ["acedata", "xhuoapi", "defapi"]
    assert config.upstreams[2].tokens == ("dk-0123456789abcdef",)
    assert config.cache.ttl_seconds == 3600.0
    assert config.source == str(path)


def test_load_config_without_path_reads_the_environment() -> None:
    config = load_config(None, {"DEFAPI_API_TOKENS": "dk-1"})
    assert [(u.type, u.tokens) for u in config.upstreams] == [("defapi", ("dk-1",))]


def test_load_config_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as caught:
        load_config(str(path), {})
    assert str(path) in str(caught.value)
    assert "not found" in str(caught.value)


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("[[upstreams]\nname = 'a'\n", id="bad-table-header"),
        pytest.param("[cache]\nttl_seconds = \n", id="missing-value"),
        pytest.param('name = "a"\nname = "b"\n', id="duplicate-key"),
    ],
)
def test_load_config_invalid_toml(tmp_path: Path, text: str) -> None:
    path = tmp_path / "config.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_config(str(path), {})
    assert str(path) in str(caught.value)
    assert "TOML" in str(caught.value)


def test_load_config_valid_toml_with_bad_value_names_the_key(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text(EXAMPLE_TOML.replace('type = "defapi"', 'type = "dallas"'), encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_config(str(path), EXAMPLE_ENV)
    assert "upstreams[2].type" in str(caught.value)


# --------------------------------------------------------------------------- [cache]


def test_cache_settings_and_their_defaults() -> None:
    default = parse_config({}, {}).cache
    assert (default.url_ttl_seconds, default.max_bytes, default.redis_url) == (
        900.0,
        64 * 1024 * 1024,
        None,
    )
    config = parse_config(
        tomllib.loads(
            '[cache]\nurl_ttl_seconds = 60\nmax_bytes = 1000\nredis_url = "${REDIS}"\n'
            'redis_prefix = "gw:"\nredis_timeout_seconds = 0.2\n'
        ),
        {"REDIS": "redis://:s3cret-pass@cache:6379/1"},
    )
    c = config.cache
    assert (c.url_ttl_seconds, c.max_bytes, c.redis_prefix, c.redis_timeout_seconds) == (
        60.0,
        1000,
        "gw:",
        0.2,
    )
    assert c.redis_url == "redis://:s3cret-pass@cache:6379/1"
    # The password in the URL is scrubbed like any other secret.
    assert "s3cret-pass" in config.secrets()


@pytest.mark.parametrize(
    ("toml_text", "key"),
    [
        ('[cache]\nredis_url = "http://cache:6379"\n', "cache.redis_url"),
        ("[cache]\nredis_url = 6379\n", "cache.redis_url"),
        ("[cache]\nmax_bytes = -1\n", "cache.max_bytes"),
        ("[cache]\nurl_ttl_seconds = -1\n", "cache.url_ttl_seconds"),
        ("[cache]\nredis_timeout_seconds = 0\n", "cache.redis_timeout_seconds"),
        ('[[clients]]\nname = "a"\nkey = "0123456789"\ncache = "no"\n', "clients[0].cache"),
    ],
)
def test_cache_setting_errors_name_the_key(toml_text: str, key: str) -> None:
    with pytest.raises(ConfigError, match="^" + re.escape(key) + ":"):
        parse_config(tomllib.loads(toml_text), {})


def test_client_cache_opt_out() -> None:
    config = parse_config(
        tomllib.loads('[[clients]]\nname = "a"\nkey = "0123456789"\ncache = false\n'), {}
    )
    assert config.clients[0].cache is False


def test_redis_url_from_the_environment() -> None:
    config = config_from_env({"GATEWAY_REDIS_URL": "redis://127.0.0.1:6379/0"})
    assert config.redis.url == "redis://127.0.0.1:6379/0"
    # A file that names no Redis takes it from the environment too; one that does wins.
    from_file = parse_config({}, {"GATEWAY_REDIS_URL": "redis://10.0.0.1:6379/0"})
    assert from_file.redis.url == "redis://10.0.0.1:6379/0"
    named = parse_config(
        {"redis": {"url": "redis://10.0.0.2:6379/0"}}, {"GATEWAY_REDIS_URL": "redis://x:1/0"}
    )
    assert named.redis.url == "redis://10.0.0.2:6379/0"


def test_cache_redis_url_is_the_older_spelling_of_redis_url() -> None:
    config = parse_config(
        {"cache": {"redis_url": "redis://h:1/0", "redis_prefix": "x:", "redis_timeout_seconds": 2}},
        {},
    )
    assert (config.redis.url, config.redis.prefix, config.redis.timeout_seconds) == (
        "redis://h:1/0",
        "x:",
        2,
    )
    both = parse_config(
        {"cache": {"redis_url": "redis://old:1/0"}, "redis": {"url": "redis://new:1/0"}}, {}
    )
    assert both.redis.url == "redis://new:1/0"


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"GATEWAY_STATE_DIR": "/srv/state", "HOME": "/home/x"}, "/srv/state"),
        ({"GATEWAY_STATE_DIR": "", "HOME": "/home/x"}, ""),
        ({"XDG_STATE_HOME": "/xdg", "HOME": "/home/x"}, "/xdg/nano-banana-gateway"),
        ({"HOME": "/home/x"}, "/home/x/.local/state/nano-banana-gateway"),
        ({}, ""),
    ],
)
def test_the_state_directory_default(env: dict[str, str], expected: str) -> None:
    assert parse_config({}, env).state.dir == expected
    assert parse_config({"state": {"dir": "/etc/x"}}, env).state.dir == "/etc/x"


def test_redis_settings_are_checked() -> None:
    with pytest.raises(ConfigError, match=r"^redis\.daily_limits_when_down:"):
        parse_config({"redis": {"daily_limits_when_down": "maybe"}}, {})
    with pytest.raises(ConfigError, match=r"^redis\.lease_seconds:"):
        parse_config({"redis": {"lease_seconds": 0}}, {})
    with pytest.raises(ConfigError, match=r"^redis\.url:"):
        parse_config({"redis": {"url": "http://x"}}, {})


def test_access_log_setting() -> None:
    assert parse_config({}, {}).server.access_log is False
    assert parse_config({"server": {"access_log": True}}, {}).server.access_log is True
    with pytest.raises(ConfigError, match=r"^server\.access_log:"):
        parse_config({"server": {"access_log": "yes"}}, {})


def test_the_batch_store_settings() -> None:
    url = "postgresql://gateway:pw-secret-123@db:5432/gateway"
    assert parse_config({}, {}).state.database_url is None
    assert parse_config({}, {"GATEWAY_DATABASE_URL": url}).state.database_url == url
    # The file's own setting wins over the environment's.
    mine = "postgres://other@db2/gw"
    named = parse_config({"state": {"database_url": mine}}, {"GATEWAY_DATABASE_URL": url})
    assert named.state.database_url == mine
    # Its password is a secret: scrubbed from logs like tokens and keys.
    assert "pw-secret-123" in parse_config({"state": {"database_url": url}}, {}).secrets()
    with pytest.raises(ConfigError, match=r"^state\.database_url:"):
        parse_config({"state": {"database_url": "mysql://db/gw"}}, {})
    for name, bad in (("concurrency", 0), ("claim_seconds", 0), ("max_lines", 0)):
        with pytest.raises(ConfigError, match=rf"^batch\.{name}:"):
            parse_config({"batch": {name: bad}}, {})
    assert parse_config({"batch": {"concurrency": 2}}, {}).batch.concurrency == 2
