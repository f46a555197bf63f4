"""engine.protocol: decoding of every client op, every documented rejection, every server frame."""

from __future__ import annotations

import ast
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from engine import protocol as p
from engine.protocol import (
    Body,
    Hello,
    Join,
    Leave,
    Limits,
    Ping,
    ProtocolError,
    Send,
    Since,
    decode_client_frame,
)

ROOT = Path(__file__).resolve().parents[1]
LIMITS = Limits()


def frame(**fields: object) -> bytes:
    return orjson.dumps(fields)


def send_frame(body: object = None, **extra: object) -> bytes:
    obj: dict[str, object] = {"op": "send", "room": "r1", "cmid": "c-1"}
    obj["body"] = {"text": "hi"} if body is None else body
    obj.update(extra)
    return orjson.dumps(obj)


def padded_ping(total: int) -> bytes:
    """A valid ping frame of exactly `total` bytes (padding in an unknown field)."""
    base = b'{"op":"ping","t":1,"pad":""}'
    data = base[:-2] + b"x" * (total - len(base)) + b'"}'
    assert len(data) == total
    return data


# -- every op -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (frame(op="hello", token="tok", client="web/1.0"), Hello("tok", "web/1.0")),
        (frame(op="hello"), Hello(None, None)),
        (frame(op="hello", token=None, client=None), Hello(None, None)),
        (frame(op="hello", client="x" * 100), Hello(None, "x" * 64)),
        (frame(op="ping", t=0), Ping(0)),
        (frame(op="ping", t=-(2**63)), Ping(-(2**63))),
        (frame(op="ping", t=2**63 - 1), Ping(2**63 - 1)),
        (frame(op="join", room="r1"), Join("r1", None)),
        (frame(op="join", room="r1", since=None), Join("r1", None)),
        (
            frame(op="join", room="a.B_c:d-9", since={"epoch": "e1", "seq": 42}),
            Join("a.B_c:d-9", Since("e1", 42)),
        ),
        (frame(op="join", room="r", since={"epoch": "e", "seq": 0}), Join("r", Since("e", 0))),
        (
            frame(op="join", room="r" * 64, since={"epoch": "e" * 64, "seq": 2**53}),
            Join("r" * 64, Since("e" * 64, 2**53)),
        ),
        (frame(op="leave", room="r1"), Leave("r1")),
        (
            frame(
                op="send",
                room="r1",
                cmid="c-1",
                body={"text": "hello", "mode": "top", "color": "#A0b1C2", "offset_ms": 1234},
            ),
            Send("r1", "c-1", Body("hello", "top", "#a0b1c2", 1234), "danmaku"),
        ),
        (send_frame(), Send("r1", "c-1", Body("hi", "scroll", "#ffffff", 0), "danmaku")),
        (send_frame(kind="gift"), Send("r1", "c-1", Body("hi"), "gift")),
        (send_frame(kind="superchat"), Send("r1", "c-1", Body("hi"), "superchat")),
        (send_frame(kind=None), Send("r1", "c-1", Body("hi"), "danmaku")),
        (send_frame({"text": "  spaced  "}), Send("r1", "c-1", Body("spaced"))),
        (send_frame({"text": "弾幕" * 100}), Send("r1", "c-1", Body("弾幕" * 100))),
        (send_frame({"text": "🎉" * 200}), Send("r1", "c-1", Body("🎉" * 200))),
        (send_frame({"text": "x", "mode": None, "color": None}), Send("r1", "c-1", Body("x"))),
        (send_frame({"text": "x", "mode": "bottom"}), Send("r1", "c-1", Body("x", "bottom"))),
        (
            send_frame({"text": "x", "offset_ms": 2**53}),
            Send("r1", "c-1", Body("x", offset_ms=2**53)),
        ),
        (
            frame(op="send", room="r", cmid="!" + "~" * 63, body={"text": "x"}),
            Send("r", "!" + "~" * 63, Body("x")),
        ),
        # unknown top-level fields are ignored, unknown body fields are dropped
        (frame(op="ping", t=5, extra={"a": [1, 2]}, v=2), Ping(5)),
        (
            send_frame({"text": "x", "html": "<b>", "user": "admin", "color": "#000000"}, seq=9),
            Send("r1", "c-1", Body("x", color="#000000")),
        ),
        # str input is accepted as well as bytes, bytearray and memoryview
        ('{"op":"leave","room":"r1"}', Leave("r1")),
        (bytearray(b'{"op":"leave","room":"r1"}'), Leave("r1")),
        (memoryview(b'{"op":"leave","room":"r1"}'), Leave("r1")),
        ('{"op":"send","room":"r","cmid":"c","body":{"text":"ü"}}', Send("r", "c", Body("ü"))),
    ],
)
def test_decode_ok(data: str | bytes, expected: object) -> None:
    assert decode_client_frame(data, LIMITS) == expected


