"""Per-room ordering, dedupe and hole detection, and the table of unacked sends (sans-IO).

Theory of operation
-------------------
A `RoomStream` is the client's position in one room: `(epoch, last)`, where `last` is the
highest seq released to the application (or skipped, or adopted from `joined`/`reset`). It is fed
the server frames of that room (`joined`, `batch`, `reset`, already decoded to dicts) and returns
a `FeedResult`: the events to hand to the application, in seq order, the stream's position right
after each of them, and whether the client must re-join with `since` ("resync").

Released is not yet handed over: the session hands a frame's events to the application one by one
(a slow app makes that take a while) and reports each one done with `handed_over(position)`, so
`delivered` is the position of the last event the application really got. If the connection is
lost before the hand-over ends, the events not handed over are dropped and `rewind()` moves the
stream back to `delivered`: the resume (`join` with `since()`) then asks the server for them
again, instead of starting after the end of a frame the application never saw the rest of.

Every message and every `skipped` range of a batch becomes an item `(first, last, msg|None)` on a
min-heap; the heap is drained while its head starts at or before `last + 1`. An item wholly at or
below `last` is a duplicate (counted, dropped); a skipped range that straddles `last` is reported
only for its part above `last`. Items that cannot be reached yet (a hole in front of them) stay
buffered, bounded by `max_buffered`, so a late batch that fills the hole releases them at once;
whatever the resync re-delivers is then dropped as duplicates.

A hole is detected per batch: after draining, `last < batch.to` means some seq covered by this
batch is unreachable, which covers both `from != last + 1` and a gap inside the batch that is
not listed in `skipped`. The first detection reports `resync = Since(epoch, last)`; further holes
are not re-reported until the server answers that join (`joined` clears `resync_pending`), so a
burst of live batches arriving before the answer does not cause a storm of joins.

`joined` with the stream's epoch keeps `last` (the server resumes after `since`); with another
epoch (or none yet) it adopts the server's `(epoch, seq)`. `reset` adopts its epoch; within the
same epoch `last` never moves backwards, so nothing is delivered twice. A batch of another epoch
is stale: dropped, and a resync is requested (the server answers with a `reset`).

Guarantee: for one `RoomStream`, the `Message`/`Skipped` events returned over its lifetime have
strictly increasing, non-overlapping seqs within an epoch, whatever order, overlap or duplication
the frames arrive in.

`PendingSends` is the table of sends not yet settled: cmid -> frame bytes, first and last send
times, attempts. The session resends an entry's same bytes (same cmid) after a timeout and after
a reconnect; an `ack` or `nack` settles it once, later duplicates are ignored.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from engine.protocol import Since

from .errors import ProtocolViolation
from .events import Ack, Joined, Message, Reset, Skipped

__all__ = ["FeedResult", "Nack", "PendingSend", "PendingSends", "RoomStream", "parse_message"]

_MESSAGE_FIELDS = frozenset({"seq", "id", "user", "name", "ts", "kind", "body"})


# -- field access that turns a contract violation into ProtocolViolation -------------------------
def _int(frame: Mapping[str, Any], key: str) -> int:
    value = frame.get(key)
    if type(value) is not int:
        raise ProtocolViolation(f"{frame.get('op', 'message')}: {key!r} must be an integer")
    return value


def _str(frame: Mapping[str, Any], key: str) -> str:
    value = frame.get(key)
    if not isinstance(value, str):
        raise ProtocolViolation(f"{frame.get('op', 'message')}: {key!r} must be a string")
    return value


def parse_message(room: str, obj: object) -> Message:
    """A message object of a `batch` (or of the HTTP message lists) as a `Message`."""
    if not isinstance(obj, dict):
        raise ProtocolViolation("batch: each message must be an object")
    body = obj.get("body")
    if not isinstance(body, dict):
        raise ProtocolViolation("message: 'body' must be an object")
    extra = {k: v for k, v in obj.items() if k not in _MESSAGE_FIELDS}
    return Message(
        room=room,
        seq=_int(obj, "seq"),
        id=_str(obj, "id"),
        user=_str(obj, "user"),
        name=_str(obj, "name"),
        ts=_int(obj, "ts"),
        kind=_str(obj, "kind"),
        body=body,
        extra=extra,
    )


def _skipped_ranges(frame: Mapping[str, Any]) -> list[tuple[int, int]]:
    raw = frame.get("skipped")
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise ProtocolViolation("batch: 'skipped' must be a list of [first, last] pairs")
    out = []
    for pair in raw:
        if (
            not isinstance(pair, list)
            or len(pair) != 2
            or type(pair[0]) is not int
            or type(pair[1]) is not int
            or pair[0] > pair[1]
        ):
            raise ProtocolViolation("batch: 'skipped' must be a list of [first, last] pairs")
        out.append((pair[0], pair[1]))
    return out


# -- the room stream ------------------------------------------------------------------------------
@dataclass(slots=True)
class FeedResult:
    """What one frame produced: events for the app (in order), and a resync to request now."""

    events: list[Message | Skipped | Reset | Joined] = field(default_factory=list)
    # The stream's position right after each event (parallel to `events`): what to pass to
    # `RoomStream.handed_over` once the event is in the application's hands.
    positions: list[Since] = field(default_factory=list)
    resync: Since | None = None
    duplicates: int = 0


@dataclass(order=True, slots=True)
class _Item:
    first: int
    last: int
    msg: Message | None = field(compare=False)


class RoomStream:
    """The client's ordered, exactly-once view of one room (see the module docstring)."""

    def __init__(
        self,
        room: str,
        epoch: str | None = None,
        last_seq: int = 0,
        *,
        max_buffered: int = 10_000,
    ) -> None:
        self.room = room
        self.epoch = epoch
        self.last = last_seq
        self.max_buffered = max_buffered
        # True from a reported hole until the server answers the resulting join.
        self.resync_pending = False
        # Counters, for the client's statistics.
        self.duplicates = 0
        self.holes = 0
        self._heap: list[_Item] = []
        # The position after the last event the application got (see `handed_over`).
        self.delivered: Since | None = self.since()

    def __repr__(self) -> str:
        return (
            f"RoomStream({self.room!r}, epoch={self.epoch!r}, last={self.last}, "
            f"delivered={self.delivered}, buffered={len(self._heap)}, "
            f"resync_pending={self.resync_pending})"
        )

    @property
    def buffered(self) -> int:
        """Items held back behind a hole."""
        return len(self._heap)

    def since(self) -> Since | None:
        """Where to resume: None before the first `joined` (a plain join)."""
        return None if self.epoch is None else Since(self.epoch, self.last)

    def feed(self, frame: Mapping[str, Any]) -> FeedResult:
        """Apply one server frame of this room (`joined`, `batch` or `reset`).

        Raises ProtocolViolation for a malformed frame; the stream's state is then unchanged
        except for items already delivered from earlier frames.
        """
        op = frame.get("op")
        if op == "batch":
            return self._on_batch(frame)
        if op == "joined":
            return self._on_joined(frame)
        if op == "reset":
            return self._on_reset(frame)
        raise ProtocolViolation(f"RoomStream cannot apply a {op!r} frame")

    def request_resync(self) -> Since | None:
        """Ask for a resync from outside (e.g. after a malformed batch). Returns the `since` to
        join with, or None when one is already pending or the room was never joined."""
        if self.resync_pending or self.epoch is None:
            return None
        self.resync_pending = True
        self.holes += 1
        return Since(self.epoch, self.last)

    def handed_over(self, position: Since) -> None:
        """The event released with `position` (a `FeedResult.positions` entry) is now in the
        application's hands. Call it in release order, only once the hand-over succeeded."""
        self.delivered = position

    def rewind(self) -> bool:
        """The connection was lost: drop what was released but not handed over, so that
        `since()` (the resume) covers only what the application got. Items held behind a hole
        are dropped too; the resume delivers them again. Returns False when there was nothing
        to drop (the stream is then unchanged)."""
        if self.delivered == self.since():
            return False
        if self.delivered is None:
            self.epoch, self.last = None, 0
        else:
            self.epoch, self.last = self.delivered.epoch, self.delivered.seq
        self._heap.clear()
        return True

    # -- frames ------------------------------------------------------------------------------
    def _on_joined(self, frame: Mapping[str, Any]) -> FeedResult:
        epoch = _str(frame, "epoch")
        seq = _int(frame, "seq")
        online = _int(frame, "online")
        if epoch != self.epoch:
            self._adopt(epoch, seq)
        if self.delivered is None:
            # A join from "now": the stream starts here whether or not the app sees `Joined`
            # (a rewind must not turn it back into a join from a later "now").
            self.delivered = self.since()
        self.resync_pending = False
        result = FeedResult()
        self._release(result, Joined(self.room, epoch, seq, online))
        return result

    def _on_reset(self, frame: Mapping[str, Any]) -> FeedResult:
        epoch = _str(frame, "epoch")
        seq = _int(frame, "seq")
        reason = _str(frame, "reason")
        result = FeedResult()
        same_epoch = epoch == self.epoch
        if same_epoch:
            # Seqs are never reused within an epoch: moving back would deliver twice.
            self.last = max(self.last, seq)
        else:
            self._adopt(epoch, seq)
        self._release(result, Reset(self.room, epoch, seq, reason))
        if same_epoch:
            self._drain(result)
            self.duplicates += result.duplicates
        self.resync_pending = False
        return result

    def _on_batch(self, frame: Mapping[str, Any]) -> FeedResult:
        epoch = _str(frame, "epoch")
        _int(frame, "from")  # validated only: holes show up as items left unreachable
        to = _int(frame, "to")
        raw_msgs = frame.get("msgs")
        if not isinstance(raw_msgs, list):
            raise ProtocolViolation("batch: 'msgs' must be a list")
        msgs = [parse_message(self.room, m) for m in raw_msgs]
        skipped = _skipped_ranges(frame)
        result = FeedResult()
        if self.epoch is None or epoch != self.epoch:
            # Stale (an earlier epoch) or ahead of a reset we have not seen: resync settles it.
            result.resync = self.request_resync()
            return result
        items = [_Item(m.seq, m.seq, m) for m in msgs]
        items += [_Item(a, b, None) for a, b in skipped]
        items.sort()
        for item in items:
            # Drain as we go, so the buffer bound only ever applies to unreachable items.
            self._push(item, result)
            self._drain(result)
        if self.last < to and not self.resync_pending:
            self.resync_pending = True
            self.holes += 1
            result.resync = Since(self.epoch, self.last)
        self.duplicates += result.duplicates
        return result

    # -- internals ---------------------------------------------------------------------------
    def _release(self, result: FeedResult, event: Message | Skipped | Reset | Joined) -> None:
        """Add `event` to `result`, with the position it leaves the stream at (set already)."""
        assert self.epoch is not None  # every frame that releases events sets it
        result.events.append(event)
        result.positions.append(Since(self.epoch, self.last))

    def _adopt(self, epoch: str, seq: int) -> None:
        self.epoch = epoch
        self.last = seq
        self._heap.clear()

    def _push(self, item: _Item, result: FeedResult) -> None:
        if item.last <= self.last:
            if item.msg is not None:
                result.duplicates += 1
            return
        if len(self._heap) < self.max_buffered or item.first <= self.last + 1:
            heapq.heappush(self._heap, item)
        # else: beyond the buffer bound and behind a hole; the resync will deliver it again.

    def _drain(self, result: FeedResult) -> None:
        heap = self._heap
        while heap and heap[0].first <= self.last + 1:
            item = heapq.heappop(heap)
            if item.last <= self.last:
                if item.msg is not None:
                    result.duplicates += 1
                continue
            first = max(item.first, self.last + 1)
            self.last = item.last
            if item.msg is not None:
                self._release(result, item.msg)
            else:
                self._release(result, Skipped(self.room, first, item.last))


