"""The SDK's sans-IO core: per-room ordering, dedupe, holes, skips, resets; pending sends."""

from __future__ import annotations

import ast
import random
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.client import (
    Ack,
    Joined,
    Message,
    Nack,
    PendingSends,
    ProtocolViolation,
    Reset,
    RoomStream,
    Since,
    Skipped,
)
from engine.client.reorder import FeedResult
from engine.protocol import client_send


def msg(seq: int, kind: str = "danmaku") -> dict[str, Any]:
    return {"seq": seq, "id": f"m{seq}", "user": "u1", "name": "U", "ts": 1000 + seq,
            "kind": kind, "body": {"text": f"t{seq}"}}


def batch(
    frm: int,
    to: int,
    seqs: list[int] | None = None,
    skipped: list[list[int]] | None = None,
    epoch: str = "e1",
    room: str = "r",
) -> dict[str, Any]:
    frame: dict[str, Any] = {
        "op": "batch", "room": room, "epoch": epoch, "from": frm, "to": to,
        "msgs": [msg(s) for s in (range(frm, to + 1) if seqs is None else seqs)],
    }
    if skipped:
        frame["skipped"] = skipped
    return frame


def joined(epoch: str = "e1", seq: int = 0, online: int = 1) -> dict[str, Any]:
    return {"op": "joined", "room": "r", "epoch": epoch, "seq": seq, "online": online}


def reset(epoch: str, seq: int, reason: str = "epoch_changed") -> dict[str, Any]:
    return {"op": "reset", "room": "r", "epoch": epoch, "seq": seq, "reason": reason}


def delivered(result: FeedResult) -> list[int | tuple[int, int]]:
    """Messages as their seq, skipped ranges as (first, last)."""
    out: list[int | tuple[int, int]] = []
    for ev in result.events:
        if isinstance(ev, Message):
            out.append(ev.seq)
        elif isinstance(ev, Skipped):
            out.append((ev.first, ev.last))
    return out


def fresh(seq: int = 0) -> RoomStream:
    rs = RoomStream("r")
    rs.feed(joined("e1", seq))
    return rs


# -- joining -------------------------------------------------------------------------------------
def test_fresh_join_adopts_epoch_and_seq() -> None:
    rs = RoomStream("r")
    assert rs.since() is None
    result = rs.feed(joined("e1", 41, online=3))
    assert result.events == [Joined("r", "e1", 41, 3)]
    assert result.resync is None
    assert rs.since() == Since("e1", 41)
    assert delivered(rs.feed(batch(42, 44))) == [42, 43, 44]
    assert rs.last == 44


def test_message_fields_are_typed() -> None:
    rs = fresh()
    frame = batch(1, 1)
    frame["msgs"][0]["future_field"] = 7
    (m,) = rs.feed(frame).events
    assert m == Message("r", 1, "m1", "u1", "U", 1001, "danmaku", {"text": "t1"})
    assert isinstance(m, Message)
    assert m.extra == {"future_field": 7}


def test_rejoin_same_epoch_keeps_position() -> None:
    rs = fresh()
    rs.feed(batch(1, 5))
    rs.feed(joined("e1", 9))  # resume: the server delivers 6..9 next
    assert rs.last == 5
    assert delivered(rs.feed(batch(6, 9))) == [6, 7, 8, 9]


def test_resume_from_saved_position() -> None:
    rs = RoomStream("r", "e1", 100)
    assert rs.since() == Since("e1", 100)
    rs.feed(joined("e1", 120))
    result = rs.feed(batch(99, 102))
    assert delivered(result) == [101, 102]
    assert result.duplicates == 2


def test_rejoin_other_epoch_adopts_then_reset_is_reported() -> None:
    rs = fresh()
    rs.feed(batch(1, 5))
    rs.feed(joined("e2", 3))
    assert rs.since() == Since("e2", 3)
    result = rs.feed(reset("e2", 3))
    assert result.events == [Reset("r", "e2", 3, "epoch_changed")]
    assert delivered(rs.feed(batch(4, 5, epoch="e2"))) == [4, 5]


