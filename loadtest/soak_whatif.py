"""``danmaku gateway`` with a diagnostic patched in at run time (engine files untouched).

    python loadtest/soak_whatif.py tracemalloc [gateway args...]

Used by ``soak.py --whatif tracemalloc``. Not part of the engine.

tracemalloc
    Traces the gateway's Python allocations, takes a snapshot after
    ``DANMAKU_SOAK_TRACEMALLOC_AFTER_S`` (90) seconds and, when the process exits normally,
    writes the 30 source lines whose live allocations grew most since then to
    ``$DANMAKU_SOAK_TRACEMALLOC_DIR/tracemalloc-<pid>.txt`` (where a slow RSS growth comes from).

(It also held ``history-share``, the fix of concurrent history reads the soak found, until
the engine adopted it: ``RoomHub.history``, tests/test_resume_storms.py.)
"""

from __future__ import annotations

import atexit
import os
import sys
import threading
import tracemalloc
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from engine.cli import main  # noqa: E402


def trace_allocations() -> None:
    out_dir = Path(os.environ.get("DANMAKU_SOAK_TRACEMALLOC_DIR", "."))
    after_s = float(os.environ.get("DANMAKU_SOAK_TRACEMALLOC_AFTER_S", "90"))
    tracemalloc.start(1)
    first: list[tracemalloc.Snapshot] = []
    timer = threading.Timer(after_s, lambda: first.append(tracemalloc.take_snapshot()))
    timer.daemon = True
    timer.start()

    def report() -> None:
        if not first:
            return
        stats = tracemalloc.take_snapshot().compare_to(first[0], "lineno")
        lines = [f"growth of live Python allocations since {after_s:g} s, by source line"]
        lines += [str(stat) for stat in stats[:30]]
        total = sum(stat.size_diff for stat in stats)
        lines.append(f"total size_diff: {total / 1024:.0f} KiB")
        (out_dir / f"tracemalloc-{os.getpid()}.txt").write_text("\n".join(lines) + "\n")

    atexit.register(report)


PATCHES = {"tracemalloc": trace_allocations}


def valid(spec: str) -> bool:
    return all(name in PATCHES for name in spec.split(","))


if __name__ == "__main__":
    if len(sys.argv) < 2 or not valid(sys.argv[1]):
        sys.exit(f"usage: soak_whatif.py {{{','.join(PATCHES)}}}[,...] [gateway args...]")
    for name in sys.argv[1].split(","):
        PATCHES[name]()
    sys.exit(main(["gateway", *sys.argv[2:]]))
