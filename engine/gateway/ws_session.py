"""The protocol state machine of one WebSocket session (hello, heartbeats, rooms, sends).

Bad input never escapes as an exception: the codec returns a ``ProtocolError`` value that becomes
an ``error`` frame (or a ``nack`` for a malformed ``send`` whose room and cmid are known). Only an
unauthenticated connection (close 4001), a silent one (4002) or repeated abuse (4008) is closed.
"""

from __future__ import annotations

import logging
import secrets
import time
from dataclasses import replace
from typing import TYPE_CHECKING

import orjson
import trio

from engine import protocol as p
from engine.errors import TokenError
from engine.gateway import moderation_ops
from engine.gateway.conn import ConnectionGone, TooLarge, WsConn
from engine.gateway.room_hub import RoomHub
from engine.tokens import Identity, verify_token
from engine.wsframe import encode_text_frame

if TYPE_CHECKING:
    from engine.gateway.app import Gateway

log = logging.getLogger("danmaku.session")


class Session:
    __slots__ = (
        "_token_at", "_tokens", "conn", "done", "errors", "gw", "id", "identity", "rooms"
    )

    def __init__(self, gw: Gateway, conn: WsConn) -> None:
        self.gw = gw
        self.conn = conn
        self.id = secrets.token_hex(8)
        self.identity: Identity | None = None
        self.rooms: dict[str, RoomHub] = {}
        self.errors = 0
        self._tokens = float(gw.settings.frames_burst)
        self._token_at = 0.0
        self.done = trio.Event()

    def send(self, payload: bytes) -> None:
        self.conn.write(encode_text_frame(payload))

    async def run(self) -> None:
        gw = self.gw
        s = gw.settings
        try:
            with trio.CancelScope() as scope:
                self.conn.scope = scope
                if not await self._hello(trio.current_time() + s.hello_timeout_ms / 1000):
                    return
                gw.sessions[self.id] = self
                gw.metrics.connections.inc()
                try:
                    await self._loop(s.heartbeat_ms * 2.5 / 1000)
                finally:
                    gw.metrics.connections.dec()
                    del gw.sessions[self.id]
        except ConnectionGone:
            pass
        finally:
            with trio.CancelScope(shield=True):
                await self._cleanup()
            self.done.set()

    async def _cleanup(self) -> None:
        for room, hub in list(self.rooms.items()):
            hub.remove_member(self.conn)
            self.gw.left_room_nowait(room)
        self.rooms.clear()
        if self.identity is not None and not self.identity.guest:
            self.gw.registry.unregister(self)
        if self.conn.close_code == 4009:
            self.gw.metrics.queue_drops.inc()
        await self.conn.aclose()

    async def _hello(self, deadline: float) -> bool:
        s = self.gw.settings
        while True:
            with trio.move_on_at(deadline):
                incoming = await self.conn.receive()
                break
            await self.conn.close(p.CLOSE_UNAUTHORIZED, "no hello")
            return False
        for item in incoming:
            event = self._decode(item)
            if not isinstance(event, p.Hello):
                self.send(p.encode_error(p.ERR_UNAUTHORIZED, "send hello first"))
                await self.conn.close(p.CLOSE_UNAUTHORIZED, "no hello")
                return False
            if event.token:
                try:
                    ident = verify_token(self.gw.secret, event.token)
                    self.identity = replace(ident, name=p.sanitize_name(ident.name, self.gw.limits))
                    if await moderation_ops.token_revoked(self.gw, ident):
                        raise TokenError("token revoked")
                except TokenError as exc:
                    self.identity = None
                    self.send(p.encode_error(p.ERR_UNAUTHORIZED, str(exc)))
                    await self.conn.close(p.CLOSE_UNAUTHORIZED, "bad token")
                    return False
            else:
                guest = "guest-" + secrets.token_hex(6)
                self.identity = Identity(user=guest, name=guest, guest=True)
            self.send(
                p.encode_welcome(
                    self.id, self.identity.user, self.identity.guest, s.heartbeat_ms,
                    s.max_frame_bytes, node=self.gw.node_id, limits=self.gw.limits.to_wire(),
                )
            )
            if not self.identity.guest:
                await self.gw.registry.register(self)
            for rest in incoming[incoming.index(item) + 1:]:
                await self._handle(rest)
            return True
        return False  # pragma: no cover - receive() never returns an empty list

    async def _loop(self, silence_s: float) -> None:
        while True:
            with trio.move_on_after(silence_s):
                incoming = await self.conn.receive()
                for item in incoming:
                    await self._handle(item)
                    if self.conn.closed:
                        return
                continue
            await self.conn.close(p.CLOSE_HEARTBEAT_TIMEOUT, "heartbeat timeout")
            return

    def _decode(self, item: str | bytes | TooLarge) -> p.ClientEvent | p.ProtocolError:
        if isinstance(item, TooLarge):
            return p.ProtocolError(
                p.ERR_TOO_LARGE, f"frame of {item.size} bytes is over the limit", None, None, None
            )
        return p.decode_client_frame(item, self.gw.limits, extensions=True)

    def _flooding(self) -> bool:
        """A per-connection token bucket over every frame received."""
        s = self.gw.settings
        now = trio.current_time()
        self._tokens = min(
            float(s.frames_burst), self._tokens + (now - self._token_at) * s.frames_per_s
        )
        self._token_at = now
        if self._tokens < 1.0:
            return True
        self._tokens -= 1.0
        return False

    async def _handle(self, item: str | bytes | TooLarge) -> None:
        if self._flooding():
            self.errors += 1
            if self.errors > self.gw.settings.errors_before_close:
                await self.conn.close(p.CLOSE_FLOODING, "flooding")
                return
            self.send(p.encode_error(p.ERR_RATE_LIMITED, "too many frames; slow down"))
            return
        event = self._decode(item)
        if isinstance(event, p.ProtocolError):
            await self._reject(event)
        elif isinstance(event, p.Ping):
            self.send(p.encode_pong(event.t, int(time.time() * 1000)))
        elif isinstance(event, p.Send):
            await self._on_send(event)
        elif isinstance(event, p.Join):
            await self._on_join(event)
        elif isinstance(event, p.Leave):
            await self._on_leave(event.room)
        elif isinstance(event, p.Mod):
            await moderation_ops.handle_mod(self, event)
        elif isinstance(event, p.Hello):
            self.send(p.encode_error(p.ERR_BAD_REQUEST, "already said hello"))

    async def _reject(self, err: p.ProtocolError) -> None:
        self.gw.metrics.errors.labels(code=err.code).inc()
        self.send(p.encode_protocol_error(err))
        self.errors += 1
        if self.errors > self.gw.settings.errors_before_close:
            await self.conn.close(p.CLOSE_FLOODING, "too many bad frames")

    async def _on_join(self, event: p.Join) -> None:
        ident = self.identity
        assert ident is not None
        room = event.room
        if not ident.may_enter(room):
            self.send(
                p.encode_error(p.ERR_UNAUTHORIZED, f"token not valid for room {room}", room=room)
            )
            return
        if room in self.rooms:
            await self._on_leave(room, quiet=True)
        if len(self.rooms) >= self.gw.settings.max_rooms_per_conn:
            self.send(
                p.encode_error(p.ERR_BAD_REQUEST, "too many rooms on one connection", room=room)
            )
            return
        hub = await self.gw.hubs.hub_for(room)
        epoch, last, online = await self.gw.joined_room(room, hub, +1)
        if self.conn.closed:
            hub.remove_member(self.conn)
            await self.gw.left_room(room, hub)
            return
        self.send(p.encode_joined(room, epoch, last, online))
        since = event.since
        if since is None:
            next_seq = last + 1
        elif since.epoch != epoch:
            self.send(p.encode_reset(room, epoch, last, "epoch_changed"))
            next_seq = last + 1
        else:
            next_seq = min(since.seq, last) + 1
        hub.add_member(self.conn, next_seq, ident.user)
        self.rooms[room] = hub

    async def _on_leave(self, room: str, *, quiet: bool = False) -> None:
        hub = self.rooms.pop(room, None)
        if hub is not None:
            hub.remove_member(self.conn)
            await self.gw.left_room(room, hub)
        if not quiet:
            self.send(p.encode_left(room))

    async def _on_send(self, event: p.Send) -> None:
        ident = self.identity
        assert ident is not None
        if ident.guest:
            self.send(p.encode_nack(event.room, event.cmid, p.NACK_UNAUTHORIZED,
                                    "guests cannot send; log in"))
            return
        if event.room not in self.rooms:
            self.send(p.encode_nack(event.room, event.cmid, p.NACK_NOT_JOINED,
                                    "join the room before sending"))
            return
        body = orjson.dumps(
            {
                "text": event.body.text,
                "mode": event.body.mode,
                "color": event.body.color,
                "offset_ms": event.body.offset_ms,
            }
        )
        if not self.gw.submit(ident, self.id, event.room, event.cmid, event.kind, body):
            self.send(p.encode_nack(event.room, event.cmid, p.NACK_RATE_LIMITED,
                                    "gateway busy, retry later", 1000))

    def deliver_reply(self, payload: bytes) -> None:
        self.send(payload)
