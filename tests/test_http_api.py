"""The HTTP side of the contract: health, dispatch, send, short and long poll, metrics."""

from __future__ import annotations

import orjson
import pytest
import trio
import trio.testing

from tests.httpclient import get_json, request
from tests.stack import running_stack
from tests.wsclient import collect_batches, connect

pytestmark = pytest.mark.redis


async def test_health_dispatch_and_metrics(redis_url: str) -> None:
    with trio.fail_after(20):
        async with running_stack([redis_url], gateways=2) as st:
            assert await get_json(st.http_url() + "/healthz") == (200, {"ok": True})
            status, body = await get_json(st.http_url() + "/v1/dispatch?room=lobby")
            assert status == 200
            assert {g["url"] for g in body["gateways"]} == {st.ws_url(0), st.ws_url(1)}
            assert body["heartbeat_ms"] == 30000
            assert body["backoff"] == {"base_ms": 500, "max_ms": 30000, "jitter": 0.5}
            status, body = await get_json(st.http_url() + "/v1/dispatch?room=bad%20room")
            assert status == 400 and body["error"]["code"] == "bad_request"
            status, _h, text = await request("GET", st.http_url() + "/metrics")
            assert status == 200 and b"danmaku_connections" in text
            assert b"danmaku_ack_latency_seconds_bucket" in text
            status, body = await get_json(st.http_url() + "/nope")
            assert status == 404


async def test_post_send_then_short_poll(redis_url: str) -> None:
    with trio.fail_after(20):
        async with running_stack([redis_url]) as st:
            url = st.http_url() + "/v1/rooms/r/messages"
            auth = {"authorization": "Bearer " + st.token("alice", name="Alice")}
            status, _h, body = await request(
                "POST", url, json={"cmid": "h1", "body": {"text": "via http"}}, headers=auth
            )
            assert status == 200, body
            ack = orjson.loads(body)
            assert ack["room"] == "r" and ack["cmid"] == "h1" and ack["seq"] == 1
            status, _h, body = await request(
                "POST", url, json={"cmid": "h1", "body": {"text": "via http"}}, headers=auth
            )
            assert orjson.loads(body)["seq"] == 1  # a resend is deduped
            status, page = await get_json(url + "?after=0&wait_ms=0")
            assert status == 200
            assert page["room"] == "r" and page["last"] == 1 and page["epoch"]
            assert [m["body"]["text"] for m in page["msgs"]] == ["via http"]
            status, page = await get_json(url + "?after=1&wait_ms=0")
            assert page["msgs"] == []


@pytest.mark.parametrize(
    ("payload", "headers", "status", "code"),
    [
        ({"cmid": "a", "body": {"text": "x"}}, {}, 401, "unauthorized"),
        ({"cmid": "a", "body": {"text": "x"}}, {"authorization": "Bearer junk"}, 401,
         "unauthorized"),
        ({"cmid": "a", "body": {"text": "y" * 300}}, None, 413, "too_long"),
        ({"body": {"text": "x"}}, None, 400, "bad_request"),
        ([1, 2], None, 400, "bad_request"),
    ],
)
async def test_post_send_errors(
    redis_url: str, payload: object, headers: dict[str, str] | None, status: int, code: str
) -> None:
    with trio.fail_after(20):
        async with running_stack([redis_url]) as st:
            if headers is None:
                headers = {"authorization": "Bearer " + st.token("alice")}
            got, _h, body = await request(
                "POST", st.http_url() + "/v1/rooms/r/messages", json=payload, headers=headers
            )
            assert got == status, body
            assert orjson.loads(body)["error"]["code"] == code


async def test_long_poll_is_woken_by_the_room_subscription(redis_url: str) -> None:
    with trio.fail_after(15):  # far below the 30 s wait: only a wake-up answers in time
        async with running_stack([redis_url]) as st, connect(
            st.ws_url(), st.token("s")
        ) as sender:
            await sender.join("r")
            url = st.http_url() + "/v1/rooms/r/messages?after=0&wait_ms=30000"
            result: list[object] = []

            async def poll() -> None:
                result.append(await get_json(url))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(poll)
                # Once every task is blocked, the poll is parked in the hub: then send.
                await trio.testing.wait_all_tasks_blocked(cushion=0.05)
                assert st.gateways[0].hubs.hubs["r"].pollers == 1
                await sender.acked(await sender.send_text("r", "wake up"))
            (status, page), = result  # type: ignore[misc]
            assert status == 200
            assert [m["body"]["text"] for m in page["msgs"]] == ["wake up"]


async def test_long_poll_ends_empty_when_nothing_arrives(
    redis_url: str,
) -> None:
    with trio.fail_after(15):
        async with running_stack([redis_url]) as st:
            status, page = await get_json(
                st.http_url() + "/v1/rooms/quiet/messages?after=0&wait_ms=300"
            )
            assert status == 200 and page["msgs"] == [] and page["last"] == 0


async def test_poll_parameter_errors(redis_url: str) -> None:
    with trio.fail_after(15):
        async with running_stack([redis_url]) as st:
            for query in ("after=-1", "limit=0", "limit=1001", "wait_ms=40000", "after=x"):
                status, body = await get_json(st.http_url() + f"/v1/rooms/r/messages?{query}")
                assert status == 400 and body["error"]["code"] == "bad_request", query


async def test_http_sender_reaches_websocket_viewers(redis_url: str) -> None:
    with trio.fail_after(15):
        async with running_stack([redis_url]) as st, connect(st.ws_url(), None) as viewer:
            await viewer.join("r")
            status, _h, _b = await request(
                "POST", st.http_url() + "/v1/rooms/r/messages",
                json={"cmid": "z", "body": {"text": "hello ws"}},
                headers={"authorization": "Bearer " + st.token("bob")},
            )
            assert status == 200
            (batch,) = await collect_batches(viewer, "r", 1)
            assert batch["msgs"][0]["body"]["text"] == "hello ws"
