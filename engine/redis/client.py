"""A pool of connections to one Redis server, and Lua scripts.

Pool guarantees (the reason this package exists, see docs on coredis' slot leak):

* At most ``max_connections`` connections exist at once; each request holds one slot from
  before it connects until after its last reply is read.
* A slot is *always* given back, whatever happens to the request: a connection whose request
  was cancelled or failed is closed and dropped, and its slot becomes free for a new connection.
  Many cancelled blocking reads (XREADGROUP ... BLOCK) therefore never starve the pool.
* Waiting for a slot is fair (FIFO) and bounded: after ``pool_timeout_s`` the caller gets
  ``RedisTimeoutError`` instead of hanging.
* Nothing is retried on a connection error: an INCR is sent at most once. The only retry is
  ``run_script`` re-running a script after ``NOSCRIPT``, which means it did not run.
* Connections are made lazily, on demand, and reused most-recently-used first.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol

import trio

from .connection import RedisAddress, RedisConnection, parse_url
from .errors import RedisReplyError, RedisTimeoutError
from .resp import Arg, Command

ScriptCall = tuple[Sequence[Arg], Sequence[Arg]]
"""``(keys, args)`` of one script invocation."""


class Script:
    """A Lua script: its source and SHA1, run with EVALSHA (falling back to loading it)."""

    __slots__ = ("name", "sha1", "source")

    def __init__(self, source: str, *, name: str = "") -> None:
        self.source = source
        self.sha1 = hashlib.sha1(source.encode()).hexdigest()
        self.name = name or self.sha1[:12]

    @classmethod
    def from_file(cls, path: str | Path) -> Script:
        path = Path(path)
        return cls(path.read_text(encoding="utf-8"), name=path.name)

    def evalsha_command(self, keys: Sequence[Arg] = (), args: Sequence[Arg] = ()) -> list[Arg]:
        """The EVALSHA command for one call, e.g. to put into a ``pipeline``."""
        return ["EVALSHA", self.sha1, len(keys), *keys, *args]

    def __repr__(self) -> str:
        return f"<Script {self.name} sha1={self.sha1[:12]}>"


@dataclass(frozen=True, slots=True)
class PoolStatistics:
    in_use: int  # connections lent to a request right now
    idle: int  # open connections waiting in the pool
    max: int  # max_connections
    created: int  # connections made since the client was created
    broken: int  # connections discarded because their request failed or was cancelled
    waiting: int  # tasks waiting for a slot


class RedisCommands(Protocol):
    """What ``RedisClient`` and ``ClusterClient`` both offer (what ``ShardSet`` hands out)."""

    async def execute(self, *args: Arg) -> Any: ...

    async def pipeline(self, commands: Sequence[Command]) -> list[Any]: ...

    async def run_script(
        self, script: Script, keys: Sequence[Arg] = (), args: Sequence[Arg] = ()
    ) -> Any: ...

    async def run_scripts(self, script: Script, calls: Sequence[ScriptCall]) -> list[Any]: ...

    async def aclose(self) -> None: ...


class RedisClient:
    """A connection pool to one server; safe to share between any number of tasks.

    Usable as ``async with RedisClient(url) as redis:``; nothing connects before the first
    request.
    """

    def __init__(
        self,
        url: str | RedisAddress,
        *,
        max_connections: int = 32,
        pool_timeout_s: float = 5.0,
        connect_timeout_s: float = 5.0,
    ) -> None:
        if max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        self._address = url if isinstance(url, RedisAddress) else parse_url(url)
        self._max = max_connections
        self._pool_timeout_s = pool_timeout_s
        self._connect_timeout_s = connect_timeout_s
        self._slots = trio.Semaphore(max_connections)
        self._idle: list[RedisConnection] = []
        self._in_use = 0
        self._created = 0
        self._broken = 0
        self._closed = False

    @property
    def address(self) -> RedisAddress:
        return self._address

    @property
    def url(self) -> str:
        """The server's URL without credentials."""
        return self._address.url

    def statistics(self) -> PoolStatistics:
        return PoolStatistics(
            in_use=self._in_use,
            idle=len(self._idle),
            max=self._max,
            created=self._created,
            broken=self._broken,
            waiting=self._slots.statistics().tasks_waiting,
        )

    # ---- the pool -----------------------------------------------------------------------------
    async def _acquire(self) -> RedisConnection:
        if self._closed:
            raise trio.ClosedResourceError("the RedisClient is closed")
        try:
            self._slots.acquire_nowait()
        except trio.WouldBlock:
            with trio.move_on_after(self._pool_timeout_s) as scope:
                await self._slots.acquire()
            if scope.cancelled_caught:
                raise RedisTimeoutError(
                    f"no connection to {self._address} free within {self._pool_timeout_s} s "
                    f"({self._max} in use)"
                ) from None
            if self._closed:
                self._slots.release()
                raise trio.ClosedResourceError("the RedisClient is closed") from None
        # From here on we own a slot; every path below either returns a connection (the slot
        # goes back in _release) or gives the slot back before raising.
        self._in_use += 1
        if self._idle:
            return self._idle.pop()
        try:
            conn = await RedisConnection.connect(
                self._address, connect_timeout_s=self._connect_timeout_s
            )
        except BaseException:
            self._in_use -= 1
            self._slots.release()
            raise
        self._created += 1
        return conn

    def _release(self, conn: RedisConnection) -> None:
        self._in_use -= 1
        if conn.usable and not self._closed:
            self._idle.append(conn)
        else:
            if conn.broken:
                self._broken += 1
            conn.close()
        self._slots.release()

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[RedisConnection]:
        """Lend one connection for several requests (WATCH/MULTI, a long blocking read loop).

        The connection goes back to the pool afterwards, or is dropped if it broke.
        """
        conn = await self._acquire()
        try:
            yield conn
        finally:
            self._release(conn)

    # ---- requests -----------------------------------------------------------------------------
    async def execute(self, *args: Arg) -> Any:
        """Run one command; an error reply is raised as ``RedisReplyError``."""
        conn = await self._acquire()
        try:
            return await conn.execute(*args)
        finally:
            self._release(conn)

    async def pipeline(self, commands: Sequence[Command]) -> list[Any]:
        """Run commands in one round trip (not a transaction); errors are returned in place."""
        conn = await self._acquire()
        try:
            return await conn.pipeline(commands)
        finally:
            self._release(conn)

    async def run_script(
        self, script: Script, keys: Sequence[Arg] = (), args: Sequence[Arg] = ()
    ) -> Any:
        """EVALSHA the script; on ``NOSCRIPT`` (not cached on the server) EVAL it once."""
        try:
            return await self.execute("EVALSHA", script.sha1, len(keys), *keys, *args)
        except RedisReplyError as exc:
            if exc.kind != "NOSCRIPT":
                raise
        return await self.execute("EVAL", script.source, len(keys), *keys, *args)

    async def run_scripts(self, script: Script, calls: Sequence[ScriptCall]) -> list[Any]:
        """Run the script once per ``(keys, args)`` in one pipelined round trip.

        Results (or ``RedisReplyError`` values) come back in call order. Calls answered with
        ``NOSCRIPT`` did not run; they are re-sent once after a ``SCRIPT LOAD``.
        """
        replies = await self.pipeline([script.evalsha_command(k, a) for k, a in calls])
        missing = [
            i
            for i, reply in enumerate(replies)
            if type(reply) is RedisReplyError and reply.kind == "NOSCRIPT"
        ]
        if missing:
            retry: list[Command] = [("SCRIPT", "LOAD", script.source)]
            retry.extend(script.evalsha_command(*calls[i]) for i in missing)
            again = await self.pipeline(retry)
            if type(again[0]) is RedisReplyError:
                raise again[0]
            for i, reply in zip(missing, again[1:], strict=True):
                replies[i] = reply
        return replies

    # ---- lifetime -----------------------------------------------------------------------------
    async def aclose(self) -> None:
        """Close idle connections now and in-use ones when their request ends."""
        self._closed = True
        idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()
        await trio.lowlevel.checkpoint()

    @property
    def closed(self) -> bool:
        return self._closed

    async def __aenter__(self) -> RedisClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        s = self.statistics()
        return f"<RedisClient {self._address} in_use={s.in_use} idle={s.idle} max={s.max}>"
