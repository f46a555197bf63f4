"""One WebSocket connection: parsing client frames, and the single writer of its socket.

Writes never await on the hot path. ``write()`` tries a non-blocking write of the (shared,
pre-framed) bytes straight to the socket; the kernel's buffer is the first queue. Only when that
buffer is full does the rest go to a pending list drained by a task started on demand, so an idle
or fast viewer costs no task and no buffer. Every byte to the socket (batches, control frames,
pongs, the close frame) goes through ``write()``, so there is exactly one writer per socket.

Streams that are not plain TCP sockets (TLS, in-memory test streams) skip the non-blocking write
and always go through the drain task with ``send_all``.
"""

from __future__ import annotations

import contextlib
import os
from collections import deque
from typing import Final

import trio
from wsproto.connection import Connection, ConnectionType
from wsproto.events import (
    BytesMessage,
    CloseConnection,
    Ping,
    TextMessage,
)
from wsproto.utilities import LocalProtocolError, RemoteProtocolError


class TooLarge:
    """Marker for a client message over the size limit (its bytes were discarded)."""

    __slots__ = ("size",)

    def __init__(self, size: int) -> None:
        self.size = size


Incoming = str | bytes | TooLarge


class ConnectionGone(Exception):
    """The peer closed or broke the connection; the session ends quietly."""


def _socket_fd(stream: trio.abc.Stream) -> int | None:
    if isinstance(stream, trio.SocketStream):
        return stream.socket.fileno()
    return None


