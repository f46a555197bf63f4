"""The comment sender for the peer servers (loadtest/compare_peers.py): ``sender.py`` itself.

    python loadtest/peer_sender.py --proto sio --url ws://127.0.0.1:9002 --rate 200 \
        --duration 30 [sender.py options]

``--proto ws`` (``peers/ws_server.js``, ``peers/websockets_server.py``) needs nothing: those
peers answer the danmaku ops sender.py speaks (``join`` -> ``joined``, ``send`` -> ``ack`` with
the cmid) and ignore ``hello``. ``--proto sio`` (``peers/socketio_server.js``) wraps the
trio-websocket connection so sender.py's ops travel as Socket.IO events: ``join`` ->
``42["join",room]``, ``send`` -> ``42["send",{...}]``; ``42["<event>",{...}]`` comes back as
``{"op":"<event>",...}``; Engine.IO pings are answered. Same schedule, payloads (40-character
``t=<unix us>`` texts), acks and JSON result as against the engine. ``--secret`` defaults to a
dummy value: the peers have no tokens.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import urlsplit

import orjson
import sender
from trio_websocket import DisconnectionTimeout, WebSocketConnection, open_websocket_url

SIO_PATH = "/socket.io/?EIO=4&transport=websocket"
DISCONNECT_S = 2.0


class SocketIOConnection:
    """The part of trio-websocket's connection sender.py uses, over Socket.IO 4 packets."""

    def __init__(self, ws: WebSocketConnection) -> None:
        self._ws = ws

    async def connect(self) -> None:
        """Engine.IO open packet ``0{...}``, then connect to namespace "/" (``40``)."""
        while not str(await self._ws.get_message()).startswith("0"):
            pass
        await self._ws.send_message("40")
        while not str(await self._ws.get_message()).startswith("40"):
            pass

    async def send_message(self, message: str | bytes) -> None:
        obj = orjson.loads(message)
        op = obj.pop("op")
        if op == "hello":
            return
        payload = [op, obj["room"]] if op == "join" else [op, obj]
        await self._ws.send_message("42" + orjson.dumps(payload).decode())

    async def get_message(self) -> str:
        while True:
            packet = await self._ws.get_message()
            if packet == "2":  # Engine.IO ping
                await self._ws.send_message("3")
            elif isinstance(packet, str) and packet.startswith("42["):
                event, data = orjson.loads(packet[2:])[:2]
                return orjson.dumps({"op": event, **data}).decode()


@asynccontextmanager
async def open_peer_url(url: str, message_queue_size: int) -> AsyncIterator[WebSocketConnection]:
    """trio-websocket's connection, waiting at most DISCONNECT_S for the server's close frame:
    a peer that cannot keep up reads our close only after its backlog of comments (minutes),
    and sender.py's result is known by then."""
    with contextlib.suppress(DisconnectionTimeout):
        async with open_websocket_url(url, message_queue_size=message_queue_size,
                                      disconnect_timeout=DISCONNECT_S) as ws:
            yield ws


@asynccontextmanager
async def open_socketio_url(url: str, message_queue_size: int) -> AsyncIterator[SocketIOConnection]:
    base = urlsplit(url)  # whatever path it has, Socket.IO's is /socket.io/
    async with open_peer_url(f"{base.scheme}://{base.netloc}{SIO_PATH}",
                             message_queue_size) as ws:
        conn = SocketIOConnection(ws)
        await conn.connect()
        yield conn


def main(argv: list[str]) -> int:
    proto = "ws"
    if "--proto" in argv:
        at = argv.index("--proto")
        proto = argv[at + 1]
        argv = argv[:at] + argv[at + 2:]
    if proto not in {"ws", "sio"}:
        raise SystemExit("--proto is ws or sio")
    if "--secret" not in argv:
        argv = [*argv, "--secret", "peers-have-no-tokens"]
    # sender.py opens its connections through this module attribute. The Socket.IO wrapper
    # offers the same send_message/get_message and raises the same ConnectionClosed.
    opener = open_socketio_url if proto == "sio" else open_peer_url
    sender.open_websocket_url = opener  # type: ignore[attr-defined,assignment]
    return sender.main(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
