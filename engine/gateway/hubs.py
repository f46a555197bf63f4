"""Room hubs of one gateway and the pub/sub connections that feed them.

One pub/sub connection per Redis shard carries every room channel of that shard plus this
gateway's reply channel. A broken pub/sub connection is re-made with backoff; its channels are
re-subscribed and each hub re-syncs from Redis, filling whatever was published meanwhile, so a
pub/sub outage delays messages but never loses them.
"""

from __future__ import annotations

import contextlib
import logging
import random
from collections.abc import Callable

import trio

from engine import keys
from engine.gateway.batching import TickPolicy
from engine.gateway.metrics import GatewayMetrics
from engine.gateway.room_hub import RoomHub
from engine.redis import PubSub, RedisError, ShardSet

log = logging.getLogger("danmaku.hubs")


class _Feed:
    """One shard's pub/sub connection and the channels it must hold."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.pubsub: PubSub | None = None
        self.channels: set[str] = set()
        self.ready = trio.Event()


class HubManager:
    def __init__(
        self,
        shards: ShardSet,
        *,
        node_id: str,
        policy: TickPolicy,
        ring_size: int,
        shed_after_bytes: int,
        metrics: GatewayMetrics,
        on_replies: Callable[[bytes], None],
        linger_s: float = 30.0,
    ) -> None:
        self._shards = shards
        self._node_id = node_id
        self._policy = policy
        self._ring_size = ring_size
        self._shed_after = shed_after_bytes
        self._metrics = metrics
        self._on_replies = on_replies
        self._linger_s = linger_s
        self.hubs: dict[str, RoomHub] = {}
        self._feeds: dict[str, _Feed] = {}
        self._reply_channel = keys.gateway_channel(node_id)
        self._nursery: trio.Nursery | None = None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            for url in self._shards.pubsub_urls():
                feed = self._feeds[url] = _Feed(url)
                feed.channels.add(self._reply_channel)
                nursery.start_soon(self._feed_loop, feed)
            for feed in self._feeds.values():
                await feed.ready.wait()
            task_status.started()

    def _feed_for(self, room: str) -> _Feed:
        return self._feeds[self._shards.pubsub_url_for(room)]

    async def _feed_loop(self, feed: _Feed) -> None:
        delay = 0.1
        first = True
        while True:
            pubsub: PubSub | None = None
            try:
                pubsub = PubSub(feed.url)
                await pubsub.subscribe(*sorted(feed.channels))
                feed.pubsub = pubsub
                feed.ready.set()
                delay = 0.1
                if not first:
                    log.info("pub/sub to %s restored; re-syncing rooms", feed.url)
                    for room, hub in list(self.hubs.items()):
                        if self._feed_for(room) is feed:
                            await hub.resync()
                first = False
                async for channel, data in pubsub:
                    self._dispatch(channel, data)
            except (RedisError, OSError) as exc:
                log.warning("pub/sub to %s broken (%s); reconnecting", feed.url, exc)
            finally:
                feed.pubsub = None
                if pubsub is not None:
                    with trio.CancelScope(shield=True), contextlib.suppress(RedisError, OSError):
                        await pubsub.aclose()
            await trio.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, 5.0)

    def _dispatch(self, channel: bytes, data: bytes) -> None:
        name = channel.decode("utf-8", "replace")
        if name == self._reply_channel:
            self._on_replies(data)
            return
        hub = self.hubs.get(name[len("danmaku:room:"):])
        if hub is not None:
            hub.on_publication(data)

    async def hub_for(self, room: str) -> RoomHub:
        """The room's hub, created and subscribed on first use."""
        hub = self.hubs.get(room)
        if hub is None:
            assert self._nursery is not None
            hub = RoomHub(
                room,
                self._shards.client_for(room),
                policy=self._policy,
                ring_size=self._ring_size,
                shed_after_bytes=self._shed_after,
                metrics=self._metrics,
                on_idle=self._drop_hub,
                linger_s=self._linger_s,
            )
            self.hubs[room] = hub
            self._metrics.rooms.set(len(self.hubs))
            feed = self._feed_for(room)
            channel = keys.room_channel(room)
            feed.channels.add(channel)
            try:
                if feed.pubsub is not None:
                    await feed.pubsub.subscribe(channel)
                await self._nursery.start(hub.run)
            except BaseException:
                self._drop_hub(hub)
                raise
        await hub.wait_started()
        return hub

    def _drop_hub(self, hub: RoomHub) -> None:
        if self.hubs.get(hub.room) is not hub:
            return
        del self.hubs[hub.room]
        self._metrics.rooms.set(len(self.hubs))
        hub.close()
        feed = self._feed_for(hub.room)
        channel = keys.room_channel(hub.room)
        feed.channels.discard(channel)
        if feed.pubsub is not None and self._nursery is not None:
            self._nursery.start_soon(self._unsubscribe, feed, channel)

    @staticmethod
    async def _unsubscribe(feed: _Feed, channel: str) -> None:
        try:
            if channel not in feed.channels and feed.pubsub is not None:
                await feed.pubsub.unsubscribe(channel)
        except (RedisError, OSError):
            pass
