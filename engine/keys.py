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


# ---- the streams the archiver drains (engine/archive/archiver.py) ------------------------------
# With a list of shards each shard has one stream of each kind (the name below); under Redis
# Cluster each room has its own, in the room's slot (``{r:<room>}`` + the suffix), and the
# archiver finds them by their suffix.
ARCHIVE_SUFFIX = ":arch"
ARCHIVE_STREAM = "danmaku" + ARCHIVE_SUFFIX
MODERATION_SUFFIX = ":modout"
MODERATION_STREAM = "danmaku" + MODERATION_SUFFIX
AUDIT_SUFFIX = ":audit"
AUDIT_STREAM = "danmaku" + AUDIT_SUFFIX


def archive_stream(room: str, *, cluster: bool) -> str:
    """Sequenced messages (the sequencing Lua step's XADD), for the ``messages`` table."""
    return room_tag(room) + ARCHIVE_SUFFIX if cluster else ARCHIVE_STREAM


def moderation_stream(room: str, *, cluster: bool) -> str:
    """Messages refused by the moderation step (the worker's XADD), for ``moderation``."""
    return room_tag(room) + MODERATION_SUFFIX if cluster else MODERATION_STREAM


def audit_stream(room: str | None, *, cluster: bool) -> str:
    """Moderator and admin actions (the audit log), for the ``audit`` table. Actions on no room
    (revoke, a global kick) go to ``AUDIT_STREAM`` (on the first shard, or its own slot)."""
    return room_tag(room) + AUDIT_SUFFIX if room is not None and cluster else AUDIT_STREAM


def ingress_stream(partition: int) -> str:
    return "{in:" + str(partition) + "}"


def gateway_channel(node: str) -> str:
    return "danmaku:gw:" + node


NODES_KEY = "danmaku:nodes"
ROOMS_KEY = "danmaku:rooms"
WORKER_GROUP = "rooms"
