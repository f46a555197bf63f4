"""The gateway's archive endpoints: ``GET /v1/rooms/{room}/replay`` and ``GET /dashboards``.

``route`` answers these two paths and returns None for every other one (the gateway's router
then carries on). Without an archive (``gw.archive is None``) both answer 503
``archive_unavailable``; so does an archive that is down.

Replay (docs/protocol.md, 9.8): ``from_ms`` (default 0) and ``to_ms`` (default 2^53) bound the
video offset as ``from_ms <= offset_ms < to_ms``; ``limit`` is 1..10000 (default 1000);
``after_seq`` continues a page. The answer is
``{"room":r,"from_ms":a,"to_ms":b,"msgs":[...],"next":{"from_ms":x,"after_seq":s}|null}``
with the message objects exactly as live viewers received them, ordered by (offset_ms, seq).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import orjson

from engine import protocol as p
from engine.archive.dashboards import load_dashboards, run_all, window_params
from engine.archive.report import CSP, render_report
from engine.errors import ConfigError, DanmakuError
from engine.gateway.http_server import Request, Response, query_int

if TYPE_CHECKING:
    from engine.gateway.app import Gateway

_REPLAY_PATH = re.compile(r"^/v1/rooms/([A-Za-z0-9_.:-]{1,64})/replay$")

MAX_OFFSET_MS = 2**53
DEFAULT_LIMIT = 1000
MAX_LIMIT = 10_000
ARCHIVE_UNAVAILABLE = "archive_unavailable"


def _error(status: int, code: str, message: str) -> Response:
    return Response(status, orjson.dumps({"error": {"code": code, "message": message}}))


async def route(gw: Gateway, req: Request) -> Response | None:
    path = req.path
    if path == "/dashboards":
        return await dashboards(gw, req)
    match = _REPLAY_PATH.match(path)
    if match is None:
        return None
    if req.method != "GET":
        return _error(405, "method_not_allowed", f"{req.method} not allowed on {path}")
    return await replay(gw, req, match.group(1))


async def replay(gw: Gateway, req: Request, room: str) -> Response:
    from_ms = query_int(req, "from_ms", 0, 0, MAX_OFFSET_MS)
    to_ms = query_int(req, "to_ms", MAX_OFFSET_MS, 0, MAX_OFFSET_MS)
    limit = query_int(req, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
    after_seq = query_int(req, "after_seq", 0, 0, MAX_OFFSET_MS)
    if from_ms is None or to_ms is None or limit is None or after_seq is None:
        return _error(
            400, p.ERR_BAD_REQUEST,
            f"from_ms and to_ms in 0..2^53, limit in 1..{MAX_LIMIT}, after_seq >= 0",
        )
    if to_ms < from_ms:
        return _error(400, p.ERR_BAD_REQUEST, "to_ms must not be below from_ms")
    archive = gw.archive
    if archive is None:
        return _error(503, ARCHIVE_UNAVAILABLE, "this gateway has no archive configured")
    try:
        msgs = await archive.replay(room, from_ms, to_ms, limit, after_seq=after_seq)
    except DanmakuError as exc:
        return _error(503, ARCHIVE_UNAVAILABLE, f"archive unavailable: {exc}")
    nxt = b"null"
    if len(msgs) == limit:
        last = orjson.loads(msgs[-1])
        offset = (last.get("body") or {}).get("offset_ms", 0)
        nxt = orjson.dumps({"from_ms": offset, "after_seq": last["seq"]})
    body = b"".join(
        (
            b'{"room":', orjson.dumps(room), b',"from_ms":', str(from_ms).encode(),
            b',"to_ms":', str(to_ms).encode(), b',"msgs":[', b",".join(msgs), b'],"next":',
            nxt, b"}",
        )
    )
    return Response(200, body)


async def dashboards(gw: Gateway, req: Request) -> Response:
    if req.method != "GET":
        return _error(405, "method_not_allowed", f"{req.method} not allowed on /dashboards")
    archive = gw.archive
    if archive is None:
        return _error(503, ARCHIVE_UNAVAILABLE, "this gateway has no archive configured")
    room = (req.query.get("room") or [""])[0]
    if room and not p.valid_room(room):
        return _error(400, p.ERR_BAD_REQUEST, "bad room id")
    try:
        params = window_params(since=(req.query.get("since") or ["1h"])[0], room=room)
        results = await run_all(archive, params, load_dashboards())
    except ConfigError as exc:
        return _error(400, p.ERR_BAD_REQUEST, str(exc))
    except DanmakuError as exc:
        return _error(503, ARCHIVE_UNAVAILABLE, f"archive unavailable: {exc}")
    page = render_report(results, params, source=f"gateway {gw.node_id}")
    return Response(
        200, page.encode(), content_type="text/html; charset=utf-8",
        headers=[("content-security-policy", CSP), ("cache-control", "no-store")],
    )
