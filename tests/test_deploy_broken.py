"""Every deployment check can fail: each checker of tests/deploy_checks.py, run on a
deliberately broken copy of a repository file, reports it, for the reason expected.

Each case copies the real file (and what it refers to) into tmp_path, checks that the
untouched copy passes there, then breaks one thing and checks that the same checker
fails and names the fault. An edit that no longer applies to the real file fails the
test instead of silently testing an unbroken copy.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.support import deploy_checks
from tests.support.deploy_checks import ROOT, Outcome

DEPLOY = ROOT / "deploy"
KUBERNETES = DEPLOY / "kubernetes"
PROMETHEUS = DEPLOY / "prometheus"


def replace(old: str, new: str) -> Callable[[str], str]:
    """An edit that swaps one exact piece of text (which must be there) for another."""

    def edit(text: str) -> str:
        assert old in text, f"the file no longer contains {old!r}: update this case"
        return text.replace(old, new, 1)

    return edit


def first_alert(change: Callable[[dict[str, object]], None]) -> Callable[[str], str]:
    """An edit of the first alerting rule of a rule file, through YAML."""

    def edit(text: str) -> str:
        document = yaml.safe_load(text)
        rule = next(r for g in document["groups"] for r in g["rules"] if "alert" in r)
        change(rule)
        return yaml.safe_dump(document, sort_keys=False)

    return edit


@dataclass(frozen=True)
class Breakage:
    """One deliberate fault in a copy of `target`, and what the checker must say."""

    target: Path
    edit: Callable[[str], str]
    checker: Callable[[Path], Outcome]
    expected: str
    # Copied beside the target, relative to the repository root, so references resolve.
    context: tuple[str, ...] = ()


CASES = {
    # hadolint
    "dockerfile-untagged-base": Breakage(
        ROOT / "Dockerfile",
        replace("FROM python:3.11-slim AS build", "FROM python AS build"),
        deploy_checks.hadolint,
        "DL3006",
    ),
    "dockerfile-shell-form-entrypoint": Breakage(
        ROOT / "Dockerfile",
        replace(
            'ENTRYPOINT ["nano-banana-gateway", "--host", "0.0.0.0", "--port", "8000"]',
            "ENTRYPOINT nano-banana-gateway --host 0.0.0.0 --port 8000",
        ),
        deploy_checks.hadolint,
        "DL3025",
    ),
    "dockerfile-unexplained-ignore": Breakage(
        ROOT / "Dockerfile",
        replace("RUN pip wheel", "\n# hadolint ignore=DL3013\nRUN pip wheel"),
        deploy_checks.hadolint,
        "without a reason",
    ),
    # kubernetes-validate, strict
    "deployment-unknown-field": Breakage(
        KUBERNETES / "deployment.yaml",
        replace("terminationGracePeriodSeconds:", "terminationGracePeriod:"),
        deploy_checks.kubernetes_manifest,
        "terminationGracePeriod",
    ),
    "deployment-wrong-type": Breakage(
        KUBERNETES / "deployment.yaml",
        replace("containerPort: 8000", "containerPort: eight-thousand"),
        deploy_checks.kubernetes_manifest,
        "containerPort",
    ),
    "hpa-wrong-type": Breakage(
        KUBERNETES / "hpa.yaml",
        replace("minReplicas: 2", "minReplicas: two"),
        deploy_checks.kubernetes_manifest,
        "minReplicas",
    ),
    "redis-networkpolicy-unknown-field": Breakage(
        KUBERNETES / "redis.yaml",
        replace("policyTypes:", "policyType:"),
        deploy_checks.kubernetes_manifest,
        "policyType",
    ),
    "servicemonitor-unknown-field": Breakage(
        KUBERNETES / "servicemonitor.yaml",
        replace("scrapeTimeout: 10s", "scrapeTimeOut: 10s"),
        deploy_checks.kubernetes_manifest,
        "scrapeTimeOut",
    ),
    "servicemonitor-bad-duration": Breakage(
        KUBERNETES / "servicemonitor.yaml",
        replace("interval: 15s", "interval: 15 seconds"),
        deploy_checks.kubernetes_manifest,
        "interval",
    ),
    # promtool check config
    "prometheus-bad-duration": Breakage(
        PROMETHEUS / "prometheus.yml",
        replace("scrape_interval: 15s", "scrape_interval: 15 seconds"),
        deploy_checks.promtool_config,
        "not a valid duration",
        context=("deploy/prometheus/alerts.yml",),
    ),
    "prometheus-missing-rule-file": Breakage(
        PROMETHEUS / "prometheus.yml",
        replace("  - alerts.yml", "  - alerts-missing.yml"),
        deploy_checks.promtool_config,
        "alerts-missing.yml",
        context=("deploy/prometheus/alerts.yml",),
    ),
    "prometheus-unknown-field": Breakage(
        PROMETHEUS / "prometheus.yml",
        replace("metrics_path: /metrics", "metric_path: /metrics"),
        deploy_checks.promtool_config,
        "metric_path",
        context=("deploy/prometheus/alerts.yml",),
    ),
    # promtool check rules
    "alerts-bad-promql": Breakage(
        PROMETHEUS / "alerts.yml",
        first_alert(lambda rule: rule.update(expr=f"({rule['expr']}")),
        deploy_checks.promtool_rules,
        "parse error",
    ),
    "alerts-unknown-field": Breakage(
        PROMETHEUS / "alerts.yml",
        first_alert(lambda rule: rule.update(severity="page")),
        deploy_checks.promtool_rules,
        "severity",
    ),
    # compose: YAML, the Compose specification, and the files it refers to
    "compose-not-yaml": Breakage(
        DEPLOY / "docker-compose.yml",
        replace("services:\n", "services: [\n"),
        deploy_checks.compose,
        "not YAML",
    ),
    "compose-unknown-key": Breakage(
        DEPLOY / "docker-compose.yml",
        replace("    read_only: true\n", "    readonly: true\n"),
        deploy_checks.compose,
        "readonly",
    ),
    "compose-wrong-type": Breakage(
        DEPLOY / "docker-compose.yml",
        replace("stop_grace_period: 11m", "stop_grace_period: [11m]"),
        deploy_checks.compose,
        "stop_grace_period",
    ),
    "compose-missing-mounted-file": Breakage(
        DEPLOY / "docker-compose.yml",
        replace("./grafana/nano-banana-gateway.json:", "./grafana/missing-dashboard.json:"),
        deploy_checks.compose,
        "missing-dashboard.json",
    ),
    "compose-flag-names-missing-file": Breakage(
        DEPLOY / "docker-compose.yml",
        replace("/etc/prometheus/prometheus.yml", "/etc/prometheus/prometheus-missing.yml"),
        deploy_checks.compose,
        "prometheus-missing.yml",
    ),
    "compose-missing-dockerfile": Breakage(
        DEPLOY / "docker-compose.yml",
        replace("dockerfile: Dockerfile", "dockerfile: Dockerfile.missing"),
        deploy_checks.compose,
        "Dockerfile.missing",
    ),
    "compose-unknown-service": Breakage(
        DEPLOY / "docker-compose.yml",
        replace("      redis:\n        condition:", "      cache:\n        condition:"),
        deploy_checks.compose,
        "no service cache",
    ),
    "compose-unpinned-image": Breakage(
        DEPLOY / "docker-compose.yml",
        replace("image: redis:7.4-alpine", "image: redis"),
        deploy_checks.compose,
        "not pinned",
    ),
}

# What a compose file refers to: the build context with its Dockerfile, and deploy/.
COMPOSE_CONTEXT = ("Dockerfile", "deploy")


def copy_into(root: Path, relative: str) -> None:
    """Copy a repository file or folder to the same relative place under root."""
    source = ROOT / relative
    destination = root / relative
    destination.parent.mkdir(parents=True, exist_ok=True)
    if source.is_dir():
        shutil.copytree(source, destination, dirs_exist_ok=True)
    else:
        shutil.copy(source, destination)


@pytest.mark.parametrize("case", list(CASES.values()), ids=list(CASES))
def test_checker_fails_on_a_broken_copy(case: Breakage, tmp_path: Path) -> None:
    """The untouched copy passes; the broken one fails, naming the fault."""
    relative = str(case.target.relative_to(ROOT))
    context = COMPOSE_CONTEXT if case.checker is deploy_checks.compose else case.context
    for item in (*context, relative):
        copy_into(tmp_path, item)
    copy = tmp_path / relative

    untouched = case.checker(copy)
    assert untouched.ok, f"the unbroken copy already fails:\n{untouched.output}"

    original = copy.read_text()
    broken = case.edit(original)
    assert broken != original
    copy.write_text(broken)
    outcome = case.checker(copy)
    assert not outcome.ok, f"the checker passed a broken {relative}"
    assert case.expected in outcome.output, outcome.output


def test_every_checker_has_a_broken_case() -> None:
    """No checker of deploy_checks goes without a case showing it can fail."""
    checkers = {
        deploy_checks.hadolint,
        deploy_checks.kubernetes_manifest,
        deploy_checks.promtool_config,
        deploy_checks.promtool_rules,
        deploy_checks.compose,
    }
    assert checkers == {case.checker for case in CASES.values()}
    manifests = {p for p in KUBERNETES.glob("*.yaml") if p.name != "kustomization.yaml"}
    # Every kind of source, built-in and operator, has a broken case.
    assert {KUBERNETES / "servicemonitor.yaml", KUBERNETES / "deployment.yaml"} <= {
        case.target for case in CASES.values() if case.target in manifests
    }