def test_body_keeps_only_known_fields() -> None:
    event = decode_client_frame(send_frame({"text": "x", "evil": "y", "nested": {"a": 1}}))
    assert isinstance(event, Send)
    assert orjson.loads(orjson.dumps(event.body)) == {
        "text": "x",
        "mode": "scroll",
        "color": "#ffffff",
        "offset_ms": 0,
    }
    with pytest.raises(AttributeError):
        event.body.__dict__  # noqa: B018 - slots: no place to smuggle extra attributes


def test_exact_and_over_limit_frames() -> None:
    assert decode_client_frame(padded_ping(4096), LIMITS) == Ping(1)
    assert decode_client_frame(padded_ping(4096).decode(), LIMITS) == Ping(1)
    for data in (padded_ping(4097), padded_ping(4097).decode()):
        assert decode_client_frame(data, LIMITS) == ProtocolError(
            "too_large", "frame is larger than 4096 bytes"
        )


def test_size_counts_utf8_bytes_of_str() -> None:
    # 1500 three-byte code points: 1500 characters but > 4096 UTF-8 bytes
    text = '{"op":"ping","t":1,"pad":"' + "弾" * 1500 + '"}'
    assert len(text) < 4096 < len(text.encode())
    result = decode_client_frame(text, LIMITS)
    assert isinstance(result, ProtocolError)
    assert result.code == "too_large"
    small = Limits(max_frame_bytes=50)
    assert decode_client_frame('{"op":"ping","t":1,"p":"' + "é" * 10 + '"}', small) == Ping(1)
    tight = '{"op":"ping","t":1,"p":"' + "é" * 13 + '"}'  # 38 chars, 51 bytes
    assert isinstance(decode_client_frame(tight, small), ProtocolError)


def test_custom_limits() -> None:
    limits = Limits(max_text_chars=3)
    ok = decode_client_frame(send_frame({"text": "abc"}), limits)
    assert ok == Send("r1", "c-1", Body("abc"))
    result = decode_client_frame(send_frame({"text": "abcd"}), limits)
    assert isinstance(result, ProtocolError)
    assert result.code == "too_long"
    with pytest.raises(ValueError, match="positive"):
        Limits(max_frame_bytes=0)
    with pytest.raises(ValueError, match="positive"):
        Limits(max_text_chars=True)
    assert LIMITS.to_wire() == {
        "max_frame_bytes": 4096,
        "max_text_chars": 200,
        "max_name_chars": 32,
        "max_rooms_per_conn": 8,
    }


# -- every rejection ------------------------------------------------------------------------------
BAD = "bad_request"

JOIN_R = ("join", "r", None)
NONE3 = (None, None, None)


def join_since(since: object) -> bytes:
    return frame(op="join", room="r", since=since)


