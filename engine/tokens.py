"""HS256 tokens: minting (CLI, tests, login) and verification (gateway).

Key rotation: a ``KeyRing`` holds several active keys, each with a key id (``kid`` in the JWT
header), plus optionally the legacy single secret that signs tokens without a ``kid``. Tokens are
signed with the ring's first key; every key of the ring verifies. To rotate: put the new key
first (``DANMAKU_SECRETS=new:...,old:...``), keep the old one for the longest token lifetime,
then drop it. A token naming an unknown ``kid`` is refused; so is one without ``kid`` when the
ring has no legacy secret. Only HS256 is accepted (``alg: none`` and others are refused).

Revocation is per user: ``Identity.issued_ms`` (the ``iat_ms`` claim, or ``iat`` in ms) is
compared with the user's "tokens issued before T are invalid" record (``engine.accounts``).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
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
    issued_ms: int = 0  # when the token was minted (ms); 0 = unknown (treated as very old)

    def may_enter(self, room: str) -> bool:
        return self.rooms is None or room in self.rooms


@dataclass(frozen=True, slots=True)
class KeyRing:
    """The active HS256 keys: ``keys`` by kid (the first signs) and the legacy kid-less secret."""

    keys: Mapping[str, str]
    legacy: str = ""

    def __post_init__(self) -> None:
        if not self.keys and not self.legacy:
            raise TokenError("a key ring needs at least one key")
        for kid, key in self.keys.items():
            if not kid or not key:
                raise TokenError("every key of a key ring needs a kid and a secret")

    @classmethod
    def parse(cls, spec: str, legacy: str = "") -> KeyRing:
        """From ``"kid1:secret1,kid2:secret2"`` (DANMAKU_SECRETS) and the legacy secret."""
        keys: dict[str, str] = {}
        for part in spec.split(","):
            part = part.strip()
            if not part:
                continue
            kid, sep, key = part.partition(":")
            if not sep or not kid.strip() or not key.strip():
                raise TokenError("DANMAKU_SECRETS must be kid:secret pairs separated by commas")
            keys[kid.strip()] = key.strip()
        return cls(keys, legacy)

    def signing(self) -> tuple[str, str | None]:
        """The key that signs new tokens and its kid (None: the legacy secret)."""
        for kid, key in self.keys.items():
            return key, kid
        return self.legacy, None

    def key_for(self, kid: object) -> str:
        if kid is None:
            if not self.legacy:
                raise TokenError("invalid token: no key id")
            return self.legacy
        if not isinstance(kid, str) or kid not in self.keys:
            raise TokenError("invalid token: unknown key id")
        return self.keys[kid]


Secret = str | KeyRing


def mint_token(
    secret: Secret,
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
    at = time.time() if now is None else now
    issued = int(at)
    claims: dict[str, object] = {
        "sub": user,
        "name": name or user,
        "role": role,
        "iat": issued,
        "iat_ms": int(at * 1000),
        "exp": issued + ttl_s,
    }
    if rooms is not None:
        claims["rooms"] = rooms
    if isinstance(secret, KeyRing):
        key, kid = secret.signing()
        headers = {"kid": kid} if kid is not None else None
        return jwt.encode(claims, key, algorithm="HS256", headers=headers)
    return jwt.encode(claims, secret, algorithm="HS256")


def verify_token(secret: Secret, token: str) -> Identity:
    try:
        if isinstance(secret, KeyRing):
            secret = secret.key_for(jwt.get_unverified_header(token).get("kid"))
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
    issued_ms = claims.get("iat_ms")
    if type(issued_ms) is not int:
        iat = claims.get("iat")
        issued_ms = iat * 1000 if type(iat) is int else 0
    return Identity(user=sub, name=name[:32], role=role, rooms=room_tuple, issued_ms=issued_ms)
