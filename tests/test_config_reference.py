"""The README's configuration reference is rendered from the declarations, and stays so;
plus table tests for what the declarations give: messages, strict types, construction."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from gateway.config import (
    CacheConfig,
    ClientConfig,
    Config,
    ConfigError,
    PoolConfig,
    PricesConfig,
    ServerConfig,
    UpstreamConfig,
    UsageConfig,
    parse_config,
)
from gateway.config.fields import bare, hints, toml_value
from gateway.config.reference import is_empty, readme_block, render

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PACKAGE = ROOT / "gateway" / "config"

# What the reference's live ${VAR} references need.
REFERENCE_ENV = {
    "ACEDATA_TOKEN": "ace-token-0001",
    "TEAM_A_KEY": "sk-team-a-0123456789",
    "GATEWAY_ADMIN_KEY": "admin-0123456789",
    "GATEWAY_METRICS_KEY": "metrics-0123456789",
}


def sections() -> list[tuple[str, type[BaseModel]]]:
    """(TOML header, model) for every table of the document, in order."""
    out = []
    for name, field in Config.model_fields.items():
        declared = bare(field.annotation)
        if isinstance(declared, type) and issubclass(declared, BaseModel):
            out.append((f"[{name}]", declared))
        else:
            out.append((f"[[{name}]]", bare(declared.__args__[0])))
    return out


def settings() -> list[Any]:
    return [
        pytest.param(header, key, field, id=f"{header.strip('[]')}.{key}")
        for header, model in sections()
        if model is not PricesConfig
        for key, field in model.model_fields.items()
    ]


def rendered_sections() -> dict[str, list[str]]:
    """The rendered reference's lines, by table header."""
    out: dict[str, list[str]] = {}
    for block in render().strip().split("\n\n"):
        lines = block.splitlines()
        out[lines[0].split()[0]] = lines[1:]
    return out


def line_for(header: str, key: str) -> str:
    """A setting's line in the reference, with its comment's wrapped lines joined on."""
    lines = rendered_sections()[header]
    (at,) = [i for i, line in enumerate(lines) if re.match(rf"(# )?{key}( =|:) ", line)]
    text = lines[at]
    for more in lines[at + 1 :]:
        if not more.startswith(" "):
            break
        text += " " + more.strip().removeprefix("# ")
    return text


# --------------------------------------------------------------------------- the README


def test_readme_reference_is_the_rendered_one() -> None:
    assert readme_block(README.read_text(encoding="utf-8")) == render(), (
        "README.md's configuration reference is stale: "
        "run python -m gateway.config.reference --write README.md"
    )


def test_reference_keeps_the_sections_in_order() -> None:
    assert list(rendered_sections()) == [
        "[[upstreams]]",
        "[[clients]]",
        "[admin]",
        "[models]",
        "[pool]",
        "[images]",
        "[cache]",
        "[prices]",
        "[usage]",
        "[server]",
        "[redis]",
        "[state]",
        "[batch]",
    ]


def test_reference_command_prints_checks_and_writes(tmp_path: Path) -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "gateway.config.reference", *args],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=False,
        )

    printed = run()
    assert (printed.returncode, printed.stdout) == (0, render())
    assert run("--check", str(README)).returncode == 0
    stale = tmp_path / "README.md"
    text = README.read_text(encoding="utf-8")
    stale.write_text(text.replace("max_attempts = 4 ", "max_attempts = 9 "), encoding="utf-8")
    checked = run("--check", str(stale))
    assert checked.returncode == 1
    assert "--write" in checked.stderr
    assert run("--write", str(stale)).returncode == 0
    assert stale.read_text(encoding="utf-8") == text


