"""The connection loop: connect, hello, resume, read and dispatch frames, heartbeat, reconnect.

One task runs `run_connections` for the client's whole life. Per connection it:
1. resolves the gateway (an `http(s)://` base goes through `/v1/dispatch`), opens the WebSocket,
   sends `hello` and waits for `welcome` (an `unauthorized` answer or close 4001 is terminal);
2. re-joins every room with `since` = its `RoomStream` position, *then* marks the connection
   ready and resends every unacked send byte for byte (same cmid). The order matters: the server
   handles a connection's frames in order, so each resent send arrives after its room's join;
3. reads frames until the connection closes, feeding room frames to the `RoomStream`s (which
   dedupe and order them) and settling acks, nacks, joins and leaves; a hole triggers a `join`
   with `since` on the same connection. A frame's events are handed to the app one by one
   (bounded buffer: a slow app stops the reading), each reported to its `RoomStream` once the
   app has it; if the connection ends in the middle, `ClientState.connection_lost` rewinds the
   streams to what the app got, so the resume asks for the rest again;
4. pings every `heartbeat_ms / 2`, and drops a connection silent for 2.5 x `heartbeat_ms`. Time
   spent handing events to the app is not silence: the SDK is not reading the socket then.
After a close other than 4001 / 4003 it waits `min(max, base * 2**n) * uniform(1-j, 1+j)`
(n = consecutive failures; a connection that stayed up 5 s resets it) and starts again.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import trio
from trio_websocket import ConnectionClosed, HandshakeError, WebSocketConnection, wrap_client_stream

from engine import protocol as p

from ._dispatch import dispatch, is_http_url
from ._state import ClientState, log
from .errors import ClientClosed, ConnectError, JoinRefused, Kicked, ProtocolViolation, Unauthorized
from .events import Disconnected, Joined, Message, Reconnected, ServerError

# Errors of a join that an `error` frame without a `room` field can only be the answer to.
_JOIN_ERROR_CODES = frozenset({p.ERR_UNAUTHORIZED, p.ERR_BAD_REQUEST})

# A connection up this long resets the reconnect backoff; shorter ones keep it growing, so a
# server that accepts and then drops (flooding, overload) is not hammered.
_STABLE_S = 5.0

# What a connection may fail with, from us or from trio-websocket's reader task.
_CONNECTION_ERRORS = (HandshakeError, ConnectionClosed, OSError, trio.BrokenResourceError)


def backoff_delay(state: ClientState, failures: int) -> float:
    cfg = state.config
    base: float = min(cfg.backoff_max_s, cfg.backoff_base_s * 2.0 ** min(failures, 62))
    return max(0.0, base * state.rng.uniform(1 - cfg.jitter, 1 + cfg.jitter))


async def _resolve(state: ClientState) -> str:
    cfg = state.config
    if not is_http_url(cfg.url):
        return cfg.url
    room = cfg.dispatch_room or next(iter(state.rooms), None)
    with trio.move_on_after(cfg.connect_timeout_s):
        answer = await dispatch(cfg.url, room, ssl_context=cfg.ssl_context)
        return answer.pick(state.rng)
    raise ConnectError(f"dispatch at {cfg.url} timed out")


async def _handshake(state: ClientState, ws: WebSocketConnection) -> None:
    cfg = state.config
    await ws.send_message(p.client_hello(cfg.token, cfg.client_name).decode())
    with trio.move_on_after(cfg.connect_timeout_s):
        try:
            data = await ws.get_message()
        except ConnectionClosed as exc:
            code = exc.reason.code if exc.reason else 1006
            if code == p.CLOSE_UNAUTHORIZED:
                raise Unauthorized(f"closed with {code} before welcome", code) from None
            raise
        frame = p.decode_server_frame(data)
        if frame["op"] == "welcome":
            state.session_id = str(frame.get("session", ""))
            state.user = str(frame.get("user", ""))
            state.guest = bool(frame.get("guest", False))
            hb = frame.get("heartbeat_ms")
            state.heartbeat_ms = hb if type(hb) is int and hb > 0 else 30_000
            state.last_rx = trio.current_time()
            return
        if frame["op"] == "error" and frame.get("code") == p.ERR_UNAUTHORIZED:
            raise Unauthorized(f"unauthorized: {frame.get('message', '')}", p.CLOSE_UNAUTHORIZED)
        raise ConnectError(f"expected welcome, got {frame['op']!r}")
    raise ConnectError("no welcome within the connect timeout")


@dataclass(slots=True)
class _Attempt:
    """How one connection attempt ended (expected failures are values, not exceptions)."""

    connected: bool = False
    welcomed_at: float = 0.0
    code: int = 1006
    reason: str = "connection lost"
    error: BaseException | None = None


async def _open_stream(
    state: ClientState, url: str
) -> tuple[trio.SocketStream | trio.SSLStream[trio.SocketStream], str, str]:
    cfg = state.config
    parts = urlsplit(url)
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise ConnectError(f"not a ws:// or wss:// URL: {url!r}")
    tls = parts.scheme == "wss"
    port = parts.port or (443 if tls else 80)
    resource = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    host_header = parts.netloc.rpartition("@")[2]
    with trio.move_on_after(cfg.connect_timeout_s):
        if tls:
            ctx = cfg.ssl_context or ssl.create_default_context()
            stream: trio.SocketStream | trio.SSLStream[trio.SocketStream]
            stream = await trio.open_ssl_over_tcp_stream(
                parts.hostname, port, ssl_context=ctx, https_compatible=True
            )
        else:
            stream = await trio.open_tcp_stream(parts.hostname, port)
        return stream, host_header, resource
    raise ConnectError(f"connecting to {url} timed out")


async def _attempt(state: ClientState, on_welcome: Callable[[], bool]) -> _Attempt:
    """One connection, from dispatch to close. The TCP stream is ours (trio-websocket's
    wrapper): it is closed here whatever happens, also when the server closed first."""
    att = _Attempt()
    try:
        url = await _resolve(state)
        stream, host, resource = await _open_stream(state, url)
    except (ConnectError, OSError) as exc:
        att.error = exc
        return att
    try:
        try:
            async with trio.open_nursery() as nursery:
                await _run_websocket(state, nursery, stream, host, resource, on_welcome, att)
                nursery.cancel_scope.cancel()  # trio-websocket's reader, if still running
        except* _CONNECTION_ERRORS as group:  # raised by trio-websocket's reader task
            att.error = att.error or group.exceptions[0]
    finally:
        with trio.CancelScope(shield=True):
            await trio.aclose_forcefully(stream)
    return att


async def _run_websocket(
    state: ClientState,
    nursery: trio.Nursery,
    stream: trio.SocketStream | trio.SSLStream[trio.SocketStream],
    host: str,
    resource: str,
    on_welcome: Callable[[], bool],
    att: _Attempt,
) -> None:
    cfg = state.config
    try:
        with trio.move_on_after(cfg.connect_timeout_s):
            ws = await wrap_client_stream(
                nursery, stream, host, resource,
                message_queue_size=64, max_message_size=cfg.max_message_bytes,
            )  # fmt: skip
            await _handshake(state, ws)
            att.connected = True
        if not att.connected:
            raise ConnectError("no WebSocket handshake and welcome within the connect timeout")
        att.welcomed_at = trio.current_time()
        att.code, att.reason = await _serve(state, ws, reconnected=on_welcome())
    except (Unauthorized, ConnectError, ValueError, *_CONNECTION_ERRORS) as exc:
        att.error = exc
        if isinstance(exc, ConnectionClosed) and exc.reason is not None:
            att.code, att.reason = exc.reason.code, exc.reason.reason or ""


async def run_connections(
    state: ClientState, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    """The client's background task; `started()` after the first welcome. Errors of the first
    connection are raised (ConnectError / Unauthorized); later ones lead to a reconnect."""
    cfg = state.config
    failures = 0
    started = False
    final: ClientClosed | None = None

    def on_welcome() -> bool:
        """Count the connection; True if it is a reconnect."""
        nonlocal started
        state.counters.connects += 1
        if not started:
            started = True
            task_status.started()
            return False
        state.counters.reconnects += 1
        return True

    try:
        while not state.close_requested.is_set():
            try:
                att = await _attempt(state, on_welcome)
            finally:
                state.connection_lost()
            if isinstance(att.error, Unauthorized):
                if not started:
                    raise att.error
                final = att.error
                code = p.CLOSE_UNAUTHORIZED
                await state.emit(Disconnected(code, str(final), will_reconnect=False))
                break
            if not started:
                raise ConnectError(f"cannot connect to {cfg.url}: {att.error!r}") from att.error
            if state.close_requested.is_set():
                break
            if att.error is not None:
                log.info("connection failed or lost: %r", att.error)
            code, reason = att.code, att.reason
            if code in (p.CLOSE_UNAUTHORIZED, p.CLOSE_KICKED):
                cls = Unauthorized if code == p.CLOSE_UNAUTHORIZED else Kicked
                final = cls(f"closed by the server with {code} {reason}".strip(), code)
                await state.emit(Disconnected(code, reason, will_reconnect=False))
                break
            if att.connected:
                await state.emit(Disconnected(code, reason, will_reconnect=True))
                if trio.current_time() - att.welcomed_at >= _STABLE_S:
                    failures = 0  # a connection that lasted resets the backoff
            failures += 1
            if cfg.max_reconnect_attempts is not None and failures > cfg.max_reconnect_attempts:
                final = ClientClosed(f"gave up after {failures - 1} reconnect attempts", code)
                break
            with trio.move_on_after(backoff_delay(state, failures - 1)):
                await state.close_requested.wait()
    finally:
        if final is None:
            state.finish(ClientClosed("client closed", 1000), 1000)
        else:
            state.finish(final, None)


async def _serve(
    state: ClientState, ws: WebSocketConnection, *, reconnected: bool
) -> tuple[int, str]:
    """One welcomed connection, until it closes: returns its close code and reason."""
    code, reason = 1006, "connection lost"
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_heartbeat, state, ws, nursery.cancel_scope)
        nursery.start_soon(_close_on_request, state, ws, nursery.cancel_scope)
        written: set[str] = set()
        while todo := [r for r in state.rooms if r not in written]:
            for room in todo:
                written.add(room)
                stream = state.rooms.get(room)
                if stream is not None:
                    await state.write(ws, p.client_join(room, stream.since()))
        # No await between the last check above and here: every room is (being) re-joined.
        state.ws = ws
        for entry in state.pending:
            if entry.attempts:
                state.counters.resends += 1
            if await state.write(ws, entry.frame):
                state.pending.mark_sent(entry.cmid, trio.current_time())
        if reconnected:  # after the heartbeat started: the app may be slow to take it
            await state.emit(Reconnected(state.session_id or "", state.counters.reconnects))
        try:
            while True:
                data = await ws.get_message()
                state.last_rx = trio.current_time()
                await _on_data(state, ws, data)
        except ConnectionClosed as exc:
            if exc.reason is not None:
                code, reason = exc.reason.code, exc.reason.reason or ""
        finally:
            state.ws = None
            nursery.cancel_scope.cancel()
    if state.close_requested.is_set():
        code, reason = 1000, "client closed"
    return code, reason


async def _heartbeat(state: ClientState, ws: WebSocketConnection, scope: trio.CancelScope) -> None:
    interval = (state.heartbeat_ms or 30_000) / 2000
    t = 0
    while True:
        await trio.sleep(interval)
        # Silence counts only while the SDK waits for the socket (see `ClientState.last_rx`).
        silent = not state.handing_over and trio.current_time() - state.last_rx > interval * 5
        if silent:  # 2.5 x heartbeat_ms
            log.warning("no frame from the server for %.1f s: reconnecting", interval * 5)
            scope.cancel()
            return
        t += 1
        await state.write(ws, p.client_ping(t))


async def _close_on_request(
    state: ClientState, ws: WebSocketConnection, scope: trio.CancelScope
) -> None:
    await state.close_requested.wait()
    state.ws = None
    with trio.move_on_after(state.config.connect_timeout_s):
        await ws.aclose(1000, "client closing")
    scope.cancel()


async def _on_data(state: ClientState, ws: WebSocketConnection, data: str | bytes) -> None:
    try:
        frame = p.decode_server_frame(data)
    except ValueError:
        state.counters.protocol_violations += 1
        log.warning("undecodable server frame dropped: %r", data[:200])
        return
    try:
        await _on_frame(state, ws, frame)
    except ProtocolViolation as exc:
        state.counters.protocol_violations += 1
        log.warning("server frame breaks the contract (%s): %r", exc, frame)


async def _on_frame(state: ClientState, ws: WebSocketConnection, frame: dict[str, Any]) -> None:
    op = frame["op"]
    if op in ("batch", "joined", "reset"):
        await _on_room_frame(state, ws, frame)
    elif op in ("ack", "nack"):
        settled = state.pending.settle(frame)
        if settled is None:
            state.counters.duplicate_acks += 1
            return
        entry, outcome = settled
        waiter = state.send_waiters.get(entry.cmid)
        if waiter is not None:
            waiter.settle(outcome)
    elif op == "left":
        event = state.leave_waiters.pop(str(frame.get("room")), None)
        if event is not None:
            event.set()
    elif op == "error":
        await _on_error(state, frame)
    # pong, and ops added by later protocol versions, need nothing.


async def _on_room_frame(
    state: ClientState, ws: WebSocketConnection, frame: dict[str, Any]
) -> None:
    room = frame.get("room")
    stream = state.rooms.get(room) if isinstance(room, str) else None
    if stream is None:
        return  # a room the app has left
    try:
        result = stream.feed(frame)
    except ProtocolViolation:
        since = stream.request_resync()
        if since is not None:
            state.counters.holes_detected += 1
            await state.write(ws, p.client_join(stream.room, since))
        raise
    if result.resync is not None:
        # Before handing events over: the app may be slow, the resync should not wait for it.
        state.counters.holes_detected += 1
        log.info("hole in %s after seq %d: re-joining", stream.room, result.resync.seq)
        await state.write(ws, p.client_join(stream.room, result.resync))
    state.counters.duplicates_dropped += result.duplicates
    for event, position in zip(result.events, result.positions, strict=True):
        if isinstance(event, Joined):
            waiter = state.join_waiters.pop(stream.room, None)
            if waiter is not None:
                waiter.settle(joined=event)
        # Cancelled here (the connection is ending) means not handed over: the stream's
        # position stays before it, and the rewind makes the resume deliver it again.
        await state.emit(event)
        stream.handed_over(position)
        if isinstance(event, Message):
            state.counters.messages += 1


async def _on_error(state: ClientState, frame: dict[str, Any]) -> None:
    code = str(frame.get("code", ""))
    message = str(frame.get("message", ""))
    room = frame.get("room")
    # A join is answered in order and synchronously by the server, so an error that names a
    # waiting room, or a join-only code without a room while joins wait, answers the oldest.
    target: str | None = None
    if isinstance(room, str) and room in state.join_waiters:
        target = room
    elif room is None and code in _JOIN_ERROR_CODES and state.join_waiters:
        target = next(iter(state.join_waiters))
    if target is not None:
        waiter = state.join_waiters.pop(target)
        state.rooms.pop(target, None)
        waiter.settle(error=JoinRefused(target, code, message))
        return
    await state.emit(ServerError(code, message, room if isinstance(room, str) else None))

