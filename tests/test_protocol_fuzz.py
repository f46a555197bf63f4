"""Property tests for engine.protocol: the decoder never raises and only returns documented codes;
valid frames round-trip; spliced batches equal their orjson equivalent."""

from __future__ import annotations

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

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

FUZZ = settings(
    max_examples=300,
    deadline=None,
    database=None,  # keep the work tree clean; failures print their reproducing example
    suppress_health_check=[HealthCheck.too_slow],
)
# Round-trip properties have a narrow input space: fewer examples cover them.
FUZZ_ROUND_TRIP = settings(FUZZ, max_examples=150)
LIMITS = Limits()
EVENT_TYPES = (Hello, Ping, Join, Leave, Send)
# Codes the decoder may return for hostile input: `internal` would mean a decoder bug.
EXPECTED_CODES = p.DECODE_ERROR_CODES - {p.ERR_INTERNAL}

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30)
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=5)
    | st.dictionaries(st.text(max_size=10), children, max_size=5),
    max_leaves=12,
)
# Values likely to sit near the validation rules, mixed with arbitrary JSON.
field_values = st.one_of(
    json_values,
    st.sampled_from(["r1", "a" * 64, "a" * 65, "", " ", "#ffffff", "#FFF", "scroll", "gift"]),
    st.integers(min_value=-1, max_value=1) | st.just(2**53) | st.just(2**53 + 1),
    st.text(alphabet=st.characters(codec="utf-8"), max_size=250),
)
frame_like = st.fixed_dictionaries(
    {"op": st.sampled_from(sorted(p.CLIENT_OPS)) | json_values},
    optional={
        "t": field_values,
        "token": field_values,
        "client": field_values,
        "room": field_values,
        "cmid": field_values,
        "kind": field_values,
        "since": field_values
        | st.fixed_dictionaries({}, optional={"epoch": field_values, "seq": field_values}),
        "body": field_values
        | st.fixed_dictionaries(
            {},
            optional={
                "text": field_values,
                "mode": field_values,
                "color": field_values,
                "offset_ms": field_values,
                "extra": json_values,
            },
        ),
    },
)


def check(result: object) -> None:
    if isinstance(result, ProtocolError):
        assert result.code in EXPECTED_CODES, result
        assert isinstance(result.message, str)
        assert result.message
        if result.is_nack:
            assert result.code in p.NACK_CODES
        else:
            assert result.code in p.ERROR_CODES
        # whatever the gateway answers with is valid JSON
        orjson.loads(p.encode_protocol_error(result))
    else:
        assert isinstance(result, EVENT_TYPES), result


@FUZZ
@given(st.binary(max_size=5000))
def test_arbitrary_bytes(data: bytes) -> None:
    check(decode_client_frame(data, LIMITS))


@FUZZ
@given(st.text(max_size=2000))
def test_arbitrary_text(data: str) -> None:
    check(decode_client_frame(data, LIMITS))


@FUZZ
@given(json_values)
def test_arbitrary_json(value: object) -> None:
    data = orjson.dumps(value)
    check(decode_client_frame(data, LIMITS))
    check(decode_client_frame(data.decode(), LIMITS))


def check_valid_values(result: object) -> None:
    """An accepted event holds only values that pass every documented rule."""
    if isinstance(result, Send):
        assert p.valid_room(result.room)
        assert p.valid_cmid(result.cmid)
        assert result.kind in p.CLIENT_KINDS
        body = result.body
        assert 0 < len(body.text) <= LIMITS.max_text_chars
        assert body.text == body.text.strip()
        assert p.FORBIDDEN_TEXT_RE.search(body.text) is None
        assert body.mode in p.MODES
        assert body.color == body.color.lower()
        assert len(body.color) == 7
        assert 0 <= body.offset_ms <= p.MAX_SAFE_INT
    elif isinstance(result, Join | Leave):
        assert p.valid_room(result.room)
        if isinstance(result, Join) and result.since is not None:
            assert 1 <= len(result.since.epoch) <= 64
            assert 0 <= result.since.seq <= p.MAX_SAFE_INT
    elif isinstance(result, Ping):
        assert type(result.t) is int
        assert p.INT64_MIN <= result.t <= p.INT64_MAX


