"""One Redis connection: RESP over a trio socket stream, one request at a time.

Guarantees:

* ``execute`` and ``pipeline`` write their whole request with one ``send_all`` and then read
  exactly as many replies as commands were sent, so a healthy connection is always between
  requests when it is handed back.
* Any failure other than an error *reply* (socket error, EOF, bad RESP, cancellation, a bug)
  while a request is in flight marks the connection **broken** and closes its socket at once; a
  broken connection refuses further requests. A cancelled request may or may not have run on the
  server; it is never re-sent.
* Two tasks using one connection at the same time get ``trio.BusyResourceError`` (it is a
  programming error; share a ``RedisClient`` instead, which hands each task its own connection).

URLs: ``redis://[[user]:password@]host[:port][/db]`` and
``unix:///path/to/redis.sock[?db=N][&password=...]`` (``redis+unix://`` is an alias).
"""

from __future__ import annotations

import socket
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import trio

from engine.errors import ConfigError

from .errors import RedisConnectionError, RedisReplyError, RedisTimeoutError
from .resp import NEED_DATA, Arg, Command, ReplyParser, encode_command, encode_pipeline

RECEIVE_SIZE = 65536


@dataclass(frozen=True, slots=True)
class RedisAddress:
    """Where a server is and how to log in; parsed from a URL by ``parse_url``."""

    host: str = "127.0.0.1"
    port: int = 6379
    path: str | None = None  # a unix socket; host and port are then unused
    db: int = 0
    username: str | None = None
    password: str | None = None

    @property
    def url(self) -> str:
        """The URL without credentials (safe to log, stable as an identity)."""
        if self.path is not None:
            return f"unix://{self.path}" + (f"?db={self.db}" if self.db else "")
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"redis://{host}:{self.port}" + (f"/{self.db}" if self.db else "")

    def __str__(self) -> str:
        return self.url


def parse_url(url: str) -> RedisAddress:
    """Parse a ``redis://`` or ``unix://`` URL; raises ``ConfigError`` when it is not one."""
    try:
        parts = urlsplit(url)
        query = parse_qs(parts.query)
        db_text = query.get("db", [""])[0]
        username = unquote(parts.username) if parts.username else None
        password = unquote(parts.password) if parts.password is not None else None
        if "password" in query:
            password = query["password"][0]
        if parts.scheme in ("unix", "redis+unix"):
            if not parts.path:
                raise ValueError("no socket path")
            return RedisAddress(
                path=parts.path,
                db=int(db_text or 0),
                username=username,
                password=password,
            )
        if parts.scheme != "redis":
            raise ValueError(f"unsupported scheme {parts.scheme!r} (cluster URLs go to ShardSet)")
        path_db = parts.path.strip("/")
        return RedisAddress(
            host=parts.hostname or "127.0.0.1",
            port=parts.port or 6379,
            db=int(path_db or db_text or 0),
            username=username,
            password=password,
        )
    except ValueError as exc:
        raise ConfigError(f"bad Redis URL {_redact(url)!r}: {exc}") from exc


def _redact(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return url.replace(":" + parts.password + "@", ":***@", 1)


async def open_stream(address: RedisAddress) -> trio.SocketStream:
    """A connected socket stream (TCP_NODELAY and keepalive set on TCP)."""
    try:
        if address.path is not None:
            return await trio.open_unix_socket(address.path)
        stream = await trio.open_tcp_stream(address.host, address.port)
    except OSError as exc:
        raise RedisConnectionError(f"cannot connect to {address}: {exc}") from exc
    # trio already sets TCP_NODELAY on its socket streams; say it here, where it matters.
    stream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, True)
    stream.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, True)
    return stream


def handshake_commands(address: RedisAddress) -> list[list[Arg]]:
    """The commands that log a new connection in and select its database."""
    commands: list[list[Arg]] = []
    if address.password is not None:
        if address.username:
            commands.append(["AUTH", address.username, address.password])
        else:
            commands.append(["AUTH", address.password])
    if address.db:
        commands.append(["SELECT", address.db])
    return commands


