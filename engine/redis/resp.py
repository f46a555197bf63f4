"""RESP2, sans-IO: commands to bytes, bytes to replies.

Theory of operation: a request is a RESP array of bulk strings (``encode_command``); a pipeline is
several of them back to back (``encode_pipeline``), written in one go. Replies are parsed by
``ReplyParser``, a thin wrapper around one ``hiredis.Reader`` per connection: feed it whatever the
socket produced, then call ``next_reply()`` until it returns ``NEED_DATA``.

Error replies are *returned* as ``RedisReplyError`` instances, never raised here, so that a
pipeline can hand back one value or error per command (arrays can contain errors too, e.g. the
reply of EXEC). Bytes that are not RESP raise ``RedisProtocolError``; the connection that fed them
must then be closed.

Argument encoding: ``bytes``/``bytearray``/``memoryview`` as they are, ``str`` as UTF-8, ``int`` in
decimal, ``float`` via ``repr`` (``inf``/``-inf`` are accepted by Redis, NaN is refused here).
``bool`` and ``None`` are refused: Redis has no such types and a silent ``b"True"`` is a bug.

This module imports no I/O library (a test checks it).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any, Final, TypeAlias

import hiredis

from .errors import RedisProtocolError, RedisReplyError

Arg: TypeAlias = bytes | str | int | float
"""One argument of a command. ``bytearray`` and ``memoryview`` are accepted too."""

Command: TypeAlias = Sequence[Arg]


class _NeedData:
    __slots__ = ()

    def __repr__(self) -> str:
        return "NEED_DATA"

    def __bool__(self) -> bool:
        return False


NEED_DATA: Final[Any] = _NeedData()
"""Returned by ``ReplyParser.next_reply`` when the buffered bytes hold no complete reply."""


def _to_bytes(arg: object) -> bytes:
    # The slow path of the encoders: subclasses and the rarer types.
    if isinstance(arg, bool) or arg is None:
        raise TypeError(f"cannot send {arg!r} to Redis: use an int, str or bytes")
    if isinstance(arg, bytes):
        return bytes(arg)
    if isinstance(arg, str):
        return str(arg).encode()
    if isinstance(arg, int):
        return b"%d" % arg
    if isinstance(arg, float):
        if math.isnan(arg):
            raise ValueError("cannot send NaN to Redis")
        return repr(float(arg)).encode()
    if isinstance(arg, bytearray | memoryview):
        return bytes(arg)
    raise TypeError(f"cannot send {type(arg).__name__} to Redis")


def _append_command(parts: list[bytes], args: Command) -> None:
    append = parts.append
    append(b"*%d\r\n" % len(args))
    for arg in args:
        # Exact type checks first: they are the hot path (~0.2 us per argument).
        if type(arg) is str:
            data = arg.encode()
        elif type(arg) is bytes:
            data = arg
        elif type(arg) is int:
            data = b"%d" % arg
        else:
            data = _to_bytes(arg)
        append(b"$%d\r\n" % len(data))
        append(data)
        append(b"\r\n")


def encode_command(args: Command) -> bytes:
    """One command as a RESP array of bulk strings."""
    if not args:
        raise ValueError("empty command")
    parts: list[bytes] = []
    _append_command(parts, args)
    return b"".join(parts)


def encode_pipeline(commands: Iterable[Command]) -> bytes:
    """Several commands back to back, to be written in one send."""
    parts: list[bytes] = []
    for args in commands:
        if not args:
            raise ValueError("empty command in pipeline")
        _append_command(parts, args)
    return b"".join(parts)


class ReplyParser:
    """Incremental RESP2 reply parser (one per connection; keeps partial replies between feeds).

    Bulk strings come back as ``bytes``, integers as ``int``, nil as ``None``, arrays as ``list``,
    status replies (``+OK``) as ``bytes``, and error replies as ``RedisReplyError`` values.
    """

    __slots__ = ("_reader",)

    def __init__(self) -> None:
        self._reader = hiredis.Reader(
            protocolError=RedisProtocolError,
            replyError=RedisReplyError,
            notEnoughData=NEED_DATA,
        )

    def feed(self, data: bytes) -> None:
        self._reader.feed(data)

    def next_reply(self) -> Any:
        """The next complete reply, or ``NEED_DATA``.

        Raises ``RedisProtocolError`` on bytes that are not RESP; the parser is then unusable.
        """
        return self._reader.gets()

    def has_data(self) -> bool:
        """Whether bytes are buffered (a partial or further reply)."""
        return bool(self._reader.has_data())
