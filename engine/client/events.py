"""What the client hands to the application: typed, immutable events (sans-IO, no trio).

Per room, `Message` and `Skipped` events come in strictly increasing seq order and each seq at
most once, across reconnects. `Joined` follows every (re)join, `Reset` every `reset` frame (the
room's numbering restarted: the app should drop what it derived from older seqs).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class Message:
    """One delivered message. `body` is the kind's body as sent by the server (for danmaku:
    `text`, `mode`, `color`, `offset_ms`); `extra` holds unknown extension fields."""

    room: str
    seq: int
    id: str
    user: str
    name: str
    ts: int
    kind: str
    body: dict[str, Any]
    extra: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class Skipped:
    """Seqs `first..last` (inclusive) were deliberately not delivered to this viewer (load
    shedding or hidden messages): not a loss."""

    room: str
    first: int
    last: int


@dataclass(frozen=True, slots=True)
class Reset:
    """The room's numbering was reset (`reason`: `epoch_changed` or `too_old`); delivery
    continues after `seq` in `epoch`. Messages between the previous position and `seq` are lost
    to this client."""

    room: str
    epoch: str
    seq: int
    reason: str


@dataclass(frozen=True, slots=True)
class Joined:
    """The server confirmed a (re)join: `seq` is the room's last assigned seq right then."""

    room: str
    epoch: str
    seq: int
    online: int


@dataclass(frozen=True, slots=True)
class Disconnected:
    """The connection closed with this WebSocket close `code` (1006: no close frame).
    `will_reconnect` is False for 4001 / 4003 and when the client is being closed."""

    code: int
    reason: str = ""
    will_reconnect: bool = True


@dataclass(frozen=True, slots=True)
class Reconnected:
    """A new connection is up (welcome received); every room is being re-joined with `since`
    and unacked sends were resent with their cmid. `reconnects` counts them, from 1."""

    session: str
    reconnects: int


@dataclass(frozen=True, slots=True)
class ServerError:
    """An `error` frame the client could not attribute to one of its own operations."""

    code: str
    message: str
    room: str | None = None


@dataclass(frozen=True, slots=True)
class Ack:
    """The server sequenced a send: `seq` is the seq the message is delivered with."""

    room: str
    cmid: str
    seq: int
    ts: int


Event = Message | Skipped | Reset | Joined | Disconnected | Reconnected | ServerError