def test_batch_before_joined_is_ignored() -> None:
    rs = RoomStream("r")
    result = rs.feed(batch(1, 2))
    assert result.events == []
    assert result.resync is None


# -- duplicates and overlap ----------------------------------------------------------------------
def test_duplicate_batch_is_dropped() -> None:
    rs = fresh()
    assert delivered(rs.feed(batch(1, 3))) == [1, 2, 3]
    result = rs.feed(batch(1, 3))
    assert result.events == []
    assert result.resync is None
    assert result.duplicates == 3
    assert rs.duplicates == 3


def test_overlapping_batch_delivers_only_the_new_part() -> None:
    rs = fresh()
    rs.feed(batch(1, 5))
    result = rs.feed(batch(3, 8))
    assert delivered(result) == [6, 7, 8]
    assert result.duplicates == 3
    assert result.resync is None


def test_duplicate_seq_inside_one_batch() -> None:
    rs = fresh()
    result = rs.feed(batch(1, 3, seqs=[1, 2, 2, 3]))
    assert delivered(result) == [1, 2, 3]
    assert result.duplicates == 1


def test_unsorted_msgs_inside_a_batch_are_ordered() -> None:
    rs = fresh()
    assert delivered(rs.feed(batch(1, 4, seqs=[3, 1, 4, 2]))) == [1, 2, 3, 4]


# -- holes ---------------------------------------------------------------------------------------
def test_hole_between_batches_requests_one_resync() -> None:
    rs = fresh()
    rs.feed(batch(1, 3))
    result = rs.feed(batch(6, 8))
    assert result.events == []
    assert result.resync == Since("e1", 3)
    assert rs.holes == 1
    assert rs.resync_pending
    # More live batches before the server answers: no second request.
    assert rs.feed(batch(9, 10)).resync is None
    assert rs.holes == 1
    rs.feed(joined("e1", 10))
    assert not rs.resync_pending
    # The catch-up fills the hole; what was buffered behind it follows at once.
    result = rs.feed(batch(4, 8))
    assert delivered(result) == [4, 5, 6, 7, 8, 9, 10]
    assert result.resync is None
    # The live stream re-delivers 9..10 (already given): dropped.
    result = rs.feed(batch(9, 11))
    assert delivered(result) == [11]
    assert result.duplicates == 2


def test_gap_inside_a_batch_not_listed_as_skipped_is_a_hole() -> None:
    rs = fresh()
    result = rs.feed(batch(1, 6, seqs=[1, 2, 5, 6]))
    assert delivered(result) == [1, 2]
    assert result.resync == Since("e1", 2)


def test_missing_tail_of_a_batch_is_a_hole() -> None:
    rs = fresh()
    result = rs.feed(batch(1, 5, seqs=[1, 2, 3]))
    assert delivered(result) == [1, 2, 3]
    assert result.resync == Since("e1", 3)


def test_catch_up_with_stale_buffer_is_not_a_new_hole() -> None:
    rs = fresh()
    rs.feed(batch(1, 2))
    assert rs.feed(batch(20, 25)).resync == Since("e1", 2)
    rs.feed(joined("e1", 25))
    # Catch-up in several batches: each is contiguous with the last, none is a hole.
    for frm in range(3, 20, 5):
        result = rs.feed(batch(frm, min(frm + 4, 19)))
        assert result.resync is None
    assert rs.last == 25
    assert rs.buffered == 0


def test_hole_again_after_resync_is_reported_again() -> None:
    rs = fresh()
    rs.feed(batch(1, 1))
    assert rs.feed(batch(3, 3)).resync == Since("e1", 1)
    rs.feed(joined("e1", 3))
    rs.feed(batch(2, 3))
    assert rs.feed(batch(5, 5)).resync == Since("e1", 3)
    assert rs.holes == 2


