"""The usage log's destinations: a file that survives rotation, stdout, off."""

from __future__ import annotations

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
