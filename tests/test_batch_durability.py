"""The Batch API's promise, end to end: nothing lost, nothing paid twice.

Gateway processes started as operators start them (`python -m gateway`), the official
OpenAI SDK as the client, fake providers that are real HTTP servers on 127.0.0.1 and
record every call they get. A batch survives a graceful restart, a kill, the death of the
replica running it (PostgreSQL shared by two replicas) and a cancel followed by a restart;
hostile input files fail the batch, naming the line, without one upstream call.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.support.fakes import FakeUpstream
from tests.support.gateway import ADMIN_KEY, upstream_toml
from tests.support.processes import GatewayProcess

KEY = "sk-batch-durable-0001"
GENERATIONS = "/v1/images/generations"
CONCURRENCY = 2
LATENCY = 0.4  # seconds per upstream call: 20 lines at 2 in flight take about 4 s
CLAIM_SECONDS = 2
# uvicorn re-raises SIGTERM once its graceful shutdown is done.
CLEAN_EXIT = (0, -signal.SIGTERM)


# ---------------------------------------------------------------- configs and calls


def gateway_toml(
    fake: FakeUpstream,
    state_dir: Path,
    *,
    token: str = "tok-batch-0001",
    database_url: str | None = None,
    batch: str = "",
) -> str:
    """One upstream, one client, no cache (a line sent twice must reach the fake twice),
    batch lines two at a time with no headroom kept back and a short claim."""
    text = upstream_toml("ace", fake, [token])
    text += f'\n[[clients]]\nname = "team-batch"\nkey = "{KEY}"\n'
    text += f'\n[admin]\nkey = "{ADMIN_KEY}"\n'
    text += "\n[cache]\nenabled = false\n"
    text += f'\n[state]\ndir = "{state_dir}"\n'
    if database_url is not None:
        text += f'database_url = "{database_url}"\n'
    text += (
        f"\n[batch]\nconcurrency = {CONCURRENCY}\ninteractive_headroom = 0\n"
        f"claim_seconds = {CLAIM_SECONDS}\n{batch}\n"
    )
    return text


def sdk(proc: GatewayProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{proc.url}/v1", api_key=KEY, max_retries=0, timeout=60)


def request_line(custom_id: str, prompt: str, url: str = GENERATIONS, method: str = "POST") -> str:
    body = {"model": "nano-banana", "prompt": prompt, "n": 1, "response_format": "url"}
    line = {"custom_id": custom_id, "method": method, "url": url, "body": body}
    return json.dumps(line) + "\n"


def batch_input(tag: str, count: int) -> tuple[bytes, dict[str, str]]:
    """`count` generation lines; their custom_ids mapped to their (unique) prompts."""
    prompts = {f"{tag}-{i:02d}": f"durability {tag} line {i:02d}" for i in range(count)}
    text = "".join(request_line(cid, prompt) for cid, prompt in prompts.items())
    return text.encode(), prompts


def submit(proc: GatewayProcess, data: bytes, name: str = "batch.jsonl") -> Any:
    """Upload `data` and create a generations batch of it: the Batch object."""
    client = sdk(proc)
    uploaded = client.files.create(file=(name, data, "application/jsonl"), purpose="batch")
    assert uploaded.purpose == "batch"
    assert uploaded.bytes == len(data)
    return client.batches.create(
        input_file_id=uploaded.id, endpoint=GENERATIONS, completion_window="24h"
    )


def wait_batch(
    proc: GatewayProcess,
    batch_id: str,
    done: Callable[[Any], bool],
    what: str,
    timeout: float = 60,
) -> Any:
    """Poll the batch (every 50 ms) until done(batch); fail naming what was last seen."""
    client = sdk(proc)
    deadline = time.monotonic() + timeout
    while True:
        batch = client.batches.retrieve(batch_id)
        if done(batch):
            return batch
        if time.monotonic() > deadline:
            counts = batch.request_counts
            raise AssertionError(
                f"{what}: after {timeout} s the batch is {batch.status!r}, counts {counts}, "
                f"errors {batch.errors}\n--- gateway log ---\n{proc.log()[-4000:]}"
            )
        time.sleep(0.05)


def finished(batch: Any) -> bool:
    return batch.status in ("completed", "failed", "cancelled", "expired")


def completed_at_least(n: int) -> Callable[[Any], bool]:
    return lambda b: b.request_counts is not None and b.request_counts.completed >= n


def output_ids(proc: GatewayProcess, batch: Any) -> list[str]:
    """The custom_ids of the batch's output file, one per line, each a success."""
    assert batch.output_file_id, f"no output file: {batch}"
    text = sdk(proc).files.content(batch.output_file_id).text
    ids = []
    for raw in text.splitlines():
        record = json.loads(raw)
        assert record["error"] is None, record
        assert record["response"]["status_code"] == 200, record
        assert record["response"]["body"]["data"], record
        ids.append(record["custom_id"])
    return ids


