"""The gateway: wiring of listener, sessions, hubs, registry, ingress and replies.

It holds no business rules: sends are forwarded to the room's ingress stream and answered when
the worker's reply comes back on this gateway's reply channel.
"""

from __future__ import annotations

import logging
import zlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import trio

from engine import keys
from engine import protocol as p
from engine.config import GatewaySettings, RedisSettings
from engine.gateway import moderation_ops
from engine.gateway.batching import TickPolicy
from engine.gateway.hubs import HubManager
from engine.gateway.ingress_writer import IngressWriter
from engine.gateway.metrics import GatewayMetrics
from engine.gateway.registry import Registry, now_ms, online_field_value, sum_online
from engine.gateway.room_hub import RoomHub
from engine.gateway.ws_session import Session
from engine.ingress import IngressMessage, Reply, decode_replies
from engine.redis import RedisError, ShardSet
from engine.tokens import Identity, Secret

if TYPE_CHECKING:
    from engine.archive.store import ArchiveStore

log = logging.getLogger("danmaku.gateway")

GATEWAYS_KEY = "danmaku:gateways"


@dataclass
class _Waiter:
    """An HTTP send waiting for its worker reply."""

    event: trio.Event
    reply: Reply | None = None


class Gateway:
    def __init__(
        self,
        settings: GatewaySettings,
        redis: RedisSettings,
        shards: ShardSet,
        *,
        secret: Secret,
        node_id: str,
    ) -> None:
        self.settings = settings
        self.redis_settings = redis
        self.shards = shards
        self.secret = secret
        self.node_id = node_id
        self.limits = p.Limits(
            max_frame_bytes=settings.max_frame_bytes,
            max_text_chars=settings.max_text_chars,
            max_rooms_per_conn=settings.max_rooms_per_conn,
        )
        self.metrics = GatewayMetrics(node_id)
        self.sessions: dict[str, Session] = {}
        self.http_waiters: dict[tuple[str, str, str], _Waiter] = {}
        self._sent_at: dict[tuple[str, str, str], float] = {}
        self.registry = Registry(
            shards, node_id, heartbeat_ms=settings.heartbeat_ms, ttl_ms=settings.online_ttl_ms
        )
        self.hubs = HubManager(
            shards,
            node_id=node_id,
            policy=TickPolicy(
                min_window_s=settings.batch_window_ms / 1000,
                max_window_s=settings.max_batch_window_ms / 1000,
                frames_per_s_budget=settings.frames_per_s_budget,
            ),
            ring_size=settings.ring_size,
            shed_after_bytes=settings.shed_after_bytes,
            metrics=self.metrics,
            on_replies=self.on_replies,
        )
        self.ingress = IngressWriter(shards)
        self._dirty_rooms: set[str] = set()
        self._dirty_wake = trio.Event()
        self.nursery: trio.Nursery | None = None
        # The ClickHouse archive (issue 3): replay, /dashboards, deep resume; None = no archive.
        self.archive: ArchiveStore | None = None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Background machinery (pub/sub feeds, refreshes); the listener is separate."""
        async with trio.open_nursery() as nursery:
            self.nursery = nursery
            await nursery.start(self.hubs.run)
            nursery.start_soon(self.ingress.run)
            nursery.start_soon(self._online_writer)
            await self.announce()
            nursery.start_soon(self.registry.refresh_loop, self.local_counts)
            nursery.start_soon(self.registry.run_removals)
            nursery.start_soon(self._announce_loop)
            task_status.started()

    async def announce(self) -> None:
        """Tell dispatch (on the first shard) that this gateway is alive, and where."""
        value = f"{now_ms() + self.settings.online_ttl_ms} {self.public_ws_url()}"
        await self.shards.client_for_index(0).execute("HSET", GATEWAYS_KEY, self.node_id, value)

    async def _announce_loop(self) -> None:
        while True:
            await trio.sleep(self.settings.online_ttl_ms / 3000)
            try:
                await self.announce()
                cutoff = trio.current_time() - 60
                for key, at in list(self._sent_at.items()):
                    if at < cutoff:  # replies that never came (a worker outage)
                        del self._sent_at[key]
            except RedisError as exc:
                log.warning("announce failed: %s", exc)

    async def live_gateways(self) -> list[str]:
        flat = await self.shards.client_for_index(0).execute("HGETALL", GATEWAYS_KEY)
        now = now_ms()
        urls = []
        for value in flat[1::2]:
            expires, _, url = value.decode().partition(" ")
            if expires.isdigit() and int(expires) >= now and url:
                urls.append(url)
        return sorted(set(urls)) or [self.public_ws_url()]

    def origin_allowed(self, origin: str | None) -> bool:
        """Browsers send Origin; an empty allow-list admits every origin."""
        allowed = self.settings.allowed_origins
        return not allowed or origin is None or origin in allowed

    def public_ws_url(self) -> str:
        s = self.settings
        scheme = "wss" if s.tls_cert_file else "ws"
        return s.public_url or f"{scheme}://{s.host}:{s.port}/ws"

    def local_counts(self) -> dict[str, int]:
        return {room: len(hub.members) for room, hub in self.hubs.hubs.items()}

    # ---- rooms ---------------------------------------------------------------------------
    async def joined_room(self, room: str, hub: RoomHub, delta: int) -> tuple[str, int, int]:
        """Record a local join; return the room's (epoch, last seq, online on all gateways)."""
        local = len(hub.members) + delta
        now = now_ms()
        new_epoch = _new_epoch()
        _set, epoch, seq, _hset, online = await hub.redis.pipeline(
            [
                ["SET", keys.epoch_key(room), new_epoch, "NX"],
                ["GET", keys.epoch_key(room)],
                ["GET", keys.seq_key(room)],
                ["HSET", keys.online_key(room), self.node_id,
                 online_field_value(local, now, self.settings.online_ttl_ms)],
                ["HGETALL", keys.online_key(room)],
            ]
        )
        epoch_s = epoch.decode() if epoch else new_epoch
        hub.archive = self.archive  # deep resume reads what the hot buffer lost from it
        if not hub.epoch:
            hub.epoch = epoch_s
        return epoch_s, int(seq or 0), sum_online(online, now)

    async def left_room(self, room: str, hub: RoomHub) -> None:
        """An explicit leave: the room's count is written before ``left`` is answered."""
        value = online_field_value(len(hub.members), now_ms(), self.settings.online_ttl_ms)
        try:
            await hub.redis.execute("HSET", keys.online_key(room), self.node_id, value)
        except Exception as exc:
            log.debug("online update for %s failed: %s", room, exc)

    def left_room_nowait(self, room: str) -> None:
        """A disconnect: the count is written by ``_online_writer``, coalesced per room.

        When thousands of viewers drop at once (a network blip, a swarm ending) this is one
        HSET per room per pass instead of one round trip per viewer competing with sends.
        """
        self._dirty_rooms.add(room)
        self._dirty_wake.set()

    async def _online_writer(self) -> None:
        while True:
            await self._dirty_wake.wait()
            self._dirty_wake = trio.Event()
            rooms, self._dirty_rooms = self._dirty_rooms, set()
            now = now_ms()
            batches: dict[int, list[list[Any]]] = {}
            for room in rooms:
                hub = self.hubs.hubs.get(room)
                value = online_field_value(
                    len(hub.members) if hub else 0, now, self.settings.online_ttl_ms
                )
                batches.setdefault(self.shards.index_for(room), []).append(
                    ["HSET", keys.online_key(room), self.node_id, value]
                )
            for index, commands in batches.items():
                try:
                    await self.shards.client_for_index(index).pipeline(commands)
                except RedisError as exc:  # the periodic refresh repairs the counts
                    log.debug("online update failed: %s", exc)

    async def online(self, room: str) -> int:
        flat = await self.shards.client_for(room).execute("HGETALL", keys.online_key(room))
        return sum_online(flat, now_ms())

    # ---- sends ---------------------------------------------------------------------------
    def partition_for(self, room: str) -> int:
        return zlib.crc32(room.encode()) % self.redis_settings.ingress_partitions

    def submit(
        self, ident: Identity, session: str, room: str, cmid: str, kind: str, body: bytes
    ) -> bool:
        """Queue a send for the room's worker without waiting; False when the gateway is full.

        The answer (ack or nack) comes back on this gateway's reply channel; if Redis refuses
        the message, ``on_replies`` is fed a synthetic ``internal`` nack for it.
        """
        msg = IngressMessage(
            room=room, user=ident.user, name=ident.name, role=ident.role, cmid=cmid, kind=kind,
            body=body, gateway=self.node_id, session=session, received_ms=now_ms(),
        )
        key = (session, room, cmid)

        def failed(message: str) -> None:
            self._sent_at.pop(key, None)
            self.deliver_reply(
                Reply(session, room, cmid, code=p.ERR_INTERNAL, message=message)
            )

        command = ["XADD", keys.ingress_stream(self.partition_for(room)), "*", *msg.fields()]
        if not self.ingress.submit(room, command, failed):
            return False
        self._sent_at[key] = trio.current_time()
        self.metrics.sends.inc()
        return True

    def on_replies(self, payload: bytes) -> None:
        if payload[:1] == b"{":  # a control message (a kick), not a list of replies
            moderation_ops.handle_control(self, payload)
            return
        now = trio.current_time()
        for reply in decode_replies(payload):
            started = self._sent_at.pop((reply.session, reply.room, reply.cmid), None)
            if started is not None:
                self.metrics.ack_latency.observe(now - started)
            self.deliver_reply(reply)

    def deliver_reply(self, reply: Reply) -> None:
        session = self.sessions.get(reply.session)
        if session is not None:
            session.deliver_reply(_reply_frame(reply))
            return
        waiter = self.http_waiters.get((reply.session, reply.room, reply.cmid))
        if waiter is not None:
            waiter.reply = reply
            waiter.event.set()

    async def submit_and_wait(
        self, ident: Identity, room: str, cmid: str, kind: str, body: bytes, timeout_s: float
    ) -> Reply | None:
        """The HTTP send: forward and wait for the worker's reply (None on timeout)."""
        session = "http-" + ident.user
        key = (session, room, cmid)
        waiter = self.http_waiters.get(key)
        if waiter is None:
            waiter = self.http_waiters[key] = _Waiter(trio.Event())
        try:
            if not self.submit(ident, session, room, cmid, kind, body):
                return Reply(session, room, cmid, code=p.NACK_RATE_LIMITED,
                             message="gateway busy", retry_after_ms=1000)
            with trio.move_on_after(timeout_s):
                await waiter.event.wait()
            return waiter.reply
        finally:
            if self.http_waiters.get(key) is waiter:
                del self.http_waiters[key]
            self._sent_at.pop(key, None)

    def stats(self) -> dict[str, Any]:
        return {
            "node": self.node_id,
            "connections": len(self.sessions),
            "rooms": {room: len(h.members) for room, h in self.hubs.hubs.items()},
        }


def _reply_frame(reply: Reply) -> bytes:
    if reply.ok:
        return p.encode_ack(reply.room, reply.cmid, reply.seq, reply.ts)
    return p.encode_nack(reply.room, reply.cmid, reply.code, reply.message, reply.retry_after_ms)


def _new_epoch() -> str:
    import secrets

    return secrets.token_hex(6)
