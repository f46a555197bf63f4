"""The gateway's HTTP API: health, dispatch, sends, short and long polling, metrics."""

from __future__ import annotations

import re
import secrets
from typing import TYPE_CHECKING, Any

import orjson
import trio

from engine import keys
from engine import protocol as p
from engine.errors import TokenError
from engine.gateway import moderation_ops
from engine.gateway.batching import Msg
from engine.gateway.http_server import Request, Response, query_int
from engine.ingress import HIDDEN_MARK
from engine.redis import RedisError
from engine.tokens import verify_token

if TYPE_CHECKING:
    from engine.gateway.app import Gateway

_ROOM_PATH = re.compile(r"^/v1/rooms/([A-Za-z0-9_.:-]{1,64})(/messages)?$")

# HTTP status for each nack/error code of the protocol.
STATUS_FOR_CODE = {
    p.NACK_RATE_LIMITED: 429,
    p.NACK_MUTED: 403,
    p.NACK_BANNED: 403,
    p.NACK_FILTERED: 422,
    p.NACK_TOO_LONG: 413,
    p.NACK_BAD_REQUEST: 400,
    p.NACK_NOT_JOINED: 409,
    p.NACK_UNAUTHORIZED: 401,
    p.NACK_ROOM_CLOSED: 410,
    p.ERR_TOO_LARGE: 413,
    p.ERR_UNKNOWN_OP: 400,
    p.ERR_INTERNAL: 500,
}


def json_response(status: int, obj: Any) -> Response:
    return Response(status, orjson.dumps(obj))


def error_response(
    status: int, code: str, message: str, headers: list[tuple[str, str]] | None = None
) -> Response:
    return Response(
        status, orjson.dumps({"error": {"code": code, "message": message}}),
        headers=headers or [],
    )


async def route(gw: Gateway, req: Request) -> Response:
    try:
        return await _route(gw, req)
    except RedisError as exc:
        return error_response(503, p.ERR_INTERNAL, f"backend unavailable: {type(exc).__name__}")


async def _route(gw: Gateway, req: Request) -> Response:
    path = req.path
    if path == "/healthz":
        return json_response(200, {"ok": True})
    if path == "/metrics":
        return Response(200, gw.metrics.render(), content_type="text/plain; version=0.0.4")
    if path == "/v1/dispatch":
        return await _dispatch(gw, req)
    if path == "/v1/login" or path.startswith("/v1/admin/"):
        from engine.gateway import admin_api  # logins and the admin API (docs/security.md)

        return await admin_api.route(gw, req)
    if path == "/dashboards" or path.endswith("/replay"):
        from engine.archive import http_routes  # replay and dashboards (issue 3)

        archived = await http_routes.route(gw, req)
        if archived is not None:
            return archived
    from engine.gateway import web  # the viewer page: /, /r/{room}, /static/..., /v1/rooms

    page = await web.route(gw, req)
    if page is not None:
        return page
    match = _ROOM_PATH.match(path)
    if match is None:
        return error_response(404, "not_found", f"no such endpoint: {path}")
    room, messages = match.group(1), match.group(2)
    if messages and req.method == "POST":
        return await _post_message(gw, req, room)
    if messages and req.method == "GET":
        return await _poll(gw, req, room)
    if not messages and req.method == "GET":
        return await _room_info(gw, room)
    return error_response(405, "method_not_allowed", f"{req.method} not allowed on {path}")


async def _dispatch(gw: Gateway, req: Request) -> Response:
    room = (req.query.get("room") or [""])[0]
    if room and not p.valid_room(room):
        return error_response(400, p.ERR_BAD_REQUEST, "bad room id")
    gateways = await gw.live_gateways()
    return json_response(
        200,
        {
            "gateways": [{"url": url, "weight": 1} for url in gateways],
            "heartbeat_ms": gw.settings.heartbeat_ms,
            "backoff": {"base_ms": 500, "max_ms": 30000, "jitter": 0.5},
        },
    )


async def _room_info(gw: Gateway, room: str) -> Response:
    client = gw.shards.client_for(room)
    epoch, seq = await client.pipeline(
        [["GET", keys.epoch_key(room)], ["GET", keys.seq_key(room)]]
    )
    return json_response(
        200,
        {
            "room": room,
            "epoch": epoch.decode() if epoch else "",
            "last": int(seq or 0),
            "online": await gw.online(room),
        },
    )


