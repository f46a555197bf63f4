"""Tokens (rotation, expiry, forgery, revocation), transport limits and the admin API, end to end.

Each row of the hostile-input table in docs/security.md is checked here or in
tests/test_fuzz_http.py (marked there with the row it covers).
"""

from __future__ import annotations

import base64
import json
from dataclasses import replace
from typing import Any

import orjson
import pytest
import trio
from trio_websocket import ConnectionClosed, open_websocket_url

from engine.errors import TokenError
from engine.tokens import KeyRing, mint_token, verify_token
from tests.httpclient import get_json, request
from tests.stack import SECRET, running_stack
from tests.wsclient import connect

# -- tokens, no I/O -------------------------------------------------------------------------------


def _b64(obj: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()


def test_key_rotation_signs_with_the_first_key_and_verifies_with_all() -> None:
    old = KeyRing.parse("k1:first-secret")
    new = KeyRing.parse("k2:second-secret,k1:first-secret", legacy="legacy-secret")
    token_old = mint_token(old, user="a")
    token_new = mint_token(new, user="b")
    assert json.loads(base64.urlsafe_b64decode(token_new.split(".")[0] + "==")) == {
        "alg": "HS256", "kid": "k2", "typ": "JWT"
    }
    assert verify_token(new, token_old).user == "a"  # still valid while k1 is in the ring
    assert verify_token(new, token_new).user == "b"
    assert verify_token(new, mint_token("legacy-secret", user="c")).user == "c"  # no kid
    retired = KeyRing.parse("k2:second-secret")
    with pytest.raises(TokenError, match="unknown key id"):
        verify_token(retired, token_old)
    with pytest.raises(TokenError, match="no key id"):
        verify_token(retired, mint_token("legacy-secret", user="c"))


def test_expired_forged_and_unsigned_tokens_are_refused() -> None:
    with pytest.raises(TokenError, match="expired"):
        verify_token(SECRET, mint_token(SECRET, user="a", ttl_s=10, now=1_000_000))
    with pytest.raises(TokenError):
        verify_token(SECRET, mint_token("another-secret", user="a"))
    header, payload, _sig = mint_token(SECRET, user="a").split(".")
    promoted = _b64({"sub": "a", "role": "admin", "exp": 2**40})
    with pytest.raises(TokenError):
        verify_token(SECRET, f"{header}.{promoted}.{_sig}")  # claims changed, signature not
    none_alg = _b64({"alg": "none", "typ": "JWT"}) + "." + promoted + "."
    with pytest.raises(TokenError):
        verify_token(SECRET, none_alg)
    with pytest.raises(TokenError):
        verify_token(KeyRing.parse("k:" + SECRET), none_alg)
    for junk in ("", "a.b", "a.b.c", "\u202e" * 10, "x" * 5000):
        with pytest.raises(TokenError):
            verify_token(SECRET, junk)
    with pytest.raises(TokenError, match="bad role"):
        verify_token(SECRET, _forge({"sub": "a", "exp": 2**40, "role": "god"}))
    with pytest.raises(TokenError, match="bad sub"):
        verify_token(SECRET, _forge({"sub": "a" * 65, "exp": 2**40}))


def _forge(claims: dict[str, Any]) -> str:
    import jwt

    return jwt.encode(claims, SECRET, algorithm="HS256")


# -- end to end ------------------------------------------------------------------------------------


@pytest.mark.redis
async def test_rotated_keys_end_to_end(redis_url: str) -> None:
    with trio.fail_after(20):
        async with running_stack([redis_url]) as base:
            settings = replace(base.settings, secrets="new:brand-new-key,old:" + SECRET)
        async with running_stack([redis_url]) as st:
            st.gateways[0].secret = KeyRing.parse(settings.secrets, legacy=SECRET)
            signed_new = mint_token(st.gateways[0].secret, user="n")
            for token in (signed_new, mint_token(KeyRing.parse("old:" + SECRET), user="o"),
                          st.token("legacy")):
                async with connect(st.ws_url(), token) as c:
                    assert c.frames[0]["op"] == "welcome"
            async with connect(st.ws_url(), hello=False) as bad:
                await bad.send({"op": "hello",
                                "token": mint_token(KeyRing.parse("gone:x"), user="g")})
                assert (await bad.expect("error"))["code"] == "unauthorized"
                assert await bad.close_code() == 4001


@pytest.mark.redis
async def test_expired_and_forged_tokens_close_4001(redis_url: str) -> None:
    with trio.fail_after(20):
        async with running_stack([redis_url]) as st:
            expired = mint_token(SECRET, user="a", ttl_s=1, now=1_000_000)
            forged = mint_token("not-the-secret", user="a", role="admin")
            for token in (expired, forged):
                async with connect(st.ws_url(), hello=False) as c:
                    await c.send({"op": "hello", "token": token})
                    err = await c.expect("error")
                    assert err["code"] == "unauthorized"
                    assert await c.close_code() == 4001
                status, body = await _post(st.http_url() + "/v1/rooms/r/messages", token,
                                           {"cmid": "c1", "body": {"text": "hi"}})
                assert status == 401 and body["error"]["code"] == "unauthorized"


async def _post(url: str, token: str | None, obj: Any) -> tuple[int, Any]:
    headers = {"authorization": f"Bearer {token}"} if token else {}
    status, _h, body = await request("POST", url, json=obj, headers=headers)
    return status, orjson.loads(body) if body else None


@pytest.mark.redis
async def test_revoking_a_user_kicks_everywhere_and_refuses_old_tokens(redis_url: str) -> None:
    with trio.fail_after(30):
        async with running_stack([redis_url], gateways=2) as st:
            admin = st.token("root", role="admin")
            old = st.token("mallory")
            async with connect(st.ws_url(0), old) as a, connect(st.ws_url(1), old) as b:
                await a.join("r")
                status, body = await _post(st.http_url() + "/v1/admin/users/mallory/revoke",
                                           admin, {"reason": "stolen token"})
                assert status == 200 and body["gateways"] == 2
                assert await a.close_code() == 4003
                assert await b.close_code() == 4003
            async with connect(st.ws_url(1), hello=False) as again:
                await again.send({"op": "hello", "token": old})
                err = await again.expect("error")
                assert err["code"] == "unauthorized" and "revoked" in err["message"]
                assert await again.close_code() == 4001
            status, body = await _post(st.http_url() + "/v1/rooms/r/messages", old,
                                       {"cmid": "c1", "body": {"text": "hi"}})
            assert status == 401 and "revoked" in body["error"]["message"]
            await trio.sleep(0.01)  # a token minted after the revocation is fine
            async with connect(st.ws_url(0), st.token("mallory")) as fresh:
                assert fresh.frames[0]["op"] == "welcome"
            # Only an admin may revoke; the action is audited.
            status, body = await _post(st.http_url() + "/v1/admin/users/root/revoke",
                                       st.token("x", role="streamer"), {})
            assert status == 403
            status, audit = await get_json(st.http_url() + "/v1/admin/audit",
                                           headers={"authorization": "Bearer " + admin})
            assert status == 200
            assert [(e["action"], e["target"]) for e in audit["entries"]] == [
                ("revoke", "mallory")]


@pytest.mark.redis
async def test_origin_allow_list(redis_url: str) -> None:
    with trio.fail_after(20):
        async with running_stack(
            [redis_url], gateway={"allowed_origins": ("https://good.example",)}
        ) as st:
            url = st.ws_url()
            async with open_websocket_url(
                url, extra_headers=[("Origin", "https://good.example")]
            ) as ws:
                await ws.send_message('{"op":"hello"}')
                assert orjson.loads(await ws.get_message())["op"] == "welcome"
            # (trio-websocket leaks the socket of a rejected handshake: ask with plain HTTP)
            status, _h, body = await request("GET", st.http_url() + "/ws", headers={
                "origin": "https://evil.example", "upgrade": "websocket",
                "connection": "Upgrade", "sec-websocket-version": "13",
                "sec-websocket-key": "dGhlIHNhbXBsZSBub25jZQ==",
            })
            assert status == 403 and b"origin not allowed" in body
            async with connect(url) as no_origin:  # non-browser clients send no Origin
                assert no_origin.frames[0]["op"] == "welcome"


@pytest.mark.redis
async def test_connections_per_ip_are_capped(redis_url: str) -> None:
    with trio.fail_after(20):
        async with running_stack([redis_url], gateway={"max_conns_per_ip": 2}) as st:
            gs = st.gateways[0].settings
            async with connect(st.ws_url()) as _a, connect(st.ws_url()) as _b:
                stream = await trio.open_tcp_stream(gs.host, gs.port)
                async with stream:
                    data = b""
                    while chunk := await stream.receive_some(4096):
                        data += chunk
                assert data.startswith(b"HTTP/1.1 429 ")
                assert b"too many connections" in data
            # Slots come back when connections close.
            for _ in range(3):
                async with connect(st.ws_url()) as c:
                    assert c.frames[0]["op"] == "welcome"
            status, _body = await get_json(st.http_url() + "/healthz")
            assert status == 200


@pytest.mark.redis
async def test_frame_limits_and_flooding(redis_url: str) -> None:
    with trio.fail_after(30):
        async with running_stack(
            [redis_url], gateway={"frames_per_s": 5, "frames_burst": 10}
        ) as st:
            async with connect(st.ws_url(), st.token("u")) as c:
                await c.send("x" * (1024 * 1024))  # a 1 MB frame
                err = await c.expect("error")
                assert err["code"] == "too_large"
                await c.send({"op": "ping", "t": 7})
                assert (await c.expect("pong"))["t"] == 7  # still usable
            async with connect(st.ws_url(), st.token("flood")) as f:
                for i in range(40):
                    try:
                        await f.send({"op": "ping", "t": i})
                    except Exception:
                        break
                close_code = None
                try:
                    while True:
                        await f.recv()
                except ConnectionClosed as closed:
                    close_code = closed.reason.code
                assert close_code == 4008
                codes = [fr.get("code") for fr in f.frames]
                assert codes.count("rate_limited") == 20  # errors_before_close, then 4008


@pytest.mark.redis
async def test_admin_api_room_actions_use_the_same_role_checks(redis_url: str) -> None:
    with trio.fail_after(30):
        async with running_stack([redis_url]) as st:
            base = st.http_url() + "/v1/admin/rooms/r"
            viewer = st.token("v")
            host = st.token("host", role="streamer", rooms=["r"])
            admin = st.token("root", role="admin")
            status, _ = await _post(base + "/actions", None, {"action": "ban", "user": "x"})
            assert status == 401
            status, body = await _post(base + "/actions", viewer, {"action": "ban", "user": "x"})
            assert status == 403 and body["error"]["code"] == "unauthorized"
            status, body = await _post(base + "/actions", host, {"action": "ban", "user": "x"})
            assert status == 200 and body["permanent"] is True
            status, body = await _post(base + "/actions", host, {"action": "ban", "user": 5})
            assert status == 400
            words = [f"w{i}" for i in range(5000)]
            status, _h, raw = await request("PUT", base + "/words", json={"words": words},
                                            headers={"authorization": "Bearer " + admin})
            assert status == 200 and orjson.loads(raw) == {"words": 5000}
            status, got = await get_json(base + "/words",
                                         headers={"authorization": "Bearer " + host})
            assert status == 200 and len(got["words"]) == 5000
            status, _h, raw = await request(
                "PUT", base + "/config", json={"filter": "deny", "user_rate_per_s": 3},
                headers={"authorization": "Bearer " + admin},
            )
            assert status == 200
            assert orjson.loads(raw)["config"]["user_rate_per_s"] == 3
            status, cfg = await get_json(base + "/config",
                                         headers={"authorization": "Bearer " + viewer})
            assert status == 403
            status, audit = await get_json(base + "/audit",
                                           headers={"authorization": "Bearer " + host})
            assert [e["action"] for e in audit["entries"]] == ["config", "words_set", "ban"]
            assert {e["via"] for e in audit["entries"]} == {"http"}
            async with connect(st.ws_url(), st.token("talker")) as c:
                await c.join("r")
                nack = await c.acked(await c.send_text("r", "w4999 is a word"))
                assert nack["code"] == "filtered"