class WsConn:
    __slots__ = (
        "_drained",
        "_draining",
        "_fd",
        "_max_message",
        "_max_pending",
        "_nursery",
        "_partial",
        "_partial_size",
        "_pending",
        "_stream",
        "_ws",
        "close_code",
        "closed",
        "peer_closed",
        "pending_bytes",
        "scope",
    )

    def __init__(
        self,
        stream: trio.abc.Stream,
        nursery: trio.Nursery,
        *,
        max_message_bytes: int,
        max_pending_bytes: int,
        trailing_data: bytes = b"",
    ) -> None:
        self._stream = stream
        self._fd: Final = _socket_fd(stream)
        self._nursery = nursery
        self._ws = Connection(ConnectionType.SERVER, trailing_data=trailing_data)
        self._pending: deque[bytes | memoryview] | None = None
        self.pending_bytes = 0
        self._draining = False
        self._drained: trio.Event | None = None
        self.closed = False
        self.peer_closed = False
        self.close_code: int | None = None
        self._max_pending = max_pending_bytes
        self._max_message = max_message_bytes
        self._partial: list[str | bytes] | None = None
        self._partial_size = 0
        # The session's cancel scope: cancelled when the socket breaks so its reader wakes up.
        self.scope: trio.CancelScope | None = None

    # ---- writing -------------------------------------------------------------------------
    def write(self, data: bytes) -> bool:
        """Queue ``data`` for the socket without awaiting; False if the connection is gone."""
        if self.closed:
            return False
        if self.pending_bytes == 0 and self._fd is not None:
            try:
                sent = os.write(self._fd, data)
            except BlockingIOError:
                sent = 0
            except OSError:
                self._broken()
                return False
            if sent == len(data):
                return True
            self._enqueue(memoryview(data)[sent:])
            return not self.closed
        self._enqueue(data)
        return not self.closed

    def _enqueue(self, data: bytes | memoryview) -> None:
        if self._pending is None:
            self._pending = deque()
        self._pending.append(data)
        self.pending_bytes += len(data)
        if self.pending_bytes > self._max_pending:
            # Over its memory bound: drop what is queued and close; the client resumes later.
            self._pending.clear()
            self.pending_bytes = 0
            self.close_code = 4009
            self._broken()
            return
        if not self._draining:
            self._draining = True
            self._nursery.start_soon(self._drain)

    async def _drain(self) -> None:
        pending = self._pending
        assert pending is not None
        try:
            while pending:
                chunk = pending[0]
                if self._fd is not None:
                    await trio.lowlevel.wait_writable(self._fd)
                    try:
                        sent = os.write(self._fd, chunk)
                    except BlockingIOError:
                        continue
                else:
                    await self._stream.send_all(chunk)
                    sent = len(chunk)
                self.pending_bytes -= sent
                if sent == len(chunk):
                    pending.popleft()
                else:
                    pending[0] = memoryview(chunk)[sent:]
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError):
            self._broken()
        finally:
            self._draining = False
            if not pending:
                self._pending = None
            if self._drained is not None:
                self._drained.set()
                self._drained = None

    async def wait_below(self, limit: int) -> None:
        """Wait until fewer than ``limit`` bytes are pending (or the connection is gone)."""
        while self.pending_bytes >= limit and not self.closed and self._draining:
            if self._drained is None:
                self._drained = trio.Event()
            await self._drained.wait()

    def _broken(self) -> None:
        self.closed = True
        if self.scope is not None:
            self.scope.cancel()
        if self._drained is not None:
            self._drained.set()
            self._drained = None

    # ---- reading -------------------------------------------------------------------------
    async def receive(self) -> list[Incoming]:
        """The next complete client messages; raises ConnectionGone when the peer is gone."""
        while True:
            if self.closed:
                raise ConnectionGone
            try:
                data = await self._stream.receive_some(65536)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                self._broken()
                raise ConnectionGone from None
            if not data:
                self.peer_closed = True
                self._broken()
                raise ConnectionGone
            if self.closed:
                raise ConnectionGone
            out = self._feed(data)
            if out:
                return out

    def _feed(self, data: bytes) -> list[Incoming]:
        out: list[Incoming] = []
        try:
            self._ws.receive_data(data)
            for event in self._ws.events():
                if isinstance(event, TextMessage | BytesMessage):
                    self._collect(event.data, event.message_finished, out)
                elif isinstance(event, Ping):
                    self.write(self._ws.send(event.response()))
                elif isinstance(event, CloseConnection):
                    self.peer_closed = True
                    with contextlib.suppress(LocalProtocolError):  # we closed first
                        self.write(self._ws.send(event.response()))
                    self.closed = True
        except (RemoteProtocolError, LocalProtocolError):
            self.close_code = 1002
            self._broken()
            raise ConnectionGone from None
        return out

    def _collect(self, piece: str | bytes, finished: bool, out: list[Incoming]) -> None:
        if self._partial is None:
            if finished:
                size = len(piece) if isinstance(piece, bytes) else _utf8_len(piece)
                out.append(TooLarge(size) if size > self._max_message else piece)
                return
            self._partial = []
            self._partial_size = 0
        size = len(piece) if isinstance(piece, bytes) else _utf8_len(piece)
        self._partial_size += size
        if self._partial_size <= self._max_message:
            self._partial.append(piece)
        else:
            self._partial.clear()  # keep reading to the end of the message, keep nothing
        if finished:
            total = self._partial_size
            parts = self._partial
            self._partial = None
            if total > self._max_message:
                out.append(TooLarge(total))
            elif parts and isinstance(parts[0], bytes):
                out.append(b"".join(p for p in parts if isinstance(p, bytes)))
            else:
                out.append("".join(p for p in parts if isinstance(p, str)))

    # ---- closing -------------------------------------------------------------------------
    def start_close(self, code: int, reason: str = "") -> None:
        """Queue a close frame; the session's reader then sees the peer's reply and ends."""
        if self.closed or self.close_code is not None:
            return
        self.close_code = code
        with contextlib.suppress(LocalProtocolError):  # the peer closed first
            self.write(self._ws.send(CloseConnection(code=code, reason=reason)))

    async def close(self, code: int, reason: str = "", *, linger_s: float = 2.0) -> None:
        """Close from the session's own task: close frame, the peer's reply, then TCP close.

        Waiting for the peer's close frame (bounded by ``linger_s``) lets clients finish the
        closing handshake instead of meeting a reset socket.
        """
        self.start_close(code, reason)
        with trio.move_on_after(linger_s):
            await self.wait_below(1)
            while not self.closed:
                try:
                    data = await self._stream.receive_some(65536)
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                    break
                if not data:
                    break
                try:
                    self._ws.receive_data(data)
                    if any(isinstance(e, CloseConnection) for e in self._ws.events()):
                        break
                except (RemoteProtocolError, LocalProtocolError):
                    break
        await self.aclose()

    async def aclose(self) -> None:
        self.closed = True
        stream = self._stream
        if isinstance(stream, trio.SocketStream):
            # What SocketStream.aclose does, minus the Cancelled that aclose_forcefully makes
            # it raise and catch: a tenth of a session's teardown when 10,000 viewers drop at
            # once (the gateway's other tasks wait for all of them).
            stream.socket.close()
            await trio.lowlevel.cancel_shielded_checkpoint()
            return
        with trio.CancelScope(shield=True):
            await trio.aclose_forcefully(stream)


def _utf8_len(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))
