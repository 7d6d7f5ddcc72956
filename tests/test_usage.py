"""The usage log's destinations: a file that survives rotation, stdout, off."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from gateway.config import ConfigError
from gateway.metering.usage import UsageLog, timestamp


def test_file_lines_survive_logrotate(tmp_path: Path) -> None:
    path = tmp_path / "usage.jsonl"
    log = UsageLog(str(path))
    log.write({"request_id": "req_1", "cost_usd": 0.039})
    path.rename(tmp_path / "usage.jsonl.1")  # logrotate moves the file away
    log.write({"request_id": "req_2", "model": "nano-banana-pro"})
    log.write({"request_id": "req_3", "note": "naïve ✓"})
    log.close()
    old = [json.loads(line) for line in (tmp_path / "usage.jsonl.1").read_text().splitlines()]
    new = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert [r["request_id"] for r in old] == ["req_1"]
    assert [r["request_id"] for r in new] == ["req_2", "req_3"]
    assert new[1]["note"] == "naïve ✓"


def test_stdout_and_off(capsys: pytest.CaptureFixture[str]) -> None:
    UsageLog("stdout").write({"request_id": "req_out"})
    UsageLog("off").write({"request_id": "req_off"})
    out = capsys.readouterr().out
    assert out == '{"request_id":"req_out"}\n'


def test_unwritable_destination_stops_the_start(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^usage\.log: cannot open"):
        UsageLog(str(tmp_path / "missing-dir" / "usage.jsonl"))


@pytest.mark.parametrize(
    ("wall", "text"),
    [(0.0, "1970-01-01T00:00:00.000Z"), (1740830400.5, "2025-03-01T12:00:00.500Z")],
)
def test_timestamps_are_utc_with_milliseconds(wall: float, text: str) -> None:
    assert timestamp(wall) == text


class _CountingOut:
    """A stdout that counts the writes it is given."""

    def __init__(self) -> None:
        self.writes: list[str] = []

    def write(self, text: str) -> int:
        self.writes.append(text)
        return len(text)

    def flush(self) -> None:
        pass


def _ids(out: _CountingOut) -> list[str]:
    return [json.loads(line)["request_id"] for line in "".join(out.writes).splitlines()]


async def test_lines_of_one_loop_iteration_go_out_in_one_write_at_its_end(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    out = _CountingOut()
    monkeypatch.setattr("sys.stdout", out)
    log = UsageLog("stdout")
    for i in range(4):  # four requests ending in one iteration
        log.write({"request_id": f"req_{i}"})
    assert _ids(out) == ["req_0"]  # the first at once
    await asyncio.sleep(0)
    assert _ids(out) == ["req_0", "req_1", "req_2", "req_3"]
    assert len(out.writes) == 2  # the other three together
    log.write({"request_id": "req_4"})  # a new iteration: at once again
    assert _ids(out)[-1] == "req_4" and len(out.writes) == 3
    log.write({"request_id": "req_5"})
    log.close()  # what is waiting is written
    assert _ids(out)[-1] == "req_5"


def test_lines_wait_for_no_loop_that_has_stopped(monkeypatch: pytest.MonkeyPatch) -> None:
    out = _CountingOut()
    monkeypatch.setattr("sys.stdout", out)
    log = UsageLog("stdout")

    async def two() -> None:
        log.write({"request_id": "req_a"})
        log.write({"request_id": "req_b"})  # due at the end of an iteration never run

    loop = asyncio.new_event_loop()
    task = loop.create_task(two())
    loop.call_soon(loop.stop)  # stops after the batch the task's step is in
    loop.run_forever()
    loop.close()
    assert task.done()
    assert _ids(out) == ["req_a"]
    log.write({"request_id": "req_c"})  # no loop now: everything goes out at once
    assert _ids(out) == ["req_a", "req_b", "req_c"]
