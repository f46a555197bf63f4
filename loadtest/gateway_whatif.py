"""``danmaku gateway`` with an experimental change patched in at run time (engine files untouched).

    python loadtest/gateway_whatif.py flush-start [gateway args...]

Used by ``fanout_bench.py --whatif NAME`` to measure a proposed engine change against the same
load, side by side with the unpatched gateway. Not part of the engine; the numbers it produces
are labelled "what-if" wherever they are reported.

flush-start
    Counts the tick window from the START of a flush (period = max(window, flush time)). The
    engine as first benchmarked stamped ``_last_flush`` at the END of ``RoomHub.flush``, so the
    tick period was window + flush time: with 10,000 viewers (window 83 ms, flush ~100 ms) the
    core idled ~45% of the time and frames/s halved. The engine has since adopted this (the
    patch is then a no-op).
flush-end
    The reverse: restores the old end-of-flush stamp on an engine that has the fix, to measure
    the before/after difference in one session.
"""

from __future__ import annotations

import inspect
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import trio  # noqa: E402

from engine.cli import main  # noqa: E402
from engine.gateway.room_hub import RoomHub  # noqa: E402


def _wrap_flush(stamp_at_start: bool) -> None:
    """Re-stamp ``_last_flush`` after ``RoomHub.flush`` (sync or async, as the engine has it)."""
    original = RoomHub.flush

    def restamp(self: RoomHub, had: bool, started: float) -> None:
        if had:
            self._last_flush = started if stamp_at_start else trio.current_time()

    if inspect.iscoroutinefunction(original):

        async def flush_async(self: RoomHub) -> None:
            started, had = trio.current_time(), bool(self._ready)
            await original(self)
            restamp(self, had, started)

        RoomHub.flush = flush_async  # type: ignore[method-assign,assignment]
    else:

        def flush(self: RoomHub) -> None:
            started, had = trio.current_time(), bool(self._ready)
            original(self)
            restamp(self, had, started)

        RoomHub.flush = flush  # type: ignore[method-assign]


def patch_flush_start() -> None:
    _wrap_flush(stamp_at_start=True)


def patch_flush_end() -> None:
    _wrap_flush(stamp_at_start=False)


PATCHES = {"flush-start": patch_flush_start, "flush-end": patch_flush_end}


if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in PATCHES:
        sys.exit(f"usage: gateway_whatif.py {{{','.join(PATCHES)}}} [gateway args...]")
    PATCHES[sys.argv[1]]()
    sys.exit(main(["gateway", *sys.argv[2:]]))