def test_out_of_order_batches() -> None:
    rs = fresh()
    first = rs.feed(batch(4, 6))
    assert first.events == []
    assert first.resync == Since("e1", 0)
    second = rs.feed(batch(1, 3))
    assert delivered(second) == [1, 2, 3, 4, 5, 6]
    # The resync's re-delivery is dropped.
    rs.feed(joined("e1", 6))
    again = rs.feed(batch(1, 6))
    assert again.events == []
    assert again.duplicates == 6


def test_buffer_is_bounded() -> None:
    rs = RoomStream("r", max_buffered=3)
    rs.feed(joined("e1", 0))
    rs.feed(batch(2, 10))
    assert rs.buffered == 3
    result = rs.feed(batch(1, 1))
    assert delivered(result) == [1, 2, 3, 4]
    # The rest comes with the resync.
    assert delivered(rs.feed(batch(5, 10))) == [5, 6, 7, 8, 9, 10]


# -- skipped ranges -------------------------------------------------------------------------------
def test_skipped_ranges_advance_without_a_hole() -> None:
    rs = fresh()
    result = rs.feed(batch(1, 10, seqs=[1, 2, 6, 10], skipped=[[3, 5], [7, 9]]))
    assert delivered(result) == [1, 2, (3, 5), 6, (7, 9), 10]
    assert result.resync is None
    assert rs.last == 10


def test_skipped_at_both_ends_and_only_skipped() -> None:
    rs = fresh()
    result = rs.feed(batch(1, 6, seqs=[3, 4], skipped=[[1, 2], [5, 6]]))
    assert delivered(result) == [(1, 2), 3, 4, (5, 6)]
    result = rs.feed(batch(7, 9, seqs=[], skipped=[[7, 9]]))
    assert delivered(result) == [(7, 9)]
    assert result.resync is None
    assert rs.last == 9


def test_skipped_range_straddling_the_position_is_trimmed() -> None:
    rs = fresh()
    rs.feed(batch(1, 4))
    result = rs.feed(batch(3, 8, seqs=[7, 8], skipped=[[3, 6]]))
    assert delivered(result) == [(5, 6), 7, 8]
    assert rs.feed(batch(1, 8, seqs=[], skipped=[[1, 8]])).events == []


def test_skipped_range_with_a_hole_after_it() -> None:
    rs = fresh()
    result = rs.feed(batch(1, 8, seqs=[1, 8], skipped=[[2, 4]]))
    assert delivered(result) == [1, (2, 4)]
    assert result.resync == Since("e1", 4)


# -- reset -----------------------------------------------------------------------------------------
def test_reset_to_a_new_epoch() -> None:
    rs = fresh()
    rs.feed(batch(1, 5))
    result = rs.feed(reset("e2", 2))
    assert result.events == [Reset("r", "e2", 2, "epoch_changed")]
    assert rs.since() == Since("e2", 2)
    assert delivered(rs.feed(batch(3, 4, epoch="e2"))) == [3, 4]


def test_reset_clears_pending_resync_and_buffer() -> None:
    rs = fresh()
    rs.feed(batch(5, 6))
    assert rs.resync_pending
    assert rs.buffered == 2
    rs.feed(reset("e2", 0))
    assert not rs.resync_pending
    assert rs.buffered == 0
    assert delivered(rs.feed(batch(1, 1, epoch="e2"))) == [1]


def test_reset_too_old_jumps_forward_in_the_same_epoch() -> None:
    rs = fresh()
    rs.feed(batch(1, 3))
    rs.feed(batch(20, 22))  # hole -> resync
    result = rs.feed(reset("e1", 19, "too_old"))
    assert delivered(result) == [20, 21, 22]  # what was buffered right after the new position
    assert result.events[0] == Reset("r", "e1", 19, "too_old")
    assert rs.last == 22


