"""The sans-IO RESP codec: encoding commands, parsing replies (whole and byte by byte)."""

from __future__ import annotations

import ast
import enum
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.redis.errors import RedisProtocolError, RedisReplyError
from engine.redis.resp import NEED_DATA, ReplyParser, encode_command, encode_pipeline


class Color(enum.IntEnum):
    RED = 3


def test_encode_command_types() -> None:
    assert encode_command(["SET", b"k", 12, -3]) == (
        b"*4\r\n$3\r\nSET\r\n$1\r\nk\r\n$2\r\n12\r\n$2\r\n-3\r\n"
    )
    # str is UTF-8 and lengths count bytes, not characters
    assert encode_command(["弹幕"]) == b"*1\r\n$6\r\n\xe5\xbc\xb9\xe5\xb9\x95\r\n"
    assert encode_command([1.5, float("inf"), float("-inf")]) == (
        b"*3\r\n$3\r\n1.5\r\n$3\r\ninf\r\n$4\r\n-inf\r\n"
    )
    assert encode_command([bytearray(b"ab"), memoryview(b"cd"), Color.RED, b""]) == (
        b"*4\r\n$2\r\nab\r\n$2\r\ncd\r\n$1\r\n3\r\n$0\r\n\r\n"
    )


@pytest.mark.parametrize("bad", [True, None, float("nan"), object()])
def test_encode_refuses_ambiguous_values(bad: Any) -> None:
    with pytest.raises((TypeError, ValueError)):
        encode_command(["SET", "k", bad])


def test_encode_refuses_empty_commands() -> None:
    with pytest.raises(ValueError, match="empty"):
        encode_command([])
    with pytest.raises(ValueError, match="empty"):
        encode_pipeline([["PING"], []])


def test_encode_pipeline_is_the_concatenation() -> None:
    commands = [["PING"], ["INCR", "n"], ["GET", b"x"]]
    assert encode_pipeline(commands) == b"".join(encode_command(c) for c in commands)
    assert encode_pipeline([]) == b""


REPLIES = (
    b"+OK\r\n"
    b":42\r\n"
    b":-1\r\n"
    b"$5\r\nhello\r\n"
    b"$0\r\n\r\n"
    b"$-1\r\n"
    b"*-1\r\n"
    b"*0\r\n"
    b"-WRONGTYPE Operation against a key holding the wrong kind of value\r\n"
    b"*3\r\n:1\r\n-ERR inner\r\n*2\r\n$1\r\na\r\n$-1\r\n"
    b"-lowercase lua error\r\n"
)


def _check_replies(replies: list[Any]) -> None:
    assert replies[:8] == [b"OK", 42, -1, b"hello", b"", None, None, []]
    err = replies[8]
    assert isinstance(err, RedisReplyError)
    assert err.kind == "WRONGTYPE"
    assert err.message.startswith("WRONGTYPE Operation")
    nested = replies[9]
    assert nested[0] == 1
    assert isinstance(nested[1], RedisReplyError)
    assert nested[1].kind == "ERR"
    assert nested[2] == [b"a", None]
    assert isinstance(replies[10], RedisReplyError)
    assert replies[10].kind == "ERR"
    assert len(replies) == 11


def _drain(parser: ReplyParser) -> list[Any]:
    out = []
    while (reply := parser.next_reply()) is not NEED_DATA:
        out.append(reply)
    return out


def test_parse_whole() -> None:
    parser = ReplyParser()
    assert parser.next_reply() is NEED_DATA
    parser.feed(REPLIES)
    _check_replies(_drain(parser))
    assert not parser.has_data()


def test_parse_byte_by_byte() -> None:
    parser = ReplyParser()
    replies: list[Any] = []
    for i in range(len(REPLIES)):
        parser.feed(REPLIES[i : i + 1])
        replies += _drain(parser)
    _check_replies(replies)


def test_error_kinds() -> None:
    assert RedisReplyError("BUSYGROUP Consumer Group name already exists").kind == "BUSYGROUP"
    assert RedisReplyError("NOSCRIPT No matching script.").kind == "NOSCRIPT"
    moved = RedisReplyError("MOVED 3999 127.0.0.1:6381")
    assert (moved.kind, moved.message) == ("MOVED", "MOVED 3999 127.0.0.1:6381")
    assert RedisReplyError(b"ASK 1 h:2").kind == "ASK"
    assert RedisReplyError("").kind == "ERR"


def test_protocol_error_raises() -> None:
    parser = ReplyParser()
    parser.feed(b"?what\r\n")
    with pytest.raises(RedisProtocolError):
        parser.next_reply()


args_strategy = st.lists(
    st.one_of(st.binary(max_size=40), st.text(max_size=20), st.integers()), min_size=1, max_size=8
)


@given(commands=st.lists(args_strategy, min_size=1, max_size=5), chunk=st.integers(1, 17))
def test_encoded_commands_parse_back(commands: list[list[Any]], chunk: int) -> None:
    # A request is a RESP array of bulk strings, which the reply parser can read back.
    data = encode_pipeline(commands)
    parser = ReplyParser()
    parsed: list[Any] = []
    for i in range(0, len(data), chunk):
        parser.feed(data[i : i + chunk])
        parsed += _drain(parser)
    expected = [
        [a if isinstance(a, bytes) else str(a).encode() for a in command] for command in commands
    ]
    assert parsed == expected


def test_codec_modules_import_no_io() -> None:
    package = Path(__file__).resolve().parents[1] / "engine" / "redis"
    for name in ("resp.py", "errors.py"):
        tree = ast.parse((package / name).read_text(encoding="utf-8"))
        imported: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                imported.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                imported.add(node.module.split(".")[0])
        assert not imported & {"trio", "socket", "asyncio", "anyio", "selectors"}, (name, imported)
