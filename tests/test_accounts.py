"""Accounts and logins against real Redis: argon2id hashes, constant work, lock-out, the CLI."""

from __future__ import annotations

import logging
import subprocess
import sys
from typing import Any

import orjson
import pytest
import trio
from argon2 import PasswordHasher

from engine.accounts import AccountError, AccountStore, account_key
from engine.redis import RedisClient, ShardSet
from tests.httpclient import request
from tests.stack import running_stack
from tests.wsclient import connect

pytestmark = pytest.mark.redis

PASSWORD = "correct horse battery staple"
FAST = PasswordHasher(time_cost=1, memory_cost=8 * 1024, parallelism=1)  # argon2id, cheap


async def login(base: str, name: str, password: str) -> tuple[int, dict[str, str], Any]:
    status, headers, body = await request(
        "POST", base + "/v1/login", json={"name": name, "password": password}
    )
    return status, headers, orjson.loads(body)


async def everything_in(redis_url: str) -> bytes:
    """Every key and value in Redis, as one blob to search for secrets."""
    out: list[bytes] = []
    async with RedisClient(redis_url) as redis:
        for key in await redis.execute("KEYS", "*"):
            kind_raw = await redis.execute("TYPE", key)
            kind = kind_raw.decode() if isinstance(kind_raw, bytes) else str(kind_raw)
            out.append(key)
            if kind == "hash":
                out += await redis.execute("HGETALL", key)
            elif kind == "string":
                out.append(await redis.execute("GET", key))
            elif kind == "stream":
                for _id, fields in await redis.execute("XRANGE", key, "-", "+"):
                    out += fields
            elif kind == "set":
                out += await redis.execute("SMEMBERS", key)
    return b"\n".join(x if isinstance(x, bytes) else str(x).encode() for x in out)


