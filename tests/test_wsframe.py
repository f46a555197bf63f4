"""engine.wsframe: every frame is checked by feeding it to wsproto's client side."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Event,
    Ping,
    Pong,
    Request,
    TextMessage,
)
from wsproto.frame_protocol import FrameProtocol, Opcode

from engine import wsframe as w

LENGTHS = [0, 1, 125, 126, 127, 65535, 65536, 100000]


def connected_client() -> WSConnection:
    """A wsproto client that completed the opening handshake with a wsproto server."""
    client = WSConnection(ConnectionType.CLIENT)
    server = WSConnection(ConnectionType.SERVER)
    server.receive_data(client.send(Request(host="localhost", target="/ws")))
    request = next(server.events())
    assert isinstance(request, Request)
    client.receive_data(server.send(AcceptConnection()))
    assert isinstance(next(client.events()), AcceptConnection)
    return client


def client_events(data: bytes) -> list[Event]:
    client = connected_client()
    client.receive_data(data)
    return list(client.events())


def text_payload(n: int) -> bytes:
    # multi-byte characters too, so wsproto's incremental UTF-8 decoder is exercised
    unit = "aé弾🎉".encode()
    data = (unit * (n // len(unit) + 1))[:n]
    return data.decode("utf-8", "ignore").encode().ljust(n, b"x")


@pytest.mark.parametrize("n", LENGTHS)
def test_text_frame_decodes_in_wsproto(n: int) -> None:
    payload = text_payload(n)
    assert len(payload) == n
    frame = w.encode_text_frame(payload)
    events = client_events(frame)
    text = "".join(e.data for e in events if isinstance(e, TextMessage))
    assert text.encode() == payload
    assert all(e.message_finished for e in events if isinstance(e, TextMessage))
    header = 2 if n < 126 else 4 if n < 65536 else 10
    assert len(frame) == header + n


@pytest.mark.parametrize("n", LENGTHS)
def test_binary_frame_decodes_in_wsproto(n: int) -> None:
    payload = bytes(i % 251 for i in range(n))
    events = client_events(w.encode_binary_frame(payload))
    assert b"".join(e.data for e in events if isinstance(e, BytesMessage)) == payload


@pytest.mark.parametrize("n", LENGTHS)
def test_frames_match_frame_protocol(n: int) -> None:
    payload = b"y" * n
    proto = FrameProtocol(client=True, extensions=[])
    proto.receive_bytes(w.encode_text_frame(payload) + w.encode_binary_frame(payload))
    frames = list(proto.received_frames())
    assert [f.opcode for f in frames] == [Opcode.TEXT, Opcode.BINARY]
    assert frames[0].payload == payload.decode()
    assert frames[1].payload == payload
    assert all(f.frame_finished and f.message_finished for f in frames)


@pytest.mark.parametrize("n", [0, 1, 125, 126, 65535, 65536, 100000])
def test_header_matches_wsproto_server_serialisation(n: int) -> None:
    server = FrameProtocol(client=False, extensions=[])
    payload = b"z" * n
    assert w.encode_text_frame(payload) == server.send_data(payload.decode(), fin=True)
    assert w.encode_binary_frame(payload) == server.send_data(payload, fin=True)


def test_length_boundaries() -> None:
    assert w.encode_text_frame(b"a" * 125)[:2] == b"\x81\x7d"
    assert w.encode_text_frame(b"a" * 126)[:4] == b"\x81\x7e\x00\x7e"
    assert w.encode_text_frame(b"a" * 65535)[:4] == b"\x81\x7e\xff\xff"
    assert w.encode_text_frame(b"a" * 65536)[:10] == b"\x81\x7f" + struct.pack("!Q", 65536)
    assert w.encode_binary_frame(b"")[:2] == b"\x82\x00"


def test_many_frames_in_one_buffer() -> None:
    payloads = [text_payload(n) for n in (0, 5, 200, 70000)]
    data = b"".join(w.encode_text_frame(pl) for pl in payloads)
    client = connected_client()
    # byte by byte for the small ones, then the rest: framing must not depend on read sizes
    for i in range(300):
        client.receive_data(data[i : i + 1])
    client.receive_data(data[300:])
    got: list[str] = []
    buf = ""
    for e in client.events():
        assert isinstance(e, TextMessage)
        buf += e.data
        if e.message_finished:
            got.append(buf)
            buf = ""
    assert [g.encode() for g in got] == payloads


@pytest.mark.parametrize("n", [0, 1, 125])
def test_ping_and_pong(n: int) -> None:
    payload = bytes(range(n))
    events = client_events(w.encode_ping_frame(payload) + w.encode_pong_frame(payload))
    assert isinstance(events[0], Ping)
    assert events[0].payload == payload
    assert isinstance(events[1], Pong)
    assert events[1].payload == payload
    assert w.encode_ping_frame() == b"\x89\x00"
    assert w.encode_pong_frame() == b"\x8a\x00"


def test_control_payload_limit() -> None:
    with pytest.raises(ValueError, match="125"):
        w.encode_ping_frame(b"x" * 126)
    with pytest.raises(ValueError, match="125"):
        w.encode_pong_frame(b"x" * 126)


@pytest.mark.parametrize(
    ("code", "reason"),
    [
        (1000, ""),
        (1001, "going away"),
        (4001, "unauthorized"),
        (4009, "slow consumer"),
        (3000, "é"),
    ],
)
def test_close_frame(code: int, reason: str) -> None:
    events = client_events(w.encode_close_frame(code, reason))
    assert len(events) == 1
    assert isinstance(events[0], CloseConnection)
    assert (events[0].code, events[0].reason) == (code, reason)


@pytest.mark.parametrize(
    ("reason", "expected"),
    [
        ("a" * 123, "a" * 123),
        ("a" * 124, "a" * 123),
        ("é" * 100, "é" * 61),  # 2-byte chars: 122 bytes, the 62nd would need 124
        ("a" + "é" * 100, "a" + "é" * 61),  # 123 bytes exactly
        ("弾" * 50, "弾" * 41),  # 3-byte chars: 123 bytes
        ("ab" + "🎉" * 40, "ab" + "🎉" * 30),  # 4-byte chars: 122 bytes
        ("\ud800ok", "?ok"),  # unencodable lone surrogate
    ],
)
def test_close_reason_truncated_on_char_boundary(reason: str, expected: str) -> None:
    frame = w.encode_close_frame(4003, reason)
    assert len(frame) <= 2 + 125
    events = client_events(frame)
    assert isinstance(events[0], CloseConnection)
    assert events[0].code == 4003
    assert events[0].reason == expected


@pytest.mark.parametrize(
    "code", [0, 999, 1004, 1005, 1006, 1012, 1014, 1015, 1016, 2999, 5000, 65535]
)
def test_close_code_not_sendable(code: int) -> None:
    assert not w.is_sendable_close_code(code)
    with pytest.raises(ValueError, match="may not be sent"):
        w.encode_close_frame(code)


@pytest.mark.parametrize("code", [1000, 1001, 1002, 1003, 1007, 1011, 3000, 4001, 4009, 4999])
def test_close_code_sendable(code: int) -> None:
    assert w.is_sendable_close_code(code)
    events = client_events(w.encode_close_frame(code))
    assert isinstance(events[0], CloseConnection)
    assert events[0].code == code


def test_encode_frame_header() -> None:
    assert w.encode_frame_header(w.OP_TEXT, 5) == b"\x81\x05"
    assert w.encode_frame_header(w.OP_BINARY, 70000, fin=False) == b"\x02\x7f" + struct.pack(
        "!Q", 70000
    )
    assert w.encode_frame_header(w.OP_CONTINUATION, 126) == b"\x80\x7e\x00\x7e"
    payload = b"p" * 300
    assert w.encode_frame_header(w.OP_TEXT, 300) + payload == w.encode_text_frame(payload)
    with pytest.raises(ValueError, match="opcode"):
        w.encode_frame_header(3, 1)
    with pytest.raises(ValueError, match="range"):
        w.encode_frame_header(w.OP_TEXT, -1)
    with pytest.raises(ValueError, match="control"):
        w.encode_frame_header(w.OP_PING, 126)
    with pytest.raises(ValueError, match="control"):
        w.encode_frame_header(w.OP_CLOSE, 2, fin=False)


def test_fragmented_message_via_headers() -> None:
    first, second = b"hello, ", "世界".encode()
    data = (
        w.encode_frame_header(w.OP_TEXT, len(first), fin=False)
        + first
        + w.encode_frame_header(w.OP_CONTINUATION, len(second))
        + second
    )
    events = client_events(data)
    assert "".join(e.data for e in events if isinstance(e, TextMessage)) == "hello, 世界"


@settings(max_examples=200, deadline=None, database=None)
@given(st.binary(max_size=70000))
def test_any_binary_payload(payload: bytes) -> None:
    proto = FrameProtocol(client=True, extensions=[])
    proto.receive_bytes(w.encode_binary_frame(payload))
    chunks = [f.payload for f in proto.received_frames()]
    assert all(isinstance(c, bytes | bytearray) for c in chunks)
    assert b"".join(c for c in chunks if isinstance(c, bytes | bytearray)) == payload
