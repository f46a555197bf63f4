"""A plain contract-level WebSocket test client (trio-websocket), with no SDK logic in between."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import orjson
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, open_websocket_url

_cmids = itertools.count(1)


class Raw:
    def __init__(self, ws: WebSocketConnection) -> None:
        self.ws = ws
        self.frames: list[dict[str, Any]] = []  # every frame received, in order
        self.backlog: list[dict[str, Any]] = []  # received but not yet taken by expect/acked

    async def send(self, obj: dict[str, Any] | str | bytes) -> None:
        if isinstance(obj, dict):
            await self.ws.send_message(orjson.dumps(obj).decode())
        else:
            await self.ws.send_message(obj)

    async def recv(self) -> dict[str, Any]:
        data = await self.ws.get_message()
        frame = orjson.loads(data)
        self.frames.append(frame)
        return frame  # type: ignore[no-any-return]

    async def take(self, match: Any) -> dict[str, Any]:
        """The oldest frame (backlog first) for which ``match(frame)`` is true."""
        for i, frame in enumerate(self.backlog):
            if match(frame):
                return self.backlog.pop(i)
        while True:
            frame = await self.recv()
            if match(frame):
                return frame
            self.backlog.append(frame)

    async def expect(self, op: str) -> dict[str, Any]:
        """The next frame with this op (others in between stay in the backlog)."""
        return await self.take(lambda f: f["op"] == op)

    async def hello(self, token: str | None = None) -> dict[str, Any]:
        await self.send({"op": "hello", "token": token, "client": "test/1"} if token
                        else {"op": "hello", "client": "test/1"})
        return await self.expect("welcome")

    async def join(self, room: str, since: dict[str, Any] | None = None) -> dict[str, Any]:
        frame: dict[str, Any] = {"op": "join", "room": room}
        if since is not None:
            frame["since"] = since
        await self.send(frame)
        return await self.expect("joined")

    async def send_text(
        self, room: str, text: str, cmid: str | None = None, **extra: Any
    ) -> str:
        cmid = cmid or f"c{next(_cmids)}"
        await self.send({"op": "send", "room": room, "cmid": cmid,
                         "body": {"text": text, **extra.pop("body", {})}, **extra})
        return cmid

    async def acked(self, cmid: str) -> dict[str, Any]:
        return await self.take(lambda f: f["op"] in {"ack", "nack"} and f.get("cmid") == cmid)

    async def close_code(self) -> int | None:
        try:
            while True:
                await self.ws.get_message()
        except ConnectionClosed as exc:
            return exc.reason.code


@asynccontextmanager
async def connect(url: str, token: str | None = None, hello: bool = True) -> AsyncIterator[Raw]:
    async with open_websocket_url(url, message_queue_size=100_000) as ws:
        try:
            raw = Raw(ws)
            if hello:
                await raw.hello(token)
            yield raw
        finally:
            # trio-websocket 0.12.2 never closes a client's TCP stream after a close the server
            # started (its reader stops on EOF without closing, and aclose() returns early),
            # which leaks the socket; close it ourselves.
            if ws.closed is not None:
                await trio.aclose_forcefully(ws._stream)


async def collect_batches(
    raw: Raw, room: str, until_seq: int, *, after: int = 0
) -> list[dict[str, Any]]:
    """Batches of ``room`` starting after seq ``after``, until one reaches ``until_seq``.

    Frames already received (while waiting for something else) count too.
    """

    def wanted(frame: dict[str, Any]) -> bool:
        return frame["op"] == "batch" and frame["room"] == room and frame["from"] > after

    out = [f for f in raw.frames if wanted(f)]
    while not out or out[-1]["to"] < until_seq:
        frame = await raw.recv()
        if wanted(frame):
            out.append(frame)
    return out


def check_contiguous(batches: list[dict[str, Any]], first: int) -> list[int]:
    """Assert the contract's batch rules; return the delivered seqs."""
    seqs: list[int] = []
    expect = first
    for b in batches:
        assert b["from"] == expect, (b["from"], expect)
        skipped = {s for a, z in b.get("skipped", []) for s in range(a, z + 1)}
        got = [m["seq"] for m in b["msgs"]]
        assert got == [s for s in range(b["from"], b["to"] + 1) if s not in skipped]
        seqs += got
        expect = b["to"] + 1
    return seqs


__all__ = ["Raw", "check_contiguous", "collect_batches", "connect", "trio"]
