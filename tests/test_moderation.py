"""Room moderation end to end, against real redis-server processes: every rule of issue 5."""

from __future__ import annotations

import itertools
from typing import Any

import orjson
import pytest
import trio

from engine.redis import RedisClient
from rooms.moderation import sanctions_key
from tests.stack import Stack, running_stack
from tests.wsclient import Raw, check_contiguous, collect_batches, connect

pytestmark = pytest.mark.redis

_refs = itertools.count(1)


async def mod(c: Raw, room: str, action: str, **fields: Any) -> dict[str, Any]:
    """Send a `mod` op; return its `mod_result` or `error` (matched by ref)."""
    ref = f"m{next(_refs)}"
    await c.send({"op": "mod", "room": room, "action": action, "ref": ref, **fields})
    return await c.take(lambda f: f["op"] in {"mod_result", "error"} and f.get("ref") == ref)


async def ok(c: Raw, room: str, action: str, **fields: Any) -> dict[str, Any]:
    answer = await mod(c, room, action, **fields)
    assert answer["op"] == "mod_result", answer
    return answer["result"]  # type: ignore[no-any-return]


async def send(c: Raw, room: str, text: str, **kw: Any) -> dict[str, Any]:
    return await c.acked(await c.send_text(room, text, **kw))


def streamer(st: Stack) -> str:
    return st.token("host", role="streamer", rooms=["r"])


async def test_mute_ban_and_timed_mute_answer_the_documented_nacks(redis_url: str) -> None:
    with trio.fail_after(30):
        async with running_stack([redis_url]) as st, connect(
            st.ws_url(), streamer(st)
        ) as host, connect(st.ws_url(), st.token("troll")) as troll:
            await host.join("r")
            await troll.join("r")
            assert (await send(troll, "r", "first"))["op"] == "ack"
            await ok(host, "r", "mute", user="troll", duration_s=600, reason="spam")
            nack = await send(troll, "r", "muted?")
            assert nack["op"] == "nack" and nack["code"] == "muted"
            assert "retry_after_ms" not in nack
            await ok(host, "r", "unmute", user="troll")
            assert (await send(troll, "r", "back"))["op"] == "ack"
            await ok(host, "r", "ban", user="troll")
            nack = await send(troll, "r", "banned?")
            assert nack["op"] == "nack" and nack["code"] == "banned"
            await ok(host, "r", "unban", user="troll")
            # A timed mute ends by itself.
            await ok(host, "r", "mute", user="troll", duration_s=1)
            assert (await send(troll, "r", "x"))["code"] == "muted"
            await trio.sleep(1.1)
            assert (await send(troll, "r", "free again"))["op"] == "ack"
            async with RedisClient(redis_url) as redis:
                ttl = await redis.execute("PTTL", sanctions_key("r", "troll"))
                outcomes = await redis.execute("XRANGE", "danmaku:modout", "-", "+")
            assert ttl == -2  # the sanctions hash expired with its last sanction
            # Every refusal is recorded for the archive's moderation table.
            rows = [{f[i].decode(): f[i + 1].decode() for i in range(0, len(f), 2)}
                    for _id, f in outcomes]
            assert [(r["u"], r["code"], r["t"]) for r in rows] == [
                ("troll", "muted", "muted?"), ("troll", "banned", "banned?"),
                ("troll", "muted", "x")]


