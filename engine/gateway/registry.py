"""Session registry and online counts, kept in Redis so that every gateway sees them.

- ``danmaku:sess:<user>`` (hash, on the user's shard): session id -> gateway node; its TTL is
  refreshed while the gateway lives, so a crashed gateway's sessions vanish by themselves.
- ``{r:<room>}:online`` (hash, on the room's shard): gateway node -> "<count> <expires_ms>".
  Each gateway writes its own exact local count on every join/leave and refreshes it
  periodically; readers sum the fields that have not expired, so a dead gateway stops counting
  without anyone cleaning up after it.
"""

from __future__ import annotations

import contextlib
import time
from collections import defaultdict
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import trio

from engine import keys
from engine.redis import RedisError, ShardSet

if TYPE_CHECKING:
    from engine.gateway.ws_session import Session


def session_key(user: str) -> str:
    return "danmaku:sess:" + user


def online_field_value(count: int, now_ms: int, ttl_ms: int) -> str:
    return f"{count} {now_ms + ttl_ms}"


def sum_online(fields: Iterable[Any], now_ms: int) -> int:
    """Sum an HGETALL of ``{r:<room>}:online`` (flat [field, value, ...]), skipping expired."""
    items = list(fields)
    total = 0
    for value in items[1::2]:
        try:
            count, expires = value.split()
            if int(expires) >= now_ms:
                total += int(count)
        except (ValueError, AttributeError):
            continue
    return total


def now_ms() -> int:
    return int(time.time() * 1000)


class Registry:
    def __init__(self, shards: ShardSet, node_id: str, *, heartbeat_ms: int, ttl_ms: int) -> None:
        self._shards = shards
        self._node = node_id
        self._session_ttl_s = max(1, int(heartbeat_ms * 3 / 1000))
        self.ttl_ms = ttl_ms
        self._users: dict[str, set[str]] = defaultdict(set)
        self._gone: list[tuple[str, str]] = []
        self._gone_wake = trio.Event()

    async def register(self, session: Session) -> None:
        assert session.identity is not None
        user = session.identity.user
        self._users[user].add(session.id)
        key = session_key(user)
        await self._shards.client_for(key).pipeline(
            [["HSET", key, session.id, self._node], ["EXPIRE", key, self._session_ttl_s]]
        )

    def unregister(self, session: Session) -> None:
        """Forget a session; its HDEL is batched with others by ``run_removals``."""
        assert session.identity is not None
        user = session.identity.user
        sessions = self._users.get(user)
        if sessions is not None:
            sessions.discard(session.id)
            if not sessions:
                del self._users[user]
        self._gone.append((user, session.id))
        self._gone_wake.set()

    async def run_removals(self) -> None:
        """One pipeline per shard for all sessions that ended since the last pass."""
        while True:
            await self._gone_wake.wait()
            self._gone_wake = trio.Event()
            gone, self._gone = self._gone, []
            batches: dict[int, list[list[Any]]] = defaultdict(list)
            for user, sid in gone:
                key = session_key(user)
                batches[self._shards.index_for(key)].append(["HDEL", key, sid])
            for index, commands in batches.items():
                with contextlib.suppress(RedisError):  # else the TTL removes them anyway
                    await self._shards.client_for_index(index).pipeline(commands)

    async def sessions_of(self, user: str) -> dict[str, str]:
        key = session_key(user)
        flat = await self._shards.client_for(key).execute("HGETALL", key)
        return {flat[i].decode(): flat[i + 1].decode() for i in range(0, len(flat), 2)}

    async def refresh_loop(self, local_counts: Any) -> None:
        """Keep this gateway's sessions and online counts alive (every third of their TTL)."""
        while True:
            await trio.sleep(min(self._session_ttl_s, self.ttl_ms / 1000) / 3)
            try:
                await self.refresh(local_counts())
            except RedisError:
                continue

    async def refresh(self, counts: dict[str, int]) -> None:
        now = now_ms()
        batches: dict[int, list[list[Any]]] = defaultdict(list)
        for user in list(self._users):
            key = session_key(user)
            batches[self._shards.index_for(key)].append(["EXPIRE", key, self._session_ttl_s])
        for room, count in counts.items():
            value = online_field_value(count, now, self.ttl_ms)
            batches[self._shards.index_for(room)].append(
                ["HSET", keys.online_key(room), self._node, value]
            )
        for index, commands in batches.items():
            for start in range(0, len(commands), 1000):
                await self._shards.client_for_index(index).pipeline(commands[start:start + 1000])
