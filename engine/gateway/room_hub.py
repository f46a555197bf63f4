"""The room hub: one per room with local viewers on a gateway. This is the fan-out hot path.

Guarantees, per viewer (a ``Member``):
- batches arrive in seq order; each batch's ``from`` is the previous ``to`` + 1; a seq is
  delivered at most once; holes from pub/sub are filled from the room stream first;
- one JSON serialisation and one WebSocket framing per batch, shared by every viewer that is
  up to date; the hub never awaits a viewer (``WsConn.write`` is synchronous);
- a viewer whose socket queue is over ``shed_after_bytes`` is not written to; once it drains it
  is caught up from the ring with only gift/superchat/system messages and ``skipped`` ranges
  for the plain danmaku it missed; a resuming viewer (join with ``since``) is caught up in full.

``Member.next_seq`` is the single truth of where a viewer is; it changes only in synchronous code
right after a frame was queued, so the flush loop and a catch-up task cannot interleave badly.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import trio

from engine import keys
from engine.gateway.batching import (
    MessageRing,
    Msg,
    Sequencer,
    TickPolicy,
    has_hidden,
    parse_publication,
    plan_catch_up,
)
from engine.gateway.conn import WsConn
from engine.gateway.metrics import GatewayMetrics
from engine.protocol import encode_batch, encode_reset
from engine.wsframe import encode_text_frame

if TYPE_CHECKING:
    from engine.archive.store import ArchiveReader

log = logging.getLogger("danmaku.hub")

CATCH_UP_CHUNK = 200
FLUSH_CHUNK = 1000  # viewers written between two scheduler checkpoints


class Member:
    __slots__ = ("active", "catching", "conn", "next_seq", "shed", "user")

    def __init__(self, conn: WsConn, next_seq: int, user: str | None = None) -> None:
        self.conn = conn
        self.next_seq = next_seq
        self.user = user  # who is watching: sees its own hidden (shadow-banned) messages
        self.shed = False
        self.catching = False
        self.active = True


class _SharedRead:
    """One history read that concurrent identical requests wait for (``RoomHub.history``)."""

    __slots__ = ("done", "failed", "result")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.result: list[Msg] | None = None
        self.failed = True  # until the read returns


class RoomHub:
    def __init__(
        self,
        room: str,
        redis: Any,
        *,
        policy: TickPolicy,
        ring_size: int,
        shed_after_bytes: int,
        metrics: GatewayMetrics,
        on_idle: Callable[[RoomHub], None],
        linger_s: float = 30.0,
    ) -> None:
        self.room = room
        self.redis = redis
        self.epoch = ""
        self.members: dict[int, Member] = {}
        self.pollers = 0
        self.delivered_to = 0
        self._policy = policy
        self._shed_after = shed_after_bytes
        self._metrics = metrics
        self._on_idle = on_idle
        self._linger_s = linger_s
        self._seq = Sequencer(0)
        self._ring = MessageRing(ring_size)
        self._ready: list[Msg] = []
        self._wake = trio.Event()
        self._new_data = trio.Event()
        self._started = trio.Event()
        self._filling = False
        self._last_flush = -math.inf
        self._frame_cache: dict[tuple[int, int, bool], bytes] = {}
        self._history_reads: dict[tuple[int, int], _SharedRead] = {}
        self._nursery: trio.Nursery | None = None
        self.cancel_scope = trio.CancelScope()
        # Set by the gateway when it has an archive: history older than the hot buffer.
        self.archive: ArchiveReader | None = None

    # ---- lifecycle -----------------------------------------------------------------------
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        with self.cancel_scope:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                await self.resync(initial=True)
                self._started.set()
                task_status.started()
                nursery.start_soon(self._linger_watch)
                await self._flush_loop()

    async def wait_started(self) -> None:
        await self._started.wait()

    def close(self) -> None:
        for member in self.members.values():
            member.active = False
        self.cancel_scope.cancel()

    async def _linger_watch(self) -> None:
        while True:
            await trio.sleep(self._linger_s)
            if not self.members and not self.pollers:
                self._on_idle(self)
                return

    async def resync(self, *, initial: bool = False) -> None:
        """Learn the room's epoch and last seq from Redis; fill any hole since what we had."""
        epoch, last = await self._read_head()
        if initial:
            self.epoch = epoch
            self._seq.reset(last)
            self.delivered_to = last
            return
        if epoch and epoch != self.epoch:
            self._epoch_changed(epoch, last)
        elif last > self._seq.last:
            await self._fill(self._seq.last + 1, last)

    async def _read_head(self) -> tuple[str, int]:
        epoch, seq = await self.redis.pipeline(
            [["GET", keys.epoch_key(self.room)], ["GET", keys.seq_key(self.room)]]
        )
        return (epoch.decode() if epoch else ""), int(seq or 0)

    # ---- input from pub/sub --------------------------------------------------------------
    def on_publication(self, payload: bytes) -> None:
        parsed = parse_publication(payload)
        if parsed is None:
            log.warning("malformed publication in room %s", self.room)
            return
        seq, epoch, data = parsed
        if epoch != self.epoch:
            if self.epoch and seq > self._seq.last:
                self._epoch_changed(epoch, seq - 1)
            elif not self.epoch:
                self.epoch = epoch
            else:
                return
        self._offer([Msg.from_json(seq, data)])

    def _offer(self, msgs: Sequence[Msg]) -> None:
        for msg in msgs:
            self._seq.offer(msg)
        ready = self._seq.pop_ready()
        if ready:
            self._ready.extend(ready)
            self._wake.set()
        gap = self._seq.missing()
        if gap is not None and not self._filling and self._nursery is not None:
            self._filling = True
            self._nursery.start_soon(self._fill_task)

    async def _fill_task(self) -> None:
        try:
            while (gap := self._seq.missing()) is not None:
                if not await self._fill(*gap):
                    return
        finally:
            self._filling = False

    async def _fill(self, first: int, last: int) -> bool:
        msgs = await self._read_stream(first, last)
        if msgs is None:
            # The hot buffer no longer holds the hole: viewers must re-sync.
            log.warning("room %s: hole %d..%d beyond the hot buffer", self.room, first, last)
            self._epoch_changed(self.epoch, last, reason="too_old")
            return False
        self._metrics.holes_filled.inc(len(msgs))
        self._offer(msgs)
        return True

    def _epoch_changed(self, epoch: str, last: int, *, reason: str = "epoch_changed") -> None:
        """The room's counter was lost (or a hole cannot be filled): tell viewers to reset."""
        self.epoch = epoch
        self._seq.reset(last)
        self._ring.clear()
        self._ready.clear()
        self.delivered_to = last
        frame = encode_text_frame(encode_reset(self.room, epoch, last, reason))
        for member in tuple(self.members.values()):
            member.conn.write(frame)
            member.next_seq = last + 1

    # ---- the hot path --------------------------------------------------------------------
    async def _flush_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            if not self._ready:
                continue
            at = self._policy.flush_at(self._last_flush, len(self.members))
            if at > trio.current_time():
                await trio.sleep_until(at)
            await self.flush()

    async def flush(self) -> None:
        """Write the collected messages as one batch to every up-to-date viewer.

        The loop yields to the scheduler every ``FLUSH_CHUNK`` viewers, so that with many
        viewers the gateway keeps reading sends and publications while a batch goes out
        (otherwise each hop of a message through this gateway could wait a whole flush).
        ``delivered_to`` and the ring are updated before the first write, so viewers that
        join or catch up meanwhile are served from the ring and nothing is sent twice.
        """
        msgs = self._ready
        if not msgs:
            return
        self._ready = []
        # The window counts from the start of a flush: the tick period is max(window, flush
        # time), so a long flush (many viewers) never leaves the core idle for a whole window.
        self._last_flush = trio.current_time()
        first, last = msgs[0].seq, msgs[-1].seq
        self._ring.extend(msgs)
        self._frame_cache.clear()
        # Rare slow path: a shadow-banned sender's message is skipped for everyone but its
        # sender, whose connections get a frame of their own (one encode per such sender).
        own: dict[str, bytes] | None = None
        if has_hidden(msgs):
            data, skipped = plan_catch_up(msgs, shed=False, hidden=True)
            frame = encode_text_frame(
                encode_batch(self.room, self.epoch, data, first, last, skipped or None)
            )
            own = {}
            for owner in {m.hidden for m in msgs if m.hidden}:
                data, skipped = plan_catch_up(msgs, shed=False, viewer=owner, hidden=True)
                own[owner] = encode_text_frame(
                    encode_batch(self.room, self.epoch, data, first, last, skipped or None)
                )
        else:
            frame = encode_text_frame(
                encode_batch(self.room, self.epoch, [m.data for m in msgs], first, last, None)
            )
        self.delivered_to = last
        self._new_data.set()
        self._new_data = trio.Event()
        shed_after = self._shed_after
        frames = 0
        for i, member in enumerate(tuple(self.members.values())):
            if i and not i % FLUSH_CHUNK:
                await trio.lowlevel.checkpoint()
            if not member.active:
                continue
            ns = member.next_seq
            if ns == first:
                conn = member.conn
                if conn.pending_bytes > shed_after:
                    member.shed = True
                    self._start_catch_up(member)
                elif conn.write(frame if own is None else own.get(member.user or "", frame)):
                    member.next_seq = last + 1
                    frames += 1
            elif ns > last:
                continue
            elif ns > first:
                # Joined while these were in flight: only the part it has not had.
                part = msgs[ns - first:]
                data, skipped = plan_catch_up(
                    part, shed=False, viewer=member.user, hidden=own is not None
                )
                member.conn.write(
                    encode_text_frame(
                        encode_batch(self.room, self.epoch, data, ns, last, skipped or None)
                    )
                )
                member.next_seq = last + 1
                frames += 1
            else:
                self._start_catch_up(member)
        self._metrics.batches.inc()
        self._metrics.frames_out.inc(frames)
        self._metrics.messages_out.inc(frames * len(msgs))

    # ---- viewers -------------------------------------------------------------------------
    def add_member(self, conn: WsConn, next_seq: int, user: str | None = None) -> Member:
        member = Member(conn, next_seq, user)
        self.members[id(conn)] = member
        if next_seq <= self.delivered_to:
            self._start_catch_up(member)
        return member

    def remove_member(self, conn: WsConn) -> None:
        member = self.members.pop(id(conn), None)
        if member is not None:
            member.active = False

    def _start_catch_up(self, member: Member) -> None:
        if not member.catching and self._nursery is not None:
            member.catching = True
            self._nursery.start_soon(self._catch_up, member)

    async def _catch_up(self, member: Member) -> None:
        conn = member.conn
        try:
            while member.active and not conn.closed:
                if member.next_seq > self.delivered_to:
                    member.shed = False
                    return
                await conn.wait_below(self._shed_after)
                if not member.active or conn.closed or member.next_seq > self.delivered_to:
                    continue
                first = member.next_seq
                last = min(self.delivered_to, first + CATCH_UP_CHUNK - 1)
                msgs = await self.history(first, last)
                if not member.active or member.next_seq != first:
                    continue
                if msgs is None:
                    # Older than the hot buffer: the contract's answer is a reset.
                    member.next_seq = self.delivered_to + 1
                    conn.write(
                        encode_text_frame(
                            encode_reset(self.room, self.epoch, self.delivered_to, "too_old")
                        )
                    )
                    member.shed = False
                    return
                conn.write(self._catch_up_frame(first, last, msgs, member.shed, member.user))
                member.next_seq = last + 1
                self._metrics.catch_up_frames.inc()
        finally:
            member.catching = False

    def _catch_up_frame(
        self, first: int, last: int, msgs: Sequence[Msg], shed: bool, viewer: str | None = None
    ) -> bytes:
        hidden = has_hidden(msgs)
        if hidden and viewer is not None and any(m.hidden == viewer for m in msgs):
            # The viewer's own hidden messages: a frame for it alone, never cached.
            data, skipped = plan_catch_up(msgs, shed=shed, viewer=viewer, hidden=True)
            return encode_text_frame(
                encode_batch(self.room, self.epoch, data, first, last, skipped or None)
            )
        key = (first, last, shed)
        frame = self._frame_cache.get(key)
        if frame is None:
            data, skipped = plan_catch_up(msgs, shed=shed, hidden=hidden)
            frame = encode_text_frame(
                encode_batch(self.room, self.epoch, data, first, last, skipped or None)
            )
            self._frame_cache[key] = frame
        return frame

    # ---- history -------------------------------------------------------------------------
    async def history(self, first: int, last: int) -> list[Msg] | None:
        """Messages first..last from the ring or the room stream; None if no longer held.

        Identical concurrent reads (a reconnect storm) go to Redis once: the waiters take the
        result from the read they waited for (its holder lives as long as they hold it).
        """
        msgs = self._ring.get(first, last)
        if msgs is not None:
            return msgs
        key = (first, last)
        read = self._history_reads.get(key)
        if read is not None:
            await read.done.wait()
            if read.failed:  # the shared read raised or was cancelled: read on our own
                return await self.history(first, last)
            return read.result
        read = self._history_reads[key] = _SharedRead()
        try:
            result = await self._read_stream(first, last)
            if result is None and self.archive is not None:
                result = await self._read_archived(first, last)
            read.result = result
            read.failed = False
            return result
        finally:
            del self._history_reads[key]
            read.done.set()

    async def _read_stream(self, first: int, last: int) -> list[Msg] | None:
        entries = await self.redis.execute(
            "XRANGE", keys.stream_key(self.room), f"{first}-0", f"{last}-0"
        )
        msgs: list[Msg] = []
        for entry_id, fields in entries or []:
            seq = int(entry_id.split(b"-", 1)[0])
            data = fields[1] if len(fields) >= 2 else b""
            msgs.append(Msg.from_json(seq, data))
        if len(msgs) != last - first + 1 or (msgs and msgs[0].seq != first):
            return None
        return msgs

    async def _read_archived(self, first: int, last: int) -> list[Msg] | None:
        """first..last from the archive up to where the hot buffer begins, then from Redis
        (engine/archive/resume.py); None if even the archive cannot fill it."""
        from engine.archive.resume import read_across_seam

        assert self.archive is not None
        got = await read_across_seam(self.redis, self.archive, self.room, self.epoch, first, last)
        return None if got is None else [Msg.from_json(seq, data) for seq, data in got]

    def recent_after(self, seq: int, limit: int) -> list[Msg] | None:
        return self._ring.after(seq, limit) if self.delivered_to > seq else []

    async def wait_new_data(self) -> None:
        await self._new_data.wait()
