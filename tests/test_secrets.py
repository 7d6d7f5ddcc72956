"""No secret leaves the gateway: upstream tokens, client keys, the admin and metrics keys,
and the wrong keys callers try, appear in none of the log (at debug level), answer bodies,
answer headers, streams, /metrics, /admin or /openapi.json.

One gateway process is driven through every path that touches a secret: success in every
answer form, upstreams that echo the token they were sent back in 400, 401 and 500
answers, token benching, authentication failures, the admin and metrics endpoints. Then
everything it emitted is searched for every secret. (test_operations.py checks the log
alone on a smaller run.)
"""

from __future__ import annotations

import base64
import io
import json
import logging
import signal
import threading

import httpx
import openai

from gateway import logscrub
from tests.support.fakes import png_bytes
from tests.support.gateway import ADMIN_KEY, CLIENT_KEY, CLIENTS_TOML, upstream_toml
from tests.support.hostile import Handler, HostileServer, send

ACE_TOKENS = ["ace-SECRET-one-7f3a", "ace-SECRET-two-9c1d"]
DEF_TOKEN = "def-SECRET-three-4e8b"
ECHO_TOKEN = "echo-SECRET-four-2a6c"
TEAM_B_KEY = "sk-team-b-0123456789"
METRICS_KEY = "metrics-SECRET-key-5d0e"
WRONG_KEYS = ["sk-caller-typo-SECRET-1", f"{CLIENT_KEY}x", "admin-guess-SECRET-2"]
SECRETS = [
    *ACE_TOKENS,
    DEF_TOKEN,
    ECHO_TOKEN,
    CLIENT_KEY,
    TEAM_B_KEY,
    ADMIN_KEY,
    METRICS_KEY,
    *WRONG_KEYS,
]


class Echoer:
    """An upstream that repeats the credential it was sent in every kind of error: first a
    400 (returned to the caller), then a 500 (retried), then 401s (the token is benched)."""

    def __init__(self) -> None:
        self.calls = 0
        self.lock = threading.Lock()

    def __call__(self, h: Handler) -> None:
        with self.lock:
            self.calls += 1
            n = self.calls
        auth = h.headers.get("authorization", "")
        status, code = (
            [(400, "bad_request"), (500, "api_error")][n - 1] if n <= 2 else (401, "invalid_token")
        )
        body = {
            "success": False,
            # The 400 is about the caller's prompt (so it goes back to the caller), and quotes
            # the credential anyway.
            "error": {
                "code": code,
                "message": f"prompt rejected for credentials '{auth}' (raw: {auth[7:]})",
            },
            "trace_id": f"trace {auth}",
        }
        send(h, status, json.dumps(body).encode(), headers={"x-debug-auth": auth})


def _record(seen: list[str], r: httpx.Response) -> httpx.Response:
    seen.append(f"{r.status_code} {dict(r.headers)}\n{r.text}")
    return r


