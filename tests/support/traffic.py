"""Steady traffic through the official SDK, recorded request by request: what the recovery
tests read to say when service stopped and when it came back."""

from __future__ import annotations

import itertools
import threading
import time
from dataclasses import dataclass

import openai

_PROMPTS = itertools.count()


@dataclass(frozen=True)
class Sent:
    """One request: when it left and came back (monotonic), and how it ended."""

    sent: float
    done: float
    status: int  # 200, or the error's HTTP status (0: no answer at all)
    code: str | None = None


class Traffic:
    """`workers` threads, each sending one request after another (unique prompts, so the
    cache never answers) until stopped."""

    def __init__(self, base_url: str, key: str, workers: int = 8, timeout: float = 60) -> None:
        self._client = openai.OpenAI(
            base_url=f"{base_url}/v1", api_key=key, max_retries=0, timeout=timeout
        )
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.records: list[Sent] = []
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(workers)]

    def __enter__(self) -> Traffic:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=120)

    def _run(self) -> None:
        while not self._stop.is_set():
            sent = time.monotonic()
            try:
                self._client.images.generate(
                    prompt=f"traffic {next(_PROMPTS)}", response_format="url"
                )
                status, code = 200, None
            except openai.APIStatusError as exc:
                body = exc.body if isinstance(exc.body, dict) else {}
                status, code = exc.status_code, body.get("code")
            except openai.APIConnectionError:
                status, code = 0, None
            with self._lock:
                self.records.append(Sent(sent, time.monotonic(), status, code))

    def sent_after(self, moment: float) -> list[Sent]:
        """The requests that left at or after `moment`."""
        with self._lock:
            return [r for r in self.records if r.sent >= moment]

    def first_success_after(self, moment: float) -> float | None:
        """Seconds from `moment` to the first request finishing well after it."""
        with self._lock:
            done = [r.done for r in self.records if r.status == 200 and r.done >= moment]
        return min(done) - moment if done else None

    def wait_for_answers(self, count: int, timeout: float = 30) -> None:
        """Until `count` more requests have finished (of any outcome)."""
        with self._lock:
            target = len(self.records) + count
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if len(self.records) >= target:
                    return
            time.sleep(0.02)
        raise AssertionError(f"traffic stalled: fewer than {count} answers in {timeout} s")
