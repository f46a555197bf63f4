"""Viewers-online samples: each gateway records, every ``viewers_sample_ms``, how many viewers
each of its rooms has (the dashboards sum the gateways of a room per time bucket).

Samples are best effort: a sample that cannot be written (archive down) is logged and dropped,
the next one is taken on time. They never touch the fan-out path: ``counts`` is the gateway's
``local_counts()``, a dict built from its hubs.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping

import trio

from engine.archive.store import ArchiveStore, ViewerSample

log = logging.getLogger("danmaku.archive")


def take_samples(gateway: str, counts: Mapping[str, int], now_ms: int) -> list[ViewerSample]:
    return [ViewerSample(gateway, room, n, now_ms) for room, n in sorted(counts.items())]


async def sample_viewers_loop(
    store: ArchiveStore,
    gateway: str,
    counts: Callable[[], Mapping[str, int]],
    *,
    every_s: float,
) -> None:
    while True:
        await trio.sleep(every_s)
        samples = take_samples(gateway, counts(), int(time.time() * 1000))
        if not samples:
            continue
        try:
            await store.insert_viewers(samples)
        except Exception as exc:
            log.warning("viewers-online sample of %d rooms not recorded: %s", len(samples), exc)
