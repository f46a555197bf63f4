"""The client SDK's exception tree.

    ClientError                  every error the SDK raises on purpose
    ├── ConnectError             the first connection failed: network, dispatch, handshake
    ├── ProtocolViolation        the server sent a frame that breaks the contract
    ├── ClientClosed             the client was closed (by `aclose()` or a terminal disconnect)
    │   ├── Unauthorized         hello rejected / close 4001; the client does not reconnect
    │   └── Kicked               close 4003; the client does not reconnect
    ├── Nacked                   the server refused a `send` (`code`, `message`, `retry_after_ms`)
    ├── SendTimeout              no ack after every resend of the same cmid
    ├── JoinRefused              the server answered a join with an `error` frame
    └── JoinTimeout              no `joined` after every retry of a join / leave

`ClientClosed` (and its subclasses) is what pending and future operations raise once the
client can no longer reach the server; `Unauthorized` and `Kicked` say why.
"""

from __future__ import annotations


class ClientError(Exception):
    """Base of every error the danmaku client SDK raises on purpose."""


class ConnectError(ClientError):
    """Connecting failed (dispatch, TCP, TLS or the WebSocket handshake)."""


class ProtocolViolation(ClientError):
    """A server frame that does not follow the wire contract (missing or mistyped fields)."""


class ClientClosed(ClientError):
    """The client is closed; no further operations are possible."""

    def __init__(self, message: str = "client is closed", code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


class Unauthorized(ClientClosed):
    """The server rejected the token (error `unauthorized` and/or close code 4001)."""


class Kicked(ClientClosed):
    """The server kicked this connection (close code 4003)."""


class Nacked(ClientError):
    """The server refused a send. `retry_after_ms` is set only for `rate_limited`."""

    def __init__(self, code: str, message: str, retry_after_ms: int | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.retry_after_ms = retry_after_ms


class SendTimeout(ClientError):
    """A send got no ack although the same frame (same cmid) was sent `attempts` times."""

    def __init__(self, cmid: str, attempts: int) -> None:
        super().__init__(f"no ack for cmid {cmid!r} after {attempts} attempts")
        self.cmid = cmid
        self.attempts = attempts


class JoinTimeout(ClientError):
    """A join (or leave) got no answer after every retry."""

    def __init__(self, room: str, op: str, attempts: int) -> None:
        super().__init__(f"no answer to {op} {room!r} after {attempts} attempts")
        self.room = room
        self.op = op
        self.attempts = attempts


class JoinRefused(ClientError):
    """The server answered a join with an `error` frame (e.g. `unauthorized` for this room)."""

    def __init__(self, room: str, code: str, message: str) -> None:
        super().__init__(f"join {room!r} refused: {code}: {message}")
        self.room = room
        self.code = code
        self.message = message
