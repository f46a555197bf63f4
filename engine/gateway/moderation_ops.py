"""The gateway's side of moderation: the ``mod`` op, kicks, and revoked tokens at ``hello``.

The rules themselves (who may do what, what is written) live in ``rooms.moderation_actions``;
this module only carries a session's ``mod`` frame there and the answer back, closes the
connections a kick names, and asks ``engine.accounts`` whether a token was revoked.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from engine import protocol as p
from engine.accounts import is_revoked, kick_user
from engine.ingress import decode_control
from engine.redis import RedisError
from engine.tokens import Identity
from rooms.moderation_actions import ModerationError, apply_action

if TYPE_CHECKING:
    from engine.gateway.app import Gateway
    from engine.gateway.ws_session import Session

log = logging.getLogger("danmaku.moderation")


async def handle_mod(session: Session, event: p.Mod) -> None:
    """Answer a ``mod`` op with ``mod_result``, or an ``error`` naming the room and action."""
    ident = session.identity
    assert ident is not None
    gw = session.gw

    async def kick(user: str, room: str | None, reason: str) -> int:
        return await kick_user(gw.shards, user, room, reason)

    extra: dict[str, object] = {"room": event.room, "action": event.action}
    if event.ref is not None:
        extra["ref"] = event.ref
    try:
        result = await apply_action(gw.shards, ident, event, via="ws", kick=kick)
    except ModerationError as exc:
        gw.metrics.errors.labels(code=exc.code).inc()
        session.send(p.encode_error(exc.code, exc.message, **extra))
        return
    except RedisError as exc:
        log.warning("mod %s in %s failed: %s", event.action, event.room, exc)
        session.send(p.encode_error(p.ERR_INTERNAL, "moderation backend unavailable", **extra))
        return
    log.info("mod %s in %s by %s on %s", event.action, event.room, ident.user, event.user)
    session.send(p.encode_mod_result(event.room, event.action, event.ref, result))


def handle_control(gw: Gateway, payload: bytes) -> None:
    """A control message on the reply channel: close the kicked user's connections (4003)."""
    kick = decode_control(payload)
    if kick is None:
        return
    user, room, reason = kick
    for session in list(gw.sessions.values()):
        ident = session.identity
        if ident is None or ident.user != user:
            continue
        if room is not None and room not in session.rooms:
            continue
        log.info("kicking %s (session %s): %s", user, session.id, reason)
        session.conn.start_close(p.CLOSE_KICKED, f"kicked: {reason}"[:40])


async def token_revoked(gw: Gateway, ident: Identity) -> bool:
    """Whether ``ident``'s token was revoked; a Redis outage does not lock everyone out."""
    try:
        return await is_revoked(gw.shards, ident)
    except RedisError as exc:
        log.warning("revocation check for %s failed: %s", ident.user, exc)
        return False
