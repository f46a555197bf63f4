"""The Redis layer's exceptions.

::

    DanmakuError                      (engine.errors)
    └── RedisError                    anything the Redis layer raises on purpose
        ├── RedisConnectionError      the socket failed, the server closed it, or the peer sent
        │   │                         bytes that are not RESP; the connection is never reused
        │   └── RedisProtocolError    the peer's bytes were not valid RESP
        ├── RedisReplyError           the server answered a command with an error reply
        └── RedisTimeoutError         no pool slot within ``pool_timeout_s``, or connect timed out

A ``RedisReplyError`` leaves its connection healthy; every other ``RedisError`` means the
connection it came from was closed. After a ``RedisConnectionError`` the caller cannot know whether
the command ran (the layer never re-sends a command by itself).
"""

from __future__ import annotations

from engine.errors import DanmakuError


class RedisError(DanmakuError):
    """Base of every error raised by ``engine.redis``."""


class RedisConnectionError(RedisError):
    """The connection broke (or could not be made); the command may or may not have run."""


class RedisProtocolError(RedisConnectionError):
    """The server sent bytes that are not RESP; the connection was closed."""


class RedisTimeoutError(RedisError):
    """A pool slot or a new connection was not available in time."""


class RedisReplyError(RedisError):
    """An error reply (``-KIND message``) from the server.

    ``kind`` is the leading upper-case word (``"ERR"``, ``"NOSCRIPT"``, ``"BUSYGROUP"``,
    ``"MOVED"``, ...); replies without one (some Lua errors) get ``"ERR"``. ``message`` is the
    whole text as sent by the server.

    The RESP parser *returns* instances of this class (so that a pipeline can answer each command
    with its own value or error); only the single-command APIs raise them.
    """

    __slots__ = ("kind", "message")

    def __init__(self, message: str | bytes) -> None:
        if isinstance(message, bytes):
            message = message.decode("utf-8", "replace")
        super().__init__(message)
        self.message: str = message
        head = message.split(" ", 1)[0]
        self.kind: str = head if head and _is_code(head) else "ERR"


def _is_code(word: str) -> bool:
    return word.isascii() and word.replace("_", "").isalnum() and word.isupper()
