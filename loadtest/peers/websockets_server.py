"""Peer (b) for loadtest/compare_peers.py: python ``websockets`` (asyncio) with ``broadcast()``.

    python loadtest/peers/websockets_server.py --port 9003 [--heartbeat-ms 20000]

The same protocol as ``ws_server.js`` (see README.md here): ``join`` -> ``joined`` with the
room's last seq; ``send`` -> the room's next seq, ``websockets.broadcast()`` of one
``{"op":"danmaku",...}`` message to every joined connection, then an ``ack`` to the sender.
No per-connection compression (``compression=None``), as for every engine in the comparison.
Prints ``{"event":"listening","port":P}`` on stdout when ready; SIGTERM/SIGINT close and exit 0.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import time
from typing import Any

from websockets.asyncio.server import ServerConnection, broadcast, serve
from websockets.exceptions import ConnectionClosed

SENDER = "bench-sender-0"  # no accounts here: every comment is from one user


def dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"))


class Rooms:
    def __init__(self) -> None:
        self.members: dict[str, set[ServerConnection]] = {}
        self.seqs: dict[str, int] = {}

    def sequence(self, room: str, body: Any) -> dict[str, Any]:
        seq = self.seqs.get(room, 0) + 1
        self.seqs[room] = seq
        return {"op": "danmaku", "room": room, "seq": seq, "id": f"{seq:016x}", "user": SENDER,
                "name": SENDER, "ts": time.time_ns() // 1_000_000, "kind": "danmaku",
                "body": body}


async def handler(ws: ServerConnection, rooms: Rooms) -> None:
    joined: str | None = None
    try:
        async for raw in ws:
            if not isinstance(raw, str):
                continue
            try:
                msg = json.loads(raw)
            except ValueError:
                continue
            op = msg.get("op")
            if op == "join" and isinstance(msg.get("room"), str):
                if joined is not None:
                    rooms.members[joined].discard(ws)
                room: str = msg["room"]
                joined = room
                rooms.members.setdefault(room, set()).add(ws)
                await ws.send(dumps({"op": "joined", "room": room, "seq": rooms.seqs.get(room, 0)}))
            elif op == "send" and joined is not None and msg.get("room") == joined:
                m = rooms.sequence(joined, msg.get("body"))
                broadcast(rooms.members[joined], dumps(m))
                await ws.send(dumps({"op": "ack", "room": joined, "cmid": msg.get("cmid"),
                                          "seq": m["seq"], "ts": m["ts"]}))
    except ConnectionClosed:
        pass
    finally:
        if joined is not None:
            rooms.members[joined].discard(ws)


async def main_async(args: argparse.Namespace) -> None:
    rooms = Rooms()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    ping_s = args.heartbeat_ms / 1000 if args.heartbeat_ms > 0 else None
    async with serve(
        lambda ws: handler(ws, rooms), "127.0.0.1", args.port, compression=None,
        ping_interval=ping_s, ping_timeout=ping_s, max_queue=4096, backlog=4096,
    ) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        print(json.dumps({"event": "listening", "port": port}), flush=True)
        await stop.wait()
        server.close(close_connections=False)  # exit promptly; the clients are gone or going


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=9003)
    parser.add_argument("--heartbeat-ms", type=int, default=20000,
                        help="server ping interval and timeout (websockets' default 20 s; 0: off)")
    asyncio.run(main_async(parser.parse_args(argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
