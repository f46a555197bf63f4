"""Forwarding of sends to the ingress streams, batched: one pipeline per shard per pass.

A session never waits for Redis to accept its send: it queues the XADD and goes back to reading
its socket; the answer to the client is the worker's ack (or a nack). While one pipeline is in
flight the next sends queue up, so under load many XADDs share one round trip. A full queue
refuses new sends (the caller answers ``rate_limited``) instead of growing without bound.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import trio

from engine.redis import RedisError, ShardSet

log = logging.getLogger("danmaku.ingress")

OnFailure = Callable[[str], None]


class IngressWriter:
    def __init__(self, shards: ShardSet, *, max_queued: int = 20_000) -> None:
        self._shards = shards
        self._max_queued = max_queued
        self._queued = 0
        self._queues: dict[int, list[tuple[list[Any], OnFailure]]] = {}
        self._wake = trio.Event()
        self.forwarded = 0
        self.pipelines = 0

    def submit(self, room: str, command: list[Any], on_failure: OnFailure) -> bool:
        """Queue one XADD for ``room``'s shard; False when the queue is full."""
        if self._queued >= self._max_queued:
            return False
        self._queues.setdefault(self._shards.index_for(room), []).append((command, on_failure))
        self._queued += 1
        self._wake.set()
        return True

    async def run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            queues, self._queues = self._queues, {}
            for index, items in queues.items():
                await self._forward(index, items)
                self._queued -= len(items)

    async def _forward(self, index: int, items: Sequence[tuple[list[Any], OnFailure]]) -> None:
        client = self._shards.client_for_index(index)
        try:
            results = await client.pipeline([command for command, _f in items])
        except RedisError as exc:
            log.warning("forwarding %d sends failed: %s", len(items), exc)
            for _command, on_failure in items:
                on_failure("the message could not be queued, retry with the same cmid")
            return
        self.pipelines += 1
        for result, (_command, on_failure) in zip(results, items, strict=True):
            if isinstance(result, Exception):
                on_failure("the message could not be queued, retry with the same cmid")
            else:
                self.forwarded += 1
