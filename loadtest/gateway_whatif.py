"""``danmaku gateway`` with an experimental change patched in at run time (engine files untouched).

    python loadtest/gateway_whatif.py flush-start [gateway args...]

Used by ``fanout_bench.py --whatif NAME`` to measure a proposed engine change against the same
load, side by side with the unpatched gateway. Not part of the engine; the numbers it produces
are labelled "what-if" wherever they are reported.

flush-start
    ``RoomHub.flush`` records ``_last_flush`` at the END of the flush, so the next tick waits a
    full window after the previous flush finished: the tick period is window + flush time. With
    10,000 viewers one flush takes ~100 ms and the window is 83 ms, so the core idles ~45% of the
    time while latency doubles. The patch counts the window from the START of the flush instead
    (period = max(window, flush time)).
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import trio  # noqa: E402

from engine.cli import main  # noqa: E402
from engine.gateway.room_hub import RoomHub  # noqa: E402


def patch_flush_start() -> None:
    original = RoomHub.flush

    def flush(self: RoomHub) -> None:
        started = trio.current_time()
        had = bool(self._ready)
        original(self)
        if had:
            self._last_flush = started

    RoomHub.flush = flush  # type: ignore[method-assign]


PATCHES = {"flush-start": patch_flush_start}


if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in PATCHES:
        sys.exit(f"usage: gateway_whatif.py {{{','.join(PATCHES)}}} [gateway args...]")
    PATCHES[sys.argv[1]]()
    sys.exit(main(["gateway", *sys.argv[2:]]))
