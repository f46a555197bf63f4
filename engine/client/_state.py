"""State shared by the client's public operations and its connection loop (one trio run).

Who writes what: the connection loop owns `ws` (set only while a welcomed connection is ready
for the app's frames), the welcome fields and the counters of reconnects; the app's operations
add rooms, waiters and pending sends, and the loop settles them from server frames. Everything
runs in one trio thread, so there are no locks: invariants hold between awaits.
"""

from __future__ import annotations

import contextlib
import logging
import random
import ssl
from dataclasses import dataclass, field

import trio
from trio_websocket import ConnectionClosed, WebSocketConnection

from .errors import ClientClosed, ClientError
from .events import Ack, Disconnected, Event, Joined
from .reorder import Nack, PendingSends, RoomStream

log = logging.getLogger("danmaku.client")


@dataclass(frozen=True, slots=True)
class ClientConfig:
    """Every knob of a `DanmakuClient`, with units in the names."""

    url: str
    token: str | None = None
    client_name: str = "py/1.0"
    dispatch_room: str | None = None
    ssl_context: ssl.SSLContext | None = None
    # reconnecting: delay = min(max, base * 2**n) * uniform(1 - jitter, 1 + jitter)
    backoff_base_s: float = 0.5
    backoff_max_s: float = 30.0
    jitter: float = 0.5
    max_reconnect_attempts: int | None = None  # consecutive failures; None: forever
    connect_timeout_s: float = 10.0
    # operations
    ack_timeout_s: float = 5.0
    send_attempts: int = 5
    join_attempts: int = 3
    # events
    event_buffer: int = 1024
    receive_events: bool = True
    max_message_bytes: int = 1 << 22


@dataclass(frozen=True, slots=True)
class ClientStats:
    """A snapshot of the client's counters."""

    connects: int = 0
    reconnects: int = 0
    resends: int = 0
    holes_detected: int = 0
    duplicates_dropped: int = 0
    duplicate_acks: int = 0
    messages: int = 0
    protocol_violations: int = 0


@dataclass(slots=True)
class Counters:
    connects: int = 0
    reconnects: int = 0
    resends: int = 0
    holes_detected: int = 0
    duplicates_dropped: int = 0
    duplicate_acks: int = 0
    messages: int = 0
    protocol_violations: int = 0

    def snapshot(self) -> ClientStats:
        return ClientStats(
            connects=self.connects,
            reconnects=self.reconnects,
            resends=self.resends,
            holes_detected=self.holes_detected,
            duplicates_dropped=self.duplicates_dropped,
            duplicate_acks=self.duplicate_acks,
            messages=self.messages,
            protocol_violations=self.protocol_violations,
        )


@dataclass(slots=True)
class JoinWaiter:
    event: trio.Event = field(default_factory=trio.Event)
    joined: Joined | None = None
    error: ClientError | None = None

    def settle(self, joined: Joined | None = None, error: ClientError | None = None) -> None:
        if not self.event.is_set():
            self.joined, self.error = joined, error
            self.event.set()


@dataclass(slots=True)
class SendWaiter:
    event: trio.Event = field(default_factory=trio.Event)
    outcome: Ack | Nack | ClientClosed | None = None

    def settle(self, outcome: Ack | Nack | ClientClosed) -> None:
        if not self.event.is_set():
            self.outcome = outcome
            self.event.set()


class ClientState:
    def __init__(self, config: ClientConfig, rng: random.Random | None = None) -> None:
        self.config = config
        self.rng = rng or random.Random()
        self.rooms: dict[str, RoomStream] = {}
        self.join_waiters: dict[str, JoinWaiter] = {}
        self.leave_waiters: dict[str, trio.Event] = {}
        self.pending = PendingSends()
        self.send_waiters: dict[str, SendWaiter] = {}
        self.counters = Counters()
        # The ready connection (welcomed, rooms re-joined), or None while there is none.
        self.ws: WebSocketConnection | None = None
        # The silence watchdog counts from `last_rx`: the last frame received or the end of the
        # last hand-over to the app, whichever is later; and not at all while `handing_over`
        # (the SDK is then not reading the socket: a slow app is not a silent server).
        self.last_rx = 0.0
        self.handing_over = False
        self.session_id: str | None = None
        self.user: str | None = None
        self.guest: bool | None = None
        self.heartbeat_ms: int | None = None
        self.closed: ClientClosed | None = None
        self.close_requested = trio.Event()
        self.send_ch, self.recv_ch = trio.open_memory_channel[Event](config.event_buffer)

    def check_open(self) -> None:
        if self.closed is not None:
            raise self.closed
        if self.close_requested.is_set():
            raise ClientClosed("client is closing")

    async def emit(self, event: Event) -> None:
        """Hand an event to the app; waits while the app's buffer is full (backpressure).

        Returns once the event is in the app's buffer, and raises (Cancelled) only if it is
        not: a trio memory channel's `send` hands the value over or fails, never both. The
        connection loop relies on that to track what the app really got.
        """
        if not self.config.receive_events:
            return
        self.handing_over = True
        try:
            # A closed channel means the app closed its side: nobody listens.
            with contextlib.suppress(trio.ClosedResourceError, trio.BrokenResourceError):
                await self.send_ch.send(event)
        finally:
            self.handing_over = False
            self.last_rx = trio.current_time()  # the SDK reads the socket again from now

    @staticmethod
    async def write(ws: WebSocketConnection, data: bytes) -> bool:
        """Write one frame; False when that connection is already closed (the loop notices)."""
        try:
            await ws.send_message(data.decode())
        except ConnectionClosed:
            return False
        return True

    def connection_lost(self) -> None:
        self.ws = None
        self.handing_over = False
        for stream in self.rooms.values():
            # A hand-over cut short by the connection's end dropped events: resume before them.
            if stream.rewind():
                log.info("%s: resuming from %s (last handed over)", stream.room, stream.since())
        for event in self.leave_waiters.values():
            event.set()  # a room left on a dead connection is not re-joined: it is left
        self.leave_waiters.clear()

    def finish(self, exc: ClientClosed, code: int | None) -> None:
        """Terminal: fail every waiter with `exc`, tell the app, end its event stream."""
        if self.closed is not None:
            return
        self.closed = exc
        self.ws = None
        for waiter in self.send_waiters.values():
            waiter.settle(exc)
        for jw in self.join_waiters.values():
            jw.settle(error=exc)
        for event in self.leave_waiters.values():
            event.set()
        self.join_waiters.clear()
        self.leave_waiters.clear()
        if self.config.receive_events and code is not None:
            try:
                self.send_ch.send_nowait(Disconnected(code, str(exc), will_reconnect=False))
            except (trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError):
                log.debug("final Disconnected event not delivered: the event buffer is full")
        self.send_ch.close()