def test_no_secret_in_anything_the_gateway_emits(spawn, fake_factory):
    echo_server = HostileServer().start()
    echoer = Echoer()
    echo_server.route("/nano-banana/images", echoer)
    ace = fake_factory("acedata")
    ace.behave(ACE_TOKENS[0], "invalid_token", message=f"token {ACE_TOKENS[0]} is not valid")
    ace.behave(ACE_TOKENS[1], ["server_error", "ok"], message=f"boom for {ACE_TOKENS[1]}")
    defapi = fake_factory("defapi")
    defapi.behave(DEF_TOKEN, "bad_request", detail=f"key {DEF_TOKEN} may not do this")
    toml = (
        f'[[upstreams]]\nname = "echo"\ntype = "acedata"\nbase_url = "{echo_server.origin}"\n'
        f'tokens = ["{ECHO_TOKEN}"]\npriority = 0\n\n'
        + upstream_toml("ace", ace, ACE_TOKENS, extra="priority = 1")
        + upstream_toml("def", defapi, [DEF_TOKEN], extra="priority = 2")
        + CLIENTS_TOML.replace("[admin]\n", f'[admin]\nmetrics_key = "{METRICS_KEY}"\n')
        + '[server]\nlog_level = "debug"\n[pool]\nretry_backoff_seconds = 0\n'
        + "[images]\nstream_keepalive_seconds = 0.1\n"
    )
    gw = spawn(toml)
    seen: list[str] = []
    client = openai.OpenAI(base_url=f"{gw.url}/v1", api_key=CLIENT_KEY, max_retries=0)

    def sdk(call) -> None:
        try:
            raw = call()
            seen.append(f"{raw.http_response.status_code} {dict(raw.headers)}\n{raw.text}")
        except openai.APIStatusError as exc:
            _record(seen, exc.response)

    # The echoing upstream, three times: 400 to the caller, 500 retried, 401 benched.
    for _ in range(3):
        sdk(lambda: client.images.with_raw_response.generate(prompt="echo", response_format="url"))
    assert echoer.calls >= 3
    # Success in every answer form, then the defapi 400 that quotes its key.
    sdk(lambda: client.images.with_raw_response.generate(prompt="url", response_format="url"))
    sdk(lambda: client.images.with_raw_response.generate(prompt="b64", model="gpt-image-1", n=2))
    sdk(lambda: client.images.with_raw_response.edit(image=png_bytes(64, 64), prompt="edit"))
    with httpx.Client(base_url=gw.url, timeout=60) as http:
        auth = {"authorization": f"Bearer {CLIENT_KEY}"}
        uri = "data:image/png;base64," + base64.b64encode(png_bytes(32, 32)).decode()
        _record(
            seen,
            http.post(
                "/v1/images/edits",
                headers=auth,
                json={"prompt": "json edit", "images": [{"image_url": uri}]},
            ),
        )
        with http.stream(
            "POST",
            "/v1/images/generations",
            headers=auth,
            json={"prompt": "stream", "stream": True},
        ) as r:
            seen.append(f"{r.status_code} {dict(r.headers)}\n{r.read().decode()}")
        ace.behave(ACE_TOKENS[1], "invalid_token", message=f"now {ACE_TOKENS[1]} is bad too")
        for _ in range(2):  # every ace token benched: defapi's echoing 400 reaches the caller
            sdk(lambda: client.images.with_raw_response.generate(prompt="d", response_format="url"))
        # Authentication failures, with keys close to the real ones.
        bad_client = {"authorization": f"Bearer {WRONG_KEYS[0]}"}
        _record(seen, http.get("/v1/models", headers=bad_client))
        _record(seen, http.get("/v1/models", headers={"api-key": WRONG_KEYS[1]}))
        _record(seen, http.post("/v1/images/generations", headers=bad_client, json={"prompt": "x"}))
        _record(seen, http.get("/v1/models"))
        _record(
            seen,
            http.get("/v1/models", headers={"authorization": f"Bearer {TEAM_B_KEY}"}),
        )
        # Admin and metrics, right and wrong.
        _record(seen, http.get("/admin/upstreams", headers={"x-admin-key": WRONG_KEYS[2]}))
        admin = _record(seen, http.get("/admin/upstreams", headers={"x-admin-key": ADMIN_KEY}))
        _record(seen, http.get("/metrics", headers={"authorization": f"Bearer {WRONG_KEYS[2]}"}))
        metrics = _record(
            seen, http.get("/metrics", headers={"authorization": f"Bearer {METRICS_KEY}"})
        )
        # A client that puts its key in the query string: the access log writes the path.
        _record(seen, http.get(f"/v1/models?api_key={CLIENT_KEY}", headers=auth))
        for path in ("/openapi.json", "/readyz", "/healthz", "/nowhere", "/v1/models/x"):
            _record(seen, http.get(path, headers=auth))
        _record(seen, http.delete("/v1/images/generations", headers=auth))

    # The paths were really taken: these answers exist to be searched.
    assert admin.status_code == 200 and metrics.status_code == 200
    pool = {u["name"]: u for u in admin.json()["upstreams"]}
    assert [t["state"] for t in pool["echo"]["tokens"]] == ["benched"]
    assert "prompt rejected for credentials" in pool["echo"]["tokens"][0]["last_error"]
    assert 'nano_banana_token_state{state="benched",token="t-' in metrics.text
    assert any(s.startswith("400 ") and "prompt rejected for credentials" in s for s in seen)
    assert any(s.startswith("400 ") and "may not do this" in s for s in seen)
    assert any("image_generation.completed" in s for s in seen)
    assert sum(s.startswith("401 ") for s in seen) >= 6

    assert gw.stop() in (0, -signal.SIGTERM)
    echo_server.stop()
    log = gw.log()
    assert "DEBUG" in log and "token benched" in log  # the log did talk, at length
    emitted = {"log": log, **{f"answer {i}": text for i, text in enumerate(seen)}}
    for where, text in emitted.items():
        for secret in SECRETS:
            assert secret not in text, f"{secret} leaked into {where}:\n{text[:2000]}"


def test_log_scrubber_cleans_messages_arguments_and_tracebacks():
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    logger = logging.getLogger("tests.scrubbed")
    logger.addHandler(handler)
    logger.propagate = False
    logger.setLevel(logging.INFO)
    try:
        scrubber = logscrub.install([ECHO_TOKEN, CLIENT_KEY])
        assert scrubber in handler.filters
        logger.warning("upstream said %s", f"bad token {ECHO_TOKEN}")
        try:
            raise RuntimeError(f"header was Bearer {CLIENT_KEY}")
        except RuntimeError:
            logger.exception("request failed for %s", CLIENT_KEY)
        logger.info("nothing secret here")
    finally:
        logger.removeHandler(handler)
    text = out.getvalue()
    assert "bad token [redacted]" in text
    assert "RuntimeError: header was Bearer [redacted]" in text  # the traceback is kept
    assert "nothing secret here" in text
    assert ECHO_TOKEN not in text and CLIENT_KEY not in text
