"""Graceful shutdown: on SIGTERM the gateway stops taking work, lets in-flight image
requests run for [server] shutdown_grace_seconds, then answers the ones still running with
an OpenAI-shaped 503 (or an SSE error event once a stream has begun), and exits.

Finishing within the grace period is covered in test_operations.py; these are the
requests the deadline cuts off.
"""

from __future__ import annotations

import signal
import threading

import httpx
import openai

from tests.support.gateway import CLIENT_KEY, CLIENTS_TOML, upstream_toml


def _in_background(fn) -> tuple[threading.Thread, dict[str, object]]:
    outcome: dict[str, object] = {}

    def run() -> None:
        try:
            outcome["result"] = fn()
        except Exception as exc:  # recorded and asserted on by the test
            outcome["error"] = exc

    worker = threading.Thread(target=run)
    worker.start()
    return worker, outcome


def test_sigterm_answers_a_request_still_running_at_the_deadline_with_503(spawn, fake_factory):
    fake = fake_factory("acedata")
    fake.behave("t1", "timeout", sleep=120)  # an upstream that will not answer in time
    gw = spawn(
        upstream_toml("ace", fake, ["t1"]) + CLIENTS_TOML + "[server]\nshutdown_grace_seconds = 1\n"
    )
    client = openai.OpenAI(base_url=f"{gw.url}/v1", api_key=CLIENT_KEY, max_retries=0)
    worker, outcome = _in_background(
        lambda: client.images.generate(prompt="stuck", response_format="url")
    )
    fake.wait_for_requests(1, path="/nano-banana/images", timeout=10)
    gw.proc.send_signal(signal.SIGTERM)
    worker.join(timeout=30)
    assert not worker.is_alive()
    error = outcome.get("error")
    assert isinstance(error, openai.InternalServerError), outcome
    assert error.status_code == 503
    assert error.body["code"] == "server_shutting_down"
    assert set(error.body) == {"message", "type", "param", "code"}
    assert error.response.headers["retry-after"] == "1"
    assert error.request_id and error.request_id.startswith("req_")
    assert gw.proc.wait(timeout=30) in (0, -signal.SIGTERM)
    log = gw.log()
    assert "shutting down" in log
    assert "Traceback" not in log


def test_sigterm_ends_a_running_stream_with_an_error_event(spawn, fake_factory):
    fake = fake_factory("acedata")
    fake.behave("t1", "timeout", sleep=120)
    gw = spawn(
        upstream_toml("ace", fake, ["t1"])
        + CLIENTS_TOML
        + "[server]\nshutdown_grace_seconds = 1\n[images]\nstream_keepalive_seconds = 0.2\n"
    )
    client = openai.OpenAI(base_url=f"{gw.url}/v1", api_key=CLIENT_KEY, max_retries=0)
    started = threading.Event()

    def consume() -> list[object]:
        events = []
        stream = client.images.generate(prompt="stuck", stream=True)
        started.set()  # the 200 and its headers are in: the stream has begun
        for event in stream:
            events.append(event)
        return events

    worker, outcome = _in_background(consume)
    assert started.wait(timeout=20)
    gw.proc.send_signal(signal.SIGTERM)
    worker.join(timeout=30)
    assert not worker.is_alive()
    error = outcome.get("error")
    assert isinstance(error, openai.APIError), outcome
    assert "shutting down" in str(error)
    assert gw.proc.wait(timeout=30) in (0, -signal.SIGTERM)


def test_after_shutdown_begins_new_image_requests_get_503_and_running_ones_are_cut_off(
    fake_factory, gateway_factory
):
    """The app's side of the same clock, started the way the command line starts it."""
    fake = fake_factory("acedata")
    fake.behave("t1", "timeout", sleep=120)
    gw = gateway_factory(
        upstream_toml("ace", fake, ["t1"]) + CLIENTS_TOML + "[server]\nshutdown_grace_seconds = 1\n"
    )
    worker, outcome = _in_background(
        lambda: gw.client().images.generate(prompt="stuck", response_format="url")
    )
    fake.wait_for_requests(1, path="/nano-banana/images", timeout=10)
    gw.app.state.shutdown.begin()
    with gw.http() as http:
        # A request arriving now is refused at once, before it reaches an upstream.
        r = http.post(
            "/v1/images/generations",
            json={"prompt": "late"},
            headers={"authorization": f"Bearer {CLIENT_KEY}"},
        )
        assert r.status_code == 503
        assert r.json()["error"]["code"] == "server_shutting_down"
        assert r.headers["connection"] == "close"
        assert http.get("/healthz").status_code == 200  # only image work is refused
    worker.join(timeout=30)
    error = outcome.get("error")
    assert isinstance(error, openai.InternalServerError), outcome
    assert error.body["code"] == "server_shutting_down"
    assert len(fake.generation_calls()) == 1


def test_requests_are_untouched_when_no_shutdown_is_under_way(fake_factory, gateway_factory):
    fake = fake_factory("acedata", latency=0.3)
    gw = gateway_factory(
        upstream_toml("ace", fake, ["t1"]) + CLIENTS_TOML + "[server]\nshutdown_grace_seconds = 0\n"
    )
    assert gw.client().images.generate(prompt="x", response_format="url").data[0].url
    with httpx.Client(base_url=gw.url) as http:
        assert http.get("/healthz").status_code == 200


def test_image_requests_work_when_the_app_runs_without_its_lifespan():
    """Some ASGI drivers skip startup (Starlette's TestClient outside a `with`, each
    request on a loop of its own): the shutdown clock binds to whichever loop serves."""
    from starlette.testclient import TestClient

    from gateway.app import create_app
    from tests.support.gateway import make_config

    client = TestClient(create_app(make_config("")))
    for prompt in ("one", "two"):
        r = client.post("/v1/images/generations", json={"prompt": prompt, "response_format": "url"})
        assert r.status_code == 200, r.text