def test_reset_never_moves_back_within_an_epoch() -> None:
    rs = fresh()
    rs.feed(batch(1, 10))
    rs.feed(reset("e1", 4, "too_old"))
    assert rs.last == 10
    result = rs.feed(batch(5, 11))
    assert delivered(result) == [11]


def test_batch_of_another_epoch_is_dropped_and_resyncs() -> None:
    rs = fresh()
    rs.feed(batch(1, 2))
    result = rs.feed(batch(3, 4, epoch="old"))
    assert result.events == []
    assert result.resync == Since("e1", 2)
    assert rs.last == 2


# -- malformed frames ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "frame",
    [
        {"op": "batch", "room": "r", "epoch": "e1", "from": 1, "to": 1},
        {"op": "batch", "room": "r", "epoch": "e1", "from": "1", "to": 1, "msgs": []},
        {"op": "batch", "room": "r", "epoch": "e1", "from": 1, "to": 1, "msgs": [{"seq": 1}]},
        {"op": "batch", "room": "r", "epoch": "e1", "from": 1, "to": 1, "msgs": [],
         "skipped": [[2, 1]]},
        {"op": "batch", "room": "r", "epoch": "e1", "from": 1, "to": 1, "msgs": [],
         "skipped": [[True, 1]]},
        {"op": "joined", "room": "r", "epoch": 3, "seq": 1, "online": 1},
        {"op": "reset", "room": "r", "epoch": "e", "seq": 1},
        {"op": "pong", "t": 1},
    ],
)
def test_malformed_frames_raise_protocol_violation(frame: dict[str, Any]) -> None:
    rs = fresh(0)
    with pytest.raises(ProtocolViolation):
        rs.feed(frame)
    assert rs.last == 0
    assert rs.buffered == 0


def test_request_resync_from_outside() -> None:
    rs = RoomStream("r")
    assert rs.request_resync() is None  # never joined
    rs.feed(joined("e1", 7))
    assert rs.request_resync() == Since("e1", 7)
    assert rs.request_resync() is None  # already pending


# -- the guarantee, under random delivery -------------------------------------------------------
@st.composite
def deliveries(draw: st.DrawFn) -> tuple[int, list[dict[str, Any]]]:
    """A room's seqs 1..n cut into batches (some with skipped ranges), then delivered with
    duplicates, drops and reordering; ends with the re-delivery a resync would bring."""
    n = draw(st.integers(1, 60))
    cuts = sorted(draw(st.sets(st.integers(1, n - 1), max_size=10))) if n > 1 else []
    bounds = list(zip([1, *[c + 1 for c in cuts]], [*cuts, n], strict=True))
    frames = []
    for a, b in bounds:
        seqs: list[int] = []
        skipped: list[list[int]] = []
        for s in range(a, b + 1):
            if draw(st.integers(0, 4)) == 0:
                if skipped and skipped[-1][1] == s - 1:
                    skipped[-1][1] = s
                else:
                    skipped.append([s, s])
            else:
                seqs.append(s)
        frames.append(batch(a, b, seqs=seqs, skipped=skipped))
    rnd = random.Random(draw(st.integers(0, 2**32)))
    mangled = [f for f in frames if rnd.random() > 0.2]
    mangled += [rnd.choice(frames) for _ in range(rnd.randint(0, 5))]
    rnd.shuffle(mangled)
    # The server's answer to a resync: everything again, in order.
    return n, [*mangled, joined("e1", n), *frames]


@settings(max_examples=300, deadline=None)
@given(deliveries())
def test_any_delivery_yields_each_seq_once_in_order(case: tuple[int, list[dict[str, Any]]]) -> None:
    n, frames = case
    rs = fresh()
    covered: list[int] = []
    for frame in frames:
        for ev in rs.feed(frame).events:
            if isinstance(ev, Message):
                covered.append(ev.seq)
            elif isinstance(ev, Skipped):
                covered.extend(range(ev.first, ev.last + 1))
    assert covered == list(range(1, n + 1))
    assert rs.last == n
    assert rs.buffered == 0