# (id, data, code, op, room, cmid)
REJECTIONS: list[tuple[str, object, str, str | None, str | None, str | None]] = [
    ("invalid utf-8", b'{"op":"ping","t":1,"x":"\xff"}', BAD, None, None, None),
    ("invalid utf-8 lead", b"\xc3\x28", BAD, None, None, None),
    ("lone surrogate str", '{"op":"ping","t":1,"x":"\ud800"}', BAD, None, None, None),
    ("escaped lone surrogate", b'{"op":"ping","t":1,"x":"\\ud800"}', BAD, None, None, None),
    ("empty", b"", BAD, None, None, None),
    ("whitespace", b"  ", BAD, None, None, None),
    ("truncated json", b'{"op":"ping","t":', BAD, None, None, None),
    ("trailing data", b'{"op":"ping","t":1} {}', BAD, None, None, None),
    ("json array", b'[{"op":"ping","t":1}]', BAD, None, None, None),
    ("json null", b"null", BAD, None, None, None),
    ("json string", b'"ping"', BAD, None, None, None),
    ("json number", b"1", BAD, None, None, None),
    ("missing op", frame(t=1), BAD, None, None, None),
    ("op null", frame(op=None, t=1), BAD, None, None, None),
    ("op not a string", frame(op=1, t=1), BAD, None, None, None),
    ("op a list", frame(op=["ping"], t=1), BAD, None, None, None),
    ("unknown op", frame(op="pong", t=1), "unknown_op", None, None, None),
    ("unknown op case", frame(op="PING", t=1), "unknown_op", None, None, None),
    ("empty op", frame(op=""), "unknown_op", None, None, None),
    ("1 MB frame", b'{"op":"ping","x":"' + b"a" * 1_000_000 + b'"}', "too_large", *NONE3),
    ("1 MB str frame", '{"op":"ping","x":"' + "a" * 1_000_000 + '"}', "too_large", *NONE3),
    ("max+1 bytes", padded_ping(4097), "too_large", None, None, None),
    ("deep nesting", b"[" * 100_000 + b"]" * 100_000, "too_large", None, None, None),
    ("nesting 1025", b'{"op":"ping","x":' + b"[" * 1025 + b"]" * 1025 + b"}", BAD, *NONE3),
    ("int 2**70", b'{"op":"ping","t":%d}' % 2**70, BAD, "ping", None, None),
    ("int 2**63", b'{"op":"ping","t":%d}' % 2**63, BAD, "ping", None, None),
    ("int -2**63-1", b'{"op":"ping","t":%d}' % (-(2**63) - 1), BAD, "ping", None, None),
    ("bool as int", frame(op="ping", t=True), BAD, "ping", None, None),
    ("float as int", frame(op="ping", t=1.0), BAD, "ping", None, None),
    ("exponent as int", b'{"op":"ping","t":1e3}', BAD, "ping", None, None),
    ("string as int", frame(op="ping", t="1"), BAD, "ping", None, None),
    ("missing t", frame(op="ping"), BAD, "ping", None, None),
    ("NaN", b'{"op":"ping","t":NaN}', BAD, None, None, None),
    ("Infinity", b'{"op":"ping","t":Infinity}', BAD, None, None, None),
    ("-Infinity", b'{"op":"ping","t":-Infinity}', BAD, None, None, None),
    ("1e400", b'{"op":"ping","t":1e400}', BAD, None, None, None),
    ("token not str", frame(op="hello", token=123), BAD, "hello", None, None),
    ("client not str", frame(op="hello", client=["web"]), BAD, "hello", None, None),
    ("bad room chars", frame(op="join", room="a b"), BAD, "join", None, None),
    ("bad room slash", frame(op="join", room="a/b"), BAD, "join", None, None),
    ("bad room unicode", frame(op="join", room="ルーム"), BAD, "join", None, None),
    ("bad room newline", frame(op="join", room="r\n"), BAD, "join", None, None),
    ("room 65 chars", frame(op="join", room="r" * 65), BAD, "join", None, None),
    ("room empty", frame(op="leave", room=""), BAD, "leave", None, None),
    ("room missing", frame(op="leave"), BAD, "leave", None, None),
    ("room int", frame(op="leave", room=1), BAD, "leave", None, None),
    ("since not object", frame(op="join", room="r", since=5), BAD, "join", "r", None),
    ("since list", frame(op="join", room="r", since=["e", 1]), BAD, "join", "r", None),
    ("since seq str", join_since({"epoch": "e", "seq": "1"}), BAD, *JOIN_R),
    ("since seq neg", join_since({"epoch": "e", "seq": -1}), BAD, *JOIN_R),
    ("since seq big", join_since({"epoch": "e", "seq": 2**53 + 1}), BAD, *JOIN_R),
    ("since seq float", join_since({"epoch": "e", "seq": 1.5}), BAD, *JOIN_R),
    ("since seq bool", join_since({"epoch": "e", "seq": False}), BAD, *JOIN_R),
    ("since no seq", join_since({"epoch": "e"}), BAD, *JOIN_R),
    ("since epoch int", join_since({"epoch": 1, "seq": 1}), BAD, *JOIN_R),
    ("since epoch empty", join_since({"epoch": "", "seq": 1}), BAD, *JOIN_R),
    ("since epoch 65", join_since({"epoch": "e" * 65, "seq": 1}), BAD, *JOIN_R),
    ("since epoch ctrl", join_since({"epoch": "e\x00", "seq": 1}), BAD, *JOIN_R),
    ("send bad room", send_frame(room="a b"), BAD, "send", None, "c-1"),
    ("send no room", frame(op="send", cmid="c", body={"text": "x"}), BAD, "send", None, "c"),
    ("empty cmid", send_frame(cmid=""), BAD, "send", "r1", None),
    ("cmid 65 chars", send_frame(cmid="c" * 65), BAD, "send", "r1", None),
    ("cmid space", send_frame(cmid="c 1"), BAD, "send", "r1", None),
    ("cmid non-ascii", send_frame(cmid="é"), BAD, "send", "r1", None),
    ("cmid int", send_frame(cmid=1), BAD, "send", "r1", None),
    ("cmid DEL", send_frame(cmid="c\x7f"), BAD, "send", "r1", None),
    # from here on room and cmid are valid: the error is a nack for them
    ("text too long", send_frame({"text": "x" * 201}), "too_long", "send", "r1", "c-1"),
    ("text too long cjk", send_frame({"text": "弾" * 201}), "too_long", "send", "r1", "c-1"),
    ("empty text", send_frame({"text": ""}), BAD, "send", "r1", "c-1"),
    ("blank text", send_frame({"text": " \u3000 "}), BAD, "send", "r1", "c-1"),
    ("text missing", send_frame({"mode": "top"}), BAD, "send", "r1", "c-1"),
    ("text int", send_frame({"text": 5}), BAD, "send", "r1", "c-1"),
    ("text null", send_frame({"text": None}), BAD, "send", "r1", "c-1"),
    ("text NUL", send_frame({"text": "a\x00b"}), BAD, "send", "r1", "c-1"),
    ("text newline", send_frame({"text": "a\nb"}), BAD, "send", "r1", "c-1"),
    ("text trailing newline", send_frame({"text": "ab\n"}), BAD, "send", "r1", "c-1"),
    ("text tab", send_frame({"text": "a\tb"}), BAD, "send", "r1", "c-1"),
    ("text ESC", send_frame({"text": "\x1b[31mred"}), BAD, "send", "r1", "c-1"),
    ("text DEL", send_frame({"text": "a\x7f"}), BAD, "send", "r1", "c-1"),
    ("text C1", send_frame({"text": "a\x85b"}), BAD, "send", "r1", "c-1"),
    ("text C1 end", send_frame({"text": "a\x9f"}), BAD, "send", "r1", "c-1"),
    ("RTL override", send_frame({"text": "abc\u202edef"}), BAD, "send", "r1", "c-1"),
    ("LRE", send_frame({"text": "\u202aabc"}), BAD, "send", "r1", "c-1"),
    ("RLI isolate", send_frame({"text": "a\u2067b"}), BAD, "send", "r1", "c-1"),
    ("PDI", send_frame({"text": "a\u2069"}), BAD, "send", "r1", "c-1"),
    ("line separator", send_frame({"text": "a\u2028b"}), BAD, "send", "r1", "c-1"),
    ("bad color word", send_frame({"text": "x", "color": "red"}), BAD, "send", "r1", "c-1"),
    ("bad color short", send_frame({"text": "x", "color": "#fff"}), BAD, "send", "r1", "c-1"),
    ("bad color hex", send_frame({"text": "x", "color": "#gggggg"}), BAD, "send", "r1", "c-1"),
    ("bad color alpha", send_frame({"text": "x", "color": "#ffffff00"}), BAD, "send", "r1", "c-1"),
    ("bad color nl", send_frame({"text": "x", "color": "#ffffff\n"}), BAD, "send", "r1", "c-1"),
    ("bad color int", send_frame({"text": "x", "color": 0xFFFFFF}), BAD, "send", "r1", "c-1"),
    ("bad mode", send_frame({"text": "x", "mode": "reverse"}), BAD, "send", "r1", "c-1"),
    ("bad mode case", send_frame({"text": "x", "mode": "TOP"}), BAD, "send", "r1", "c-1"),
    ("bad mode int", send_frame({"text": "x", "mode": 1}), BAD, "send", "r1", "c-1"),
    ("negative offset_ms", send_frame({"text": "x", "offset_ms": -1}), BAD, "send", "r1", "c-1"),
    ("huge offset_ms", send_frame({"text": "x", "offset_ms": 2**53 + 1}), BAD, "send", "r1", "c-1"),
    ("float offset_ms", send_frame({"text": "x", "offset_ms": 1.5}), BAD, "send", "r1", "c-1"),
    ("bool offset_ms", send_frame({"text": "x", "offset_ms": True}), BAD, "send", "r1", "c-1"),
    ("body missing", frame(op="send", room="r1", cmid="c-1"), BAD, "send", "r1", "c-1"),
    ("body string", send_frame("hello"), BAD, "send", "r1", "c-1"),
    ("body list", send_frame(["hello"]), BAD, "send", "r1", "c-1"),
    ("kind system", send_frame(kind="system"), BAD, "send", "r1", "c-1"),
    ("kind unknown", send_frame(kind="sticker"), BAD, "send", "r1", "c-1"),
    ("kind int", send_frame(kind=1), BAD, "send", "r1", "c-1"),
    ("unsupported type", 12345, BAD, None, None, None),
    ("none input", None, BAD, None, None, None),
]