class RedisConnection:
    """A single connection; see the module docstring for its guarantees.

    Make one with ``await RedisConnection.connect(url)``.
    """

    __slots__ = ("_address", "_broken", "_busy", "_closed", "_parser", "_stream")

    def __init__(self, stream: trio.SocketStream, address: RedisAddress) -> None:
        self._stream = stream
        self._address = address
        self._parser = ReplyParser()
        self._busy = False
        self._broken = False
        self._closed = False

    @classmethod
    async def connect(
        cls, url: str | RedisAddress, *, connect_timeout_s: float = 5.0
    ) -> RedisConnection:
        """Connect, log in and select the database, all within ``connect_timeout_s``.

        Raises ``RedisConnectionError`` if the server cannot be reached, ``RedisTimeoutError``
        if it takes too long, ``RedisReplyError`` if AUTH or SELECT is refused.
        """
        address = url if isinstance(url, RedisAddress) else parse_url(url)
        with trio.move_on_after(connect_timeout_s):
            conn = cls(await open_stream(address), address)
            try:
                commands = handshake_commands(address)
                if commands:
                    for reply in await conn.pipeline(commands):
                        if isinstance(reply, RedisReplyError):
                            raise reply
            except BaseException:
                conn.close()
                raise
            return conn
        raise RedisTimeoutError(f"connecting to {address} took more than {connect_timeout_s} s")

    # ---- state --------------------------------------------------------------------------------
    @property
    def address(self) -> RedisAddress:
        return self._address

    @property
    def broken(self) -> bool:
        """True once a request failed or was cancelled mid-flight; the socket is then closed."""
        return self._broken

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def usable(self) -> bool:
        """Whether the connection may carry another request."""
        return not (self._broken or self._closed)

    @property
    def stream(self) -> trio.SocketStream:
        """The socket stream, for code that takes over the connection's I/O (``PubSub``)."""
        return self._stream

    @property
    def parser(self) -> ReplyParser:
        """The connection's reply parser, for code that takes over its I/O (``PubSub``)."""
        return self._parser

    def close(self) -> None:
        """Close the socket now (synchronous, so it also works while being cancelled)."""
        self._closed = True
        self._stream.socket.close()

    async def aclose(self) -> None:
        self.close()
        await trio.lowlevel.checkpoint()

    def _fail(self) -> None:
        self._broken = True
        self.close()

    # ---- requests -----------------------------------------------------------------------------
    async def execute(self, *args: Arg) -> Any:
        """Send one command and return its reply; an error reply is raised as RedisReplyError."""
        reply = await self._request(encode_command(args), 1)
        if type(reply) is RedisReplyError:
            raise reply
        return reply

    async def pipeline(self, commands: Sequence[Command]) -> list[Any]:
        """Send all commands in one write and return their replies, in order.

        Error replies are returned in place as ``RedisReplyError`` values, not raised.
        """
        if not commands:
            await trio.lowlevel.checkpoint()
            return []
        count = len(commands)
        if count == 1:
            return [await self._request(encode_command(commands[0]), 1)]
        replies: list[Any] = await self._request(encode_pipeline(commands), count)
        return replies

    async def _request(self, payload: bytes, count: int) -> Any:
        # count == 1: return the reply itself; otherwise a list of ``count`` replies.
        if self._busy:
            raise trio.BusyResourceError("another task is already using this RedisConnection")
        if self._broken or self._closed:
            raise RedisConnectionError(f"connection to {self._address} is closed")
        self._busy = True
        stream = self._stream
        parser = self._parser
        try:
            await stream.send_all(payload)
            if count == 1:
                reply = parser.next_reply()
                while reply is NEED_DATA:
                    data = await stream.receive_some(RECEIVE_SIZE)
                    if not data:
                        raise RedisConnectionError(f"{self._address} closed the connection")
                    parser.feed(data)
                    reply = parser.next_reply()
                return reply
            replies: list[Any] = []
            append = replies.append
            while True:
                reply = parser.next_reply()
                if reply is NEED_DATA:
                    data = await stream.receive_some(RECEIVE_SIZE)
                    if not data:
                        raise RedisConnectionError(f"{self._address} closed the connection")
                    parser.feed(data)
                    continue
                append(reply)
                if len(replies) == count:
                    return replies
        except BaseException as exc:
            # Cancelled, EOF, socket error, bad RESP or a bug: the request's replies may be
            # half read, so the connection must never carry another request.
            self._fail()
            if isinstance(exc, trio.BrokenResourceError | OSError):
                raise RedisConnectionError(f"connection to {self._address} failed: {exc}") from exc
            raise
        finally:
            self._busy = False

    def __repr__(self) -> str:
        state = "broken" if self._broken else "closed" if self._closed else "open"
        return f"<RedisConnection {self._address} {state}>"