def sent(fake: FakeUpstream, token: str | None = None) -> Counter[str]:
    """How many times the fake received each prompt."""
    return Counter(
        str(call.json.get("prompt"))
        for call in fake.generation_calls(token)
        if isinstance(call.json, dict)
    )


def of_batch(counts: Counter[str], prompts: dict[str, str]) -> Counter[str]:
    """The counts of one batch's prompts only, keyed by custom_id."""
    return Counter({cid: counts[p] for cid, p in prompts.items() if counts[p]})


def sigterm(proc: GatewayProcess) -> int:
    proc.proc.send_signal(signal.SIGTERM)
    code = proc.proc.wait(timeout=30)
    proc.stop()
    return code


def sigkill(proc: GatewayProcess) -> None:
    proc.proc.kill()
    proc.proc.wait(timeout=10)
    proc.stop()


def finished_before(store_kind: str, where: str, batch_id: str) -> set[str]:
    """The custom_ids whose outcome the store holds, read through the project's own store
    (the processes that wrote it are dead: nothing else has it open)."""

    async def read() -> set[str]:
        if store_kind == "sqlite":
            from gateway.batch.sqlite import SQLiteBatchStore

            store: Any = SQLiteBatchStore(Path(where))
        else:
            from gateway.batch.postgres import PostgresBatchStore

            store = PostgresBatchStore(where)
        await store.start()
        try:
            ids: set[str] = set()
            for ok in (True, False):
                async for record in store.outcomes(batch_id, ok=ok):
                    ids.add(json.loads(record)["custom_id"])
            return ids
        finally:
            await store.aclose()

    return asyncio.run(read())


def launcher(
    spawn: Callable[..., GatewayProcess], fake: FakeUpstream, state: Path, **config: Any
) -> Callable[[], GatewayProcess]:
    """Starts a gateway on `state` each time it is called: the same config (gateway_toml's
    with `config`) and state directory, as a restart would."""
    toml = gateway_toml(fake, state, **config)
    return lambda: spawn(toml, {"GATEWAY_STATE_DIR": str(state)})


# ---------------------------------------------------------------- restarts, one process


def test_a_sigterm_mid_batch_loses_nothing_and_sends_nothing_twice(spawn, fake_factory, tmp_path):
    fake = fake_factory("acedata", latency=LATENCY)
    start = launcher(spawn, fake, tmp_path / "state")
    first = start()
    data, prompts = batch_input("term", 20)
    batch = submit(first, data)
    assert batch.status in ("validating", "in_progress")
    wait_batch(first, batch.id, completed_at_least(4), "4 lines done before the restart")

    # SIGTERM: the lines in flight finish, no new one starts, the process ends.
    assert sigterm(first) in CLEAN_EXIT
    made_by_first = sum(of_batch(sent(fake), prompts).values())
    assert made_by_first < 20, "the first process ran the whole batch before it stopped"

    second = start()
    done = wait_batch(second, batch.id, finished, "the batch after the restart")
    assert done.status == "completed", done
    assert (done.request_counts.total, done.request_counts.completed) == (20, 20)
    assert done.request_counts.failed == 0
    ids = output_ids(second, done)
    assert len(ids) == 20
    assert sorted(ids) == sorted(prompts)
    # Every line's prompt reached the provider exactly once, across both processes.
    assert of_batch(sent(fake), prompts) == Counter(dict.fromkeys(prompts, 1))
    assert "Traceback" not in second.log()


def test_a_sigkill_mid_batch_resends_at_most_the_lines_in_flight(spawn, fake_factory, tmp_path):
    fake = fake_factory("acedata", latency=LATENCY)
    state = tmp_path / "state"
    start = launcher(spawn, fake, state)
    first = start()
    data, prompts = batch_input("kill", 20)
    batch = submit(first, data)
    seen = wait_batch(first, batch.id, completed_at_least(5), "5 lines done before the kill")
    sigkill(first)
    # What the store held when the process died: read with nobody else running.
    done_before = finished_before("sqlite", str(state), batch.id)
    assert len(done_before) >= seen.request_counts.completed
    sent_before = of_batch(sent(fake), prompts)

    second = start()
    done = wait_batch(second, batch.id, finished, "the batch after the kill")
    assert done.status == "completed", done
    assert (done.request_counts.total, done.request_counts.completed) == (20, 20)
    ids = output_ids(second, done)
    assert len(ids) == 20
    assert sorted(ids) == sorted(prompts)

    counts = of_batch(sent(fake), prompts)
    assert set(counts) == set(prompts), "a line never reached the provider"
    # A line finished (its outcome stored) before the kill is never sent again.
    assert {cid: counts[cid] for cid in done_before} == dict.fromkeys(done_before, 1)
    # A call in flight when the process died dies with it: its answer (if any) reached
    # nobody, so no outcome was stored and the next process sends the line again. At most
    # `concurrency` lines were in flight, so at most that many are sent twice, and only
    # lines that had been sent without an outcome.
    twice = {cid for cid, n in counts.items() if n > 1}
    assert len(twice) <= CONCURRENCY, counts
    assert max(counts.values()) <= 2, counts
    assert twice <= {cid for cid in sent_before if cid not in done_before}, (twice, done_before)