@pytest.mark.parametrize(
    ("data", "code", "op", "room", "cmid"),
    [pytest.param(*row[1:], id=row[0]) for row in REJECTIONS],
)
def test_decode_rejects(
    data: str | bytes, code: str, op: str | None, room: str | None, cmid: str | None
) -> None:
    result = decode_client_frame(data, LIMITS)
    assert isinstance(result, ProtocolError), result
    assert (result.code, result.op, result.room, result.cmid) == (code, op, room, cmid)
    assert result.code in p.DECODE_ERROR_CODES
    assert result.message
    assert result.is_nack == (op == "send" and room is not None and cmid is not None)
    if result.is_nack:
        assert result.code in p.NACK_CODES
    else:
        assert result.code in p.ERROR_CODES


@pytest.mark.parametrize(
    "data",
    [
        b"[" * 100_000 + b"]" * 100_000,
        b'{"op":"ping","t":' + b'{"a":' * 100_000,
        b'{"op":"ping","t":' + b"[" * 100_000,
    ],
    ids=["array", "object", "unterminated"],
)
def test_deep_nesting_within_size_limit(data: bytes) -> None:
    result = decode_client_frame(data, Limits(max_frame_bytes=10_000_000))
    assert isinstance(result, ProtocolError)
    assert result.code == "bad_request"


