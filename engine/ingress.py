"""The records that cross Redis between gateways and room workers (sans-IO).

Ingress entry (XADD to ``{in:<p>}`` on the room's shard), flat fields::

    r room   u user   n display name   o role   c cmid   k kind   b body JSON
    g gateway node    s session id     t gateway receive time (ms)

Reply (PUBLISH on ``danmaku:gw:<node>``): a JSON list of objects, each either an ack
``{"s":sid,"r":room,"c":cmid,"q":seq,"ts":ms}`` or a nack
``{"s":sid,"r":room,"c":cmid,"code":..,"msg":..,"ra":retry_after_ms}``.

Control message (PUBLISH on the same channel; a JSON object, never a list, so a gateway that does
not know it ignores it): ``{"kick":{"u":user,"room":room or null,"reason":..}}`` asks the gateway
to close that user's connections (those in ``room`` only, when given) with 4003.

Hidden messages: a sequenced message shown only to its sender (shadow-ban) is stored, archived
and published with ``HIDDEN_MARK`` appended to its JSON (JSON allows trailing whitespace, so it
still parses); gateways strip it and show the message to the sender's own connections only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson


@dataclass(frozen=True, slots=True)
class IngressMessage:
    room: str
    user: str
    name: str
    role: str
    cmid: str
    kind: str
    body: bytes
    gateway: str
    session: str
    received_ms: int

    def fields(self) -> list[bytes | str | int]:
        return [
            "r", self.room, "u", self.user, "n", self.name, "o", self.role, "c", self.cmid,
            "k", self.kind, "b", self.body, "g", self.gateway, "s", self.session,
            "t", self.received_ms,
        ]


def parse_ingress(fields: Sequence[bytes]) -> IngressMessage | None:
    """Decode an XREADGROUP entry's flat field list; None when it is not a well-formed entry."""
    try:
        data = {fields[i]: fields[i + 1] for i in range(0, len(fields) - 1, 2)}
        return IngressMessage(
            room=data[b"r"].decode(),
            user=data[b"u"].decode(),
            name=data[b"n"].decode(),
            role=data[b"o"].decode(),
            cmid=data[b"c"].decode(),
            kind=data[b"k"].decode(),
            body=data[b"b"],
            gateway=data[b"g"].decode(),
            session=data[b"s"].decode(),
            received_ms=int(data[b"t"]),
        )
    except (KeyError, ValueError, UnicodeDecodeError, IndexError):
        return None


@dataclass(frozen=True, slots=True)
class Reply:
    session: str
    room: str
    cmid: str
    seq: int = 0
    ts: int = 0
    code: str = ""
    message: str = ""
    retry_after_ms: int | None = None

    @property
    def ok(self) -> bool:
        return not self.code


def encode_replies(replies: Sequence[Reply]) -> bytes:
    out: list[dict[str, Any]] = []
    for r in replies:
        if r.ok:
            out.append({"s": r.session, "r": r.room, "c": r.cmid, "q": r.seq, "ts": r.ts})
        else:
            item: dict[str, Any] = {
                "s": r.session, "r": r.room, "c": r.cmid, "code": r.code, "msg": r.message
            }
            if r.retry_after_ms is not None:
                item["ra"] = r.retry_after_ms
            out.append(item)
    return orjson.dumps(out)


def decode_replies(payload: bytes) -> list[Reply]:
    try:
        items = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return []
    out: list[Reply] = []
    if not isinstance(items, list):
        return out
    for item in items:
        if not isinstance(item, Mapping):
            continue
        try:
            out.append(
                Reply(
                    session=str(item["s"]),
                    room=str(item["r"]),
                    cmid=str(item["c"]),
                    seq=int(item.get("q", 0)),
                    ts=int(item.get("ts", 0)),
                    code=str(item.get("code", "")),
                    message=str(item.get("msg", "")),
                    retry_after_ms=item.get("ra"),
                )
            )
        except (KeyError, TypeError, ValueError):
            continue
    return out


#: Appended to a sequenced message's JSON when only its sender may see it (see module docstring).
HIDDEN_MARK = b"\n"


def encode_kick(user: str, room: str | None, reason: str) -> bytes:
    return orjson.dumps({"kick": {"u": user, "room": room, "reason": reason}})


def decode_control(payload: bytes) -> tuple[str, str | None, str] | None:
    """A kick as ``(user, room or None, reason)``; None for anything else."""
    try:
        obj = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return None
    kick = obj.get("kick") if isinstance(obj, dict) else None
    if not isinstance(kick, dict):
        return None
    user, room, reason = kick.get("u"), kick.get("room"), kick.get("reason", "")
    if not isinstance(user, str) or not (room is None or isinstance(room, str)):
        return None
    return user, room, reason if isinstance(reason, str) else ""