# ---------------------------------------------------------------- PostgreSQL, two replicas


@pytest.fixture
def postgres() -> Iterator[str]:
    """A throwaway PostgreSQL server: its postgresql:// URL. (In a temporary directory of
    its own: the server's user cannot enter pytest's, which only root may.)"""
    from tests.support import postgres as pg

    with pg.postgres_server() as url:
        yield url


def test_two_replicas_share_batches_and_take_over_a_dead_ones(
    spawn, fake_factory, tmp_path, postgres
):
    fake = fake_factory("acedata", latency=LATENCY)
    # Each replica its own upstream token: the fake tells which replica made a call.
    tokens = {"a": "tok-replica-a-0001", "b": "tok-replica-b-0002"}
    procs = {
        name: launcher(spawn, fake, tmp_path / f"state-{name}", token=tok, database_url=postgres)()
        for name, tok in tokens.items()
    }
    a, b = procs["a"], procs["b"]

    # Created on A, polled and downloaded on B.
    data, prompts = batch_input("shared", 6)
    first = submit(a, data)
    done = wait_batch(b, first.id, finished, "the first batch, seen from B")
    assert done.status == "completed", done
    assert sorted(output_ids(b, done)) == sorted(prompts)
    assert of_batch(sent(fake), prompts) == Counter(dict.fromkeys(prompts, 1))
    assert sdk(b).batches.retrieve(first.id).status == "completed"

    # The second batch: whichever replica runs it is killed mid-way; the other goes on.
    data, prompts = batch_input("takeover", 20)
    second = submit(a, data)
    wait_batch(a, second.id, completed_at_least(4), "4 lines of the second batch done")
    runners = {
        name
        for name, tok in tokens.items()
        if of_batch(sent(fake, tok), prompts)  # this replica's calls for the batch
    }
    assert len(runners) == 1, f"both replicas ran lines of one batch at once: {runners}"
    (runner,) = runners
    survivor = "b" if runner == "a" else "a"
    killed_at = time.monotonic()
    sigkill(procs[runner])
    done_before = finished_before("postgres", postgres, second.id)
    assert len(done_before) >= 4
    sent_before = of_batch(sent(fake), prompts)

    done = wait_batch(
        procs[survivor], second.id, finished, "the second batch, taken over", timeout=60
    )
    assert done.status == "completed", done
    survivor_calls = [
        c.time
        for c in fake.generation_calls(tokens[survivor])
        if isinstance(c.json, dict) and c.json.get("prompt") in prompts.values()
    ]
    assert survivor_calls, "the surviving replica never ran a line"
    took_over_in = min(survivor_calls) - killed_at
    assert took_over_in < 4 * CLAIM_SECONDS + 2, f"took over after {took_over_in:.1f} s"
    ids = output_ids(procs[survivor], done)
    assert len(ids) == 20
    assert sorted(ids) == sorted(prompts)
    counts = of_batch(sent(fake), prompts)
    assert set(counts) == set(prompts)
    assert {cid: counts[cid] for cid in done_before} == dict.fromkeys(done_before, 1)
    twice = {cid for cid, n in counts.items() if n > 1}
    # As with a kill of the only process: only lines in flight at the kill go twice.
    assert len(twice) <= CONCURRENCY, counts
    assert twice <= {cid for cid in sent_before if cid not in done_before}


# ---------------------------------------------------------------- cancel


