"""Redis key and channel names, in one place.

Every key of a room carries the hash tag ``{r:<room>}`` so that, under Redis Cluster, all of a
room's keys live in one slot and the sequencing Lua step stays atomic. With a plain list of shard
URLs the same names are used and the room's shard is chosen by ``ShardSet``.
"""

from __future__ import annotations


def room_tag(room: str) -> str:
    return "{r:" + room + "}"


def seq_key(room: str) -> str:
    return room_tag(room) + ":seq"


def epoch_key(room: str) -> str:
    return room_tag(room) + ":epoch"


def stream_key(room: str) -> str:
    return room_tag(room) + ":stream"


def dedupe_key(room: str, user: str, cmid: str) -> str:
    return f"{room_tag(room)}:dd:{len(user)}:{user}:{cmid}"


def online_key(room: str) -> str:
    return room_tag(room) + ":online"


def room_channel(room: str) -> str:
    return "danmaku:room:" + room


def archive_stream(room: str, *, cluster: bool) -> str:
    """The shard's archive stream; under Cluster it must share the room's slot."""
    return room_tag(room) + ":arch" if cluster else "danmaku:arch"


def ingress_stream(partition: int) -> str:
    return "{in:" + str(partition) + "}"


def gateway_channel(node: str) -> str:
    return "danmaku:gw:" + node


NODES_KEY = "danmaku:nodes"
ROOMS_KEY = "danmaku:rooms"
WORKER_GROUP = "rooms"