async def _post_message(gw: Gateway, req: Request, room: str) -> Response:
    auth = req.headers.get("authorization", "")
    if not auth.lower().startswith("bearer "):
        return error_response(401, p.NACK_UNAUTHORIZED, "Authorization: Bearer <token> required")
    try:
        ident = verify_token(gw.secret, auth[7:].strip())
    except TokenError as exc:
        return error_response(401, p.NACK_UNAUTHORIZED, str(exc))
    if await moderation_ops.token_revoked(gw, ident):
        return error_response(401, p.NACK_UNAUTHORIZED, "token revoked")
    if not ident.may_enter(room):
        return error_response(403, p.NACK_UNAUTHORIZED, f"token not valid for room {room}")
    try:
        data = orjson.loads(req.body)
    except orjson.JSONDecodeError:
        return error_response(400, p.ERR_BAD_REQUEST, "body is not valid JSON")
    if not isinstance(data, dict):
        return error_response(400, p.ERR_BAD_REQUEST, "body must be a JSON object")
    frame = {**data, "op": "send", "room": room}
    event = p.decode_client_frame(orjson.dumps(frame), gw.limits)
    if isinstance(event, p.ProtocolError):
        return error_response(STATUS_FOR_CODE.get(event.code, 400), event.code, event.message)
    assert isinstance(event, p.Send)
    body = orjson.dumps(
        {
            "text": event.body.text, "mode": event.body.mode, "color": event.body.color,
            "offset_ms": event.body.offset_ms,
        }
    )
    reply = await gw.submit_and_wait(
        ident, room, event.cmid, event.kind, body, gw.settings.send_timeout_ms / 1000
    )
    if reply is None:
        return error_response(
            504, p.ERR_INTERNAL, "not sequenced in time; retry with the same cmid"
        )
    if reply.ok:
        return json_response(200, {"room": room, "cmid": reply.cmid, "seq": reply.seq,
                                   "ts": reply.ts})
    headers = []
    if reply.retry_after_ms is not None:
        headers.append(("retry-after", str(max(1, -(-reply.retry_after_ms // 1000)))))
    return error_response(STATUS_FOR_CODE.get(reply.code, 400), reply.code, reply.message, headers)


async def _poll(gw: Gateway, req: Request, room: str) -> Response:
    after = query_int(req, "after", 0, 0, 2**53)
    limit = query_int(req, "limit", 100, 1, 1000)
    wait_ms = query_int(req, "wait_ms", 0, 0, 30_000)
    if after is None or limit is None or wait_ms is None:
        return error_response(
            400, p.ERR_BAD_REQUEST, "after >= 0, limit in 1..1000, wait_ms in 0..30000"
        )
    viewer = _viewer(gw, req)  # sees its own hidden (shadow-banned) messages
    hub = await gw.hubs.hub_for(room)
    hub.pollers += 1
    try:
        msgs, too_old = await _read_after(hub, after, limit, viewer)
        if not msgs and wait_ms > 0 and not too_old:
            # Woken by the room's own subscription (the same one that feeds WebSocket viewers).
            with trio.move_on_after(wait_ms / 1000):
                while hub.delivered_to <= after:
                    await hub.wait_new_data()
            msgs, too_old = await _read_after(hub, after, limit, viewer)
    finally:
        hub.pollers -= 1
    last = max(hub.delivered_to, msgs[-1][0] if msgs else 0)
    parts = [
        b'{"room":', orjson.dumps(room), b',"epoch":', orjson.dumps(hub.epoch),
        b',"last":', str(last).encode(), b',"msgs":[', b",".join(m[1] for m in msgs), b"]",
    ]
    if too_old:
        parts.append(b',"reset":"too_old"')
    parts.append(b"}")
    return Response(200, b"".join(parts))


async def _read_after(
    hub: Any, after: int, limit: int, viewer: str | None = None
) -> tuple[list[tuple[int, bytes]], bool]:
    """Messages after ``after``: from the hub's ring, else from the room stream.

    A message hidden for everyone but its sender (shadow-ban) is left out unless ``viewer`` is
    that sender."""
    recent = hub.recent_after(after, limit)
    if recent is not None:
        return [(m.seq, m.data) for m in recent if m.hidden is None or m.hidden == viewer], False
    entries = await hub.redis.execute(
        "XRANGE", keys.stream_key(hub.room), f"{after + 1}-0", "+", "COUNT", limit
    )
    out = [(int(eid.split(b"-", 1)[0]), fields[1]) for eid, fields in entries or []]
    too_old = bool(out) and out[0][0] != after + 1
    if any(data.endswith(HIDDEN_MARK) for _seq, data in out):
        shown = [Msg.from_json(seq, data) for seq, data in out]
        out = [(m.seq, m.data) for m in shown if m.hidden is None or m.hidden == viewer]
    return out, too_old


def _viewer(gw: Gateway, req: Request) -> str | None:
    auth = req.headers.get("authorization", "")
    if not auth.lower().startswith("bearer "):
        return None
    try:
        return verify_token(gw.secret, auth[7:].strip()).user
    except TokenError:
        return None


def new_cmid() -> str:
    return secrets.token_hex(8)
