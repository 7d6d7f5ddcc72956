"""The image's contents, built without Docker, started as Compose and Kubernetes start them.

There is no container engine here, so this replays the Dockerfile instead: each stage
gets its own directory standing in for its filesystem and a fresh virtual environment
of the base image's Python; COPY, WORKDIR, ENV and the `pip` commands of RUN (bind
mounts included) are read from the Dockerfile and carried out as written, except that
pip may use its cache (`--no-cache-dir` is dropped) so the test stays fast and mostly
offline. A RUN command it does not know how to replay fails the test rather than being
skipped, so a new build step cannot go untested.

The gateway is then started from the installed console script, with the image's
ENTRYPOINT and ENV, on 127.0.0.1 and a free port instead of 0.0.0.0:8000:
  - with the environment docker-compose.yml gives it (Redis is a real redis-server
    started with the compose file's arguments, reached at 127.0.0.1 instead of `redis`);
  - with the Deployment's args, the ConfigMap's config.toml as the mounted file and the
    Secret example as its environment (upstreams are the fake provider servers).
"""

from __future__ import annotations

import glob
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import httpx
import openai
import pytest
import yaml

from tests.support import deploy_checks
from tests.support.deploy_checks import ROOT, Stage
from tests.support.gateway import free_port
from tests.support.processes import ChildGateway
from tests.support.redis_server import RedisServer

DOCKERFILE = ROOT / "Dockerfile"
COMPOSE = ROOT / "deploy" / "docker-compose.yml"
KUBERNETES = ROOT / "deploy" / "kubernetes"

# RUN commands that only set up the user the image runs as; a process started by the
# test already runs unprivileged, so there is nothing to replay.
NOT_REPLAYED = {"groupadd", "useradd", "install"}


# --- replaying the Dockerfile ----------------------------------------------------


@dataclass
class StageFilesystem:
    """A stage's stand-in root directory and the state its instructions build up."""

    root: Path
    python: Path
    workdir: PurePosixPath = field(default_factory=lambda: PurePosixPath("/"))
    env: dict[str, str] = field(default_factory=dict)
    mounts: dict[str, Path] = field(default_factory=dict)

    def host(self, container_path: str) -> Path:
        """Where a path of the stage's filesystem lives on this machine."""
        path = self.workdir / container_path
        for target, source in self.mounts.items():
            mount = PurePosixPath(target)
            if path == mount or mount in path.parents:
                return source / path.relative_to(mount)
        return self.root / path.relative_to("/")

    def translate(self, argument: str) -> list[str]:
        """A command argument with its image paths made host paths (globs expanded)."""
        flag, sep, value = argument.partition("=")
        if sep and flag.startswith("--") and value.startswith("/"):
            return [f"{flag}={self.host(value)}"]
        if argument.startswith("/") or argument in (".", "..") or argument.startswith("./"):
            path = str(self.host(argument))
            if any(char in path for char in "*?["):
                matches = sorted(glob.glob(path))
                assert matches, f"{argument} matches nothing"
                return matches
            return [path]
        return [argument]


def base_python(stage: Stage) -> str:
    """This machine's interpreter of the version the stage's python:X.Y base image has."""
    match = re.fullmatch(r"python:(\d+\.\d+)[\w.-]*", stage.base)
    assert match, f"cannot replay a stage built on {stage.base}"
    found = shutil.which(f"python{match.group(1)}")
    if found is None and f"{sys.version_info[0]}.{sys.version_info[1]}" == match.group(1):
        found = sys.executable
    if found is None:
        pytest.fail(f"python{match.group(1)} is needed to replay {stage.base}", pytrace=False)
    return found


def run_mount(flag: str, stages: Mapping[str, StageFilesystem]) -> tuple[str, Path]:
    """(target, host source) of a RUN --mount=type=bind,from=...,source=...,target=..."""
    options = dict(part.partition("=")[::2] for part in flag.partition("=")[2].split(","))
    assert options.get("type") == "bind", f"cannot replay {flag}"
    source_stage = stages[options["from"]]
    return options["target"], source_stage.host(options.get("source", "/"))