async def test_login_hands_out_a_working_token_and_never_leaks_the_hash(
    redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    with trio.fail_after(60):
        async with running_stack([redis_url]) as st:
            async with ShardSet([redis_url]) as shards:
                await AccountStore(shards).add("Alice", PASSWORD, role="moderator",
                                               display="Alice A.")
            status, _h, body = await login(st.http_url(), "alice", PASSWORD)
            assert status == 200
            assert set(body) == {"token", "user", "role", "expires_in"}
            assert body["user"] == "alice" and body["role"] == "moderator"
            async with connect(st.ws_url(), body["token"]) as c:
                assert c.frames[0]["user"] == "alice"
            wrong = await login(st.http_url(), "alice", "not the password")
            unknown = await login(st.http_url(), "nobody", "not the password")
            assert wrong[0] == unknown[0] == 401
            assert wrong[2] == unknown[2] == {
                "error": {"code": "unauthorized", "message": "invalid name or password"}}
            blob = await everything_in(redis_url)
            assert PASSWORD.encode() not in blob
            async with RedisClient(redis_url) as redis:
                stored = await redis.execute("HGET", account_key("alice"), "hash")
            assert stored.startswith(b"$argon2id$")  # salted, memory-hard
            logs = "\n".join(r.getMessage() for r in caplog.records)
            assert PASSWORD not in logs and stored.decode() not in logs
            assert "$argon2" not in logs


async def test_unknown_names_cost_a_full_verification(redis_url: str) -> None:
    calls: list[str] = []

    class Spy(PasswordHasher):
        def verify(self, hash: str | bytes, password: str | bytes) -> bool:
            calls.append(hash if isinstance(hash, str) else hash.decode())
            return super().verify(hash, password)

    spy = Spy(time_cost=1, memory_cost=8 * 1024, parallelism=1)
    with trio.fail_after(30):
        async with ShardSet([redis_url]) as shards:
            store = AccountStore(shards, hasher=spy)
            await store.add("bob", PASSWORD)
            with pytest.raises(AccountError) as unknown:
                await store.login("mallory", PASSWORD)
            with pytest.raises(AccountError) as wrong:
                await store.login("bob", "wrong password")
            assert len(calls) == 2  # one argon2 verification each, known name or not
            assert calls[0].startswith("$argon2id$")
            assert (unknown.value.status, unknown.value.message) == (
                wrong.value.status, wrong.value.message)
            assert (await store.login("BOB", PASSWORD)).name == "bob"


async def test_repeated_failures_lock_the_name_out_with_backoff(redis_url: str) -> None:
    with trio.fail_after(60):
        async with ShardSet([redis_url]) as shards:
            store = AccountStore(shards, hasher=FAST, max_failures=3, lockout_s=2)
            await store.add("carol", PASSWORD)
            for _ in range(3):
                with pytest.raises(AccountError) as exc:
                    await store.login("carol", "guess", peer="10.1.1.1")
                assert exc.value.status == 401
            with pytest.raises(AccountError) as locked:
                await store.login("carol", PASSWORD, peer="10.1.1.1")  # even the right one
            assert locked.value.status == 429 and 0 < locked.value.retry_after_ms <= 2000
            # Another address is not locked out by this one's failures.
            assert (await store.login("carol", PASSWORD, peer="10.2.2.2")).name == "carol"
            # The same lock-out for a name that does not exist: nothing tells them apart.
            for _ in range(3):
                with pytest.raises(AccountError):
                    await store.login("ghost", "guess", peer="10.1.1.1")
            with pytest.raises(AccountError) as ghost:
                await store.login("ghost", "guess", peer="10.1.1.1")
            assert ghost.value.status == 429
            await trio.sleep(2.1)
            assert (await store.login("carol", PASSWORD, peer="10.1.1.1")).name == "carol"


async def test_http_login_lockout_answers_429_with_retry_after(redis_url: str) -> None:
    with trio.fail_after(60):
        async with running_stack([redis_url], gateway={"login_max_failures": 2}) as st:
            async with ShardSet([redis_url]) as shards:
                await AccountStore(shards, hasher=FAST).add("dave", PASSWORD)
            assert (await login(st.http_url(), "dave", "x" * 8))[0] == 401
            assert (await login(st.http_url(), "dave", "y" * 8))[0] == 401
            status, headers, body = await login(st.http_url(), "dave", PASSWORD)
            assert status == 429 and body["error"]["code"] == "rate_limited"
            assert int(headers["retry-after"]) >= 1
            status, _h, _b = await request("POST", st.http_url() + "/v1/login", body=b"{")
            assert status == 400
            status, _h, _b = await request("GET", st.http_url() + "/v1/login")
            assert status == 405


async def test_disable_and_passwd_revoke_tokens(redis_url: str) -> None:
    with trio.fail_after(60):
        async with running_stack([redis_url]) as st:
            async with ShardSet([redis_url]) as shards:
                store = AccountStore(shards, hasher=FAST)
                await store.add("erin", PASSWORD)
                _s, _h, body = await login(st.http_url(), "erin", PASSWORD)
                async with connect(st.ws_url(), body["token"]) as live:
                    await store.set_password("erin", "a brand new password")
                    assert await live.close_code() == 4003
                async with connect(st.ws_url(), hello=False) as c:
                    await c.send({"op": "hello", "token": body["token"]})
                    assert "revoked" in (await c.expect("error"))["message"]
                assert (await login(st.http_url(), "erin", PASSWORD))[0] == 401
                await trio.sleep(0.01)
                status, _h, body = await login(st.http_url(), "erin", "a brand new password")
                assert status == 200
                await store.set_disabled("erin", True)
                assert (await login(st.http_url(), "erin", "a brand new password"))[0] == 401
                await store.set_disabled("erin", False)
                assert (await login(st.http_url(), "erin", "a brand new password"))[0] == 200
            with pytest.raises(AccountError):
                async with ShardSet([redis_url]) as shards:
                    await AccountStore(shards, hasher=FAST).add("erin", PASSWORD)


def test_cli_user_commands(redis_url: str) -> None:
    def cli(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "engine.cli", "user", *args, "--redis-url", redis_url],
            input=stdin, capture_output=True, text=True, timeout=60,
        )

    out = cli("add", "frank", "--role", "streamer", "--password-stdin", stdin=PASSWORD + "\n")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "user frank added (role streamer)"
    assert "argon2" not in out.stdout + out.stderr and PASSWORD not in out.stdout + out.stderr
    assert cli("add", "frank", "--password-stdin", stdin=PASSWORD + "\n").returncode == 1
    assert cli("add", "bad name!", "--password-stdin", stdin=PASSWORD + "\n").returncode == 1
    assert cli("add", "shorty", "--password-stdin", stdin="short\n").returncode == 1
    out = cli("passwd", "frank", "--password-stdin", stdin="another long password\n")
    assert out.returncode == 0 and "revoked" in out.stdout
    assert cli("disable", "frank").returncode == 0
    assert cli("enable", "frank").returncode == 0
    assert cli("disable", "nobody").returncode == 1

    async def check() -> None:
        async with ShardSet([redis_url]) as shards:
            account = await AccountStore(shards).login("frank", "another long password")
            assert account.role == "streamer"

    trio.run(check)
    help_out = subprocess.run([sys.executable, "-m", "engine.cli", "user", "add", "--help"],
                              capture_output=True, text=True, check=True)
    assert "usage: danmaku user add" in help_out.stdout
