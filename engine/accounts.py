"""Accounts, logins, token revocation and kicks: the lifecycle of an identity.

Accounts are for deployments without their own identity system. Each lives in the hash
``danmaku:acct:<name>`` (on the shard its name hashes to): ``hash`` (argon2id, salted, memory-
hard; the password itself is never stored), ``role``, ``display``, ``rooms``, ``disabled``,
``created_ms``, ``updated_ms``. The hash never leaves this module: it is not logged, not returned
by any API, not printed by the CLI.

Logins (``AccountStore.login``):
- constant work whatever the name: an unknown (or disabled) name is verified against a dummy
  hash made with the same parameters, and every failure answers the same "invalid name or
  password";
- lock-out with backoff, in Redis so that every gateway sees it: after ``max_failures`` failures
  for one (name, client IP) within 15 minutes, or ten times that many for the name from anywhere,
  the name is locked for ``lockout_s``, doubling with each further failure up to
  ``max_lockout_s``; a locked login answers 429 with ``Retry-After`` before any hashing;
- hashing runs in worker threads (argon2-cffi releases the GIL), at most two at once, so a login
  storm cannot starve the event loop, and a queue over 64 logins answers 503 at once.

Revocation: ``danmaku:revoked:<user>`` holds a time T (ms); tokens of that user issued at or
before T are refused at ``hello`` and on HTTP sends (``is_revoked``). ``revoke_user`` writes it
and kicks the user's live connections everywhere: the session registry (``danmaku:sess:<user>``)
names the gateways holding them, and each gets a kick on its reply channel (close 4003).
Changing a password or disabling an account revokes the user's tokens too.
"""

from __future__ import annotations

import argparse
import getpass
import logging
import re
import secrets
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import trio
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from engine import keys
from engine.errors import DanmakuError
from engine.gateway.registry import session_key
from engine.ingress import encode_kick
from engine.redis import ShardSet
from engine.tokens import ROLES, Identity

log = logging.getLogger("danmaku.accounts")

NAME_RE: Final = re.compile(r"[a-z0-9_.-]{1,32}")
MIN_PASSWORD_CHARS: Final = 8
MAX_PASSWORD_CHARS: Final = 1024
FAILURE_WINDOW_MS: Final = 15 * 60 * 1000
_HASH_THREADS: Final = trio.CapacityLimiter(2)
_MAX_WAITING: Final = 64


