"""Sans-IO batching logic of the room hub."""

from __future__ import annotations

import pytest

from engine.gateway.batching import (
    MessageRing,
    Msg,
    Sequencer,
    TickPolicy,
    parse_publication,
    plan_catch_up,
)


def msg(seq: int, kind: str = "danmaku") -> Msg:
    data = (
        f'{{"seq":{seq},"id":"x","ts":1,"user":"u","name":"n","kind":"{kind}","body":{{}}}}'
    ).encode()
    return Msg.from_json(seq, data)


def test_reliability_is_read_from_kind() -> None:
    assert not msg(1).reliable
    assert msg(1, "gift").reliable
    assert msg(1, "superchat").reliable
    assert msg(1, "system").reliable


def test_name_that_mimics_a_kind_field_does_not_fool_the_parser() -> None:
    data = b'{"seq":1,"id":"x","ts":1,"user":"u","name":"\\",\\"kind\\":\\"danmaku","kind":"gift"}'
    assert Msg.from_json(1, data).reliable


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (b'7 ep {"seq":7}', (7, "ep", b'{"seq":7}')),
        (b"7 ep", None),
        (b'x ep {"a":1}', None),
        (b"7 ep notjson", None),
        (b"", None),
    ],
)
def test_parse_publication(payload: bytes, expected: object) -> None:
    assert parse_publication(payload) == expected


def test_sequencer_orders_dedupes_and_reports_holes() -> None:
    s = Sequencer(last=10)
    s.offer(msg(12))
    assert s.pop_ready() == []
    assert s.missing() == (11, 11)
    s.offer(msg(11))
    s.offer(msg(11))
    s.offer(msg(9))
    assert [m.seq for m in s.pop_ready()] == [11, 12]
    assert s.missing() is None
    s.offer(msg(12))
    assert s.pop_ready() == []
    s.offer(msg(15))
    s.offer(msg(17))
    assert s.missing() == (13, 14)


def test_ring_ranges() -> None:
    ring = MessageRing(capacity=5)
    assert ring.get(1, 1) is None
    ring.extend(msg(i) for i in range(1, 9))
    assert ring.first_seq == 4 and ring.last_seq == 8
    got = ring.get(5, 7)
    assert got is not None and [m.seq for m in got] == [5, 6, 7]
    assert ring.get(3, 5) is None
    assert ring.get(7, 9) is None
    after = ring.after(6, 10)
    assert after is not None and [m.seq for m in after] == [7, 8]
    assert ring.after(8, 10) == []
    assert ring.after(1, 10) is None
    ring.extend([msg(20)])  # a jump clears rather than hold a non-contiguous run
    assert ring.first_seq == 20


def test_tick_widens_with_viewers() -> None:
    policy = TickPolicy(min_window_s=0.025, max_window_s=0.25, frames_per_s_budget=100_000)
    assert policy.window_s(10) == pytest.approx(0.025)
    assert policy.window_s(10_000) == pytest.approx(0.1)
    assert policy.window_s(1_000_000) == pytest.approx(0.25)
    # A quiet room flushes at once: the last flush is long past.
    assert policy.flush_at(last_flush=0.0, viewers=10) <= 1.0


def test_catch_up_plans() -> None:
    run = [msg(1), msg(2, "gift"), msg(3), msg(4), msg(5, "superchat"), msg(6)]
    data, skipped = plan_catch_up(run, shed=False)
    assert len(data) == 6 and skipped == []
    data, skipped = plan_catch_up(run, shed=True)
    assert [b'"seq":2' in d or b'"seq":5' in d for d in data] == [True, True]
    assert skipped == [(1, 1), (3, 4), (6, 6)]
