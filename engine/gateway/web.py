"""The viewer web page, served by the gateway: ``/``, ``/r/{room}``, ``/static/...``, ``/v1/rooms``.

The page itself is plain ES modules and CSS under ``static/`` (no build step); the player talks to
the engine only through the documented protocol (``static/danmaku-client.js``). This module
serves those files and one JSON endpoint for the room list:

- ``GET /``: the room list page; ``GET /r/{room}``: the player (``?replay=1`` for replay mode).
- ``GET /static/<path>``: files under ``static/`` only. A path with an empty, ``.``/``..`` or
  dot-file segment, a backslash or NUL, an unknown extension or anything that resolves outside
  the folder (a symlink) is a 404. Answers carry an ETag and ``Cache-Control: no-cache`` (there
  is no build step to fingerprint file names, so browsers revalidate: a 304 costs one round trip).
- ``GET /v1/rooms?limit=<1..1000>``: rooms with a hub on this gateway and at least one viewer
  anywhere, with their online counts (all gateways), busiest first.

``route`` answers these paths and returns None for every other one (``http_api`` goes on).
"""

from __future__ import annotations

import hashlib
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote

import orjson
import trio

from engine import protocol as p
from engine.gateway.http_server import Request, Response, query_int
from engine.redis import RedisError

if TYPE_CHECKING:
    from engine.gateway.app import Gateway

STATIC_DIR = Path(__file__).with_name("static")
MAX_STATIC_BYTES = 2 * 1024 * 1024

CONTENT_TYPES = {
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".html": "text/html; charset=utf-8",
    ".json": "application/json",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".txt": "text/plain; charset=utf-8",
    ".webmanifest": "application/manifest+json",
}

# The pages load only their own modules and styles; media may come from anywhere (`?src=`), the
# WebSocket from whichever gateway dispatch names.
PAGE_HEADERS = [
    ("content-security-policy",
     "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
     "media-src * data: blob:; connect-src 'self' ws: wss: http: https:; object-src 'none'; "
     "base-uri 'none'; frame-ancestors 'none'; form-action 'self'"),
    ("x-content-type-options", "nosniff"),
    # The player accepts `?token=`: never leak the address to other sites.
    ("referrer-policy", "no-referrer"),
]

ROOMS_DEFAULT_LIMIT = 100


@dataclass(frozen=True, slots=True)
class StaticFile:
    body: bytes
    etag: str
    content_type: str
    version: tuple[int, int]  # (mtime_ns, size) of the file when read


_cache: dict[str, StaticFile] = {}


async def route(gw: Gateway, req: Request) -> Response | None:
    """The web page's answer for ``req``, or None when the path is not one of the page's."""
    path = req.path
    if path == "/v1/rooms":
        if req.method != "GET":
            return _not_allowed(req)
        return await _room_list(gw, req)
    if path in ("/", "/index.html"):
        return _page(req, "index.html")
    if path.startswith("/r/"):
        room = unquote(path[3:])
        if not p.valid_room(room):
            return _html_error(404, "No such room: room ids are 1-64 of A-Z a-z 0-9 _ . : -")
        return _page(req, "player.html")
    if path.startswith("/static/"):
        if req.method != "GET":
            return _not_allowed(req)
        return _static(req, path[len("/static/"):])
    return None


# -- static files ------------------------------------------------------------------------------
def load_static(rel: str) -> StaticFile | None:
    """The file at ``rel`` (a decoded path relative to ``static/``), or None if not servable."""
    parts = rel.split("/")
    if any(
        not part or part.startswith(".") or "\\" in part or "\x00" in part for part in parts
    ):
        return None
    content_type = CONTENT_TYPES.get(Path(parts[-1]).suffix.lower())
    if content_type is None:
        return None
    path = STATIC_DIR.joinpath(*parts)
    try:
        # A symlink inside static/ must not lead out of it.
        if not path.resolve().is_relative_to(STATIC_DIR.resolve()):
            return None
        st = path.stat()
    except (OSError, ValueError):
        return None
    if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_STATIC_BYTES:
        return None
    version = (st.st_mtime_ns, st.st_size)
    cached = _cache.get(rel)
    if cached is not None and cached.version == version:
        return cached
    try:
        body = path.read_bytes()
    except OSError:
        return None
    etag = '"' + hashlib.sha256(body).hexdigest()[:20] + '"'
    entry = StaticFile(body, etag, content_type, version)
    _cache[rel] = entry
    return entry


def _static(req: Request, raw: str) -> Response:
    try:
        rel = unquote(raw, errors="strict")
    except UnicodeDecodeError:
        return _html_error(404, "not found")
    entry = load_static(rel)
    if entry is None:
        return _html_error(404, "not found")
    return _file_response(req, entry)


def _file_response(req: Request, entry: StaticFile, extra: list[tuple[str, str]] | None = None,
                   ) -> Response:
    headers = [("cache-control", "no-cache"), ("etag", entry.etag),
               ("x-content-type-options", "nosniff"), *(extra or [])]
    if _etag_matches(req.headers.get("if-none-match", ""), entry.etag):
        return Response(304, b"", content_type=entry.content_type, headers=headers)
    return Response(200, entry.body, content_type=entry.content_type, headers=headers)


def _etag_matches(header: str, etag: str) -> bool:
    if not header:
        return False
    candidates = {c.strip().removeprefix("W/") for c in header.split(",")}
    return "*" in candidates or etag in candidates


def _page(req: Request, name: str) -> Response:
    if req.method != "GET":
        return _not_allowed(req)
    entry = load_static(name)
    if entry is None:  # pragma: no cover - a broken install
        return _html_error(500, f"the page {name} is missing from this installation")
    return _file_response(req, entry, PAGE_HEADERS)


def _not_allowed(req: Request) -> Response:
    return Response(
        405,
        orjson.dumps({"error": {"code": "method_not_allowed",
                                "message": f"{req.method} not allowed on {req.path}"}}),
        headers=[("allow", "GET")],
    )


def _html_error(status: int, message: str) -> Response:
    text = message.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    body = (
        '<!doctype html><html lang="en"><meta charset="utf-8"><title>danmaku</title>'
        f'<p>{text}</p><p><a href="/">All rooms</a></p></html>'
    ).encode()
    return Response(status, body, content_type="text/html; charset=utf-8",
                    headers=[("x-content-type-options", "nosniff")])


# -- the room list -----------------------------------------------------------------------------
async def _room_list(gw: Gateway, req: Request) -> Response:
    limit = query_int(req, "limit", ROOMS_DEFAULT_LIMIT, 1, 1000)
    if limit is None:
        return Response(400, orjson.dumps(
            {"error": {"code": p.ERR_BAD_REQUEST, "message": "limit in 1..1000"}}))
    # Busiest local hubs first; each online count is one read of the room's online hash.
    local = sorted(gw.hubs.hubs.items(), key=lambda kv: (-len(kv[1].members), kv[0]))[:limit]
    online: dict[str, int] = {}

    async def count(room: str, here: int) -> None:
        try:
            online[room] = await gw.online(room)
        except RedisError:  # the list still shows this gateway's own viewers
            online[room] = here

    async with trio.open_nursery() as nursery:
        for room, hub in local:
            nursery.start_soon(count, room, len(hub.members))
    listed = sorted(
        ((online[room], room, len(hub.members)) for room, hub in local
         if online[room] > 0 or hub.members),
        key=lambda t: (-t[0], t[1]),
    )
    rooms = [{"room": room, "online": n, "here": here} for n, room, here in listed]
    return Response(200, orjson.dumps({"node": gw.node_id, "rooms": rooms}))