def test_a_cancelled_batch_stays_cancelled_across_a_restart(spawn, fake_factory, tmp_path):
    fake = fake_factory("acedata", latency=LATENCY)
    start = launcher(spawn, fake, tmp_path / "state")
    first = start()
    data, prompts = batch_input("cancel", 20)
    batch = submit(first, data)
    wait_batch(first, batch.id, completed_at_least(2), "2 lines done before the cancel")
    cancelling = sdk(first).batches.cancel(batch.id)
    at_cancel = sum(of_batch(sent(fake), prompts).values())
    assert cancelling.status in ("cancelling", "cancelled")
    cancelled = wait_batch(first, batch.id, lambda b: b.status == "cancelled", "the cancel")
    assert cancelled.cancelled_at is not None
    assert cancelled.request_counts.completed < 20
    # Lines already on their way when the cancel came may still arrive; nothing after.
    made = sum(of_batch(sent(fake), prompts).values())
    assert made <= at_cancel + CONCURRENCY
    assert sigterm(first) in CLEAN_EXIT

    second = start()
    assert sdk(second).batches.retrieve(batch.id).status == "cancelled"
    # A batch created after the restart runs to its end: the runner is at work, and passed
    # the cancelled batch by.
    probe_data, probe_prompts = batch_input("after-cancel", 3)
    probe = submit(second, probe_data)
    probe_done = wait_batch(second, probe.id, finished, "a batch after the restart")
    assert probe_done.status == "completed", probe_done
    assert of_batch(sent(fake), probe_prompts) == Counter(dict.fromkeys(probe_prompts, 1))
    again = sdk(second).batches.retrieve(batch.id)
    assert again.status == "cancelled"
    assert again.request_counts.completed == cancelled.request_counts.completed
    assert sum(of_batch(sent(fake), prompts).values()) == made


# ---------------------------------------------------------------- hostile input files


def failed_on(proc: GatewayProcess, data: bytes, what: str, timeout: float = 30) -> Any:
    """Submit `data`; the batch's errors once it has failed (OpenAI fails a batch whose
    input does not validate, after creating it)."""
    batch = submit(proc, data)
    done = wait_batch(proc, batch.id, finished, what, timeout=timeout)
    assert done.status == "failed", f"{what}: {done}"
    assert done.errors is not None and done.errors.data, f"{what}: no errors in {done}"
    return done.errors.data


def interactive_ok(proc: GatewayProcess) -> None:
    assert httpx.get(f"{proc.url}/healthz", timeout=10).status_code == 200
    made = sdk(proc).images.generate(
        model="nano-banana", prompt="still answering", response_format="url"
    )
    assert made.data and made.data[0].url


def test_a_hundred_megabyte_line_fails_the_batch_and_the_gateway_stays_healthy(
    spawn, fake_factory, tmp_path
):
    fake = fake_factory("acedata")
    proc = launcher(spawn, fake, tmp_path / "state")()
    filler = "x" * (100 * 1024 * 1024)
    data = request_line("huge", filler).encode()
    assert len(data) > 100 * 1024 * 1024  # over the default 20 MiB line limit
    started = time.monotonic()
    errors = failed_on(proc, data, "a 100 MB line", timeout=60)
    assert [e.line for e in errors] == [1], errors
    assert time.monotonic() - started < 60
    assert fake.generation_calls() == []
    interactive_ok(proc)
    assert len(fake.generation_calls()) == 1
    assert "Traceback" not in proc.log()


def test_hostile_files_fail_naming_the_line_without_an_upstream_call(spawn, fake_factory, tmp_path):
    fake = fake_factory("acedata")
    proc = launcher(spawn, fake, tmp_path / "state", batch="max_file_bytes = 2000000")()

    # A million empty lines: no request at all, found out quickly.
    started = time.monotonic()
    errors = failed_on(proc, b"\n" * 1_000_000, "a million empty lines", timeout=20)
    assert [e.code for e in errors] == ["empty_file"], errors
    assert time.monotonic() - started < 20

    good = request_line("good-1", "a valid line before the bad one")
    bad_lines = {
        "invalid JSON": '{"custom_id": "bad", "method": "POST", "url": \n',
        "a wrong url": request_line("bad", "wrong url", url="/v1/chat/completions"),
        "a wrong method": request_line("bad", "wrong method", method="GET"),
    }
    for what, bad in bad_lines.items():
        errors = failed_on(proc, (good + bad).encode(), what)
        assert 2 in [e.line for e in errors], f"{what}: {errors}"
        assert 1 not in [e.line for e in errors], f"{what}: {errors}"

    # An upload over max_file_bytes: refused at the upload, naming `file`.
    with pytest.raises(openai.APIStatusError) as refused:
        sdk(proc).files.create(
            file=("big.jsonl", good.encode() * (2_000_000 // len(good) + 1), "application/jsonl"),
            purpose="batch",
        )
    assert 400 <= refused.value.status_code < 500, refused.value
    body = refused.value.body if isinstance(refused.value.body, dict) else {}
    assert body.get("param") == "file" or "file" in str(refused.value.message), refused.value

    assert fake.generation_calls() == []
    interactive_ok(proc)
    assert "Traceback" not in proc.log()
