"""`DanmakuClient`: the public face of the SDK (operations, events, lifecycle)."""

from __future__ import annotations

import itertools
import random
import secrets
import ssl
from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import Self

import trio

from engine import protocol as p
from engine.protocol import Since

from ._connection import run_connections
from ._state import ClientConfig, ClientState, ClientStats, JoinWaiter, SendWaiter
from .errors import ClientClosed, ClientError, JoinTimeout, Nacked, SendTimeout
from .events import Ack, Event, Joined
from .reorder import RoomStream


class DanmakuClient:
    """A reconnecting danmaku WebSocket client.

    `url` is a gateway WebSocket URL (`ws://host:port/ws`, `wss://...`) used as is, or an HTTP
    base (`http://host:port`) whose `/v1/dispatch` picks a gateway on every (re)connect.

    Use it as `async with DanmakuClient(url, token=...) as client:`; entering connects and
    raises `ConnectError` or `Unauthorized` when the first connection fails. From then on the
    client reconnects by itself (except after close 4001 / 4003) and resumes every room with
    `since`, so `events()` yields each room's messages in seq order and each seq once.

    Events go through a bounded buffer (`event_buffer`): when the app does not read them, the
    client stops reading the socket (and acks wait behind the messages). A client that never
    reads events (e.g. a pure sender) must pass `receive_events=False`.
    """

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        client_name: str = "py/1.0",
        dispatch_room: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
        # reconnecting
        backoff_base_s: float = 0.5,
        backoff_max_s: float = 30.0,
        jitter: float = 0.5,
        max_reconnect_attempts: int | None = None,
        connect_timeout_s: float = 10.0,
        # operations
        ack_timeout_s: float = 5.0,
        send_attempts: int = 5,
        join_attempts: int = 3,
        # events
        event_buffer: int = 1024,
        receive_events: bool = True,
        rng: random.Random | None = None,
    ) -> None:
        if not 0 <= jitter < 1:
            raise ValueError("jitter must be in [0, 1)")
        if send_attempts < 1 or join_attempts < 1:
            raise ValueError("send_attempts and join_attempts must be at least 1")
        self.config = ClientConfig(
            url=url,
            token=token,
            client_name=client_name,
            dispatch_room=dispatch_room,
            ssl_context=ssl_context,
            backoff_base_s=backoff_base_s,
            backoff_max_s=backoff_max_s,
            jitter=jitter,
            max_reconnect_attempts=max_reconnect_attempts,
            connect_timeout_s=connect_timeout_s,
            ack_timeout_s=ack_timeout_s,
            send_attempts=send_attempts,
            join_attempts=join_attempts,
            event_buffer=event_buffer,
            receive_events=receive_events,
        )
        self._state = ClientState(self.config, rng)
        self._nursery_cm: AbstractAsyncContextManager[trio.Nursery] | None = None
        self._run_scope = trio.CancelScope()
        self._run_done = trio.Event()
        self._cmid_prefix = secrets.token_hex(6)
        self._cmid_counter = itertools.count(1)

    # -- lifecycle ---------------------------------------------------------------------------
    async def __aenter__(self) -> Self:
        if self._nursery_cm is not None:
            raise RuntimeError("a DanmakuClient can be entered only once")
        self._nursery_cm = cm = trio.open_nursery()
        nursery = await cm.__aenter__()
        try:
            await nursery.start(self._run)
        except BaseException:
            nursery.cancel_scope.cancel()
            await cm.__aexit__(None, None, None)
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
        assert self._nursery_cm is not None
        # The body's own exception propagates unwrapped; only a crash of the background task
        # (a bug) comes out of the nursery, as an exception group.
        await self._nursery_cm.__aexit__(None, None, None)

    async def _run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            with self._run_scope:
                await run_connections(self._state, task_status=task_status)
        finally:
            self._run_done.set()

    async def aclose(self) -> None:
        """Close the connection (code 1000) and end `events()`. Idempotent; pending operations
        raise `ClientClosed`."""
        state = self._state
        state.close_requested.set()
        if self._nursery_cm is None:
            state.finish(ClientClosed("client closed", 1000), None)
            return
        with trio.CancelScope(shield=True):
            if state.ws is None:  # connecting or waiting to reconnect: nothing to close nicely
                self._run_scope.cancel()
            with trio.move_on_after(self.config.connect_timeout_s):
                await self._run_done.wait()
            self._run_scope.cancel()
            await self._run_done.wait()

    # -- state -------------------------------------------------------------------------------
    @property
    def stats(self) -> ClientStats:
        """A snapshot of the counters: reconnects, resends, holes_detected, duplicates_dropped..."""
        return self._state.counters.snapshot()

    @property
    def session_id(self) -> str | None:
        """The server's id for the current (or last) connection."""
        return self._state.session_id

    @property
    def user(self) -> str | None:
        return self._state.user

    @property
    def guest(self) -> bool | None:
        return self._state.guest

    @property
    def heartbeat_ms(self) -> int | None:
        return self._state.heartbeat_ms

    @property
    def connected(self) -> bool:
        """True while a welcomed connection is ready for frames."""
        return self._state.ws is not None

    @property
    def closed(self) -> ClientClosed | None:
        """Why the client is closed (`Unauthorized`, `Kicked`, `ClientClosed`), or None."""
        return self._state.closed

    def position(self, room: str) -> Since | None:
        """Where the client stands in `room` (the last seq handed over), None if unknown; save
        it to resume later with `join(room, since=...)`. Events still on their way to the app
        (read from the socket, not yet in the event buffer) are not counted."""
        stream = self._state.rooms.get(room)
        return None if stream is None else stream.delivered

    def events(self) -> trio.MemoryReceiveChannel[Event]:
        """The stream of events (`async for event in client.events()`); ends after the client
        closes. There is one stream per client: share it, do not read it from two tasks."""
        return self._state.recv_ch

    def new_cmid(self) -> str:
        """A cmid unique to this client (and, with overwhelming probability, to its user)."""
        return f"{self._cmid_prefix}-{next(self._cmid_counter)}"

    # -- operations --------------------------------------------------------------------------
    async def join(self, room: str, *, since: Since | None = None) -> Joined:
        """Join `room` (or re-join it with its current position) and wait for `joined`.

        With `since`, resume from a saved position instead. The room stays joined across
        reconnects until `leave()`. Raises `JoinRefused`, `JoinTimeout` or `ClientClosed`.
        """
        state = self._state
        state.check_open()
        if not p.valid_room(room):
            raise ValueError(f"invalid room id: {room!r}")
        stream = state.rooms.get(room)
        if stream is None or since is not None:
            stream = RoomStream(room, since.epoch if since else None, since.seq if since else 0)
            state.rooms[room] = stream
        waiter = state.join_waiters.get(room)
        if waiter is None:
            waiter = state.join_waiters[room] = JoinWaiter()
        for _ in range(self.config.join_attempts):
            ws = state.ws
            if ws is not None:  # else the connection loop joins it once connected
                await state.write(ws, p.client_join(room, stream.since()))
            with trio.move_on_after(self.config.ack_timeout_s):
                await waiter.event.wait()
            if waiter.event.is_set():
                break
        else:
            if state.join_waiters.get(room) is waiter:
                del state.join_waiters[room]
            if state.rooms.get(room) is stream:
                del state.rooms[room]
            raise JoinTimeout(room, "join", self.config.join_attempts)
        if waiter.error is not None:
            raise waiter.error
        assert waiter.joined is not None
        return waiter.joined

    async def leave(self, room: str) -> None:
        """Leave `room`: its events stop at once, it is not re-joined after a reconnect. Waits
        (up to `ack_timeout_s`) for the server's `left`; sends already made stay pending."""
        state = self._state
        state.check_open()
        stream = state.rooms.pop(room, None)
        waiter = state.join_waiters.pop(room, None)
        if waiter is not None:
            waiter.settle(error=ClientError(f"left {room!r} while joining it"))
        ws = state.ws
        if stream is None or ws is None:
            return
        event = state.leave_waiters.setdefault(room, trio.Event())
        if await state.write(ws, p.client_leave(room)):
            with trio.move_on_after(self.config.ack_timeout_s):
                await event.wait()

    async def send(
        self,
        room: str,
        text: str,
        *,
        mode: str = "scroll",
        color: str = "#ffffff",
        offset_ms: int = 0,
        kind: str | None = None,
        cmid: str | None = None,
    ) -> Ack:
        """Send a message and wait for its `ack` (its `seq` is the one it is delivered with).

        The same frame (same cmid) is resent after every `ack_timeout_s` without an answer and
        after each reconnect; the server sequences it once. Raises `Nacked` on a nack,
        `SendTimeout` after `send_attempts` timeouts, `ClientClosed` if the client closes.
        The room must have been joined (else the server nacks `not_joined`).
        """
        state = self._state
        state.check_open()
        if not p.valid_room(room):
            raise ValueError(f"invalid room id: {room!r}")
        if cmid is None:
            cmid = self.new_cmid()
        elif not p.valid_cmid(cmid):
            raise ValueError(f"invalid cmid: {cmid!r}")
        frame = p.client_send(room, cmid, text, mode, color, offset_ms, kind)
        entry = state.pending.add(room, cmid, frame, trio.current_time())
        waiter = state.send_waiters[cmid] = SendWaiter()
        try:
            timeouts = 0
            while True:
                ws = state.ws
                if ws is not None and await state.write(ws, frame):
                    if entry.attempts:
                        state.counters.resends += 1
                    state.pending.mark_sent(cmid, trio.current_time())
                with trio.move_on_after(self.config.ack_timeout_s):
                    await waiter.event.wait()
                if waiter.event.is_set():
                    break
                timeouts += 1
                if timeouts >= self.config.send_attempts:
                    raise SendTimeout(cmid, entry.attempts)
        finally:
            del state.send_waiters[cmid]
            if not waiter.event.is_set():
                state.pending.discard(cmid)
        outcome = waiter.outcome
        if isinstance(outcome, Ack):
            return outcome
        if isinstance(outcome, ClientClosed):
            raise outcome
        assert outcome is not None
        raise Nacked(outcome.code, outcome.message, outcome.retry_after_ms)
