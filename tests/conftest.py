"""Shared fixtures: real redis-server processes, started once per session on loopback ports.

* ``redis_factory``  – start extra private servers: ``redis_factory.start(**options)`` takes
  ``RedisProcess`` options; all are stopped at the end of the session. Use it for tests that
  kill or reconfigure a server.
* ``redis_url``       – one shared server, FLUSHALLed before each test that uses it.
* ``redis_urls2``     – two shared shard servers, both flushed before each test.
* ``redis_cluster``   – a 3-master Redis Cluster (``RedisClusterProcesses``), created once.
* ``redis_cluster_url`` – ``redis+cluster://...`` of that cluster, flushed before each test.

Servers run without persistence (``--save "" --appendonly no``) unless a test asks otherwise.
Mark tests that use them with ``@pytest.mark.redis``.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from engine.embedded_redis import RedisProcess, find_redis_cli, find_redis_server, sync_execute


class RedisFactory:
    """Starts redis-server processes in fresh temporary directories and remembers them."""

    def __init__(self, tmp_path_factory: pytest.TempPathFactory) -> None:
        self._tmp = tmp_path_factory
        self.processes: list[RedisProcess] = []

    def start(self, **options: Any) -> RedisProcess:
        options.setdefault("appendonly", False)
        process = RedisProcess(self._tmp.mktemp("redis"), **options)
        process.start()
        self.processes.append(process)
        return process

    def stop_all(self) -> None:
        for process in self.processes:
            process.stop()


def flushall(url: str) -> None:
    sync_execute(url, "FLUSHALL")


@pytest.fixture(scope="session")
def redis_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisFactory]:
    factory = RedisFactory(tmp_path_factory)
    try:
        yield factory
    finally:
        factory.stop_all()


@pytest.fixture(scope="session")
def redis_server(redis_factory: RedisFactory) -> RedisProcess:
    return redis_factory.start()


@pytest.fixture
def redis_url(redis_server: RedisProcess) -> str:
    flushall(redis_server.url)
    return redis_server.url


@pytest.fixture(scope="session")
def redis_servers2(redis_factory: RedisFactory) -> list[RedisProcess]:
    return [redis_factory.start(), redis_factory.start()]


@pytest.fixture
def redis_urls2(redis_servers2: list[RedisProcess]) -> list[str]:
    for server in redis_servers2:
        flushall(server.url)
    return [server.url for server in redis_servers2]


@dataclass
class RedisClusterProcesses:
    nodes: list[RedisProcess]

    @property
    def node_urls(self) -> list[str]:
        return [node.url for node in self.nodes]

    @property
    def url(self) -> str:
        """A ``redis+cluster://`` URL listing every node as a seed."""
        return "redis+cluster://" + ",".join(f"127.0.0.1:{node.port}" for node in self.nodes)

    def flush(self) -> None:
        for url in self.node_urls:
            flushall(url)


def _cluster_ok(urls: list[str]) -> bool:
    for url in urls:
        try:
            info = sync_execute(url, "CLUSTER", "INFO", timeout_s=2.0)
        except Exception:
            return False
        if b"cluster_state:ok" not in info or b"cluster_slots_ok:16384" not in info:
            return False
        # every node must know every other node before clients can be redirected correctly
        if b"cluster_known_nodes:%d" % len(urls) not in info:
            return False
    return True


@pytest.fixture(scope="session")
def redis_cluster(redis_factory: RedisFactory) -> RedisClusterProcesses:
    cli = find_redis_cli(find_redis_server())
    if cli is None:
        pytest.skip("redis-cli not found: it is needed to create the test Redis Cluster")
    nodes = [redis_factory.start(cluster_enabled=True) for _ in range(3)]
    result = subprocess.run(
        [
            cli, "--cluster", "create", *(f"127.0.0.1:{node.port}" for node in nodes),
            "--cluster-replicas", "0", "--cluster-yes",
        ],
        capture_output=True,
        timeout=60,
        check=False,
        stdin=subprocess.DEVNULL,
    )  # fmt: skip
    if result.returncode != 0:
        raise RuntimeError(
            f"redis-cli --cluster create failed ({result.returncode}):\n"
            f"{result.stdout.decode(errors='replace')}\n{result.stderr.decode(errors='replace')}"
        )
    cluster = RedisClusterProcesses(nodes)
    deadline = time.monotonic() + 30
    while not _cluster_ok(cluster.node_urls):
        if time.monotonic() > deadline:
            raise RuntimeError("the test Redis Cluster did not reach cluster_state:ok in 30 s")
        time.sleep(0.05)  # polling the servers for readiness, with a deadline
    return cluster


@pytest.fixture
def redis_cluster_url(redis_cluster: RedisClusterProcesses) -> str:
    redis_cluster.flush()
    return redis_cluster.url
