"""Archive stream entries -> ``messages`` rows (pure functions, no I/O).

An archive stream entry (written by ``rooms/ingest.lua``) has the fields ``r`` room, ``e`` epoch,
``s`` seq, ``m`` the message JSON as delivered, ``x`` extra JSON ``{"rt": gateway receive ms,
"gw": gateway node}``. The row keeps ``m`` byte for byte (replay and deep resume return it) and
spreads its fields into typed columns for the dashboards. Values outside the schema's
vocabularies (a future ``kind``) are stored as ``other`` so one odd message can never block the
archiver; the raw JSON still has the real value.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import orjson

from engine.archive.schema import KINDS, MODES
from engine.archive.store import MessageRows

# engine.ingress.HIDDEN_MARK: appended to the JSON of a message only its sender may see.
HIDDEN_MARK = b"\n"

_KINDS = frozenset(KINDS)
_MODES = frozenset(MODES)


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value if isinstance(value, str) else ""


def _uint(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return 0
    return int(min(value, 2**64 - 1))


def entry_fields(fields: Sequence[Any]) -> dict[bytes, bytes]:
    """A stream entry's flat ``[k1, v1, k2, v2, ...]`` as a dict of bytes."""
    out: dict[bytes, bytes] = {}
    for i in range(0, len(fields) - 1, 2):
        key, value = fields[i], fields[i + 1]
        out[key if isinstance(key, bytes) else str(key).encode()] = (
            value if isinstance(value, bytes) else str(value).encode()
        )
    return out


def add_entry(rows: MessageRows, fields: Sequence[Any]) -> bool:
    """Append one archive entry to ``rows``; False (nothing appended) if it is malformed."""
    if (
        len(fields) == 10 and fields[0] == b"r" and fields[2] == b"e" and fields[4] == b"s"
        and fields[6] == b"m" and fields[8] == b"x"
    ):  # the layout ingest.lua writes: no dict needed
        room, epoch, seq_text, msg, x = fields[1], fields[3], fields[5], fields[7], fields[9]
    else:
        f = entry_fields(fields)
        room, epoch, seq_text = f.get(b"r"), f.get(b"e", b""), f.get(b"s")
        msg, x = f.get(b"m"), f.get(b"x", b"")
    if not room or not seq_text or not msg or not seq_text.isdigit():
        return False
    hidden = msg[-1:] == HIDDEN_MARK
    if hidden:
        msg = msg.rstrip(HIDDEN_MARK)
    try:
        obj = orjson.loads(msg)
    except orjson.JSONDecodeError:
        return False
    try:
        extra = orjson.loads(x) if x else {}
    except orjson.JSONDecodeError:
        extra = {}
    if not isinstance(obj, dict):
        return False
    if not isinstance(extra, dict):
        extra = {}
    body = obj.get("body")
    if not isinstance(body, dict):
        body = {}
    kind = obj.get("kind")
    mode = body.get("mode", "scroll")
    text = body.get("text", "")
    color = body.get("color", "")
    ident, user, name = obj.get("id", ""), obj.get("user", ""), obj.get("name", "")
    gateway = extra.get("gw", "")
    rows.room.append(room.decode("utf-8", "replace"))
    rows.seq.append(int(seq_text))
    rows.epoch.append(epoch.decode("utf-8", "replace") if epoch else "")
    rows.id.append(ident if type(ident) is str else _text(ident))
    rows.user.append(user if type(user) is str else _text(user))
    rows.name.append(name if type(name) is str else _text(name))
    rows.kind.append(kind if kind in _KINDS else "other")
    rows.text.append(text if type(text) is str else _text(text))
    rows.mode.append(mode if mode in _MODES else "other")
    rows.color.append(color if type(color) is str else _text(color))
    rows.offset_ms.append(_uint(body.get("offset_ms")))
    rows.ts.append(_uint(obj.get("ts")))
    rows.rt.append(_uint(extra.get("rt")))
    rows.gateway.append(gateway if type(gateway) is str else _text(gateway))
    rows.hidden.append(1 if hidden else 0)
    rows.msg.append(msg)
    return True


def rows_from_entries(entries: Iterable[Sequence[Any]]) -> tuple[MessageRows, int]:
    """Rows of ``(id, fields)`` entries; also the number of malformed entries skipped."""
    rows = MessageRows()
    bad = 0
    for _id, fields in entries:
        if fields is None or not add_entry(rows, fields):
            bad += 1
    return rows, bad


def seq_of(message: bytes) -> int:
    """The seq of a stored message JSON (the sequencing step writes ``{"seq":N,`` first)."""
    if message.startswith(b'{"seq":'):
        end = message.find(b",", 7)
        head = message[7:end] if end != -1 else b""
        if head.isdigit():
            return int(head)
    value = orjson.loads(message).get("seq")
    if not isinstance(value, int):
        raise ValueError("message without a seq")
    return value