# -- pending sends ---------------------------------------------------------------------------------
def ack(cmid: str, seq: int = 1, room: str = "r") -> dict[str, Any]:
    return {"op": "ack", "room": room, "cmid": cmid, "seq": seq, "ts": 5}


def test_pending_ack_settles_once() -> None:
    ps = PendingSends()
    frame = client_send("r", "c1", "hi")
    entry = ps.add("r", "c1", frame, now=10.0)
    assert "c1" in ps
    assert len(ps) == 1
    ps.mark_sent("c1", 10.0)
    settled = ps.settle(ack("c1", 7))
    assert settled is not None
    got, outcome = settled
    assert got is entry
    assert outcome == Ack("r", "c1", 7, 5)
    assert ps.settle(ack("c1", 7)) is None  # duplicate ack after a resend
    assert ps.duplicate_settles == 1
    assert len(ps) == 0


def test_pending_nack_carries_retry_after() -> None:
    ps = PendingSends()
    ps.add("r", "c1", b"{}", now=0.0)
    settled = ps.settle({"op": "nack", "room": "r", "cmid": "c1", "code": "rate_limited",
                         "message": "slow down", "retry_after_ms": 250})
    assert settled is not None
    assert settled[1] == Nack("r", "c1", "rate_limited", "slow down", 250)
    ps.add("r", "c2", b"{}", now=0.0)
    settled = ps.settle({"op": "nack", "room": "r", "cmid": "c2", "code": "muted",
                         "message": "muted"})
    assert settled is not None
    assert settled[1] == Nack("r", "c2", "muted", "muted", None)


def test_pending_resend_is_the_same_frame_after_timeout() -> None:
    ps = PendingSends()
    frame = client_send("r", "c1", "hi")
    ps.add("r", "c1", frame, now=0.0)
    assert [e.cmid for e in ps.due(0.0, 5.0)] == ["c1"]  # never written yet
    ps.mark_sent("c1", 0.0)
    assert ps.due(4.9, 5.0) == []
    (entry,) = ps.due(5.0, 5.0)
    assert entry.frame is frame
    assert entry.attempts == 1
    ps.mark_sent("c1", 5.0)
    assert entry.attempts == 2
    assert entry.first_sent_at == 0.0
    assert entry.last_sent_at == 5.0


def test_pending_rejects_a_cmid_twice_and_keeps_order() -> None:
    ps = PendingSends()
    for c in ("b", "a", "c"):
        ps.add("r", c, b"{}", now=0.0)
    with pytest.raises(ValueError, match="already pending"):
        ps.add("r", "a", b"{}", now=1.0)
    assert [e.cmid for e in ps] == ["b", "a", "c"]


def test_pending_ack_for_another_room_or_unknown_cmid_is_ignored() -> None:
    ps = PendingSends()
    ps.add("r", "c1", b"{}", now=0.0)
    assert ps.settle(ack("c1", room="other")) is None
    assert ps.settle(ack("nope")) is None
    assert "c1" in ps


def test_pending_discard() -> None:
    ps = PendingSends()
    ps.add("r", "c1", b"{}", now=0.0)
    ps.add("s", "c2", b"{}", now=0.0)
    ps.add("r", "c3", b"{}", now=0.0)
    assert [e.cmid for e in ps.discard_room("r")] == ["c1", "c3"]
    assert ps.discard("c2") is not None
    assert ps.discard("c2") is None
    assert len(ps) == 0


def test_pending_settle_rejects_other_frames() -> None:
    with pytest.raises(ProtocolViolation):
        PendingSends().settle({"op": "batch"})


# -- layering --------------------------------------------------------------------------------------
@pytest.mark.parametrize("module", ["reorder.py", "events.py", "errors.py"])
def test_sans_io_modules_import_no_io(module: str) -> None:
    path = Path(__file__).parent.parent / "engine" / "client" / module
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    assert not names & {"trio", "trio_websocket", "socket", "asyncio", "ssl", "h11"}
