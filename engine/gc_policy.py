"""The garbage collector's settings for the long-running processes (gateway, worker, ``up``).

A gateway holds tens of tracked objects per viewer (connection, session, tasks, buffers), all
long-lived and freed by reference counting; CPython's default thresholds (700, 10, 10) make it
scan them again and again while viewers come and go. Measured with 10,000 viewers of one room
on one core (loadtest/fanout_bench.py's set-up, gc callbacks logging every collection over
5 ms): while they joined, full collections took 26 ms growing to 465 ms each; when all of
them dropped at once, collections that found nothing to free took ~2 s of the gateway's
core within 4 s, so a health check waited 2.3-2.8 s. With a first threshold of 100,000 the
same drop cost ~0.3 s of collections and the health check waited ~1.0-1.4 s (the rest is the
sessions' teardown itself).

So: import-time objects are frozen (never scanned again) and the first generation is
collected every 100,000 net allocations instead of 700. Reference cycles (a cancelled task's
traceback, say) are still collected, just in larger, rarer passes.
"""

from __future__ import annotations

import gc
from typing import Final

GEN0_THRESHOLD: Final = 100_000


def tune_for_server() -> None:
    """Call once at start-up, before the event loop runs."""
    gc.collect()
    gc.freeze()
    _gen0, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(GEN0_THRESHOLD, gen1, gen2)