async def test_every_moderator_op_checks_the_role(redis_url: str) -> None:
    with trio.fail_after(40):
        async with running_stack([redis_url]) as st, connect(
            st.ws_url(), st.token("viewer")
        ) as viewer, connect(st.ws_url(), streamer(st)) as host, connect(
            st.ws_url(), st.token("appointed")
        ) as appointed, connect(st.ws_url(), st.token("other-host", role="streamer",
                                                      rooms=["elsewhere"])) as other, connect(
            st.ws_url(), None
        ) as guest:
            everything = {
                "mute": {"user": "x"}, "unmute": {"user": "x"}, "ban": {"user": "x"},
                "unban": {"user": "x"}, "shadowban": {"user": "x"},
                "unshadowban": {"user": "x"}, "kick": {"user": "x"}, "allow": {"user": "x"},
                "disallow": {"user": "x"}, "words_add": {"words": ["w"]},
                "words_remove": {"words": ["w"]}, "words_set": {"words": ["w"]},
                "config": {"config": {"slow_s": 1}}, "get_config": {},
                "add_mod": {"user": "x"}, "remove_mod": {"user": "x"},
            }
            for action, fields in everything.items():
                for who in (viewer, other, guest):  # a streamer of another room is a viewer here
                    answer = await mod(who, "r", action, **fields)
                    assert answer["op"] == "error" and answer["code"] == "unauthorized", (
                        action, answer)
                    assert answer["room"] == "r" and answer["action"] == action
            # The streamer appoints a moderator, who may now moderate but not appoint.
            await ok(host, "r", "add_mod", user="appointed")
            for action, fields in everything.items():
                answer = await mod(appointed, "r", action, **fields)
                if action in {"add_mod", "remove_mod"}:
                    assert answer["code"] == "unauthorized", action
                else:
                    assert answer["op"] == "mod_result", (action, answer)
            # Moderators may not change the rates, nor act on a fellow moderator.
            answer = await mod(appointed, "r", "config", config={"user_rate_per_s": 1})
            assert answer["code"] == "unauthorized"
            await ok(host, "r", "add_mod", user="mod2")
            assert (await mod(appointed, "r", "ban", user="mod2"))["code"] == "unauthorized"
            assert (await ok(host, "r", "ban", user="mod2"))["permanent"] is True
            assert (await mod(appointed, "r", "mute", user="appointed"))["code"] == "bad_request"
            assert (await mod(host, "r", "dance"))["code"] == "bad_request"
            assert (await mod(host, "r", "mute"))["code"] == "bad_request"  # no user
            settings = await ok(host, "r", "get_config")
            assert settings["moderators"] == ["appointed", "mod2"]
            # Removing the appointment removes the power.
            await ok(host, "r", "remove_mod", user="appointed")
            assert (await mod(appointed, "r", "mute", user="x"))["code"] == "unauthorized"


async def test_shadowbanned_message_reaches_only_its_sender(redis_url: str) -> None:
    with trio.fail_after(30):
        async with running_stack([redis_url], gateways=2) as st, connect(
            st.ws_url(0), streamer(st)
        ) as host, connect(st.ws_url(0), st.token("shady")) as shady, connect(
            st.ws_url(1), st.token("shady")
        ) as shady2, connect(st.ws_url(1), st.token("fan")) as fan, connect(
            st.ws_url(0), None
        ) as guest:
            epoch = (await fan.join("r"))["epoch"]
            for c in (host, shady, shady2, guest):
                await c.join("r")
            assert (await send(fan, "r", "hello"))["seq"] == 1
            await ok(host, "r", "shadowban", user="shady")
            ack = await send(shady, "r", "buy cheap followers", cmid="secret-cmid-1")
            assert ack["op"] == "ack" and ack["seq"] == 2  # looks perfectly normal
            assert (await send(fan, "r", "after"))["seq"] == 3
            for sender_view in (shady, shady2):  # every connection of the sender sees it
                batches = await collect_batches(sender_view, "r", 3)
                assert check_contiguous(batches, 1) == [1, 2, 3]
                msgs = [m for b in batches for m in b["msgs"]]
                assert msgs[1]["body"]["text"] == "buy cheap followers"
                assert all("skipped" not in b for b in batches)
                assert set(msgs[1]) == {"seq", "id", "user", "name", "ts", "kind", "body"}
            for other in (host, fan, guest):
                batches = await collect_batches(other, "r", 3)
                assert check_contiguous(batches, 1) == [1, 3]
                assert any(b.get("skipped") == [[2, 2]] for b in batches)
                # (the host's own mod_result names the user: only room traffic counts here)
                raw = orjson.dumps([f for f in other.frames if f["op"] == "batch"])
                for trace in (b"buy cheap", b"shady", b"secret-cmid-1"):
                    assert trace not in raw
            # A viewer resuming from before sees the same skipped range and nothing else.
            async with connect(st.ws_url(1), None) as late:
                joined = await late.join("r", since={"epoch": epoch, "seq": 0})
                assert joined["seq"] == 3
                batches = await collect_batches(late, "r", 3)
                assert check_contiguous(batches, 1) == [1, 3]
                assert b"buy cheap" not in orjson.dumps(late.frames)
            # Anonymous HTTP polls leave it out; the sender's own token sees it.
            from tests.httpclient import get_json

            _status, anon = await get_json(st.http_url() + "/v1/rooms/r/messages?after=0")
            assert [m["seq"] for m in anon["msgs"]] == [1, 3]
            _status, own = await get_json(
                st.http_url() + "/v1/rooms/r/messages?after=0",
                headers={"authorization": "Bearer " + st.token("shady")},
            )
            assert [m["seq"] for m in own["msgs"]] == [1, 2, 3]
            await ok(host, "r", "unshadowban", user="shady")
            assert (await send(shady, "r", "visible again"))["seq"] == 4
            batches = await collect_batches(fan, "r", 4, after=3)
            assert [m["body"]["text"] for b in batches for m in b["msgs"]] == ["visible again"]