def test_error_messages_name_the_problem() -> None:
    cases = {
        b"\xff": "not valid UTF-8",
        b"{": "not valid JSON",
        b"[]": "JSON object",
        b"{}": "missing op",
        b'{"op":1}': "op must be a string",
        b'{"op":"zap"}': "unknown op 'zap'",
        send_frame({"text": "x" * 201}): "longer than 200",
        send_frame({"text": "a\u202e"}): "bidirectional",
        send_frame({"text": "x", "color": "red"}): "#rrggbb",
    }
    for data, fragment in cases.items():
        result = decode_client_frame(data, LIMITS)
        assert isinstance(result, ProtocolError)
        assert fragment in result.message, (data, result)


def test_unknown_op_message_is_bounded() -> None:
    result = decode_client_frame(frame(op="z" * 1000), LIMITS)
    assert isinstance(result, ProtocolError)
    assert len(result.message) < 60


def test_decoder_bug_becomes_internal(monkeypatch: pytest.MonkeyPatch) -> None:
    from engine import _protocol_validate as v

    def boom(obj: object, limits: object) -> object:
        raise KeyError("bug")

    monkeypatch.setitem(v._DECODERS, "ping", boom)
    result = decode_client_frame(frame(op="ping", t=1), LIMITS)
    assert result == ProtocolError("internal", "internal error while decoding the frame")


