"""Deep resume: a seq range read from the archive and the Redis hot buffer, joined at the seam.

The hot buffer (the room stream, ``{r:<room>}:stream``, entry ids ``<seq>-0``) holds the newest
messages of a room; everything older was trimmed away, but was archived first (the archive
stream is written by the same Lua step). A range ``first..last`` is therefore served as

    archive: first .. s-1        Redis: s .. last        (s = the oldest seq Redis returned)

Redis is read first, so ``s`` is where the hot buffer *really* begins at that moment (a trim
racing with the read only moves work to the archive). The result is checked to be exactly
``first..last`` with every seq once: if the archive does not hold its part yet (archiver lag) or
at all, the answer is None and the caller answers ``reset too_old``, as without an archive.
"""

from __future__ import annotations

import logging
from typing import Any

from engine import keys
from engine.archive.rows import seq_of
from engine.archive.store import ArchiveReader

log = logging.getLogger("danmaku.archive")


async def read_across_seam(
    redis: Any, archive: ArchiveReader, room: str, epoch: str, first: int, last: int
) -> list[tuple[int, bytes]] | None:
    """``[(seq, message JSON)]`` for exactly ``first..last``, or None if it cannot be had."""
    if last < first:
        return []
    entries = await redis.execute(
        "XRANGE", keys.stream_key(room), f"{first}-0", f"{last}-0"
    )
    hot: list[tuple[int, bytes]] = []
    for entry_id, fields in entries or []:
        seq = int(entry_id.split(b"-", 1)[0])
        hot.append((seq, fields[1] if len(fields) >= 2 else b""))
    seam = hot[0][0] if hot else last + 1
    old: list[tuple[int, bytes]] = []
    if seam > first:
        try:
            archived = await archive.read_seq_range(room, first, seam - 1, epoch=epoch or None)
        except Exception as exc:  # archive down: the contract's answer is a reset
            log.warning("room %s: archive read %d..%d failed: %s", room, first, seam - 1, exc)
            return None
        old = [(seq_of(m), m) for m in archived]
    joined = old + hot
    if len(joined) != last - first + 1:
        return None
    for expected, (seq, _data) in enumerate(joined, start=first):
        if seq != expected:
            return None
    return joined
