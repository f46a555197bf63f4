"""Pub/sub: one dedicated RESP2 connection in subscribe mode.

Theory of operation. Writes (SUBSCRIBE, UNSUBSCRIBE, PSUBSCRIBE, PUNSUBSCRIBE, PING) go out under
a lock, each registering a *waiter* in command order. Reads are done by whichever task currently
needs data: the iterating task, or a task waiting for its subscribe confirmation while nobody
iterates. Exactly one task reads at a time (the *reader*); it parses everything it receives,
queues messages, and completes waiters as their confirmations arrive, then wakes the others. So
``subscribe`` may be called from any task while another task iterates, and it returns only once
the server has confirmed: a message published after ``subscribe`` returns will be delivered.
There is no hidden background task, so a ``PubSub`` needs no nursery:

    pubsub = PubSub(url)
    await pubsub.subscribe("danmaku:room:1")
    async for channel, data in pubsub:   # (bytes, bytes)
        ...
    await pubsub.aclose()

Messages are delivered in the order the server sent them, only for channels (patterns) that are
currently subscribed. When the connection breaks (server gone, EOF, or more than
``max_buffered`` undelivered messages because the consumer is too slow), the messages received
before the break are still delivered, then the iterator raises ``RedisConnectionError``. Messages
published while the connection was down are lost: the owner then either calls ``reconnect()``
(same object, re-subscribes everything) or makes a new ``PubSub``, and re-reads what it missed
from durable storage. ``aclose()`` ends iteration in other tasks (``StopAsyncIteration``).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Final

import trio

from .connection import RECEIVE_SIZE, RedisAddress, RedisConnection, parse_url
from .errors import RedisConnectionError, RedisProtocolError, RedisReplyError
from .resp import NEED_DATA, encode_command

Message = tuple[bytes, bytes]
"""``(channel, data)``; for a pattern subscription, the channel the message was published to."""

_MESSAGE: Final = b"message"
_PMESSAGE: Final = b"pmessage"
_CONFIRMATIONS: Final = frozenset(
    (b"subscribe", b"unsubscribe", b"psubscribe", b"punsubscribe", b"pong")
)
# Return a buffered message without yielding to the scheduler at most this many times in a row.
_YIELD_EVERY: Final = 64


class _Waiter:
    __slots__ = ("done", "error", "kind", "remaining")

    def __init__(self, kind: bytes, remaining: int) -> None:
        self.kind = kind
        self.remaining = remaining
        self.done = False
        self.error: BaseException | None = None


def _to_bytes(name: str | bytes) -> bytes:
    return name.encode() if isinstance(name, str) else bytes(name)


class PubSub:
    """A subscriber connection; see the module docstring. Connects lazily."""

    def __init__(
        self,
        url: str | RedisAddress,
        *,
        connect_timeout_s: float = 5.0,
        write_timeout_s: float = 10.0,
        max_buffered: int = 100_000,
    ) -> None:
        self._address = url if isinstance(url, RedisAddress) else parse_url(url)
        self._connect_timeout_s = connect_timeout_s
        self._write_timeout_s = write_timeout_s
        self._max_buffered = max_buffered
        self._conn: RedisConnection | None = None
        self._channels: set[bytes] = set()
        self._patterns: set[bytes] = set()
        self._messages: deque[Message] = deque()
        self._waiters: deque[_Waiter] = deque()
        self._write_lock = trio.Lock()
        self._reading = False
        self._progress = trio.lowlevel.ParkingLot()
        self._error: BaseException | None = None
        self._closed = False
        self._unyielded = 0

    # ---- state ----------------------------------------------------------------------------------
    @property
    def address(self) -> RedisAddress:
        return self._address

    @property
    def channels(self) -> frozenset[bytes]:
        """The channels subscribed (or being subscribed) right now."""
        return frozenset(self._channels)

    @property
    def patterns(self) -> frozenset[bytes]:
        return frozenset(self._patterns)

    @property
    def broken(self) -> bool:
        """True once the connection failed (until ``reconnect``)."""
        return self._error is not None

    @property
    def buffered(self) -> int:
        """Messages received but not yet taken by ``get_message``."""
        return len(self._messages)

    # ---- commands -------------------------------------------------------------------------------
    # The sets of channels and patterns change when the command is written (under the write
    # lock), so a call cancelled before that leaves no trace, and one cancelled while waiting for
    # the confirmation still takes effect (the server will act on it).
    async def subscribe(self, *channels: str | bytes) -> None:
        """Subscribe; returns once the server confirmed every channel."""
        await self._command(b"subscribe", [_to_bytes(c) for c in channels], self._channels)

    async def unsubscribe(self, *channels: str | bytes) -> None:
        """Unsubscribe (all channels if none given); no message of them is delivered after."""
        names = [_to_bytes(c) for c in channels] if channels else None
        await self._command(b"unsubscribe", names, self._channels)

    async def psubscribe(self, *patterns: str | bytes) -> None:
        await self._command(b"psubscribe", [_to_bytes(p) for p in patterns], self._patterns)

    async def punsubscribe(self, *patterns: str | bytes) -> None:
        names = [_to_bytes(p) for p in patterns] if patterns else None
        await self._command(b"punsubscribe", names, self._patterns)

    async def ping(self) -> None:
        """Round trip to the server (checks the connection is alive)."""
        await self._command(b"pong", [], None)

    async def _command(
        self, kind: bytes, names: list[bytes] | None, names_set: set[bytes] | None
    ) -> None:
        # names None: every name in names_set (UNSUBSCRIBE/PUNSUBSCRIBE without arguments).
        if self._closed:
            raise trio.ClosedResourceError("the PubSub is closed")
        waiter = _Waiter(kind, 1)
        async with self._write_lock:
            if self._error is not None:
                raise self._error
            if names is None:
                assert names_set is not None
                names = sorted(names_set)
            if not names and kind != b"pong":
                return
            waiter.remaining = max(1, len(names))
            conn = await self._connected()
            payload = encode_command([b"PING" if kind == b"pong" else kind.upper(), *names])
            if names_set is not None:
                if kind.startswith(b"un") or kind.startswith(b"pun"):
                    names_set.difference_update(names)
                else:
                    names_set.update(names)
            self._waiters.append(waiter)
            # Shielded: a half-written command would corrupt the stream for everybody, so a
            # cancelled caller stops waiting for the confirmation below, never mid-write.
            with trio.move_on_after(self._write_timeout_s) as scope:
                scope.shield = True
                try:
                    await conn.stream.send_all(payload)
                except (trio.BrokenResourceError, OSError) as exc:
                    self._fail(conn, RedisConnectionError(f"pub/sub to {self._address}: {exc}"))
                except trio.ClosedResourceError:
                    pass  # closed by aclose() or reconnect(); the waiter was failed there
            if scope.cancelled_caught:
                self._fail(conn, RedisConnectionError(f"pub/sub write to {self._address} stuck"))
        await self._pump_until(lambda: waiter.done)
        if waiter.error is not None:
            raise waiter.error

    async def _connected(self) -> RedisConnection:
        # Called with the write lock held.
        if self._conn is None:
            self._conn = await RedisConnection.connect(
                self._address, connect_timeout_s=self._connect_timeout_s
            )
        return self._conn

    # ---- receiving ------------------------------------------------------------------------------
    async def get_message(self) -> Message:
        """The next message; raises ``RedisConnectionError`` once the connection broke and
        every message received before that was delivered, ``trio.ClosedResourceError`` after
        ``aclose``."""
        if self._messages and self._unyielded < _YIELD_EVERY:
            # Fast path: a buffered message. Still a cancel point; a schedule point every
            # _YIELD_EVERY messages, so a consumer of a long burst cannot starve other tasks.
            await trio.lowlevel.checkpoint_if_cancelled()
            self._unyielded += 1
            return self._messages.popleft()
        await trio.lowlevel.checkpoint()
        self._unyielded = 0
        await self._pump_until(self._message_or_end)
        if self._messages:
            return self._messages.popleft()
        if self._closed:
            raise trio.ClosedResourceError("the PubSub is closed")
        assert self._error is not None
        raise self._error

    async def get_messages(self, max_count: int = 1024) -> list[Message]:
        """At least one and at most ``max_count`` messages (all that are buffered)."""
        first = await self.get_message()
        batch = [first]
        messages = self._messages
        while messages and len(batch) < max_count:
            batch.append(messages.popleft())
        return batch

    def _message_or_end(self) -> bool:
        return bool(self._messages) or self._error is not None or self._closed

    def __aiter__(self) -> PubSub:
        return self

    async def __anext__(self) -> Message:
        try:
            return await self.get_message()
        except trio.ClosedResourceError:
            raise StopAsyncIteration from None

    async def _pump_until(self, ready: Callable[[], bool]) -> None:
        """Read (or wait for the current reader) until ``ready()`` or the connection ended."""
        while not ready():
            if self._closed or self._error is not None:
                return
            if self._reading or self._conn is None:
                # Someone else reads (or connects under the write lock): wait for progress.
                if self._conn is None and not self._reading:
                    async with self._write_lock:
                        if self._error is None and not self._closed:
                            await self._connected()
                    continue
                await self._progress.park()
                continue
            await self._read_once(self._conn)

    async def _read_once(self, conn: RedisConnection) -> None:
        self._reading = True
        try:
            data = await conn.stream.receive_some(RECEIVE_SIZE)
            if not data:
                raise RedisConnectionError(f"{self._address} closed the pub/sub connection")
            parser = conn.parser
            parser.feed(data)
            reply = parser.next_reply()
            while reply is not NEED_DATA:
                self._dispatch(conn, reply)
                if conn.closed:  # failed while dispatching (overflow, protocol confusion)
                    break
                reply = parser.next_reply()
        except trio.ClosedResourceError:
            pass  # we closed it: aclose() or reconnect() already settled the waiters
        except (trio.BrokenResourceError, OSError, RedisConnectionError) as exc:
            if isinstance(exc, RedisConnectionError):
                error = exc
            else:
                error = RedisConnectionError(f"pub/sub to {self._address} broke: {exc}")
                error.__cause__ = exc
            self._fail(conn, error)
        finally:
            # receive_some consumes nothing when cancelled, so a cancelled reader loses no data;
            # whoever still waits takes over the reading.
            self._reading = False
            self._progress.unpark_all()

    def _dispatch(self, conn: RedisConnection, reply: object) -> None:
        if type(reply) is list:
            kind = reply[0]
            if kind == _MESSAGE:
                if reply[1] in self._channels:
                    self._push(conn, (reply[1], reply[2]))
                return
            if kind == _PMESSAGE:
                if reply[1] in self._patterns:
                    self._push(conn, (reply[2], reply[3]))
                return
            if kind in _CONFIRMATIONS:
                self._confirm(conn, kind)
                return
        elif reply == b"PONG":  # PING outside subscribe mode (no subscriptions left)
            self._confirm(conn, b"pong")
            return
        elif type(reply) is RedisReplyError:
            if self._waiters:
                waiter = self._waiters.popleft()
                waiter.error = reply
                waiter.done = True
            return
        self._fail(conn, RedisProtocolError(f"unexpected pub/sub reply {reply!r:.200}"))

    def _push(self, conn: RedisConnection, message: Message) -> None:
        self._messages.append(message)
        if len(self._messages) > self._max_buffered:
            self._fail(
                conn,
                RedisConnectionError(
                    f"pub/sub consumer too slow: more than {self._max_buffered} messages buffered"
                ),
            )

    def _confirm(self, conn: RedisConnection, kind: bytes) -> None:
        if not self._waiters or self._waiters[0].kind != kind:
            self._fail(conn, RedisProtocolError(f"unexpected pub/sub confirmation {kind!r}"))
            return
        waiter = self._waiters[0]
        waiter.remaining -= 1
        if waiter.remaining == 0:
            self._waiters.popleft()
            waiter.done = True

    def _fail(self, conn: RedisConnection, error: BaseException) -> None:
        if conn is not self._conn or self._error is not None:
            return  # an old connection (replaced by reconnect) or already failed
        self._error = error
        conn.close()
        self._settle_waiters(error)

    def _settle_waiters(self, error: BaseException) -> None:
        waiters, self._waiters = self._waiters, deque()
        for waiter in waiters:
            waiter.error = error
            waiter.done = True
        self._progress.unpark_all()

    # ---- lifetime -------------------------------------------------------------------------------
    async def reconnect(self) -> None:
        """Drop the connection, open a new one and re-subscribe every channel and pattern.

        Buffered messages are kept; anything published while disconnected is lost.
        """
        if self._closed:
            raise trio.ClosedResourceError("the PubSub is closed")
        async with self._write_lock:
            old, self._conn = self._conn, None
            if old is not None:
                old.close()
            self._settle_waiters(RedisConnectionError("pub/sub connection replaced"))
            self._error = None
            await self._connected()
        await self._command(b"subscribe", sorted(self._channels), self._channels)
        await self._command(b"psubscribe", sorted(self._patterns), self._patterns)

    async def aclose(self) -> None:
        """Close the connection; other tasks' iterations end, their waits raise."""
        self._closed = True
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()
        self._settle_waiters(trio.ClosedResourceError("the PubSub is closed"))
        await trio.lowlevel.checkpoint()

    async def __aenter__(self) -> PubSub:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "broken" if self._error else "open"
        return (
            f"<PubSub {self._address} {state} channels={len(self._channels)} "
            f"patterns={len(self._patterns)} buffered={len(self._messages)}>"
        )