def test_allowed_unicode_text() -> None:
    # zero-width joiners, LRM/RLM marks, emoji sequences and RTL scripts are ordinary text
    for text in ("👩‍👩‍👧", "שלום", "a\u200eb\u200fc", "مرحبا", "x\u200by"):
        assert decode_client_frame(send_frame({"text": text})) == Send("r1", "c-1", Body(text))


def test_sanitize_name() -> None:
    assert p.sanitize_name("  Alice\u202e\x00 ") == "Alice"
    assert p.sanitize_name("n" * 40) == "n" * 32
    assert p.sanitize_name("ab" + " " * 30 + "cd") == "ab"
    assert p.sanitize_name("名前", Limits(max_name_chars=1)) == "名"


def test_is_room_id_and_cmid() -> None:
    assert p.valid_room("a" * 64)
    assert not p.valid_room("a" * 65)
    assert not p.valid_room(b"room")
    assert p.valid_cmid("~")
    assert not p.valid_cmid(" ")


# -- server frames: exact contract field names ----------------------------------------------------
def keys(data: bytes) -> list[str]:
    return list(orjson.loads(data))


def test_encode_welcome() -> None:
    data = p.encode_welcome("s1", "u1", False, 30000, 4096)
    assert orjson.loads(data) == {
        "op": "welcome",
        "session": "s1",
        "user": "u1",
        "guest": False,
        "heartbeat_ms": 30000,
        "max_frame_bytes": 4096,
        "protocol": 1,
    }
    ext = orjson.loads(p.encode_welcome("s", "g1", True, 1, 2, limits=LIMITS.to_wire()))
    assert ext["guest"] is True
    assert ext["limits"] == LIMITS.to_wire()
    with pytest.raises(ValueError, match="clash"):
        p.encode_welcome("s", "u", True, 1, 2, op="evil")


def test_encode_simple_frames() -> None:
    assert orjson.loads(p.encode_pong(-5, 1700000000000)) == {
        "op": "pong",
        "t": -5,
        "ts": 1700000000000,
    }
    assert orjson.loads(p.encode_joined("r", "e", 0, 3)) == {
        "op": "joined",
        "room": "r",
        "epoch": "e",
        "seq": 0,
        "online": 3,
    }
    assert orjson.loads(p.encode_left("r")) == {"op": "left", "room": "r"}
    for reason in (p.RESET_EPOCH_CHANGED, p.RESET_TOO_OLD):
        assert orjson.loads(p.encode_reset("r", "e2", 9, reason)) == {
            "op": "reset",
            "room": "r",
            "epoch": "e2",
            "seq": 9,
            "reason": reason,
        }
    assert orjson.loads(p.encode_ack("r", "c", 7, 123)) == {
        "op": "ack",
        "room": "r",
        "cmid": "c",
        "seq": 7,
        "ts": 123,
    }


def test_encode_nack() -> None:
    assert orjson.loads(p.encode_nack("r", "c", "muted", "you are muted")) == {
        "op": "nack",
        "room": "r",
        "cmid": "c",
        "code": "muted",
        "message": "you are muted",
    }
    assert orjson.loads(p.encode_nack("r", "c", "rate_limited", "slow down", 1500)) == {
        "op": "nack",
        "room": "r",
        "cmid": "c",
        "code": "rate_limited",
        "message": "slow down",
        "retry_after_ms": 1500,
    }
    assert "retry_after_ms" in keys(p.encode_nack("r", "c", "rate_limited", "m", 0))


def test_encode_error() -> None:
    assert orjson.loads(p.encode_error("bad_request", "nope")) == {
        "op": "error",
        "code": "bad_request",
        "message": "nope",
    }
    assert orjson.loads(p.encode_error("rate_limited", "m", retry_after_ms=5)) == {
        "op": "error",
        "code": "rate_limited",
        "message": "m",
        "retry_after_ms": 5,
    }
    with pytest.raises(ValueError, match="clash"):
        p.encode_error("internal", "m", op="x")


