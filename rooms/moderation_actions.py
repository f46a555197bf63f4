"""Moderator, streamer and admin actions on a room: who may do what, the Redis writes, the audit.

Both doors use this module, so the rules are the same whichever way an action comes in: the
WebSocket op ``mod`` (``engine.gateway.moderation_ops``) and the admin HTTP API
(``engine.gateway.admin_api``). The enforcement side is ``rooms.moderation`` (in the worker).

Who may do what (the actor's *effective role in the room*, see ``effective_role``):

==========================================  ==========  ========================================
action                                      least role  what it does
==========================================  ==========  ========================================
mute / unmute (``duration_s``, default 600)  moderator   sends answered ``muted`` until the end
ban / unban (``duration_s`` optional)        moderator   sends answered ``banned``
shadowban / unshadowban                      moderator   sends sequenced, shown to the sender only
kick                                         moderator   the user's connections in the room: 4003
allow / disallow                             moderator   the room's allow list
words_add / words_remove / words_set         moderator   the room's word filter
config (see ``CONFIG_KEYS``)                 moderator   slow mode, allow-only, duplicates, filter;
                                                        the rate settings need a streamer
get_config                                   moderator   the room's settings and list sizes
add_mod / remove_mod                         streamer    appointed moderators of the room
==========================================  ==========  ========================================

A moderator cannot sanction or kick an appointed moderator (a streamer or admin can), and nobody
sanctions themselves. Every action that changes something is written to the audit log (a Redis
stream per shard, ``danmaku:audit``; ``{r:<room>}:audit`` under Redis Cluster) in the same round
trip as the change, with the actor, its effective role, the target and the door it came through.
The archiver copies the log into the archive's ``audit`` table (``engine.archive.sinks``) and
leaves the stream as it is: ``read_audit`` answers from its newest entries.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import orjson

from engine import keys
from engine.protocol import Mod
from engine.redis import Script, ShardSet
from engine.tokens import Identity
from rooms.keyword_filter import fold
from rooms.moderation import (
    FILTER_MODES,
    ROLE_RANK,
    allow_key,
    config_key,
    mods_key,
    sanctions_key,
    words_key,
)

SANCTION: Final = Script.from_file(Path(__file__).with_name("sanction.lua"))
AUDIT_MAXLEN: Final = 100_000
GLOBAL_AUDIT_KEY: Final = keys.AUDIT_STREAM
MAX_ROOM_WORDS: Final = 20_000
DEFAULT_MUTE_S: Final = 600
RANK_NAMES: Final = {0: "viewer", 1: "moderator", 2: "streamer", 3: "admin"}

Kicker = Callable[[str, str | None, str], Awaitable[int]]


class ModerationError(Exception):
    """An action refused: ``code`` is a protocol error code (unauthorized, bad_request)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class _Spec:
    min_rank: int
    needs_user: bool = False
    sanction: str = ""  # ban | mute | shadow: sets it; with lift=True removes it
    lift: bool = False
    targets_user: bool = False  # subject to "a moderator cannot act on a moderator"


ACTIONS: Final[Mapping[str, _Spec]] = {
    "mute": _Spec(1, True, "mute", targets_user=True),
    "unmute": _Spec(1, True, "mute", lift=True),
    "ban": _Spec(1, True, "ban", targets_user=True),
    "unban": _Spec(1, True, "ban", lift=True),
    "shadowban": _Spec(1, True, "shadow", targets_user=True),
    "unshadowban": _Spec(1, True, "shadow", lift=True),
    "kick": _Spec(1, True, targets_user=True),
    "allow": _Spec(1, True),
    "disallow": _Spec(1, True),
    "words_add": _Spec(1),
    "words_remove": _Spec(1),
    "words_set": _Spec(1),
    "config": _Spec(1),
    "get_config": _Spec(1),
    "add_mod": _Spec(2, True),
    "remove_mod": _Spec(2, True),
}


@dataclass(frozen=True, slots=True)
class _Setting:
    field: str  # in the room's config hash
    kind: type  # int, bool or str
    lo: int = 0
    hi: int = 0
    scale: int = 1  # wire value x scale = stored value (seconds -> ms)
    min_rank: int = 1


#: The room settings the ``config`` action takes (wire name -> how it is stored).
CONFIG_KEYS: Final[Mapping[str, _Setting]] = {
    "slow_s": _Setting("slow_ms", int, 0, 86_400, 1000),
    "dup_window_s": _Setting("dup_ms", int, 0, 3_600, 1000),
    "allow_only": _Setting("allow_only", bool),
    "filter": _Setting("filter", str),
    "user_rate_per_s": _Setting("urate", int, 0, 1_000, min_rank=2),
    "user_burst": _Setting("uburst", int, 0, 10_000, min_rank=2),
    "room_rate_per_s": _Setting("rrate", int, 0, 1_000_000, min_rank=2),
    "room_burst": _Setting("rburst", int, 0, 10_000_000, min_rank=2),
}


