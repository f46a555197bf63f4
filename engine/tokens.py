"""HS256 tokens: minting (CLI, tests) and verification (gateway)."""

from __future__ import annotations

import time
from dataclasses import dataclass

import jwt

from engine.errors import TokenError

ROLES = ("viewer", "moderator", "streamer", "admin")


@dataclass(frozen=True, slots=True)
class Identity:
    user: str
    name: str
    role: str = "viewer"
    rooms: tuple[str, ...] | None = None
    guest: bool = False

    def may_enter(self, room: str) -> bool:
        return self.rooms is None or room in self.rooms


def mint_token(
    secret: str,
    *,
    user: str,
    name: str | None = None,
    role: str = "viewer",
    ttl_s: int = 86_400,
    rooms: list[str] | None = None,
    now: float | None = None,
) -> str:
    if role not in ROLES:
        raise TokenError(f"unknown role {role!r}; one of {', '.join(ROLES)}")
    issued = int(time.time() if now is None else now)
    claims: dict[str, object] = {
        "sub": user,
        "name": name or user,
        "role": role,
        "iat": issued,
        "exp": issued + ttl_s,
    }
    if rooms is not None:
        claims["rooms"] = rooms
    return jwt.encode(claims, secret, algorithm="HS256")


def verify_token(secret: str, token: str) -> Identity:
    try:
        claims = jwt.decode(
            token, secret, algorithms=["HS256"], options={"require": ["sub", "exp"]}
        )
    except jwt.ExpiredSignatureError:
        raise TokenError("token expired") from None
    except jwt.PyJWTError as exc:
        raise TokenError(f"invalid token: {exc}") from None
    sub = claims.get("sub")
    if not isinstance(sub, str) or not 0 < len(sub) <= 64:
        raise TokenError("invalid token: bad sub")
    role = claims.get("role", "viewer")
    if role not in ROLES:
        raise TokenError("invalid token: bad role")
    name = claims.get("name", sub)
    if not isinstance(name, str):
        name = sub
    rooms = claims.get("rooms")
    room_tuple: tuple[str, ...] | None = None
    if rooms is not None:
        if not isinstance(rooms, list) or not all(isinstance(r, str) for r in rooms):
            raise TokenError("invalid token: bad rooms")
        room_tuple = tuple(rooms)
    return Identity(user=sub, name=name[:32], role=role, rooms=room_tuple)