def test_encode_protocol_error() -> None:
    nack = decode_client_frame(send_frame({"text": "x" * 300}))
    assert isinstance(nack, ProtocolError)
    assert orjson.loads(p.encode_protocol_error(nack)) == {
        "op": "nack",
        "room": "r1",
        "cmid": "c-1",
        "code": "too_long",
        "message": "body.text is longer than 200 characters",
    }
    err = decode_client_frame(b"[]")
    assert isinstance(err, ProtocolError)
    assert orjson.loads(p.encode_protocol_error(err)) == {
        "op": "error",
        "code": "bad_request",
        "message": "frame must be a JSON object",
    }
    join_err = decode_client_frame(frame(op="join", room="r", since=1))
    assert isinstance(join_err, ProtocolError)
    assert orjson.loads(p.encode_protocol_error(join_err))["room"] == "r"


def test_encode_message() -> None:
    data = p.encode_message(5, "m5", "u1", "Alice", 1000, "danmaku", Body("hi", offset_ms=7))
    assert list(orjson.loads(data)) == ["seq", "id", "user", "name", "ts", "kind", "body"]
    assert orjson.loads(data) == {
        "seq": 5,
        "id": "m5",
        "user": "u1",
        "name": "Alice",
        "ts": 1000,
        "kind": "danmaku",
        "body": {"text": "hi", "mode": "scroll", "color": "#ffffff", "offset_ms": 7},
    }
    from types import MappingProxyType

    gift = p.encode_message(6, "m6", "u1", "A", 1, "gift", MappingProxyType({"gift": "rocket"}))
    assert orjson.loads(gift)["body"] == {"gift": "rocket"}
    extra = orjson.loads(p.encode_message(1, "i", "u", "n", 1, "system", {}, role="mod"))
    assert extra["role"] == "mod"


def make_msgs(first: int, last: int) -> list[bytes]:
    return [
        p.encode_message(s, f"id{s}", "u", "名前", 1000 + s, "danmaku", Body(f'm{s} "q" \\'))
        for s in range(first, last + 1)
    ]


@pytest.mark.parametrize(
    ("msgs", "skipped"),
    [
        (make_msgs(1, 20), None),
        (make_msgs(1, 20), []),
        (make_msgs(1, 1), None),
        ([], [(1, 5)]),
        (make_msgs(1, 3) + make_msgs(7, 9), [(4, 6)]),
        (make_msgs(1, 1) + make_msgs(3, 3) + make_msgs(6, 6), [(2, 2), (4, 5)]),
    ],
)
def test_encode_batch_equals_orjson(
    msgs: list[bytes], skipped: list[tuple[int, int]] | None
) -> None:
    room, epoch = "r:1", 'e"\\\u2028ü'
    data = p.encode_batch(room, epoch, msgs, 1, 20, skipped)
    expected: dict[str, object] = {
        "op": "batch",
        "room": room,
        "epoch": epoch,
        "from": 1,
        "to": 20,
        "msgs": [orjson.loads(m) for m in msgs],
    }
    if skipped:
        expected["skipped"] = [list(r) for r in skipped]
    assert data == orjson.dumps(expected)
    assert orjson.loads(data) == expected
    assert ("skipped" in orjson.loads(data)) == bool(skipped)
    assert json.loads(data) == expected  # and the stdlib parser agrees


def test_encode_batch_accepts_any_sequence() -> None:
    msgs = tuple(make_msgs(1, 2))
    a = p.encode_batch("r", "e", msgs, 1, 5, ((3, 5),))
    b = p.encode_batch("r", "e", list(msgs), 1, 5, [(3, 5)])
    assert a == b
    assert orjson.loads(a)["skipped"] == [[3, 5]]


def test_encode_frame() -> None:
    from types import MappingProxyType

    assert p.encode_frame({"op": "custom", "x": 1}) == b'{"op":"custom","x":1}'
    assert p.encode_frame(MappingProxyType({"op": "x"})) == b'{"op":"x"}'
    with pytest.raises(ValueError, match="op"):
        p.encode_frame({"x": 1})


def test_decode_server_frame() -> None:
    assert p.decode_server_frame(p.encode_left("r")) == {"op": "left", "room": "r"}
    assert p.decode_server_frame('{"op":"x"}') == {"op": "x"}
    for bad in (b"[]", b'{"x":1}', b'{"op":1}', b"{"):
        with pytest.raises(ValueError, match="."):
            p.decode_server_frame(bad)