async def test_keyword_filter_deny_and_mask_modes_change_live(redis_url: str) -> None:
    with trio.fail_after(30):
        async with running_stack([redis_url]) as st, connect(
            st.ws_url(), streamer(st)
        ) as host, connect(st.ws_url(), st.token("u")) as user:
            await host.join("r")
            await user.join("r")
            await ok(host, "r", "words_add", words=["spoiler", "坏词", "ＢＡＤ"])
            # Words without a mode do nothing yet.
            assert (await send(user, "r", "a spoiler"))["op"] == "ack"
            await ok(host, "r", "config", config={"filter": "deny"})
            nack = await send(user, "r", "big SPOILER ahead")
            assert nack["op"] == "nack" and nack["code"] == "filtered"
            assert (await send(user, "r", "这是坏词"))["code"] == "filtered"
            assert (await send(user, "r", "so bad"))["code"] == "filtered"  # fullwidth folds
            assert (await send(user, "r", "all clean"))["op"] == "ack"
            # A streamer's own text is not filtered.
            assert (await send(host, "r", "spoiler from the host"))["op"] == "ack"
            await ok(host, "r", "config", config={"filter": "mask"})
            ack = await send(user, "r", "no Spoiler and 坏词!")
            assert ack["op"] == "ack"
            batches = await collect_batches(user, "r", ack["seq"])
            texts = [m["body"]["text"] for b in batches for m in b["msgs"]]
            assert texts[-1] == "no ******* and **!"
            await ok(host, "r", "words_remove", words=["spoiler"])
            ack = await send(user, "r", "spoiler ok now")
            batches = await collect_batches(user, "r", ack["seq"], after=ack["seq"] - 1)
            assert batches[-1]["msgs"][-1]["body"]["text"] == "spoiler ok now"
            await ok(host, "r", "config", config={"filter": "off"})
            assert (await send(user, "r", "坏词"))["op"] == "ack"


async def test_duplicates_slow_mode_and_resends(redis_url: str) -> None:
    with trio.fail_after(30):
        async with running_stack([redis_url]) as st, connect(
            st.ws_url(), streamer(st)
        ) as host, connect(st.ws_url(), st.token("u")) as user:
            await host.join("r")
            await user.join("r")
            await ok(host, "r", "config", config={"dup_window_s": 30})
            assert (await send(user, "r", "same", cmid="d1"))["op"] == "ack"
            dup = await send(user, "r", "SAME ", cmid="d2")
            assert dup["op"] == "nack" and dup["code"] == "filtered"
            # A resend of the accepted message (same cmid) is still the same ack.
            again = await send(user, "r", "same", cmid="d1")
            assert again["op"] == "ack"
            assert (await send(user, "r", "different"))["op"] == "ack"
            await ok(host, "r", "config", config={"dup_window_s": 0, "slow_s": 30})
            first = await send(user, "r", "slow one", cmid="s1")
            assert first["op"] == "ack"
            slow = await send(user, "r", "slow two")
            assert slow["code"] == "rate_limited" and 25_000 < slow["retry_after_ms"] <= 30_000
            assert (await send(user, "r", "slow one", cmid="s1"))["seq"] == first["seq"]
            # Moderators are exempt from slow mode.
            assert (await send(host, "r", "a"))["op"] == "ack"
            assert (await send(host, "r", "b"))["op"] == "ack"


async def test_a_flood_from_one_user_never_delays_other_users(redis_url: str) -> None:
    with trio.fail_after(30):
        async with running_stack([redis_url]) as st, connect(
            st.ws_url(), streamer(st)
        ) as host, connect(st.ws_url(), st.token("flooder")) as flooder, connect(
            st.ws_url(), st.token("calm")
        ) as calm:
            for c in (host, flooder, calm):
                await c.join("r")
            await ok(host, "r", "config", config={"user_rate_per_s": 2, "user_burst": 3})
            before = [await flooder.send_text("r", f"flood {i}") for i in range(150)]
            mine = await calm.send_text("r", "just one comment")
            after = [await flooder.send_text("r", f"flood {i}") for i in range(150, 300)]
            answers = {c: await flooder.acked(c) for c in before + after}
            acked = [c for c, a in answers.items() if a["op"] == "ack"]
            limited = [a for a in answers.values() if a.get("code") == "rate_limited"]
            assert len(acked) <= 5 and len(acked) + len(limited) == 300
            assert all(0 < a["retry_after_ms"] <= 1000 for a in limited)
            own = await calm.acked(mine)
            assert own["op"] == "ack"
            # Sequenced in arrival order: nothing of the flood sent after it went before it.
            late_seqs = [answers[c]["seq"] for c in after if answers[c]["op"] == "ack"]
            assert all(seq > own["seq"] for seq in late_seqs)