def replay_run(arguments: str, fs: StageFilesystem, stages: Mapping[str, StageFilesystem]) -> None:
    """Carry out a RUN instruction's pip commands in the stage's virtual environment."""
    words = arguments.split()
    while words and words[0].startswith("--"):
        flag = words.pop(0)
        assert flag.startswith("--mount="), f"cannot replay RUN {flag}"
        target, source = run_mount(flag, stages)
        fs.mounts[target] = source
    for command in " ".join(words).split("&&"):
        argv = shlex.split(command)
        if argv[0] in NOT_REPLAYED:
            continue
        assert argv[0] == "pip", f"cannot replay `{command.strip()}`: teach this test how"
        args = [arg for arg in argv[1:] if arg != "--no-cache-dir"]
        translated = [host for arg in args for host in fs.translate(arg)]
        env = {**os.environ, **fs.env}
        if "--no-index" in args:
            # This machine's pip settings add package folders of their own; an install
            # meant to take only the built wheels must not see them.
            env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
            env |= {**fs.env, "PIP_CONFIG_FILE": os.devnull}
        cwd = fs.host(".")
        result = subprocess.run(
            [str(fs.python), "-m", "pip", "-q", *translated],
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert result.returncode == 0, f"{command.strip()} failed:\n{result.stdout}{result.stderr}"
    fs.mounts.clear()  # a RUN --mount lasts for that RUN only


def replay(dockerfile: Path, workspace: Path) -> tuple[StageFilesystem, Stage]:
    """Build every stage of the Dockerfile into workspace; the last stage's state."""
    stages = deploy_checks.dockerfile_stages(dockerfile)
    built: dict[str, StageFilesystem] = {}
    fs: StageFilesystem | None = None
    for index, stage in enumerate(stages):
        root = workspace / f"stage-{index}"
        root.mkdir()
        venv = workspace / f"venv-{index}"
        subprocess.run([base_python(stage), "-m", "venv", str(venv)], check=True, timeout=120)
        fs = StageFilesystem(root=root, python=venv / "bin" / "python")
        for instruction in stage.instructions:
            keyword, arguments = instruction.keyword, instruction.arguments
            if keyword == "WORKDIR":
                fs.workdir = fs.workdir / arguments
                fs.host(".").mkdir(parents=True, exist_ok=True)
            elif keyword == "ENV":
                fs.env.update(deploy_checks.env_instruction(arguments))
            elif keyword == "COPY":
                *sources, destination = shlex.split(arguments)
                assert not any(s.startswith("--") for s in sources), (
                    f"cannot replay COPY {arguments}"
                )
                for source in sources:
                    copy_from_context(ROOT / source, fs.host(destination), len(sources) > 1)
            elif keyword == "RUN":
                replay_run(arguments, fs, built)
            elif keyword in ("ADD", "ONBUILD", "SHELL", "VOLUME"):
                pytest.fail(f"cannot replay {keyword} {arguments}", pytrace=False)
            # USER, EXPOSE, LABEL, HEALTHCHECK, STOPSIGNAL, ENTRYPOINT, CMD, ARG: read later.
        built[stage.name or str(index)] = fs
    assert fs is not None, "the Dockerfile has no stage"
    return fs, stages[-1]


def copy_from_context(source: Path, destination: Path, into_directory: bool) -> None:
    """COPY one source of the build context: a directory's contents, or a file."""
    assert source.exists(), f"COPY {source.relative_to(ROOT)}: not in the build context"
    if source.is_dir():
        shutil.copytree(
            source, destination, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__")
        )
    elif into_directory or str(destination).endswith("/") or destination.is_dir():
        destination.mkdir(parents=True, exist_ok=True)
        shutil.copy(source, destination / source.name)
    else:
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(source, destination)


@dataclass(frozen=True)
class Image:
    """The replayed runtime stage: its Python, environment and start command."""

    fs: StageFilesystem
    stage: Stage

    @property
    def bin(self) -> Path:
        return self.fs.python.parent

    def command(self, extra_args: list[str], port: int) -> list[str]:
        """ENTRYPOINT + CMD + extra arguments, on 127.0.0.1:port instead of 0.0.0.0:8000."""
        entrypoint = deploy_checks.exec_form(self.stage.all("ENTRYPOINT")[-1])
        cmd = deploy_checks.exec_form(self.stage.all("CMD")[-1])
        argv = [*entrypoint, *(extra_args or cmd)]
        executable = self.bin / argv[0]
        assert executable.exists(), f"the image has no {argv[0]} command"
        argv[0] = str(executable)
        argv[argv.index("--host") + 1] = "127.0.0.1"
        argv[argv.index("--port") + 1] = str(port)
        return argv

    def environment(self, extra: Mapping[str, str], home: Path) -> dict[str, str]:
        """The image's ENV plus what the orchestrator adds, and nothing from this machine."""
        env = {"PATH": f"{self.bin}:/usr/bin:/bin", "HOME": str(home), **self.fs.env, **extra}
        if "GATEWAY_STATE_DIR" in self.fs.env and "GATEWAY_STATE_DIR" not in extra:
            # The image's state directory (made for its user by `install -d`), here in
            # the test's home rather than on this machine's /var/lib.
            assert self.fs.env["GATEWAY_STATE_DIR"] == "/var/lib/nano-banana-gateway"
            env["GATEWAY_STATE_DIR"] = str(home / "var-lib-nano-banana-gateway")
        return env


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Image:
    """The Dockerfile's image, replayed once for this module."""
    fs, stage = replay(DOCKERFILE, tmp_path_factory.mktemp("image"))
    return Image(fs, stage)


# --- servers the orchestrators start beside the gateway --------------------------


def deployment_redis(args: list[str], workdir: Path) -> RedisServer:
    """A real redis-server on 127.0.0.1, started with a deployment file's arguments."""
    assert args[0] == "redis-server", args
    return RedisServer(workdir, extra_args=args[1:]).start()


@pytest.fixture
def started(tmp_path: Path) -> Iterator[list[Any]]:
    """Processes a test starts; all are stopped at its end."""
    processes: list[Any] = []
    yield processes
    for process in reversed(processes):
        process.stop()


def service_host(url: str, services: Mapping[str, str]) -> str:
    """A URL with an orchestrator's host:port (a compose service, a Kubernetes Service)
    replaced by where the test runs that server."""
    for name, address in services.items():
        url = re.sub(rf"(?<=[/@]){re.escape(name)}(?=[:/])(:\d+)?", address, url)
    return url


# --- the tests -------------------------------------------------------------------


def test_image_installs_the_package_not_the_source_tree(image: Image, tmp_path: Path) -> None:
    """The runtime stage holds the built package and consistent dependencies, no source."""
    python = str(image.fs.python)
    where = subprocess.run(
        [python, "-c", "import gateway; print(gateway.__file__)"],
        cwd=tmp_path,
        env=image.environment({}, tmp_path),
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert Path(where).is_relative_to(image.bin.parent), where
    check = subprocess.run(
        [python, "-m", "pip", "check"], capture_output=True, text=True, check=False
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert not list(image.fs.root.rglob("*.py")), "source files were copied into the image"


def test_compose_gateway_is_ready(image: Image, tmp_path: Path, started: list[Any]) -> None:
    """Started with docker-compose.yml's environment (and its Redis), the image's gateway
    answers /readyz, passes the image's HEALTHCHECK, and serves the OpenAI SDK."""
    services = deploy_checks.compose_services(COMPOSE)
    gateway_service = services["gateway"]
    redis = deployment_redis(services["redis"]["command"], tmp_path)
    started.append(redis)

    # Interpolated against an empty host environment: what `up` gives a fresh shell.
    environment = deploy_checks.compose_environment(gateway_service, {})
    assert "GATEWAY_REDIS_URL" in environment
    environment = {
        key: service_host(value, {"redis": f"127.0.0.1:{redis.port}"})
        for key, value in environment.items()
    }
    port = free_port()
    extra_args = [str(arg) for arg in gateway_service.get("command", [])]
    gateway = ChildGateway(
        image.command(extra_args, port),
        image.environment(environment, tmp_path),
        tmp_path,
        port,
        cwd=tmp_path,
    )
    started.append(gateway)

    ready = httpx.get(f"{gateway.url}/readyz", timeout=10)
    assert ready.status_code == 200, ready.text
    # No tokens in a fresh shell: the offline mock, announced as such.
    assert ready.json() == {"status": "ready", "mock": True}

    healthcheck = image.stage.all("HEALTHCHECK")[-1]
    probe = deploy_checks.exec_form(healthcheck[healthcheck.index("CMD") + 3 :].strip())
    probe[-1] = probe[-1].replace(":8000/", f":{port}/")
    probe[0] = str(image.bin / probe[0])
    result = subprocess.run(probe, capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 0, result.stderr

    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="any", max_retries=0)
    answer = client.images.generate(prompt="a lighthouse", response_format="b64_json")
    assert answer.data and answer.data[0].b64_json


@dataclass
class KubernetesPod:
    """What the Deployment gives the gateway container: args, mounted config, env."""

    args: list[str]
    environment: dict[str, str]
    config_text: str


def kubernetes_pod(tmp_path: Path, fakes: Mapping[str, Any], redis_address: str) -> KubernetesPod:
    """The gateway container of the Deployment, its ConfigMap mounted under tmp_path, the
    Secret example as its environment, upstreams and Redis replaced by local servers."""
    documents = [
        doc
        for path in KUBERNETES.glob("*.yaml")
        if path.name != "kustomization.yaml"
        for doc in deploy_checks.load_yaml_documents(path)
    ]
    by_kind = {(doc["kind"], doc["metadata"]["name"]): doc for doc in documents}
    deployment = by_kind[("Deployment", "nano-banana-gateway")]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    configmap = by_kind[("ConfigMap", "nano-banana-gateway")]
    secret = by_kind[("Secret", "nano-banana-gateway")]

    config_text = configmap["data"]["config.toml"]
    for upstream in tomllib.loads(config_text)["upstreams"]:
        config_text = config_text.replace(
            f'"{upstream["base_url"]}"', f'"{fakes[upstream["type"]].base_url}"'
        )
    config_text = service_host(config_text, {"nano-banana-gateway-redis": redis_address})

    # The ConfigMap volume, at a tmp_path stand-in of its mount path.
    args = list(container["args"])
    mounted = PurePosixPath(args[args.index("--config") + 1])
    local = tmp_path / "mounted" / mounted.relative_to("/")
    local.parent.mkdir(parents=True)
    local.write_text(config_text)
    args[args.index("--config") + 1] = str(local)
    return KubernetesPod(args, dict(secret["stringData"]), config_text)


def start_kubernetes_gateway(
    image: Image, tmp_path: Path, started: list[Any], fake_factory: Any, *, latency: float = 0
) -> tuple[ChildGateway, KubernetesPod, dict[str, Any]]:
    """The image started as the Deployment starts it, beside a Redis as redis.yaml runs it."""
    secret_env = next(
        doc["stringData"]
        for doc in deploy_checks.load_yaml_documents(KUBERNETES / "secret.example.yaml")
    )
    redis_doc = next(
        doc
        for doc in deploy_checks.load_yaml_documents(KUBERNETES / "redis.yaml")
        if doc["kind"] == "Deployment"
    )
    (redis_container,) = redis_doc["spec"]["template"]["spec"]["containers"]
    # The kubelet expands $(VAR) in args from the container's environment.
    redis_args = [
        re.sub(r"\$\((\w+)\)", lambda m: secret_env[m.group(1)], arg)
        for arg in redis_container["args"]
    ]
    redis = deployment_redis(redis_args, tmp_path)
    started.append(redis)

    fakes = {kind: fake_factory(kind, latency=latency) for kind in ("acedata", "xhuoapi", "defapi")}
    pod = kubernetes_pod(tmp_path, fakes, f"127.0.0.1:{redis.port}")
    port = free_port()
    gateway = ChildGateway(
        image.command(pod.args, port),
        image.environment(pod.environment, tmp_path),
        tmp_path,
        port,
        cwd=tmp_path,
    )
    started.append(gateway)
    return gateway, pod, fakes


def test_kubernetes_gateway_is_ready(
    image: Image, tmp_path: Path, started: list[Any], fake_factory: Any
) -> None:
    """Started with the Deployment's args, the ConfigMap's file and the Secret's variables,
    the image's gateway answers /readyz on real upstreams and serves the SDK's client key."""
    gateway, pod, fakes = start_kubernetes_gateway(image, tmp_path, started, fake_factory)
    ready = httpx.get(f"{gateway.url}/readyz", timeout=10)
    assert ready.status_code == 200, ready.text
    assert ready.json() == {"status": "ready", "mock": False}

    key = pod.environment["GATEWAY_CLIENT_KEY"]
    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=key, max_retries=0)
    answer = client.images.generate(prompt="a lighthouse", response_format="url")
    assert answer.data and answer.data[0].url
    # The call went to a fake upstream with a token from the Secret.
    tokens = {call.token for fake in fakes.values() for call in fake.generation_calls()}
    assert tokens and tokens <= set(pod.environment.values())
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(
            base_url=f"{gateway.url}/v1", api_key="sk-wrong-key", max_retries=0
        ).models.list()
    # The Secret's values stay out of the log.
    log = gateway.log()
    for secret in pod.environment.values():
        assert secret not in log


def test_sigterm_lets_the_in_flight_request_finish(
    image: Image, tmp_path: Path, started: list[Any], fake_factory: Any
) -> None:
    """SIGTERM, as Docker and the kubelet send it to the image's PID 1, stops new work but
    lets an image request already in flight finish."""
    gateway, pod, fakes = start_kubernetes_gateway(
        image, tmp_path, started, fake_factory, latency=1.5
    )
    client = openai.OpenAI(
        base_url=f"{gateway.url}/v1", api_key=pod.environment["GATEWAY_CLIENT_KEY"], max_retries=0
    )
    outcome: dict[str, Any] = {}

    def call() -> None:
        try:
            outcome["answer"] = client.images.generate(prompt="slow", response_format="url")
        except Exception as error:  # asserted on below
            outcome["error"] = error

    worker = threading.Thread(target=call)
    worker.start()
    deadline = time.monotonic() + 20
    while not any(fake.in_flight for fake in fakes.values()):
        assert time.monotonic() < deadline, "the request never reached an upstream"
        time.sleep(0.02)
    gateway.proc.send_signal(signal.SIGTERM)
    worker.join(timeout=60)
    assert "error" not in outcome, outcome.get("error")
    assert outcome["answer"].data[0].url
    # uvicorn re-raises SIGTERM once drained, so the status is the signal's (or 0).
    assert gateway.proc.wait(timeout=30) in (0, -signal.SIGTERM)
    assert "Traceback" not in gateway.log()


def test_compose_and_dockerfile_agree_on_the_port() -> None:
    """Compose publishes, and the Service targets, the port the image listens on."""
    stage = deploy_checks.dockerfile_stages(DOCKERFILE)[-1]
    entrypoint = deploy_checks.exec_form(stage.all("ENTRYPOINT")[-1])
    port = entrypoint[entrypoint.index("--port") + 1]
    assert stage.all("EXPOSE") == [port]
    ports = deploy_checks.compose_services(COMPOSE)["gateway"]["ports"]
    assert any(str(p).endswith(f":{port}") for p in ports)
    deployment = yaml.safe_load((KUBERNETES / "deployment.yaml").read_text())
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert [p["containerPort"] for p in container["ports"]] == [int(port)]