@FUZZ
@given(frame_like)
def test_frame_like_objects(obj: dict[str, object]) -> None:
    data = orjson.dumps(obj)
    result = decode_client_frame(data, LIMITS)
    check(result)
    check_valid_values(result)
    # Byte-level mutations of plausible frames: truncation and a flipped byte.
    check(decode_client_frame(data[: len(data) // 2], LIMITS))
    i = len(data) // 3
    check(decode_client_frame(data[:i] + bytes([data[i] ^ 0x80]) + data[i + 1 :], LIMITS))


room_ids = st.text(
    alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.:-",
    min_size=1,
    max_size=64,
)
cmids = st.text(
    alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=64
)
texts = st.text(
    alphabet=st.characters(
        codec="utf-8",
        exclude_categories=["Cc", "Zl", "Zp"],
        exclude_characters="\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069",
    ),
    min_size=1,
    max_size=200,
).filter(lambda t: t.strip() == t and t != "")
colors = st.from_regex(r"#[0-9a-fA-F]{6}", fullmatch=True)


@FUZZ_ROUND_TRIP
@given(
    room_ids,
    cmids,
    texts,
    st.sampled_from(sorted(p.MODES)),
    colors,
    st.integers(min_value=0, max_value=2**53),
    st.sampled_from([None, *sorted(p.CLIENT_KINDS)]),
)
def test_valid_send_round_trips(
    room: str, cmid: str, text: str, mode: str, color: str, offset_ms: int, kind: str | None
) -> None:
    data = p.client_send(room, cmid, text, mode, color, offset_ms, kind)
    expected = Send(room, cmid, Body(text, mode, color.lower(), offset_ms), kind or "danmaku")
    if len(data) <= LIMITS.max_frame_bytes:
        assert decode_client_frame(data, LIMITS) == expected
        assert decode_client_frame(data.decode(), LIMITS) == expected


@FUZZ_ROUND_TRIP
@given(room_ids, st.none() | st.tuples(st.text(min_size=1, max_size=64), st.integers(0, 2**53)))
def test_valid_join_round_trips(room: str, since: tuple[str, int] | None) -> None:
    s = Since(*since) if since else None
    result = decode_client_frame(p.client_join(room, s), LIMITS)
    if s is not None and p.FORBIDDEN_TEXT_RE.search(s.epoch):
        assert isinstance(result, ProtocolError)
    else:
        assert result == Join(room, s)


@FUZZ_ROUND_TRIP
@given(
    st.text(max_size=20),
    st.text(max_size=20),
    st.lists(json_scalars, max_size=5),
    st.integers(0, 2**53),
    st.integers(0, 2**53),
    st.none() | st.lists(st.tuples(st.integers(0, 2**53), st.integers(0, 2**53)), max_size=4),
)
def test_batch_splice_equals_orjson(
    room: str,
    epoch: str,
    bodies: list[object],
    from_seq: int,
    to_seq: int,
    skipped: list[tuple[int, int]] | None,
) -> None:
    msgs = [
        p.encode_message(i, f"m{i}", "u", "n", 0, "system", {"v": body})
        for i, body in enumerate(bodies)
    ]
    data = p.encode_batch(room, epoch, msgs, from_seq, to_seq, skipped)
    expected: dict[str, object] = {
        "op": "batch",
        "room": room,
        "epoch": epoch,
        "from": from_seq,
        "to": to_seq,
        "msgs": [orjson.loads(m) for m in msgs],
    }
    if skipped:
        expected["skipped"] = skipped
    assert data == orjson.dumps(expected)