@pytest.mark.parametrize(("header", "key", "field"), settings())
def test_every_setting_appears_with_its_default(header: str, key: str, field: FieldInfo) -> None:
    line = line_for(header, key)
    hint = hints(field)
    if hint.legacy:
        assert line.startswith(f"# {key}: the older spelling of {hint.legacy}")
        return
    assert field.description and field.description.split(";")[0] in line
    if field.is_required():
        assert line.startswith(f"{key} = {toml_value(hint.example)}")
        return
    default = field.get_default(call_default_factory=True)
    if is_empty(default):
        # Absent by default: the example shows the form (commented out unless it must be live).
        assert re.match(rf"(# )?{key} = {re.escape(toml_value(hint.example))}", line)
    elif hint.example is PydanticUndefined or hint.example == default:
        assert re.match(rf"(# )?{key} = {re.escape(toml_value(default))} ", line)
    else:
        assert f"default {toml_value(default)}" in line


def test_live_lines_are_a_valid_config_with_the_defaults() -> None:
    config = parse_config(tomllib.loads(render()), REFERENCE_ENV, source="reference")
    assert [(u.name, u.type, u.tokens, u.weight) for u in config.upstreams] == [
        ("ace-main", "acedata", ("ace-token-0001", "another-token"), 2.0)
    ]
    assert [(c.name, c.key) for c in config.clients] == [("team-a", "sk-team-a-0123456789")]
    assert config.admin.key == "admin-0123456789"
    assert config.images.aliases["my-app-model"] == "nano-banana-pro"
    assert config.prices.table["nano-banana-pro"] == {"1K": 0.134, "2K": 0.134, "4K": 0.24}
    assert (config.pool, config.cache, config.usage, config.server) == (
        PoolConfig(),
        CacheConfig(),
        UsageConfig(),
        ServerConfig(),
    )


def test_commented_out_examples_are_valid_too() -> None:
    """Every commented-out `key = value` line, made live, still reads (key_sha256 aside:
    it replaces key)."""
    lines = []
    for line in render().splitlines():
        if re.match(r"# (?!key_sha256)\S+ = ", line):
            line = line.removeprefix("# ")
        lines.append(line)
    config = parse_config(tomllib.loads("\n".join(lines)), REFERENCE_ENV)
    (upstream,) = config.upstreams
    assert (upstream.max_concurrency, upstream.base_url) == (16, "https://api.acedata.cloud")
    assert config.clients[0].budget_usd_per_day == 50.0
    assert config.redis.url == "redis://redis:6379/0"
    assert config.state.dir == "/var/lib/nano-banana-gateway"
    assert config.server.metrics_port == 9100
    assert config.prices.table["nano-banana-pro:official"]["4K"] == 0.3


@pytest.mark.parametrize(("header", "key", "field"), settings())
def test_every_example_is_valid(header: str, key: str, field: FieldInfo) -> None:
    model = dict(sections())[header]
    required = {
        k: hints(f).example for k, f in model.model_fields.items() if f.is_required() and k != key
    }
    example = hints(field).example
    if example is PydanticUndefined:
        assert not field.is_required(), "a required setting needs an example"
        return
    made = model.model_validate({**required, key: example})
    assert getattr(made, key) is not None


def test_config_modules_stay_small() -> None:
    for path in PACKAGE.glob("*.py"):
        assert len(path.read_text(encoding="utf-8").splitlines()) < 400, path.name


# --------------------------------------------------------------------------- messages


