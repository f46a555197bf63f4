"""The command line: every command's --help, token minting, and `danmaku up` end to end."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
import trio
import trio.testing

from engine.tokens import verify_token
from tests.httpclient import get_json
from tests.stack import running_up
from tests.wsclient import connect

DANMAKU = [sys.executable, "-m", "engine.cli"]


@pytest.mark.parametrize("command", ["up", "gateway", "worker", "token", "watch", "send"])
def test_every_command_has_help(command: str) -> None:
    out = subprocess.run([*DANMAKU, command, "--help"], capture_output=True, text=True, check=True)
    assert "usage: danmaku " + command in out.stdout


def test_usage_errors_exit_2() -> None:
    assert subprocess.run([*DANMAKU], capture_output=True).returncode == 2
    assert subprocess.run([*DANMAKU, "token"], capture_output=True).returncode == 2


def test_bad_config_is_a_clear_error(tmp_path: Path) -> None:
    env = {**os.environ, "DANMAKU_GATEWAY_PORT": "not-a-number"}
    out = subprocess.run([*DANMAKU, "gateway"], capture_output=True, text=True, env=env)
    assert out.returncode == 2
    assert "gateway.port" in out.stderr


def test_token_uses_the_secret_created_once_in_the_data_dir(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "DANMAKU_SECRET"}
    args = [*DANMAKU, "token", "--user", "alice", "--role", "moderator", "--data-dir",
            str(tmp_path)]
    first = subprocess.run(args, capture_output=True, text=True, check=True, env=env)
    secret = (tmp_path / "secret").read_text().strip()
    assert oct((tmp_path / "secret").stat().st_mode & 0o777) == "0o600"
    ident = verify_token(secret, first.stdout.strip())
    assert ident.user == "alice" and ident.role == "moderator"
    second = subprocess.run(args, capture_output=True, text=True, check=True, env=env)
    assert verify_token(secret, second.stdout.strip()).user == "alice"


@pytest.mark.redis
async def test_up_runs_everything_in_one_process_and_stops_cleanly(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "DANMAKU_SECRET"}
    async with running_up(tmp_path, env, until=b"HTTP API", timeout_s=30) as (proc, text):
        with trio.fail_after(30):
            ws_url = re.search(r"ws://\S+/ws", text)
            http = re.search(r"(http://[\d.:]+)/v1/dispatch", text)
            assert ws_url and http, text
            secret = (tmp_path / "secret").read_text().strip()
            minted = await trio.run_process(
                [*DANMAKU, "token", "--user", "u1", "--data-dir", str(tmp_path)],
                capture_stdout=True, env=env,
            )
            token = minted.stdout.decode().strip()
            assert verify_token(secret, token).user == "u1"
            assert await get_json(http.group(1) + "/healthz") == (200, {"ok": True})
            async with connect(ws_url.group(0), token) as client:
                await client.join("lobby")
                ack = await client.acked(await client.send_text("lobby", "up works"))
                assert ack["op"] == "ack" and ack["seq"] == 1
                proc.send_signal(signal.SIGTERM)
                assert await client.close_code() == 1001
            assert await proc.wait() == 0
    assert (tmp_path / "redis").is_dir()
    # The Redis child is gone with its parent.
    ps = await trio.run_process(["ps", "-eo", "args"], capture_stdout=True)
    assert str(tmp_path) not in ps.stdout.decode()


@pytest.mark.redis
async def test_send_and_watch_commands(redis_url: str) -> None:
    from tests.stack import running_stack

    with trio.fail_after(30):
        async with running_stack([redis_url]) as st, trio.open_nursery() as nursery:
            watched: list[bytes] = []

            async def watch() -> None:
                done = await trio.run_process(
                    [*DANMAKU, "watch", "lobby", "--url", st.http_url(), "--count", "2",
                     "--json"],
                    capture_stdout=True, capture_stderr=True,
                )
                watched.append(done.stdout)

            nursery.start_soon(watch)
            # The watcher has joined once the room has a viewer on the gateway.
            while not ((hub := st.gateways[0].hubs.hubs.get("lobby")) and hub.members):
                await trio.testing.wait_all_tasks_blocked(cushion=0.02)
            for text in ("first", "second"):
                sent = await trio.run_process(
                    [*DANMAKU, "send", "lobby", text, "--url", st.ws_url(),
                     "--token", st.token("cli-user")],
                    capture_stdout=True,
                )
                assert sent.stdout.decode().startswith("seq=")
        lines = [orjson.loads(line) for line in watched[0].splitlines()]
        assert [m["body"]["text"] for m in lines] == ["first", "second"]
        assert [m["seq"] for m in lines] == [1, 2]
        refused = await trio.run_process(
            [*DANMAKU, "send", "lobby", "x", "--url", "ws://127.0.0.1:9/ws", "--token", "t"],
            capture_stderr=True, check=False,
        )
        assert refused.returncode == 1