def audit_key(room: str | None, *, cluster: bool) -> str:
    """The audit stream of ``room`` (``keys.audit_stream``; the archiver drains it too)."""
    return keys.audit_stream(room, cluster=cluster)


def audit_fields(
    *, actor: Identity, role: str, room: str | None, action: str, target: str | None,
    via: str, duration_s: int | None = None, reason: str | None = None,
    detail: Mapping[str, object] | None = None,
) -> list[str]:
    """The audit entry as XADD field/value pairs (never a password or a hash: only ids)."""
    fields = [
        "ts", str(int(time.time() * 1000)), "actor", actor.user, "role", role,
        "room", room or "", "action", action, "target", target or "", "via", via,
    ]
    if duration_s is not None:
        fields += ["duration_s", str(duration_s)]
    if reason:
        fields += ["reason", reason]
    if detail:
        fields += ["detail", orjson.dumps(detail).decode()]
    return fields


async def effective_role(shards: ShardSet, room: str, ident: Identity) -> str:
    """The actor's role in ``room``: the token's (when the token is valid for the room), or
    ``moderator`` when a streamer appointed this user; ``viewer`` otherwise."""
    if ident.guest or not ident.may_enter(room):
        return "viewer"
    if ROLE_RANK.get(ident.role, 0) >= 1:
        return ident.role
    is_mod = await shards.client_for(room).execute("SISMEMBER", mods_key(room), ident.user)
    return "moderator" if is_mod else "viewer"


async def apply_action(
    shards: ShardSet, actor: Identity, mod: Mod, *, via: str, kick: Kicker
) -> dict[str, object]:
    """Run one action for ``actor``; raises ``ModerationError`` when it is refused."""
    spec = ACTIONS.get(mod.action)
    if spec is None:
        raise ModerationError("bad_request", f"unknown action {mod.action!r}")
    if actor.guest:
        raise ModerationError("unauthorized", "guests cannot moderate; log in")
    room = mod.room
    role = await effective_role(shards, room, actor)
    rank = ROLE_RANK.get(role, 0)
    if rank < spec.min_rank:
        raise ModerationError(
            "unauthorized", f"{mod.action} needs the {RANK_NAMES[spec.min_rank]} role in {room}"
        )
    if spec.needs_user and mod.user is None:
        raise ModerationError("bad_request", f"{mod.action} needs a user")
    client = shards.client_for(room)
    target = mod.user
    if spec.targets_user and target is not None:
        if target == actor.user:
            raise ModerationError("bad_request", "you cannot do that to yourself")
        if rank < 2 and await client.execute("SISMEMBER", mods_key(room), target):
            raise ModerationError("unauthorized", "only a streamer can act on a moderator")
    audit = audit_key(room, cluster=shards.cluster)

    def entry(detail: Mapping[str, object] | None = None, duration: int | None = None) -> list[Any]:
        return ["XADD", audit, "MAXLEN", "~", AUDIT_MAXLEN, "*", *audit_fields(
            actor=actor, role=role, room=room, action=mod.action, target=target, via=via,
            duration_s=duration, reason=mod.reason, detail=detail,
        )]

    if spec.sanction:
        assert target is not None
        duration = None if spec.lift else mod.duration_s
        if spec.sanction == "mute" and not spec.lift and duration is None:
            duration = DEFAULT_MUTE_S
        until = -1 if spec.lift else (0 if duration is None else _now_ms() + duration * 1000)
        fields = entry(duration=duration)[6:]
        changed = await client.run_script(
            SANCTION, [sanctions_key(room, target), audit],
            [spec.sanction, until, AUDIT_MAXLEN, *fields],
        )
        return {"user": target, "until_ms": until if until > 0 else None,
                "permanent": until == 0, "changed": bool(changed)}
    if mod.action == "kick":
        assert target is not None
        await client.pipeline([entry()])
        nodes = await kick(target, room, mod.reason or "kicked by a moderator")
        return {"user": target, "gateways": nodes}
    if mod.action in {"allow", "disallow", "add_mod", "remove_mod"}:
        assert target is not None
        key = allow_key(room) if mod.action in {"allow", "disallow"} else mods_key(room)
        op = "SADD" if mod.action in {"allow", "add_mod"} else "SREM"
        changed, _ = await client.pipeline([[op, key, target], entry()])
        return {"user": target, "changed": bool(changed)}
    if mod.action in {"words_add", "words_remove", "words_set"}:
        return await _words(client, room, mod, entry)
    if mod.action == "config":
        return await _config(client, room, mod, rank, entry)
    return await room_settings(client, room)  # get_config