class AccountError(DanmakuError):
    """A refused account operation or login; ``status`` is the HTTP status to answer."""

    def __init__(
        self, status: int, code: str, message: str, retry_after_ms: int | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.retry_after_ms = retry_after_ms


def account_key(name: str) -> str:
    return "danmaku:acct:" + name


def revoked_key(user: str) -> str:
    return "danmaku:revoked:" + user


def _failure_keys(name: str, peer: str) -> tuple[str, str, str]:
    tag = "{login:" + name + "}"  # one shard (and one Cluster slot) for both counters
    return tag, tag + ":f", f"{tag}:f:{peer}"


def normalize_name(name: str) -> str:
    folded = name.strip().lower()
    if NAME_RE.fullmatch(folded) is None:
        raise AccountError(400, "bad_request", "names are 1-32 characters of [a-z0-9_.-]")
    return folded


def _check_password(password: str) -> None:
    if not MIN_PASSWORD_CHARS <= len(password) <= MAX_PASSWORD_CHARS:
        raise AccountError(
            400, "bad_request",
            f"passwords are {MIN_PASSWORD_CHARS}-{MAX_PASSWORD_CHARS} characters",
        )


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@dataclass(frozen=True, slots=True)
class Account:
    name: str
    display: str
    role: str
    rooms: tuple[str, ...] | None
    disabled: bool


class AccountStore:
    """Accounts in Redis; see the module docstring for the guarantees."""

    def __init__(
        self,
        shards: ShardSet,
        *,
        hasher: PasswordHasher | None = None,
        max_failures: int = 5,
        lockout_s: int = 30,
        max_lockout_s: int = 900,
    ) -> None:
        self._shards = shards
        self._ph = hasher or PasswordHasher()  # argon2id, RFC 9106 low-memory profile
        self._max_failures = max_failures
        self._lockout_ms = lockout_s * 1000
        self._max_lockout_ms = max_lockout_s * 1000
        self._dummy: str | None = None

    def _client(self, key: str) -> Any:
        return self._shards.client_for(key)

    async def _hash(self, password: str) -> str:
        return await trio.to_thread.run_sync(self._ph.hash, password, limiter=_HASH_THREADS)

    async def _verify(self, stored: str, password: str) -> bool:
        def verify() -> bool:
            try:
                return self._ph.verify(stored, password)
            except (VerifyMismatchError, VerificationError, InvalidHashError):
                return False

        if _HASH_THREADS.statistics().tasks_waiting >= _MAX_WAITING:
            raise AccountError(503, "internal", "too many logins at once; retry shortly", 1000)
        return await trio.to_thread.run_sync(verify, limiter=_HASH_THREADS)

    # ---- administration (the CLI) ----------------------------------------------------------
    async def add(
        self, name: str, password: str, *, role: str = "viewer", display: str | None = None,
        rooms: list[str] | None = None,
    ) -> Account:
        name = normalize_name(name)
        _check_password(password)
        if role not in ROLES:
            raise AccountError(400, "bad_request", f"role must be one of {', '.join(ROLES)}")
        digest = await self._hash(password)
        now = str(int(time.time() * 1000))
        fields = [
            "hash", digest, "role", role, "display", (display or name)[:32],
            "rooms", ",".join(rooms or []), "disabled", "0", "created_ms", now, "updated_ms", now,
        ]
        created = await self._client(account_key(name)).execute(
            "HSETNX", account_key(name), "created_ms", now
        )
        if not created:
            raise AccountError(409, "bad_request", f"user {name} already exists")
        await self._client(account_key(name)).execute("HSET", account_key(name), *fields)
        return Account(name, (display or name)[:32], role, tuple(rooms) if rooms else None, False)

    async def get(self, name: str) -> Account | None:
        name = normalize_name(name)
        flat = await self._client(account_key(name)).execute(
            "HMGET", account_key(name), "role", "display", "rooms", "disabled", "hash"
        )
        if flat[4] is None:
            return None
        rooms = _s(flat[2]) if flat[2] else ""
        return Account(
            name, _s(flat[1] or name), _s(flat[0] or "viewer"),
            tuple(rooms.split(",")) if rooms else None, _s(flat[3] or "0") == "1",
        )

    async def set_password(self, name: str, password: str) -> None:
        name = normalize_name(name)
        _check_password(password)
        if await self.get(name) is None:
            raise AccountError(404, "bad_request", f"no user {name}")
        digest = await self._hash(password)
        await self._client(account_key(name)).execute(
            "HSET", account_key(name), "hash", digest, "updated_ms", str(int(time.time() * 1000))
        )
        await revoke_user(self._shards, name, reason="password changed")

    async def set_disabled(self, name: str, disabled: bool) -> None:
        name = normalize_name(name)
        if await self.get(name) is None:
            raise AccountError(404, "bad_request", f"no user {name}")
        await self._client(account_key(name)).execute(
            "HSET", account_key(name), "disabled", "1" if disabled else "0"
        )
        if disabled:
            await revoke_user(self._shards, name, reason="account disabled")

    # ---- login -----------------------------------------------------------------------------
    async def login(self, name: str, password: str, *, peer: str = "") -> Account:
        """The account for a correct name and password; raises ``AccountError`` otherwise."""
        try:
            name = normalize_name(name)
        except AccountError:
            name = ""
        if not name or not password or len(password) > MAX_PASSWORD_CHARS:
            raise AccountError(401, "unauthorized", "invalid name or password")
        tag, name_key, pair_key = _failure_keys(name, peer)
        client = self._client(tag)
        n_name, ttl_name, n_pair, ttl_pair = await client.pipeline(
            [["GET", name_key], ["PTTL", name_key], ["GET", pair_key], ["PTTL", pair_key]]
        )
        locked_ms = 0
        if n_pair is not None and int(n_pair) >= self._max_failures:
            locked_ms = max(locked_ms, int(ttl_pair))
        if n_name is not None and int(n_name) >= self._max_failures * 10:
            locked_ms = max(locked_ms, int(ttl_name))
        if locked_ms > 0:
            raise AccountError(429, "rate_limited", "too many failed logins; retry later",
                               locked_ms)
        flat = await self._client(account_key(name)).execute(
            "HMGET", account_key(name), "hash", "role", "display", "rooms", "disabled"
        )
        stored = _s(flat[0]) if flat[0] is not None else await self._dummy_hash()
        ok = await self._verify(stored, password) and flat[0] is not None
        if ok and _s(flat[4] or "0") == "1":
            ok = False
        if not ok:
            await self._record_failure(client, name_key, pair_key)
            log.info("failed login for %r from %s", name, peer or "?")
            raise AccountError(401, "unauthorized", "invalid name or password")
        await client.execute("DEL", pair_key)
        if self._ph.check_needs_rehash(stored):  # parameters were raised since it was made
            digest = await self._hash(password)
            await self._client(account_key(name)).execute(
                "HSET", account_key(name), "hash", digest
            )
        rooms = _s(flat[3]) if flat[3] else ""
        return Account(name, _s(flat[2] or name), _s(flat[1] or "viewer"),
                       tuple(rooms.split(",")) if rooms else None, False)

    async def _record_failure(self, client: Any, name_key: str, pair_key: str) -> None:
        n_name, n_pair = await client.pipeline([["INCR", name_key], ["INCR", pair_key]])
        commands: list[list[Any]] = []
        for key, count, limit in ((name_key, n_name, self._max_failures * 10),
                                  (pair_key, n_pair, self._max_failures)):
            if int(count) >= limit:
                lock = min(self._max_lockout_ms, self._lockout_ms * 2 ** (int(count) - limit))
                commands.append(["PEXPIRE", key, lock])
            elif int(count) == 1:
                commands.append(["PEXPIRE", key, FAILURE_WINDOW_MS])
        if commands:
            await client.pipeline(commands)

    async def _dummy_hash(self) -> str:
        if self._dummy is None:
            self._dummy = await self._hash(secrets.token_urlsafe(16))
        return self._dummy


# ---- revocation and kicks -----------------------------------------------------------------------
async def revoke_user(
    shards: ShardSet, user: str, *, reason: str = "revoked", ttl_s: int = 30 * 86_400
) -> int:
    """Invalidate every token of ``user`` issued until now and kick its live connections.

    Returns how many gateways were told to kick.
    """
    now = int(time.time() * 1000)
    key = revoked_key(user)
    await shards.client_for(key).execute("SET", key, now, "EX", ttl_s)
    return await kick_user(shards, user, None, reason)


async def revoked_since(shards: ShardSet, user: str) -> int:
    """The user's revocation time (ms), 0 when there is none."""
    key = revoked_key(user)
    value = await shards.client_for(key).execute("GET", key)
    return int(value) if value else 0


async def is_revoked(shards: ShardSet, ident: Identity) -> bool:
    """Whether the token behind ``ident`` was issued at or before the user's revocation."""
    if ident.guest:
        return False
    since = await revoked_since(shards, ident.user)
    return since > 0 and ident.issued_ms <= since


async def kick_user(shards: ShardSet, user: str, room: str | None, reason: str) -> int:
    """Ask every gateway holding a session of ``user`` (per the registry) to close it with 4003
    (only its connections in ``room`` when given). Returns how many gateways were asked."""
    key = session_key(user)
    flat = await shards.client_for(key).execute("HGETALL", key)
    nodes = sorted({_s(flat[i + 1]) for i in range(0, len(flat), 2)})
    if nodes:
        payload = encode_kick(user, room, reason)
        await shards.client_for_index(0).pipeline(
            [["PUBLISH", keys.gateway_channel(node), payload] for node in nodes]
        )
    return len(nodes)


# ---- the CLI: danmaku user add/passwd/disable/enable ---------------------------------------------
def add_cli(sub: Any) -> None:
    """Add the ``user`` command to the CLI's subparsers."""
    user = sub.add_parser("user", help="manage login accounts (add, passwd, disable, enable)")
    ops = user.add_subparsers(dest="user_command", required=True, metavar="ACTION")
    add = ops.add_parser("add", help="create an account (asks for the password)")
    add.add_argument("name")
    add.add_argument("--role", default="viewer", choices=ROLES)
    add.add_argument("--display-name", default=None)
    add.add_argument("--room", action="append", default=None, help="limit to a room (repeatable)")
    passwd = ops.add_parser("passwd", help="set a new password (revokes the user's tokens)")
    passwd.add_argument("name")
    for name, text in (("disable", "refuse logins and revoke tokens"), ("enable", "allow again")):
        ops.add_parser(name, help=text).add_argument("name")
    for parser in (add, passwd):
        parser.add_argument("--password-stdin", action="store_true",
                            help="read the password from the first line of stdin")
    for parser in ops.choices.values():
        parser.add_argument("--config", help="TOML config file (also DANMAKU_CONFIG)")
        parser.add_argument("--redis-url", default=None,
                            help="Redis to use (default: the running `danmaku up` of --data-dir, "
                                 "else DANMAKU_REDIS_URLS)")
        parser.add_argument("--data-dir", default=None, help="the engine's data dir (./var)")


def _read_password(args: argparse.Namespace) -> str:
    if args.password_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    first = getpass.getpass("password: ")
    if getpass.getpass("again: ") != first:
        raise AccountError(400, "bad_request", "the passwords differ")
    return first


def run_cli(args: argparse.Namespace) -> int:
    from engine.config import load_settings

    settings = load_settings(config_file=args.config)
    data_dir = Path(args.data_dir or settings.data_dir)
    urls: list[str] = list(settings.redis.urls)
    url_file = data_dir / "redis.url"
    if args.redis_url:
        urls = [args.redis_url]
    elif url_file.exists():
        urls = [url_file.read_text().strip()]
    password = _read_password(args) if args.user_command in {"add", "passwd"} else ""

    async def main() -> None:
        async with ShardSet(urls, cluster=settings.redis.cluster) as shards:
            store = AccountStore(shards)
            if args.user_command == "add":
                account = await store.add(
                    args.name, password, role=args.role, display=args.display_name,
                    rooms=args.room,
                )
                print(f"user {account.name} added (role {account.role})")
            elif args.user_command == "passwd":
                await store.set_password(args.name, password)
                print(f"password of {normalize_name(args.name)} changed; its tokens are revoked")
            else:
                disabled = args.user_command == "disable"
                await store.set_disabled(args.name, disabled)
                print(f"user {normalize_name(args.name)} "
                      f"{'disabled; its tokens are revoked' if disabled else 'enabled'}")

    try:
        trio.run(main)
    except AccountError as exc:
        print(f"danmaku: {exc.message}", file=sys.stderr)
        return 1
    return 0