# -- client encoders round-trip through the decoder ----------------------------------------------
def test_client_encoders_round_trip() -> None:
    assert decode_client_frame(p.client_hello("tok", "sdk/1")) == Hello("tok", "sdk/1")
    assert decode_client_frame(p.client_hello()) == Hello()
    assert orjson.loads(p.client_hello()) == {"op": "hello"}
    assert decode_client_frame(p.client_ping(2**62)) == Ping(2**62)
    assert decode_client_frame(p.client_join("r")) == Join("r")
    assert decode_client_frame(p.client_join("r", Since("e", 3))) == Join("r", Since("e", 3))
    assert decode_client_frame(p.client_leave("r")) == Leave("r")
    assert decode_client_frame(p.client_send("r", "c", "hi")) == Send("r", "c", Body("hi"))
    assert "kind" not in orjson.loads(p.client_send("r", "c", "hi"))
    sent = p.client_send("r", "c", "hi", "top", "#ABCDEF", 99, kind="gift")
    assert decode_client_frame(sent) == Send("r", "c", Body("hi", "top", "#abcdef", 99), "gift")


def test_constants() -> None:
    assert p.PROTOCOL_VERSION == 1
    assert (
        p.CLOSE_UNAUTHORIZED,
        p.CLOSE_HEARTBEAT_TIMEOUT,
        p.CLOSE_KICKED,
        p.CLOSE_FLOODING,
        p.CLOSE_GOING_AWAY,
        p.CLOSE_SLOW_CONSUMER,
    ) == (4001, 4002, 4003, 4008, 1001, 4009)
    assert {
        "bad_request",
        "unknown_op",
        "too_large",
        "unauthorized",
        "rate_limited",
        "internal",
        "not_joined",
    } == p.ERROR_CODES
    assert {
        "rate_limited",
        "muted",
        "banned",
        "filtered",
        "too_long",
        "bad_request",
        "not_joined",
        "unauthorized",
        "room_closed",
    } == p.NACK_CODES
    assert p.DECODE_ERROR_CODES <= p.ERROR_CODES | p.NACK_CODES
    assert {"hello", "ping", "join", "leave", "send"} == p.CLIENT_OPS
    assert {"danmaku", "gift", "superchat"} == p.CLIENT_KINDS
    assert Limits() == Limits(4096, 200, 32, 8)


@pytest.mark.parametrize(
    "event",
    [Hello(), Ping(1), Join("r"), Leave("r"), Send("r", "c", Body("x")), Since("e", 1), Body("x")],
)
def test_events_are_frozen_and_slotted(event: object) -> None:
    assert not hasattr(event, "__dict__")
    assert hasattr(type(event), "__slots__")
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(event, dataclasses.fields(event)[0].name, "other")  # type: ignore[arg-type]


# -- sans-IO: no trio, redis or sockets -----------------------------------------------------------
CODEC_FILES = ["engine/protocol.py", "engine/_protocol_validate.py", "engine/wsframe.py"]
ALLOWED_IMPORTS = {
    "__future__",
    "collections",
    "dataclasses",
    "re",
    "struct",
    "typing",
    "orjson",
}


@pytest.mark.parametrize("path", CODEC_FILES)
def test_codec_imports_are_allowlisted(path: str) -> None:
    tree = ast.parse((ROOT / path).read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    assert found <= ALLOWED_IMPORTS, found - ALLOWED_IMPORTS


def test_codec_loads_no_io_modules() -> None:
    # A stub `engine` package keeps whatever engine/__init__.py imports out of the picture.
    script = f"""
import sys, types
pkg = types.ModuleType("engine")
pkg.__path__ = [{str(ROOT / "engine")!r}]
sys.modules["engine"] = pkg
before = set(sys.modules)
import engine.protocol, engine.wsframe
new = set(sys.modules) - before
bad = sorted(m for m in new if m.split(".")[0] in
    {{"trio", "redis", "hiredis", "socket", "_socket", "ssl", "selectors", "asyncio", "wsproto",
      "h11"}})
print(",".join(bad))
"""
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == ""
