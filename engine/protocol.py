"""The danmaku wire codec (protocol version 1), sans-IO: frames in, typed events out, bytes out.

Theory of operation
-------------------
A gateway reads one WebSocket text frame and hands it, as `str` or `bytes`, to
`decode_client_frame`. That function never raises: it returns either a client event (`Hello`,
`Ping`, `Join`, `Leave`, `Send`: frozen dataclasses holding only validated, normalised values) or
a `ProtocolError`. The gateway turns a `ProtocolError` into a frame with
`encode_protocol_error` (a `nack` when `err.is_nack`, else an `error`) and decides on its own
whether repeated errors deserve a close code; the codec keeps no state.

Everything the server sends is built by the `encode_*` functions, which return compact JSON
`bytes` ready for `engine.wsframe.encode_text_frame`. Message objects are serialised once, by
`encode_message`, when they enter the gateway; `encode_batch` then splices those bytes into each
`batch` frame without parsing or re-serialising them. Encoders trust their arguments (they come
from the engine, not from a client) and do not validate them.

`decode_server_frame` and the `client_*` encoders are the client's half, for the Python SDK, the
load tests and the test suite.

This module and `engine._protocol_validate` (its private half, re-exported here) import no trio,
Redis or sockets; a test checks that.

Error codes returned by `decode_client_frame`
---------------------------------------------
- `too_large`: the frame is over `Limits.max_frame_bytes`, counted in UTF-8 bytes. Checked
  first, before any parsing.
- `bad_request`: anything else malformed: invalid UTF-8; invalid JSON (including NaN/Infinity,
  nesting deeper than 1024, trailing data); a top-level value that is not an object; `op` missing
  or not a string; a known field with the wrong type or out of range (see docs/protocol.md for
  each rule; integers beyond 64 bits parse as floats and so are rejected as non-integers).
- `unknown_op`: `op` is a string but not one of hello, ping, join, leave, send.
- `too_long` (nack only): a `send` whose `room` and `cmid` are valid but whose `body.text` is over
  `Limits.max_text_chars` code points after stripping outer whitespace.
- For a `send` with valid `room` and `cmid`, every other body or `kind` problem is a `bad_request`
  nack (`err.is_nack`), so the client can match it to its pending message.
- `internal`: only a bug in the decoder; the frame is dropped, the connection lives on.

Error codes the rest of the engine uses in `error` frames: `unauthorized` (bad or expired token,
followed by close 4001; a join the token does not allow), `rate_limited` (flooding below the close
threshold) and `internal`; `not_joined` is defined for ops on a room not joined (today only `send`
uses it, as a nack). Nack codes: `rate_limited` (with `retry_after_ms`), `muted`, `banned`,
`filtered`, `too_long`, `bad_request`, `not_joined`, `unauthorized` (guests cannot send),
`room_closed`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Final

import orjson

from ._protocol_validate import CLIENT_KINDS as CLIENT_KINDS
from ._protocol_validate import CLIENT_OPS as CLIENT_OPS
from ._protocol_validate import DECODE_ERROR_CODES as DECODE_ERROR_CODES
from ._protocol_validate import DEFAULT_COLOR as DEFAULT_COLOR
from ._protocol_validate import DEFAULT_KIND as DEFAULT_KIND
from ._protocol_validate import DEFAULT_LIMITS as DEFAULT_LIMITS
from ._protocol_validate import DEFAULT_MODE as DEFAULT_MODE
from ._protocol_validate import ERR_BAD_REQUEST as ERR_BAD_REQUEST
from ._protocol_validate import ERR_INTERNAL as ERR_INTERNAL
from ._protocol_validate import ERR_TOO_LARGE as ERR_TOO_LARGE
from ._protocol_validate import ERR_UNKNOWN_OP as ERR_UNKNOWN_OP
from ._protocol_validate import EXTENSION_OPS as EXTENSION_OPS
from ._protocol_validate import FORBIDDEN_TEXT_RE as FORBIDDEN_TEXT_RE
from ._protocol_validate import INT64_MAX as INT64_MAX
from ._protocol_validate import INT64_MIN as INT64_MIN
from ._protocol_validate import KIND_DANMAKU as KIND_DANMAKU
from ._protocol_validate import KIND_GIFT as KIND_GIFT
from ._protocol_validate import KIND_SUPERCHAT as KIND_SUPERCHAT
from ._protocol_validate import KIND_SYSTEM as KIND_SYSTEM
from ._protocol_validate import MAX_SAFE_INT as MAX_SAFE_INT
from ._protocol_validate import MESSAGE_KINDS as MESSAGE_KINDS
from ._protocol_validate import MODE_BOTTOM as MODE_BOTTOM
from ._protocol_validate import MODE_SCROLL as MODE_SCROLL
from ._protocol_validate import MODE_TOP as MODE_TOP
from ._protocol_validate import MODES as MODES
from ._protocol_validate import NACK_BAD_REQUEST as NACK_BAD_REQUEST
from ._protocol_validate import NACK_TOO_LONG as NACK_TOO_LONG
from ._protocol_validate import Body as Body
from ._protocol_validate import ClientEvent as ClientEvent
from ._protocol_validate import Hello as Hello
from ._protocol_validate import Join as Join
from ._protocol_validate import Leave as Leave
from ._protocol_validate import Limits as Limits
from ._protocol_validate import Mod as Mod
from ._protocol_validate import Ping as Ping
from ._protocol_validate import ProtocolError as ProtocolError
from ._protocol_validate import Send as Send
from ._protocol_validate import Since as Since
from ._protocol_validate import decode_client_frame as decode_client_frame
from ._protocol_validate import sanitize_name as sanitize_name
from ._protocol_validate import valid_cmid as valid_cmid
from ._protocol_validate import valid_room as valid_room

PROTOCOL_VERSION: Final = 1

# -- close codes (4xxx: application; 1001: RFC 6455 going away) -----------------------------------
CLOSE_GOING_AWAY: Final = 1001  # server shutting down; reconnect with backoff, resume with since
CLOSE_UNAUTHORIZED: Final = 4001  # no hello within 5 s, or a bad/expired token
CLOSE_HEARTBEAT_TIMEOUT: Final = 4002  # silent for 2.5 x heartbeat_ms
CLOSE_KICKED: Final = 4003
CLOSE_FLOODING: Final = 4008
# Extension: the viewer fell too far behind the live stream; reconnect and resume with since.
CLOSE_SLOW_CONSUMER: Final = 4009

# -- error frame codes ----------------------------------------------------------------------------
ERR_UNAUTHORIZED: Final = "unauthorized"
ERR_RATE_LIMITED: Final = "rate_limited"
ERR_NOT_JOINED: Final = "not_joined"
ERROR_CODES: Final = frozenset(
    {
        ERR_BAD_REQUEST,
        ERR_UNKNOWN_OP,
        ERR_TOO_LARGE,
        ERR_UNAUTHORIZED,
        ERR_RATE_LIMITED,
        ERR_INTERNAL,
        ERR_NOT_JOINED,
    }
)

# -- nack codes -----------------------------------------------------------------------------------
NACK_RATE_LIMITED: Final = "rate_limited"
NACK_MUTED: Final = "muted"
NACK_BANNED: Final = "banned"
NACK_FILTERED: Final = "filtered"
NACK_NOT_JOINED: Final = "not_joined"
NACK_UNAUTHORIZED: Final = "unauthorized"
NACK_ROOM_CLOSED: Final = "room_closed"
NACK_CODES: Final = frozenset(
    {
        NACK_RATE_LIMITED,
        NACK_MUTED,
        NACK_BANNED,
        NACK_FILTERED,
        NACK_TOO_LONG,
        NACK_BAD_REQUEST,
        NACK_NOT_JOINED,
        NACK_UNAUTHORIZED,
        NACK_ROOM_CLOSED,
    }
)

# -- reset reasons --------------------------------------------------------------------------------
RESET_EPOCH_CHANGED: Final = "epoch_changed"
RESET_TOO_OLD: Final = "too_old"

_dumps = orjson.dumps


def _with_extra(obj: dict[str, object], extra: Mapping[str, object]) -> dict[str, object]:
    # Extension fields may add to a frame but never replace a contract field.
    if extra:
        clash = obj.keys() & extra.keys()
        if clash:
            raise ValueError(f"extension fields clash with contract fields: {sorted(clash)}")
        obj.update(extra)
    return obj


# -- server frames --------------------------------------------------------------------------------
def encode_frame(obj: Mapping[str, object]) -> bytes:
    """Any server frame (it must have "op"), as compact JSON."""
    if "op" not in obj:
        raise ValueError('a frame needs an "op" field')
    return _dumps(obj if isinstance(obj, dict) else dict(obj))


def encode_welcome(
    session: str,
    user: str,
    guest: bool,
    heartbeat_ms: int,
    max_frame_bytes: int,
    **extensions: object,
) -> bytes:
    """`welcome`; always carries the extension field `"protocol": PROTOCOL_VERSION`, plus any
    `extensions` (e.g. `limits=Limits().to_wire()`)."""
    obj: dict[str, object] = {
        "op": "welcome",
        "session": session,
        "user": user,
        "guest": guest,
        "heartbeat_ms": heartbeat_ms,
        "max_frame_bytes": max_frame_bytes,
    }
    return _dumps(_with_extra(obj, {"protocol": PROTOCOL_VERSION, **extensions}))


def encode_pong(t: int, ts: int) -> bytes:
    return _dumps({"op": "pong", "t": t, "ts": ts})


def encode_joined(room: str, epoch: str, seq: int, online: int) -> bytes:
    return _dumps({"op": "joined", "room": room, "epoch": epoch, "seq": seq, "online": online})


def encode_left(room: str) -> bytes:
    return _dumps({"op": "left", "room": room})


def encode_reset(room: str, epoch: str, seq: int, reason: str) -> bytes:
    """`reset`; `reason` is RESET_EPOCH_CHANGED or RESET_TOO_OLD."""
    return _dumps({"op": "reset", "room": room, "epoch": epoch, "seq": seq, "reason": reason})


def encode_ack(room: str, cmid: str, seq: int, ts: int) -> bytes:
    return _dumps({"op": "ack", "room": room, "cmid": cmid, "seq": seq, "ts": ts})


def encode_nack(
    room: str, cmid: str, code: str, message: str, retry_after_ms: int | None = None
) -> bytes:
    """`nack`; `retry_after_ms` is omitted when None (it is only for rate limits)."""
    obj: dict[str, object] = {
        "op": "nack",
        "room": room,
        "cmid": cmid,
        "code": code,
        "message": message,
    }
    if retry_after_ms is not None:
        obj["retry_after_ms"] = retry_after_ms
    return _dumps(obj)


def encode_error(code: str, message: str, **extra: object) -> bytes:
    """`error`; `extra` adds extension fields (e.g. `room=`, `retry_after_ms=`)."""
    return _dumps(_with_extra({"op": "error", "code": code, "message": message}, extra))


def encode_protocol_error(err: ProtocolError) -> bytes:
    """The answer to a rejected client frame: a `nack` when `err.is_nack`, else an `error`
    (carrying `room` as an extension field when the frame named a valid room)."""
    if err.op == "send" and err.room is not None and err.cmid is not None:  # err.is_nack
        return encode_nack(err.room, err.cmid, err.code, err.message)
    if err.room is not None:
        return encode_error(err.code, err.message, room=err.room)
    return encode_error(err.code, err.message)


def encode_mod_result(
    room: str, action: str, ref: str | None, result: Mapping[str, object]
) -> bytes:
    """Extension (docs/protocol.md 9.8): the answer to a successful ``mod`` op."""
    obj: dict[str, object] = {"op": "mod_result", "room": room, "action": action, "ok": True}
    if ref is not None:
        obj["ref"] = ref
    obj["result"] = result if isinstance(result, dict) else dict(result)
    return _dumps(obj)


def encode_message(
    seq: int,
    id: str,
    user: str,
    name: str,
    ts: int,
    kind: str,
    body: Mapping[str, object] | Body,
    **extra: object,
) -> bytes:
    """One message object of a `batch` (and of the HTTP message lists), serialised once.

    `body` may be the validated `Body` of a `Send` or any mapping (gift and system bodies).
    """
    if not isinstance(body, dict | Body):
        body = dict(body)
    obj: dict[str, object] = {
        "seq": seq,
        "id": id,
        "user": user,
        "name": name,
        "ts": ts,
        "kind": kind,
        "body": body,
    }
    if extra:  # cannot clash: every contract field is a named parameter
        obj.update(extra)
    return _dumps(obj)


def encode_batch(
    room: str,
    epoch: str,
    msgs: Sequence[bytes],
    from_seq: int,
    to_seq: int,
    skipped: Sequence[tuple[int, int]] | None = None,
) -> bytes:
    """`batch`, spliced from message objects already serialised by `encode_message`.

    The output equals `orjson.dumps` of the equivalent dict; `skipped` is omitted when empty.
    """
    parts = [
        b'{"op":"batch","room":',
        _dumps(room),
        b',"epoch":',
        _dumps(epoch),
        b',"from":%d,"to":%d,"msgs":[' % (from_seq, to_seq),
        b",".join(msgs),
        b"]",
    ]
    if skipped:
        parts.append(b',"skipped":')
        parts.append(_dumps(skipped if isinstance(skipped, list | tuple) else list(skipped)))
    parts.append(b"}")
    return b"".join(parts)


# -- the client's half ----------------------------------------------------------------------------
def decode_server_frame(data: str | bytes) -> dict[str, object]:
    """Parse a server frame. Raises ValueError (orjson.JSONDecodeError is one) when it is not a
    JSON object with a string "op"."""
    obj = orjson.loads(data)
    if not isinstance(obj, dict) or not isinstance(obj.get("op"), str):
        raise ValueError('a server frame is a JSON object with a string "op"')
    return obj


def client_hello(token: str | None = None, client: str | None = None) -> bytes:
    """`hello`; `token=None` connects as a guest (the field is omitted)."""
    obj: dict[str, object] = {"op": "hello"}
    if token is not None:
        obj["token"] = token
    if client is not None:
        obj["client"] = client
    return _dumps(obj)


def client_ping(t: int) -> bytes:
    return _dumps({"op": "ping", "t": t})


def client_join(room: str, since: Since | None = None) -> bytes:
    obj: dict[str, object] = {"op": "join", "room": room}
    if since is not None:
        obj["since"] = {"epoch": since.epoch, "seq": since.seq}
    return _dumps(obj)


def client_leave(room: str) -> bytes:
    return _dumps({"op": "leave", "room": room})


def client_send(
    room: str,
    cmid: str,
    text: str,
    mode: str = DEFAULT_MODE,
    color: str = DEFAULT_COLOR,
    offset_ms: int = 0,
    kind: str | None = None,
) -> bytes:
    """`send`; `kind` (an extension) is omitted when None, which means danmaku."""
    obj: dict[str, object] = {
        "op": "send",
        "room": room,
        "cmid": cmid,
        "body": {"text": text, "mode": mode, "color": color, "offset_ms": offset_ms},
    }
    if kind is not None:
        obj["kind"] = kind
    return _dumps(obj)
