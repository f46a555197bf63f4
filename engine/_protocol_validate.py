"""Client-frame validation: one WebSocket text frame in, one typed event or `ProtocolError` out.

Private half of `engine.protocol`, which re-exports every public name defined here; import from
there. Like the rest of the codec this module is sans-IO: it imports no trio, Redis or sockets.

Guarantees of `decode_client_frame`:
- it never raises, whatever the input (any bytes, any str, any object);
- a returned event holds only validated, normalised values: nothing the client sent beyond the
  known fields survives (unknown fields, including unknown `body` fields, are dropped);
- a returned `ProtocolError.code` is one of `DECODE_ERROR_CODES`, except `internal`, which only a
  bug in this module can produce.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Final, TypeAlias, TypeGuard

import orjson

# -- codes this module can return (the full tables live in engine.protocol) -----------------------
ERR_BAD_REQUEST: Final = "bad_request"
ERR_UNKNOWN_OP: Final = "unknown_op"
ERR_TOO_LARGE: Final = "too_large"
ERR_INTERNAL: Final = "internal"
NACK_BAD_REQUEST: Final = "bad_request"
NACK_TOO_LONG: Final = "too_long"

#: Every code `decode_client_frame` may put in a `ProtocolError`.
DECODE_ERROR_CODES: Final = frozenset(
    {ERR_BAD_REQUEST, ERR_UNKNOWN_OP, ERR_TOO_LARGE, NACK_TOO_LONG, ERR_INTERNAL}
)

# -- value vocabularies ---------------------------------------------------------------------------
MODE_SCROLL: Final = "scroll"
MODE_TOP: Final = "top"
MODE_BOTTOM: Final = "bottom"
MODES: Final = frozenset({MODE_SCROLL, MODE_TOP, MODE_BOTTOM})

KIND_DANMAKU: Final = "danmaku"
KIND_GIFT: Final = "gift"
KIND_SUPERCHAT: Final = "superchat"
KIND_SYSTEM: Final = "system"
#: Kinds a client may ask for in `send` (the worker decides who may actually send gifts).
CLIENT_KINDS: Final = frozenset({KIND_DANMAKU, KIND_GIFT, KIND_SUPERCHAT})
#: Kinds that appear in delivered message objects.
MESSAGE_KINDS: Final = frozenset({*CLIENT_KINDS, KIND_SYSTEM})

DEFAULT_MODE: Final = MODE_SCROLL
DEFAULT_COLOR: Final = "#ffffff"
DEFAULT_KIND: Final = KIND_DANMAKU

MAX_SAFE_INT: Final = 2**53  # largest int every JSON client (JavaScript) represents exactly
INT64_MIN: Final = -(2**63)
INT64_MAX: Final = 2**63 - 1
MAX_ID_CHARS: Final = 64  # rooms, cmids, epochs
MAX_CLIENT_LABEL_CHARS: Final = 64  # hello.client is truncated to this

_ROOM_RE: Final = re.compile(r"[A-Za-z0-9_.:\-]{1,64}")
_CMID_RE: Final = re.compile(r"[!-~]{1,64}")  # printable ASCII, no space
_COLOR_RE: Final = re.compile(r"#[0-9A-Fa-f]{6}")
#: C0 controls, DEL, C1 controls, line/paragraph separators and the bidi embedding, override and
#: isolate controls: text containing any of these is rejected, never silently repaired.
FORBIDDEN_TEXT_RE: Final = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


@dataclass(frozen=True, slots=True)
class Limits:
    """Per-deployment protocol limits; the defaults are the contract's."""

    max_frame_bytes: int = 4096  # UTF-8 bytes of one client frame
    max_text_chars: int = 200  # code points of body.text, after stripping outer whitespace
    max_name_chars: int = 32  # code points of a display name (see sanitize_name)
    max_rooms_per_conn: int = 8  # enforced by the gateway, advertised in welcome

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if type(value) is not int or value < 1:
                raise ValueError(f"Limits.{f.name} must be a positive int, got {value!r}")

    def to_wire(self) -> dict[str, int]:
        """The limits as the `limits` extension object of `welcome`."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


DEFAULT_LIMITS: Final = Limits()


# -- client events --------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Hello:
    token: str | None = None  # None: a guest
    client: str | None = None  # free-form label, truncated to MAX_CLIENT_LABEL_CHARS


@dataclass(frozen=True, slots=True)
class Ping:
    t: int


@dataclass(frozen=True, slots=True)
class Since:
    epoch: str
    seq: int


@dataclass(frozen=True, slots=True)
class Join:
    room: str
    since: Since | None = None


@dataclass(frozen=True, slots=True)
class Leave:
    room: str


@dataclass(frozen=True, slots=True)
class Body:
    text: str
    mode: str = DEFAULT_MODE
    color: str = DEFAULT_COLOR  # always lower case "#rrggbb"
    offset_ms: int = 0


@dataclass(frozen=True, slots=True)
class Send:
    room: str
    cmid: str
    body: Body
    kind: str = DEFAULT_KIND


@dataclass(frozen=True, slots=True)
class Mod:
    """Extension op ``mod`` (docs/protocol.md 9.8): a moderator or streamer command for a room.

    The codec checks the shape only; which actions exist and who may run them is decided by the
    moderation layer (``rooms.moderation_actions``), which answers unknown ones with an error.
    """

    room: str
    action: str
    user: str | None = None  # the target user id
    duration_s: int | None = None
    reason: str | None = None
    words: tuple[str, ...] | None = None
    config: tuple[tuple[str, int | bool | str], ...] | None = None  # key order as sent
    ref: str | None = None  # echoed in the answer


ClientEvent: TypeAlias = Hello | Ping | Join | Leave | Send | Mod


@dataclass(frozen=True, slots=True)
class ProtocolError:
    """A client frame that was rejected; returned (not raised) by `decode_client_frame`.

    `op` is the frame's op when it was a known one; `room` and `cmid` are set when they were
    present and valid. When `is_nack` is true the gateway answers with a `nack` for (room, cmid)
    carrying `code` (then `too_long` or `bad_request`); otherwise with an `error` frame.
    """

    code: str
    message: str
    op: str | None = None
    room: str | None = None
    cmid: str | None = None

    @property
    def is_nack(self) -> bool:
        return self.op == "send" and self.room is not None and self.cmid is not None


class _Invalid(Exception):
    """Internal control flow of the checkers; never escapes this module."""

    def __init__(self, message: str, code: str = ERR_BAD_REQUEST) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


# -- field checkers -------------------------------------------------------------------------------
def valid_room(value: object) -> TypeGuard[str]:
    return type(value) is str and _ROOM_RE.fullmatch(value) is not None


def valid_cmid(value: object) -> TypeGuard[str]:
    return type(value) is str and _CMID_RE.fullmatch(value) is not None


def _room(obj: dict[str, object]) -> str:
    room = obj.get("room")
    if not valid_room(room):
        raise _Invalid("room must be 1-64 characters of [A-Za-z0-9_.:-]")
    return room


def _int(value: object, name: str, lo: int, hi: int) -> int:
    # type() rather than isinstance(): bool is an int subclass and is not accepted as one.
    if type(value) is not int or not lo <= value <= hi:
        raise _Invalid(f"{name} must be an integer in [{lo}, {hi}]")
    return value


def _opt_str(value: object, name: str) -> str | None:
    if value is None or type(value) is str:
        return value
    raise _Invalid(f"{name} must be a string")


def _since(value: object) -> Since | None:
    if value is None:
        return None
    if type(value) is not dict:
        raise _Invalid("since must be an object {epoch, seq}")
    epoch = value.get("epoch")
    if (
        type(epoch) is not str
        or not 1 <= len(epoch) <= MAX_ID_CHARS
        or FORBIDDEN_TEXT_RE.search(epoch) is not None
    ):
        raise _Invalid("since.epoch must be a string of 1-64 characters")
    return Since(epoch, _int(value.get("seq"), "since.seq", 0, MAX_SAFE_INT))


def _text(value: object, limits: Limits) -> str:
    if type(value) is not str:
        raise _Invalid("body.text must be a string")
    # Checked on the raw text: a control character anywhere (even trailing) is rejected.
    if FORBIDDEN_TEXT_RE.search(value) is not None:
        raise _Invalid("body.text contains control or bidirectional formatting characters")
    text = value.strip()
    if not text:
        raise _Invalid("body.text is empty")
    if len(text) > limits.max_text_chars:
        message = f"body.text is longer than {limits.max_text_chars} characters"
        raise _Invalid(message, NACK_TOO_LONG)
    return text


def _body(value: object, limits: Limits) -> Body:
    if type(value) is not dict:
        raise _Invalid("body must be an object")
    text = _text(value.get("text"), limits)
    mode = value.get("mode")
    if mode is None:
        mode = DEFAULT_MODE
    elif type(mode) is not str or mode not in MODES:
        raise _Invalid("body.mode must be one of scroll, top, bottom")
    color = value.get("color")
    if color is None:
        color = DEFAULT_COLOR
    elif type(color) is not str or _COLOR_RE.fullmatch(color) is None:
        raise _Invalid("body.color must be #rrggbb")
    else:
        color = color.lower()
    offset = value.get("offset_ms")
    offset_ms = 0 if offset is None else _int(offset, "body.offset_ms", 0, MAX_SAFE_INT)
    return Body(text, mode, color, offset_ms)


# -- per-op decoders ------------------------------------------------------------------------------
def _hello(obj: dict[str, object], limits: Limits) -> ClientEvent | ProtocolError:
    token = _opt_str(obj.get("token"), "token")
    client = _opt_str(obj.get("client"), "client")
    if client is not None:
        client = client[:MAX_CLIENT_LABEL_CHARS]
    return Hello(token, client)


def _ping(obj: dict[str, object], limits: Limits) -> ClientEvent | ProtocolError:
    return Ping(_int(obj.get("t"), "t", INT64_MIN, INT64_MAX))


def _join(obj: dict[str, object], limits: Limits) -> ClientEvent | ProtocolError:
    room = _room(obj)
    try:
        return Join(room, _since(obj.get("since")))
    except _Invalid as e:
        return ProtocolError(e.code, e.message, "join", room)


def _leave(obj: dict[str, object], limits: Limits) -> ClientEvent | ProtocolError:
    return Leave(_room(obj))


def _send(obj: dict[str, object], limits: Limits) -> ClientEvent | ProtocolError:
    room, cmid = obj.get("room"), obj.get("cmid")
    if valid_room(room) and valid_cmid(cmid):
        # From here on every rejection is a nack for (room, cmid).
        try:
            body = _body(obj.get("body"), limits)
            kind = obj.get("kind")
            if kind is None:
                kind = DEFAULT_KIND
            elif type(kind) is not str or kind not in CLIENT_KINDS:
                raise _Invalid("kind must be one of danmaku, gift, superchat")
        except _Invalid as e:
            return ProtocolError(e.code, e.message, "send", room, cmid)
        return Send(room, cmid, body, kind)
    return ProtocolError(
        ERR_BAD_REQUEST,
        "cmid must be 1-64 printable ASCII characters without spaces"
        if valid_room(room)
        else "room must be 1-64 characters of [A-Za-z0-9_.:-]",
        "send",
        room if valid_room(room) else None,
        cmid if valid_cmid(cmid) else None,
    )


_ACTION_RE: Final = re.compile(r"[a-z_]{1,32}")
MAX_MOD_WORDS: Final = 10_000
MAX_MOD_DURATION_S: Final = 10 * 365 * 86_400
MAX_REASON_CHARS: Final = 200


def _label(value: object, name: str, max_chars: int) -> str:
    """A user id, reason or word: a string of 1..max_chars without forbidden characters."""
    if (
        type(value) is not str
        or not 1 <= len(value) <= max_chars
        or FORBIDDEN_TEXT_RE.search(value) is not None
    ):
        raise _Invalid(f"{name} must be 1-{max_chars} characters without control characters")
    return value


def _mod_fields(obj: dict[str, object], room: str) -> Mod:
    action = obj.get("action")
    if type(action) is not str or _ACTION_RE.fullmatch(action) is None:
        raise _Invalid("action must be 1-32 characters of [a-z_]")
    user = obj.get("user")
    duration = obj.get("duration_s")
    reason = obj.get("reason")
    words = obj.get("words")
    config = obj.get("config")
    ref = obj.get("ref")
    word_tuple: tuple[str, ...] | None = None
    if words is not None:
        if type(words) is not list or len(words) > MAX_MOD_WORDS:
            raise _Invalid(f"words must be a list of at most {MAX_MOD_WORDS} strings")
        word_tuple = tuple(_label(w, "each word", MAX_ID_CHARS) for w in words)
    config_pairs: tuple[tuple[str, int | bool | str], ...] | None = None
    if config is not None:
        if type(config) is not dict or len(config) > 16:
            raise _Invalid("config must be an object of at most 16 settings")
        pairs: list[tuple[str, int | bool | str]] = []
        for key, value in config.items():
            if _ACTION_RE.fullmatch(key) is None:
                raise _Invalid("config keys are 1-32 characters of [a-z_]")
            if type(value) is bool or (type(value) is int and INT64_MIN <= value <= INT64_MAX):
                pairs.append((key, value))
            elif type(value) is str and len(value) <= 32:
                pairs.append((key, _label(value, f"config.{key}", 32) if value else value))
            else:
                raise _Invalid(f"config.{key} must be an integer, a boolean or a short string")
        config_pairs = tuple(pairs)
    if ref is not None and not valid_cmid(ref):
        raise _Invalid("ref must be 1-64 printable ASCII characters without spaces")
    return Mod(
        room,
        action,
        None if user is None else _label(user, "user", MAX_ID_CHARS),
        None if duration is None else _int(duration, "duration_s", 1, MAX_MOD_DURATION_S),
        None if reason is None else _label(reason, "reason", MAX_REASON_CHARS),
        word_tuple,
        config_pairs,
        ref,
    )


def _mod(obj: dict[str, object], limits: Limits) -> ClientEvent | ProtocolError:
    room = _room(obj)
    try:
        return _mod_fields(obj, room)
    except _Invalid as e:
        return ProtocolError(e.code, e.message, "mod", room)


_Decoder: TypeAlias = Callable[[dict[str, object], Limits], ClientEvent | ProtocolError]
_DECODERS: Final[dict[str, _Decoder]] = {
    "hello": _hello,
    "ping": _ping,
    "join": _join,
    "leave": _leave,
    "send": _send,
}
#: The ops a client may send.
CLIENT_OPS: Final = frozenset(_DECODERS)
#: Extension ops (docs/protocol.md section 9), decoded only with ``extensions=True``.
_EXTENSION_DECODERS: Final[dict[str, _Decoder]] = {"mod": _mod}
EXTENSION_OPS: Final = frozenset(_EXTENSION_DECODERS)


def _too_large(limits: Limits) -> ProtocolError:
    return ProtocolError(ERR_TOO_LARGE, f"frame is larger than {limits.max_frame_bytes} bytes")


def _decode(data: object, limits: Limits, extensions: bool) -> ClientEvent | ProtocolError:
    limit = limits.max_frame_bytes
    raw: str | bytes | bytearray
    if isinstance(data, str):
        if len(data) > limit:  # every code point is at least one UTF-8 byte
            return _too_large(limits)
        if len(data) * 4 > limit and not data.isascii():
            try:
                size = len(data.encode("utf-8"))
            except UnicodeEncodeError:  # lone surrogates
                return ProtocolError(ERR_BAD_REQUEST, "frame is not valid UTF-8")
            if size > limit:
                return _too_large(limits)
        raw = data
    elif isinstance(data, bytes | bytearray | memoryview):
        raw = data.tobytes() if isinstance(data, memoryview) else data
        if len(raw) > limit:
            return _too_large(limits)
    else:
        return ProtocolError(ERR_BAD_REQUEST, "frame must be text")
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        # Covers malformed JSON, NaN/Infinity, nesting deeper than 1024 and invalid UTF-8.
        if not isinstance(raw, str):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError:
                return ProtocolError(ERR_BAD_REQUEST, "frame is not valid UTF-8")
        return ProtocolError(ERR_BAD_REQUEST, "frame is not valid JSON")
    if type(obj) is not dict:
        return ProtocolError(ERR_BAD_REQUEST, "frame must be a JSON object")
    op = obj.get("op")
    if type(op) is not str:
        message = "missing op" if op is None else "op must be a string"
        return ProtocolError(ERR_BAD_REQUEST, message)
    decoder = _DECODERS.get(op)
    if decoder is None and extensions:
        decoder = _EXTENSION_DECODERS.get(op)
    if decoder is None:
        return ProtocolError(ERR_UNKNOWN_OP, f"unknown op {op[:32]!r}")
    try:
        return decoder(obj, limits)
    except _Invalid as e:
        return ProtocolError(e.code, e.message, op)


def decode_client_frame(
    data: str | bytes | bytearray | memoryview,
    limits: Limits = DEFAULT_LIMITS,
    *,
    extensions: bool = False,
) -> ClientEvent | ProtocolError:
    """Decode one client frame. Never raises; see the module docstring of engine.protocol.

    With ``extensions`` the extension ops (``EXTENSION_OPS``: ``mod``) are decoded too; without
    it they are ``unknown_op`` like any other op outside ``CLIENT_OPS``.
    """
    try:
        return _decode(data, limits, extensions)
    except Exception:  # a bug here must cost one frame, not the connection's read loop
        return ProtocolError(ERR_INTERNAL, "internal error while decoding the frame")


def sanitize_name(name: str, limits: Limits = DEFAULT_LIMITS) -> str:
    """A display name fit for message objects: forbidden characters removed, outer whitespace
    stripped, at most `limits.max_name_chars` code points. May return ""."""
    return FORBIDDEN_TEXT_RE.sub("", name).strip()[: limits.max_name_chars].rstrip()
