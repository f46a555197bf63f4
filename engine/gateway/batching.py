"""Sans-IO batching logic of the room hub: messages and a clock in, batches and skips out.

Theory of operation
-------------------
Messages of a room reach a gateway over pub/sub as ``"<seq> <epoch> <json>"``. The ``Sequencer``
orders them by seq, drops duplicates and reports the first hole so the hub can fill it from the
room stream; only contiguous runs are released. The ``MessageRing`` keeps the most recent
messages so that lagging or resuming viewers are served without a Redis read. ``TickPolicy``
decides how long a hub collects before it flushes: the first message after a quiet spell goes
out at once, and the window widens with the number of viewers so that frames per second stay
within the gateway's budget. ``plan_catch_up`` turns a contiguous run into what one viewer gets:
everything, or (when it is being shed) only the reliable kinds plus ``skipped`` ranges.

Nothing here performs I/O or reads a clock: callers pass ``now`` in seconds.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import orjson

_DANMAKU_KIND = b',"kind":"danmaku"'
_HIDDEN_MARK = b"\n"  # engine.ingress.HIDDEN_MARK: shown to the sender only (shadow-ban)


@dataclass(frozen=True, slots=True)
class Msg:
    """One sequenced message, serialised once (``data`` is the JSON object of the contract).

    ``hidden`` is the sender's user id when only the sender may see the message (a shadow-banned
    sender); every other viewer gets its seq in ``skipped``, exactly like a shed message.
    """

    seq: int
    data: bytes
    reliable: bool
    hidden: str | None = None

    @classmethod
    def from_json(cls, seq: int, data: bytes) -> Msg:
        if data.endswith(_HIDDEN_MARK):  # rare: a shadow-banned sender's message
            return cls._hidden(seq, data.rstrip(_HIDDEN_MARK))
        # The worker writes "kind" right after "name"; user strings are JSON-escaped, so the
        # first unescaped ',"kind":"' is the real field. Only plain danmaku may be shed.
        return cls(seq, data, _DANMAKU_KIND not in data)

    @classmethod
    def _hidden(cls, seq: int, data: bytes) -> Msg:
        try:
            user = orjson.loads(data).get("user")
        except (orjson.JSONDecodeError, AttributeError):
            user = None
        # An unreadable owner hides the message from everyone: never show it by mistake.
        return cls(seq, data, False, user if isinstance(user, str) else "")


def parse_publication(payload: bytes) -> tuple[int, str, bytes] | None:
    """Split a room publication ``b"<seq> <epoch> <json>"``; None if it is malformed."""
    head, sep, rest = payload.partition(b" ")
    epoch, sep2, data = rest.partition(b" ")
    if not sep or not sep2 or not head.isdigit() or not data.startswith(b"{"):
        return None
    try:
        return int(head), epoch.decode("ascii"), data
    except UnicodeDecodeError:
        return None


class Sequencer:
    """Releases messages in seq order with no holes and no duplicates."""

    __slots__ = ("_pending", "last")

    def __init__(self, last: int) -> None:
        self.last = last
        self._pending: dict[int, Msg] = {}

    def offer(self, msg: Msg) -> None:
        if msg.seq > self.last:
            self._pending[msg.seq] = msg

    def pop_ready(self) -> list[Msg]:
        out: list[Msg] = []
        pending = self._pending
        while pending:
            msg = pending.pop(self.last + 1, None)
            if msg is None:
                break
            out.append(msg)
            self.last = msg.seq
        return out

    def missing(self) -> tuple[int, int] | None:
        """The first hole (inclusive range) that blocks delivery, if any."""
        if not self._pending or (self.last + 1) in self._pending:
            return None
        return self.last + 1, min(self._pending) - 1

    def reset(self, last: int) -> None:
        self.last = last
        self._pending.clear()


class MessageRing:
    """The most recent contiguous messages of a room, by seq."""

    __slots__ = ("_items", "capacity")

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._items: deque[Msg] = deque(maxlen=capacity)

    def extend(self, msgs: Iterable[Msg]) -> None:
        for msg in msgs:
            if self._items and msg.seq != self._items[-1].seq + 1:
                self._items.clear()  # never hold a non-contiguous run
            self._items.append(msg)

    def clear(self) -> None:
        self._items.clear()

    @property
    def first_seq(self) -> int | None:
        return self._items[0].seq if self._items else None

    @property
    def last_seq(self) -> int | None:
        return self._items[-1].seq if self._items else None

    def get(self, first: int, last: int) -> list[Msg] | None:
        """Messages first..last inclusive, or None when the ring does not hold all of them."""
        if not self._items or first > last:
            return None if first <= last else []
        base = self._items[0].seq
        if first < base or last > self._items[-1].seq:
            return None
        start = first - base
        return [self._items[i] for i in range(start, start + last - first + 1)]

    def after(self, seq: int, limit: int) -> list[Msg] | None:
        """Up to ``limit`` messages with seq > ``seq``; None if the ring starts later."""
        if not self._items:
            return None
        base = self._items[0].seq
        if seq + 1 < base:
            return None
        start = seq + 1 - base
        end = min(len(self._items), start + limit)
        return [self._items[i] for i in range(start, end)] if start < end else []


@dataclass(frozen=True, slots=True)
class TickPolicy:
    """How long a hub collects messages before it writes one frame to every viewer."""

    min_window_s: float = 0.025
    max_window_s: float = 0.25
    frames_per_s_budget: int = 120_000

    def window_s(self, viewers: int) -> float:
        wanted = viewers / self.frames_per_s_budget if self.frames_per_s_budget > 0 else 0.0
        return min(self.max_window_s, max(self.min_window_s, wanted))

    def flush_at(self, last_flush: float, viewers: int) -> float:
        """When to flush messages collected now; at or before ``now`` means at once."""
        return last_flush + self.window_s(viewers)


def has_hidden(msgs: Sequence[Msg]) -> bool:
    """Whether a run holds a message shown to its sender only (the slow path of the hub)."""
    return any(msg.hidden is not None for msg in msgs)


def plan_catch_up(
    msgs: Sequence[Msg], *, shed: bool, viewer: str | None = None, hidden: bool = False
) -> tuple[list[bytes], list[tuple[int, int]]]:
    """Messages for one viewer out of a contiguous run, and the ranges it is told it skipped.

    With ``hidden`` (the run holds hidden messages, see ``has_hidden``) a hidden message is
    delivered only when ``viewer`` is its sender; for everyone else it is skipped like a shed one.
    """
    if not shed and not hidden:
        return [m.data for m in msgs], []
    out: list[bytes] = []
    skipped: list[tuple[int, int]] = []
    for msg in msgs:
        if msg.hidden is not None:
            keep = viewer is not None and msg.hidden == viewer
        else:
            keep = msg.reliable or not shed
        if keep:
            out.append(msg.data)
        elif skipped and skipped[-1][1] == msg.seq - 1:
            skipped[-1] = (skipped[-1][0], msg.seq)
        else:
            skipped.append((msg.seq, msg.seq))
    return out, skipped