# -- unacked sends --------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Nack:
    """A refused send, as the server said it."""

    room: str
    cmid: str
    code: str
    message: str
    retry_after_ms: int | None = None


@dataclass(slots=True)
class PendingSend:
    """One unacked send. `frame` is resent byte for byte, so the cmid never changes."""

    room: str
    cmid: str
    frame: bytes
    first_sent_at: float
    last_sent_at: float
    attempts: int = 0  # how many times the frame was written to a connection


class PendingSends:
    """cmid -> PendingSend, in the order sends were made (resends keep that order)."""

    def __init__(self) -> None:
        self._by_cmid: dict[str, PendingSend] = {}
        self.duplicate_settles = 0

    def __len__(self) -> int:
        return len(self._by_cmid)

    def __contains__(self, cmid: object) -> bool:
        return cmid in self._by_cmid

    def __iter__(self) -> Iterator[PendingSend]:
        return iter(list(self._by_cmid.values()))

    def get(self, cmid: str) -> PendingSend | None:
        return self._by_cmid.get(cmid)

    def add(self, room: str, cmid: str, frame: bytes, now: float) -> PendingSend:
        """Register a send before it is first written. A cmid may be pending only once."""
        if cmid in self._by_cmid:
            raise ValueError(f"cmid {cmid!r} is already pending")
        entry = PendingSend(room, cmid, frame, first_sent_at=now, last_sent_at=now)
        self._by_cmid[cmid] = entry
        return entry

    def mark_sent(self, cmid: str, now: float) -> None:
        """The entry's frame was written (again) at `now`."""
        entry = self._by_cmid.get(cmid)
        if entry is not None:
            entry.attempts += 1
            entry.last_sent_at = now

    def due(self, now: float, timeout_s: float) -> list[PendingSend]:
        """Entries never written, or written `timeout_s` or longer ago without an answer."""
        return [
            e
            for e in self._by_cmid.values()
            if e.attempts == 0 or now - e.last_sent_at >= timeout_s
        ]

    def discard(self, cmid: str) -> PendingSend | None:
        """Forget an entry (the caller gave up or was cancelled)."""
        return self._by_cmid.pop(cmid, None)

    def discard_room(self, room: str) -> list[PendingSend]:
        """Forget every entry of a room (it was left)."""
        gone = [e for e in self._by_cmid.values() if e.room == room]
        for e in gone:
            del self._by_cmid[e.cmid]
        return gone

    def settle(self, frame: Mapping[str, Any]) -> tuple[PendingSend, Ack | Nack] | None:
        """Apply an `ack` or `nack` frame. Returns the settled entry and its outcome, or None
        for an answer to nothing pending (a duplicate ack after a resend, or another room)."""
        op = frame.get("op")
        if op not in ("ack", "nack"):
            raise ProtocolViolation(f"PendingSends cannot settle a {op!r} frame")
        cmid = _str(frame, "cmid")
        room = _str(frame, "room")
        entry = self._by_cmid.get(cmid)
        if entry is None or entry.room != room:
            self.duplicate_settles += 1
            return None
        outcome: Ack | Nack
        if op == "ack":
            outcome = Ack(room, cmid, _int(frame, "seq"), _int(frame, "ts"))
        else:
            retry = frame.get("retry_after_ms")
            outcome = Nack(
                room,
                cmid,
                _str(frame, "code"),
                str(frame.get("message", "")),
                retry if type(retry) is int else None,
            )
        del self._by_cmid[cmid]
        return entry, outcome
