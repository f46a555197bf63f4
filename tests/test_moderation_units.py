"""Pure parts of moderation: the `mod` op codec, the Aho-Corasick matcher, hidden messages in
the hub's batching logic, and the composition of the moderation and sequencing scripts."""

from __future__ import annotations

import random
import string
import time
from typing import Final

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine import protocol as p
from engine.gateway.batching import Msg, has_hidden, plan_catch_up
from engine.ingress import HIDDEN_MARK, decode_control, encode_kick
from rooms.keyword_filter import KeywordMatcher, fold
from rooms.moderation import MODERATED_INGEST, compose

BIG: Final = p.Limits(max_frame_bytes=1_000_000)


def decode(obj: dict[str, object] | bytes) -> p.ClientEvent | p.ProtocolError:
    data = obj if isinstance(obj, bytes) else orjson.dumps(obj)
    return p.decode_client_frame(data, BIG, extensions=True)


# -- the `mod` op ---------------------------------------------------------------------------------


def test_mod_is_an_extension_op_only_when_asked() -> None:
    frame = {"op": "mod", "room": "r", "action": "mute", "user": "u", "duration_s": 60}
    plain = p.decode_client_frame(orjson.dumps(frame))
    assert isinstance(plain, p.ProtocolError) and plain.code == "unknown_op"
    assert decode(frame) == p.Mod("r", "mute", "u", 60)
    assert "mod" not in p.CLIENT_OPS and {"mod"} == p.EXTENSION_OPS


@pytest.mark.parametrize(
    "fields",
    [
        {"action": "Mute"}, {"action": ""}, {"action": 5}, {"action": "a" * 33},
        {"action": "mute", "user": ""}, {"action": "mute", "user": "a" * 65},
        {"action": "mute", "user": "evil\u202e"}, {"action": "mute", "user": "x\x00"},
        {"action": "mute", "user": 5}, {"action": "mute", "duration_s": 0},
        {"action": "mute", "duration_s": 1.5}, {"action": "mute", "duration_s": True},
        {"action": "mute", "duration_s": 2**62}, {"action": "mute", "reason": "a\nb"},
        {"action": "mute", "reason": "r" * 201}, {"action": "words_add", "words": "x"},
        {"action": "words_add", "words": [""]}, {"action": "words_add", "words": ["a\u2066"]},
        {"action": "words_add", "words": ["w"] * 10_001}, {"action": "config", "config": []},
        {"action": "config", "config": {"Bad": 1}}, {"action": "config", "config": {"a": 1.5}},
        {"action": "config", "config": {"a": [1]}}, {"action": "config", "config": {"a": 1e10}},
        {"action": "config", "config": {f"k{i}": 1 for i in range(17)}},
        {"action": "mute", "ref": "has space"},
    ],
)
def test_bad_mod_fields_are_bad_requests_naming_the_room(fields: dict[str, object]) -> None:
    result = decode({"op": "mod", "room": "r", **fields})
    assert isinstance(result, p.ProtocolError), result
    assert result.code == "bad_request" and result.room == "r" and not result.is_nack
    assert orjson.loads(p.encode_protocol_error(result))["room"] == "r"


def test_numbers_beyond_64_bits_are_bad_requests() -> None:
    for raw in (b'{"op":"mod","room":"r","action":"mute","user":"u","duration_s":%d}' % 2**70,
                b'{"op":"mod","room":"r","action":"config","config":{"a":%d}}' % 2**64):
        result = decode(raw)
        assert isinstance(result, p.ProtocolError) and result.code == "bad_request"


def test_mod_fields_are_kept_as_sent() -> None:
    event = decode({"op": "mod", "room": "r", "action": "config", "ref": "x-1",
                    "config": {"slow_s": 3, "allow_only": True, "filter": "mask"},
                    "words": ["a", "坏词"], "reason": "spam", "extra": [1, 2]})
    assert event == p.Mod("r", "config", None, None, "spam", ("a", "坏词"),
                          (("slow_s", 3), ("allow_only", True), ("filter", "mask")), "x-1")
    assert orjson.loads(p.encode_mod_result("r", "config", "x-1", {"a": 1})) == {
        "op": "mod_result", "room": "r", "action": "config", "ok": True, "ref": "x-1",
        "result": {"a": 1}}


@settings(max_examples=300, deadline=None, database=None)
@given(st.dictionaries(st.sampled_from(["room", "action", "user", "duration_s", "reason",
                                        "words", "config", "ref"]),
                       st.recursive(st.none() | st.booleans() | st.text()
                                    | st.integers(min_value=-(2**63), max_value=2**63 - 1),
                                    lambda c: st.lists(c) | st.dictionaries(st.text(), c),
                                    max_leaves=6)))
def test_mod_decoding_never_raises(fields: dict[str, object]) -> None:
    result = decode({"op": "mod", **fields})
    assert isinstance(result, p.Mod | p.ProtocolError)
    if isinstance(result, p.ProtocolError):
        assert result.code == "bad_request"