async def _words(
    client: Any, room: str, mod: Mod, entry: Callable[..., list[Any]]
) -> dict[str, object]:
    if mod.words is None:
        raise ModerationError("bad_request", f"{mod.action} needs words")
    words = sorted({fold(w.strip()) for w in mod.words} - {""})
    key = words_key(room)
    commands: list[list[Any]] = []
    if mod.action == "words_set":
        commands.append(["DEL", key])
    if words:
        commands.append(["SREM" if mod.action == "words_remove" else "SADD", key, *words])
    commands += [
        ["HINCRBY", config_key(room), "wv", 1],  # the workers rebuild their matcher
        ["SCARD", key],
        entry({"words": len(words)}),
    ]
    if mod.action != "words_remove":
        size = await client.execute("SCARD", key)
        if (0 if mod.action == "words_set" else int(size)) + len(words) > MAX_ROOM_WORDS:
            raise ModerationError("bad_request", f"a room holds at most {MAX_ROOM_WORDS} words")
    results = await client.pipeline(commands)
    return {"words": int(results[-2])}


async def _config(
    client: Any, room: str, mod: Mod, rank: int, entry: Callable[..., list[Any]]
) -> dict[str, object]:
    if not mod.config:
        raise ModerationError("bad_request", "config needs at least one setting")
    sets: list[Any] = []
    dels: list[str] = []
    bump = False
    for name, value in mod.config:
        setting = CONFIG_KEYS.get(name)
        if setting is None:
            raise ModerationError("bad_request", f"unknown setting {name!r}")
        if rank < setting.min_rank:
            raise ModerationError("unauthorized", f"{name} needs the streamer role")
        if setting.kind is bool:
            if type(value) is not bool:
                raise ModerationError("bad_request", f"{name} must be true or false")
            if value:
                sets += [setting.field, "1"]
            else:
                dels.append(setting.field)
        elif setting.kind is int:
            if type(value) is not int or not setting.lo <= value <= setting.hi:
                raise ModerationError(
                    "bad_request", f"{name} must be an integer in [{setting.lo}, {setting.hi}]"
                )
            if value:
                sets += [setting.field, value * setting.scale]
            else:
                dels.append(setting.field)
        else:
            if value not in FILTER_MODES:
                raise ModerationError("bad_request", f"{name} must be one of off, deny, mask")
            sets += [setting.field, value]
            bump = True
    commands: list[list[Any]] = []
    if sets:
        commands.append(["HSET", config_key(room), *sets])
    if dels:
        commands.append(["HDEL", config_key(room), *dels])
    if bump or any(name == "dup_window_s" for name, _v in mod.config):
        commands.append(["HINCRBY", config_key(room), "wv", 1])  # the workers' cached view
    commands.append(entry({k: v for k, v in mod.config}))
    await client.pipeline(commands)
    return await room_settings(client, room)


async def room_settings(client: Any, room: str) -> dict[str, object]:
    """The room's moderation settings in wire names, and the sizes of its lists."""
    flat, words, allow, mods = await client.pipeline(
        [["HGETALL", config_key(room)], ["SCARD", words_key(room)],
         ["SCARD", allow_key(room)], ["SMEMBERS", mods_key(room)]]
    )
    stored = {flat[i].decode(): flat[i + 1].decode() for i in range(0, len(flat), 2)}
    config: dict[str, object] = {}
    for name, setting in CONFIG_KEYS.items():
        raw = stored.get(setting.field)
        if setting.kind is bool:
            config[name] = raw == "1"
        elif setting.kind is int:
            config[name] = int(raw) // setting.scale if raw else 0
        else:
            config[name] = raw or "off"
    return {
        "config": config, "words": int(words), "allow_list": int(allow),
        "moderators": sorted(m.decode() for m in mods),
    }


async def read_audit(
    shards: ShardSet, *, room: str | None, count: int
) -> list[dict[str, str]]:
    """The newest audit entries (of one room, or of every shard), newest first."""
    clients: Sequence[Any] = [shards.client_for(room)] if room is not None else shards.shards
    out: list[tuple[bytes, dict[str, str]]] = []
    for client in clients:
        key = audit_key(room, cluster=shards.cluster)
        scan = count if room is None else count * 20  # one shard's stream holds many rooms
        for entry_id, fields in await client.execute("XREVRANGE", key, "+", "-", "COUNT", scan):
            item = {fields[i].decode(): fields[i + 1].decode() for i in range(0, len(fields), 2)}
            if room is None or item.get("room") == room:
                item["id"] = entry_id.decode()
                out.append((entry_id, item))
    out.sort(key=lambda e: tuple(int(x) for x in e[0].split(b"-")), reverse=True)
    return [item for _id, item in out[:count]]


def _now_ms() -> int:
    return int(time.time() * 1000)