async def test_room_bucket_and_allow_list(redis_url: str) -> None:
    with trio.fail_after(30):
        async with running_stack([redis_url]) as st, connect(
            st.ws_url(), streamer(st)
        ) as host, connect(st.ws_url(), st.token("a")) as a, connect(
            st.ws_url(), st.token("b")
        ) as b:
            for c in (host, a, b):
                await c.join("r")
            await ok(host, "r", "config", config={"room_rate_per_s": 1, "room_burst": 2})
            assert (await send(a, "r", "1"))["op"] == "ack"
            assert (await send(b, "r", "2"))["op"] == "ack"
            busy = await send(a, "r", "3")
            assert busy["code"] == "rate_limited" and busy["retry_after_ms"] > 0
            await ok(host, "r", "config", config={"room_rate_per_s": 0, "allow_only": True})
            await ok(host, "r", "allow", user="a")
            assert (await send(a, "r", "member"))["op"] == "ack"
            refused = await send(b, "r", "not a member")
            assert refused["code"] == "unauthorized"
            assert (await send(host, "r", "host talks"))["op"] == "ack"
            await ok(host, "r", "disallow", user="a")
            assert (await send(a, "r", "gone"))["code"] == "unauthorized"
            settings = await ok(host, "r", "config", config={"allow_only": False})
            assert settings["config"]["allow_only"] is False
            assert (await send(b, "r", "open again"))["op"] == "ack"


async def test_kick_closes_the_users_connections_in_the_room(redis_url: str) -> None:
    with trio.fail_after(30):
        async with running_stack([redis_url], gateways=2) as st, connect(
            st.ws_url(0), streamer(st)
        ) as host, connect(st.ws_url(1), st.token("pest")) as pest, connect(
            st.ws_url(0), st.token("pest")
        ) as pest_elsewhere:
            await host.join("r")
            await pest.join("r")
            await pest_elsewhere.join("other")
            result = await ok(host, "r", "kick", user="pest", reason="bye")
            assert result["gateways"] == 2  # the registry knows both gateways
            assert await pest.close_code() == 4003
            # Its connection that is not in the room stays.
            await pest_elsewhere.send({"op": "ping", "t": 1})
            assert (await pest_elsewhere.expect("pong"))["t"] == 1


async def test_every_action_is_in_the_audit_log(redis_url: str) -> None:
    with trio.fail_after(30):
        async with running_stack([redis_url]) as st, connect(
            st.ws_url(), streamer(st)
        ) as host:
            await ok(host, "r", "mute", user="x", duration_s=60, reason="rude")
            await ok(host, "r", "words_add", words=["a", "b"])
            await ok(host, "r", "config", config={"slow_s": 5})
            async with RedisClient(redis_url) as redis:
                entries = await redis.execute("XRANGE", "danmaku:audit", "-", "+")
            got = [{e[1][i].decode(): e[1][i + 1].decode() for i in range(0, len(e[1]), 2)}
                   for e in entries]
            assert [(g["action"], g["actor"], g["role"], g["via"]) for g in got] == [
                ("mute", "host", "streamer", "ws"), ("words_add", "host", "streamer", "ws"),
                ("config", "host", "streamer", "ws"),
            ]
            assert got[0]["target"] == "x" and got[0]["duration_s"] == "60"
            assert got[0]["reason"] == "rude" and got[0]["room"] == "r"
            assert orjson.loads(got[2]["detail"]) == {"slow_s": 5}


async def test_moderation_on_a_redis_cluster(redis_cluster_url: str) -> None:
    with trio.fail_after(30):
        async with running_stack([redis_cluster_url], redis={"cluster": True}) as st, connect(
            st.ws_url(), streamer(st)
        ) as host, connect(st.ws_url(), st.token("u")) as user:
            await host.join("r")
            await user.join("r")
            await ok(host, "r", "words_add", words=["nope"])
            await ok(host, "r", "config", config={"filter": "deny", "slow_s": 10})
            assert (await send(user, "r", "nope nope"))["code"] == "filtered"
            assert (await send(user, "r", "fine"))["op"] == "ack"
            assert (await send(user, "r", "too soon"))["code"] == "rate_limited"
            await ok(host, "r", "ban", user="u")
            assert (await send(user, "r", "x"))["code"] == "banned"
