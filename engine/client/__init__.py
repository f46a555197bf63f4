"""The danmaku client SDK (trio): a reconnecting WebSocket client with ordered, exactly-once
delivery per room, and resends of unacked messages under their original cmid.

Layers: `reorder` (sans-IO: per-room ordering, dedupe and hole detection; the table of unacked
sends) and `events` / `errors` (plain types) know nothing of trio or sockets; `DanmakuClient`
(`_session`, `_connection`, `_dispatch`) does the I/O. The SDK only speaks the wire contract
(`PROTOCOL.md`) and imports nothing of the engine but its codec, `engine.protocol`.

    async with DanmakuClient("ws://127.0.0.1:8080/ws", token=token) as client:
        await client.join("room1")
        ack = await client.send("room1", "hello")
        async for event in client.events():
            if isinstance(event, Message):
                print(event.seq, event.name, event.body["text"])
"""

from engine.protocol import Since as Since

from ._session import DanmakuClient as DanmakuClient
from ._state import ClientConfig as ClientConfig
from ._state import ClientStats as ClientStats
from .errors import ClientClosed as ClientClosed
from .errors import ClientError as ClientError
from .errors import ConnectError as ConnectError
from .errors import JoinRefused as JoinRefused
from .errors import JoinTimeout as JoinTimeout
from .errors import Kicked as Kicked
from .errors import Nacked as Nacked
from .errors import ProtocolViolation as ProtocolViolation
from .errors import SendTimeout as SendTimeout
from .errors import Unauthorized as Unauthorized
from .events import Ack as Ack
from .events import Disconnected as Disconnected
from .events import Event as Event
from .events import Joined as Joined
from .events import Message as Message
from .events import Reconnected as Reconnected
from .events import Reset as Reset
from .events import ServerError as ServerError
from .events import Skipped as Skipped
from .reorder import FeedResult as FeedResult
from .reorder import Nack as Nack
from .reorder import PendingSend as PendingSend
from .reorder import PendingSends as PendingSends
from .reorder import RoomStream as RoomStream

__all__ = [
    "Ack",
    "ClientClosed",
    "ClientConfig",
    "ClientError",
    "ClientStats",
    "ConnectError",
    "DanmakuClient",
    "Disconnected",
    "Event",
    "FeedResult",
    "JoinRefused",
    "JoinTimeout",
    "Joined",
    "Kicked",
    "Message",
    "Nack",
    "Nacked",
    "PendingSend",
    "PendingSends",
    "ProtocolViolation",
    "Reconnected",
    "Reset",
    "RoomStream",
    "SendTimeout",
    "ServerError",
    "Since",
    "Skipped",
    "Unauthorized",
]
