"""Sans-IO encoders for the frames a WebSocket server sends (RFC 6455, section 5).

The fan-out hot path serialises a `batch` once and frames it once, then writes the same bytes to
every viewer's stream; wsproto's per-connection `send()` would redo that work per viewer. These
helpers produce exactly the bytes wsproto would, for the frames a server sends:

- always FIN (no fragmentation) and unmasked (servers never mask, section 5.1);
- RSV bits clear, so they are only valid on connections that negotiated no extension
  (in particular no permessage-deflate): the gateway must not accept extensions while it writes
  these bytes to the stream itself;
- payload lengths in the 7-bit, 16-bit or 64-bit form, whichever is shortest (section 5.2).

`encode_text_frame` does not check that its payload is UTF-8; the JSON encoders of
`engine.protocol` always produce UTF-8. Imports no trio, Redis or sockets.
"""

from __future__ import annotations

import struct
from typing import Final

OP_CONTINUATION: Final = 0x0
OP_TEXT: Final = 0x1
OP_BINARY: Final = 0x2
OP_CLOSE: Final = 0x8
OP_PING: Final = 0x9
OP_PONG: Final = 0xA
_OPCODES: Final = frozenset({OP_CONTINUATION, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG})

MAX_CONTROL_PAYLOAD: Final = 125  # section 5.5
MAX_CLOSE_REASON_BYTES: Final = MAX_CONTROL_PAYLOAD - 2  # after the 2-byte code
MAX_PAYLOAD: Final = 2**63 - 1  # the 64-bit length has its top bit clear

_FIN: Final = 0x80
_pack16: Final = struct.Struct("!BBH").pack
_pack64: Final = struct.Struct("!BBQ").pack


def _header(first: int, length: int) -> bytes:
    if length < 126:
        return bytes((first, length))
    if length < 65536:
        return _pack16(first, 126, length)
    return _pack64(first, 127, length)


def encode_frame_header(opcode: int, length: int, *, fin: bool = True) -> bytes:
    """The header of an unmasked frame with `length` payload bytes, for callers that write the
    payload separately (e.g. to avoid copying a large one)."""
    if opcode not in _OPCODES:
        raise ValueError(f"unknown opcode {opcode:#x}")
    if not 0 <= length <= MAX_PAYLOAD:
        raise ValueError(f"payload length {length} out of range")
    if opcode >= OP_CLOSE and (not fin or length > MAX_CONTROL_PAYLOAD):
        raise ValueError("control frames must be final and carry at most 125 bytes")
    return _header((_FIN if fin else 0) | opcode, length)


def encode_text_frame(payload: bytes) -> bytes:
    """A complete text frame; `payload` must be UTF-8 (not checked)."""
    return _header(_FIN | OP_TEXT, len(payload)) + payload


def encode_binary_frame(payload: bytes) -> bytes:
    return _header(_FIN | OP_BINARY, len(payload)) + payload


def _control(opcode: int, payload: bytes) -> bytes:
    if len(payload) > MAX_CONTROL_PAYLOAD:
        raise ValueError("control frame payloads carry at most 125 bytes")
    return bytes((_FIN | opcode, len(payload))) + payload


def encode_ping_frame(payload: bytes = b"") -> bytes:
    return _control(OP_PING, payload)


def encode_pong_frame(payload: bytes = b"") -> bytes:
    """A pong; answering a ping, `payload` must be the ping's payload (section 5.5.3)."""
    return _control(OP_PONG, payload)


def is_sendable_close_code(code: int) -> bool:
    """Codes this server puts in a close frame: 1000-1003, 1007-1011 (section 7.4.1) and the
    registered/private range 3000-4999. 1004-1006 and 1015 are reserved; 1012-1014 were
    registered after RFC 6455 and strict clients (wsproto among them) reject them."""
    return 1000 <= code <= 1003 or 1007 <= code <= 1011 or 3000 <= code <= 4999


def truncate_utf8(text: str, max_bytes: int) -> bytes:
    """`text` as UTF-8, cut to at most `max_bytes` without splitting a character. Lone
    surrogates (not encodable) become "?"."""
    data = text.encode("utf-8", "replace")
    if len(data) <= max_bytes:
        return data
    # Cutting may leave a partial sequence at the end only; "ignore" drops exactly that.
    return data[:max_bytes].decode("utf-8", "ignore").encode("utf-8")


def encode_close_frame(code: int, reason: str = "") -> bytes:
    """A close frame with `code` and `reason`, the reason cut to 123 UTF-8 bytes on a character
    boundary. Raises ValueError for a code that must not be sent."""
    if not is_sendable_close_code(code):
        raise ValueError(f"close code {code} may not be sent")
    reason_bytes = truncate_utf8(reason, MAX_CLOSE_REASON_BYTES)
    return _control(OP_CLOSE, struct.pack("!H", code) + reason_bytes)
