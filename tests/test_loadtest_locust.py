"""loadtest/locustfile.py end to end: locust runs headless (a subprocess: gevent never enters
this process) against a real stack (redis-server, worker, gateway) for a few seconds.

The first case must exit 0 with WebSocket deliveries and acks in locust's CSV statistics; the
second injects a fault into the viewers (they drop every 3rd batch) and must exit 1: the loss
check can fail.
"""

from __future__ import annotations

import csv
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
import trio

from tests.stack import running_stack

REPO = Path(__file__).resolve().parents[1]
LOCUSTFILE = REPO / "loadtest" / "locustfile.py"

pytestmark = [
    pytest.mark.redis,
    pytest.mark.skipif(
        importlib.util.find_spec("locust") is None or importlib.util.find_spec("websocket") is None,
        reason="needs the loadtest extra (pip install -e '.[loadtest]')",
    ),
]


async def run_locust(
    host: str, secret: str, csv_prefix: Path, extra_env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DANMAKU_", "LOCUST_"))}
    env.update({"DANMAKU_SECRET": secret, **(extra_env or {})})
    # 10 users: locust gives each class one at least (8 WsViewer, 1 WsSender, 1 LongPollViewer).
    cmd = [
        sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless",
        "-u", "10", "-r", "10", "-t", "3s", "--host", host, "--csv", str(csv_prefix),
        "--only-summary", "--danmaku-room", "lt", "--danmaku-send-rate", "5",
        "--danmaku-gift-every", "3", "--danmaku-loss-grace", "1",
    ]  # fmt: skip
    with trio.fail_after(40):
        return await trio.run_process(
            cmd, env=env, cwd=REPO, check=False, capture_stdout=True, capture_stderr=True
        )


def verdict(stderr: bytes) -> dict[str, object]:
    for line in stderr.decode(errors="replace").splitlines():
        if line.startswith("danmaku-locust: "):
            out: dict[str, object] = orjson.loads(line.removeprefix("danmaku-locust: "))
            return out
    raise AssertionError("no danmaku-locust verdict line:\n" + stderr.decode()[-3000:])


def stats_rows(csv_prefix: Path) -> dict[tuple[str, str], dict[str, str]]:
    with open(f"{csv_prefix}_stats.csv", newline="") as f:
        return {(row["Type"], row["Name"]): row for row in csv.DictReader(f)}


async def test_locust_run_delivers_and_exits_0(redis_url: str, tmp_path: Path) -> None:
    async with running_stack([redis_url]) as st:
        done = await run_locust(st.http_url(), st.secret, tmp_path / "ok")
    log = done.stderr.decode(errors="replace")[-3000:]
    assert done.returncode == 0, log
    result = verdict(done.stderr)
    assert result["lost"] == 0, result
    assert isinstance(result["acked"], int) and result["acked"] > 0, result
    rows = stats_rows(tmp_path / "ok")
    for name in ("deliver", "ack"):
        row = rows[("WS", name)]
        assert int(row["Request Count"]) > 0 and int(row["Failure Count"]) == 0, row
    assert int(rows[("HTTP", "poll deliver")]["Request Count"]) > 0, rows.keys()
    assert ("WS", "gap") not in rows


async def test_locust_exits_1_when_viewers_lose_messages(redis_url: str, tmp_path: Path) -> None:
    async with running_stack([redis_url]) as st:
        done = await run_locust(
            st.http_url(), st.secret, tmp_path / "lossy",
            {"DANMAKU_LOCUST_FAULT_DROP_BATCH_EVERY": "3"},
        )  # fmt: skip
    assert done.returncode == 1, done.stderr.decode(errors="replace")[-3000:]
    result = verdict(done.stderr)
    losses = result["losses"]
    assert isinstance(losses, dict) and losses["ws_gaps"] > 0, result
    assert int(stats_rows(tmp_path / "lossy")[("WS", "gap")]["Failure Count"]) > 0