def test_kick_control_messages() -> None:
    assert decode_control(encode_kick("u", "r", "spam")) == ("u", "r", "spam")
    assert decode_control(encode_kick("u", None, "")) == ("u", None, "")
    for junk in (b"[]", b"{", b'{"kick":1}', b'{"kick":{"u":5}}', b'{"other":{}}'):
        assert decode_control(junk) is None


# -- the matcher ----------------------------------------------------------------------------------


def naive_spans(words: set[str], text: str) -> list[bool]:
    hit = [False] * len(text)
    folded = fold(text)
    for w in words:
        at = folded.find(w)
        while at != -1:
            for i in range(at, at + len(w)):
                hit[i] = True
            at = folded.find(w, at + 1)
    return hit


@settings(max_examples=300, deadline=None, database=None)
@given(st.sets(st.text(alphabet="abcé坏词", min_size=1, max_size=4), max_size=12),
       st.text(alphabet="abcé坏词ABC ", max_size=40))
def test_matcher_agrees_with_a_naive_search(words: set[str], text: str) -> None:
    matcher = KeywordMatcher(words)
    folded_words = {fold(w) for w in words}
    expected = naive_spans(folded_words, text)
    got = [False] * len(text)
    for start, end in matcher.spans(text):
        for i in range(start, end):
            got[i] = True
    assert got == expected
    assert (matcher.find(text) is not None) == matcher.contains(text) == any(expected)
    masked = matcher.mask(text)
    if any(expected):
        assert masked is not None and len(masked) == len(text)
        assert [c == "*" and o != "*" for c, o in zip(masked, text, strict=True)] == [
            e and o != "*" for e, o in zip(expected, text, strict=True)]
    else:
        assert masked is None


def test_matcher_folds_case_and_fullwidth_and_keeps_positions() -> None:
    m = KeywordMatcher(["spoiler", "ＢＡＤ", "坏词"])
    assert m.mask("No SPOILER, so ｂａｄ and 坏词!") == "No *******, so *** and **!"
    assert m.find("fine text") is None and m.mask("fine") is None
    assert len(fold("İstanbul")) == len("İstanbul")  # its lower case is longer: kept 1:1
    assert KeywordMatcher(["stan"]).mask("İSTANBUL") == "İ****BUL"
    assert KeywordMatcher([]).find("anything") is None
    assert KeywordMatcher(["  ", ""]).words == frozenset()


def test_matcher_is_fast_at_thousands_of_words() -> None:
    rng = random.Random(3)
    words = {"".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(4, 8)))
             for _ in range(5000)}
    words |= {"".join(chr(0x4E00 + rng.randint(0, 2000)) for _ in range(2)) for _ in range(2000)}
    started = time.perf_counter()
    m = KeywordMatcher(words)
    assert time.perf_counter() - started < 5
    text = "这个主播太厉害了 what a play 666"
    started = time.process_time()
    for _ in range(2000):
        m.find(text)
    per_call = (time.process_time() - started) / 2000
    assert per_call < 100e-6  # O(len(text)): independent of the number of words


# -- hidden messages in the hub's batching ---------------------------------------------------------


def message(seq: int, user: str, hidden: bool = False, kind: str = "danmaku") -> Msg:
    data = orjson.dumps({"seq": seq, "id": f"i{seq}", "ts": 1, "user": user, "name": user,
                         "kind": kind, "body": {"text": f"t{seq}"}})
    return Msg.from_json(seq, data + (HIDDEN_MARK if hidden else b""))


def test_hidden_messages_are_for_their_sender_only() -> None:
    msgs = [message(1, "a"), message(2, "shady", hidden=True), message(3, "b"),
            message(4, "shady", hidden=True), message(5, "c", kind="gift")]
    assert msgs[1].hidden == "shady" and msgs[1].data.endswith(b"}") and not msgs[1].reliable
    assert msgs[0].hidden is None and has_hidden(msgs) and not has_hidden(msgs[:1])
    data, skipped = plan_catch_up(msgs, shed=False, hidden=True)
    assert [orjson.loads(d)["seq"] for d in data] == [1, 3, 5] and skipped == [(2, 2), (4, 4)]
    data, skipped = plan_catch_up(msgs, shed=False, viewer="shady", hidden=True)
    assert [orjson.loads(d)["seq"] for d in data] == [1, 2, 3, 4, 5] and skipped == []
    assert data[1] == orjson.dumps(orjson.loads(data[1]))  # byte for byte a normal message
    data, skipped = plan_catch_up(msgs, shed=True, viewer="b", hidden=True)
    assert [orjson.loads(d)["seq"] for d in data] == [5] and skipped == [(1, 4)]
    # Without hidden messages the fast path is unchanged.
    assert plan_catch_up(msgs[:1], shed=False) == ([msgs[0].data], [])


def test_the_composed_script_wraps_the_sequencing_step() -> None:
    assert MODERATED_INGEST.source.count("local function ingest_step()") == 1
    assert "redis.call('INCR', KEYS[1])" in MODERATED_INGEST.source
    with pytest.raises(ValueError, match="marker"):
        compose("no marker here", "x")