def config_error(toml_text: str, env: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as caught:
        parse_config(tomllib.loads(toml_text), env or {})
    return str(caught.value)


UPSTREAM = '[[upstreams]]\nname = "u"\ntype = "acedata"\ntokens = ["tok-1"]\n'


@pytest.mark.parametrize(
    ("toml_text", "message"),
    [
        pytest.param(
            "[pool]\nmax_atempts = 2\n",
            "pool.max_atempts: unknown setting (allowed: bench_seconds, breaker_seconds, "
            "breaker_threshold, cooldown_max_seconds, cooldown_seconds, deadline_seconds, "
            "max_attempts, panic_concurrency, panic_wait_seconds, probe_interval_seconds, "
            "retry_backoff_seconds, upstream_breaker_threshold); "
            "did you mean max_attempts?",
            id="unknown-key-suggests",
        ),
        pytest.param(
            "[admin]\nuser = 1\n",
            "admin.user: unknown setting (allowed: key, metrics_key)",
            id="unknown-key-no-guess",
        ),
        pytest.param(
            '[[upstreams]]\nname = "u"\ntype = "acedata"\ntokens = "tok-1"\n',
            'upstreams[0].tokens: must be a list of strings (e.g. ["${ACEDATA_TOKEN}", '
            '"another-token"])',
            id="list-shows-example",
        ),
        pytest.param(
            UPSTREAM + 'models = "nano-banana"\n',
            'upstreams[0].models: must be a table of strings (e.g. { "nano-banana-pro" = '
            '"nano-banana-pro:official" })',
            id="table-shows-example",
        ),
        pytest.param(
            UPSTREAM + "models = { nano-banana = 1 }\n",
            'upstreams[0].models: must be a table of strings (e.g. { "nano-banana-pro" = '
            '"nano-banana-pro:official" })',
            id="table-item-wrong-type",
        ),
        pytest.param(
            '[[clients]]\nname = "a"\nkey = "sk-0123456789"\nmodels = ["nano-banana", 2]\n',
            'clients[0].models: must be a list of strings (e.g. ["nano-banana", "nano-banana-2*"])',
            id="list-item-wrong-type",
        ),
        pytest.param(
            'upstreams = ["u"]\n', "upstreams[0]: must be a table", id="array-item-not-table"
        ),
        pytest.param("server = 1\n", "server: must be a table ([server])", id="section-scalar"),
        pytest.param(
            "[[server]]\n", "server: must be a table ([server])", id="section-array-of-tables"
        ),
        pytest.param(
            "[upstreams]\n", "upstreams: must be an array of tables ([[upstreams]])", id="table"
        ),
        pytest.param(
            UPSTREAM + "weight = true\npriority = 1.5\nmax_concurrency = 0\n",
            "upstreams[0].priority: must be a whole number\n"
            "upstreams[0].weight: must be a number\n"
            "upstreams[0].max_concurrency: must be at least 1",
            id="every-problem-a-line",
        ),
        pytest.param(
            "[server]\nmetrics_port = 0\n", "server.metrics_port: must be at least 1", id="ge"
        ),
        pytest.param(
            "[server]\nmetrics_port = 65536\n",
            "server.metrics_port: must be at most 65535",
            id="le",
        ),
        pytest.param(
            '[server]\nlog_level = "INFO"\n',
            "server.log_level: 'INFO' is not one of 'critical', 'error', 'warning', 'info' or "
            "'debug'",
            id="literal",
        ),
        pytest.param(
            '[prices]\n"nano-banana-2" = { "1K" = 0.1, "2K" = 0.1, "4K" = true }\n',
            "prices.nano-banana-2.4K: must be a number",
            id="price-bool",
        ),
        pytest.param(
            '[images]\ndefault_model = "gpt-4"\n',
            "images.default_model: 'gpt-4' is not one of nano-banana, nano-banana-2, "
            "nano-banana-pro, nano-banana-2-lite",
            id="legacy-spelling-checked",
        ),
    ],
)
def test_error_messages(toml_text: str, message: str) -> None:
    assert config_error(toml_text) == message


def test_many_problems_are_counted_past_ten() -> None:
    toml_text = "".join(
        f'[[upstreams]]\nname = "u{i}"\ntype = "acedata"\ntokens = ["t"]\nweight = 0\n'
        for i in range(12)
    )
    lines = config_error(toml_text).splitlines()
    assert len(lines) == 11
    assert lines[0] == "upstreams[0].weight: must be at least 0.001"
    assert lines[-1] == "(and 2 more)"


@pytest.mark.parametrize(
    ("section", "key", "value", "message"),
    [
        ("pool", "max_attempts", True, "must be a whole number"),
        ("pool", "max_attempts", 2.0, "must be a whole number"),
        ("pool", "max_attempts", "2", "must be a whole number"),
        ("pool", "deadline_seconds", "10", "must be a number"),
        ("pool", "deadline_seconds", False, "must be a number"),
        ("cache", "enabled", 1, "must be true or false"),
        ("cache", "enabled", "true", "must be true or false"),
        ("usage", "log", 3, "must be a string"),
        ("cache", "redis_prefix", ["nbg:"], "must be a string"),
        (
            "images",
            "allowed_networks",
            ["10.0.0.0/8", 10],
            'must be a list of strings (e.g. ["10.20.0.0/16"])',
        ),
    ],
)
def test_types_are_strict(section: str, key: str, value: Any, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config({section: {key: value}}, {})
    assert str(caught.value).startswith(f"{section}.{key}")
    assert str(caught.value).endswith(f": {message}")


@pytest.mark.parametrize(
    ("section", "key", "value", "expected"),
    [
        ("pool", "deadline_seconds", 10, 10.0),  # a whole number is a number
        ("cache", "redis_prefix", "", "nbg:"),  # empty: the default
        ("redis", "prefix", "", "nbg:"),
        ("usage", "log", "", "stdout"),
        ("server", "metrics_host", "", None),
    ],
)
def test_lenient_where_it_always_was(section: str, key: str, value: Any, expected: Any) -> None:
    got = getattr(getattr(parse_config({section: {key: value}}, {}), section), key)
    assert (got, type(got)) == (expected, type(expected))


# --------------------------------------------------------------------------- the objects


def test_models_table_wins_over_the_older_images_spelling() -> None:
    older = parse_config(
        {"images": {"default_model": "nano-banana-2", "aliases": {"x": "nano-banana-pro"}}}, {}
    ).images
    assert (older.default_model, next(iter(older.aliases.items()))) == (
        "nano-banana-2",
        ("x", "nano-banana-pro"),
    )
    both = parse_config(
        {
            "images": {"default_model": "nano-banana-2", "aliases": {"x": "nano-banana-pro"}},
            "models": {"default": "nano-banana-pro", "aliases": {"y": "nano-banana"}},
        },
        {},
    ).images
    assert both.default_model == "nano-banana-pro"
    assert "x" not in both.aliases
    assert next(iter(both.aliases.items())) == ("y", "nano-banana")


def test_direct_construction_needs_no_document_rules() -> None:
    anonymous = ClientConfig(name="anonymous")
    assert (anonymous.key, anonymous.key_sha256, anonymous.models) == (None, None, ())
    upstream = UpstreamConfig(
        name="u", type="defapi", base_url="http://127.0.0.1:9/", tokens=("t-1",)
    )
    assert (upstream.base_url, upstream.priority, dict(upstream.models)) == (
        "http://127.0.0.1:9",
        0,
        {},
    )
    assert UpstreamConfig(name="o", type="mock", tokens=(), order=3).priority == 3
    prices = PricesConfig(table={"nano-banana-2": 0.1})
    assert prices.table == {"nano-banana-2": {"1K": 0.1, "2K": 0.1, "4K": 0.1}}
    assert Config().upstreams[0].type == "mock"
    assert Config().source == "defaults"


def test_objects_are_frozen() -> None:
    config = parse_config({}, {})
    with pytest.raises(ValidationError):
        config.pool.max_attempts = 9  # type: ignore[misc]
    with pytest.raises(ValidationError):
        config.upstreams[0].tokens = ()  # type: ignore[misc]


def test_repr_hides_secrets_and_names_the_source() -> None:
    config = parse_config(
        tomllib.loads(
            UPSTREAM.replace("tok-1", "tok-secret-0001")
            + '[[clients]]\nname = "a"\nkey = "sk-secret-0001"\n'
            + '[admin]\nkey = "admin-secret-0001"\n[cache]\nredis_url = "redis://:pw@r:6379"\n'
        ),
        {},
        source="test.toml",
    )
    shown = repr(config)
    assert "secret" not in shown
    assert ":pw@" not in shown
    assert "source='test.toml'" in shown
