"""Logins and the admin HTTP API (documented in docs/security.md).

- ``POST /v1/login`` ``{"name","password"}`` -> ``{"token","user","role","expires_in"}``; 401 for
  any wrong name or password (one answer for all), 429 + ``Retry-After`` while locked out.
- Room administration, with ``Authorization: Bearer <token>``; the same actions and the same
  role checks as the WebSocket ``mod`` op (``rooms.moderation_actions``), so a streamer token can
  manage its rooms and an admin token every room:
  ``POST /v1/admin/rooms/{room}/actions`` (body: the fields of a ``mod`` op),
  ``GET|PUT /v1/admin/rooms/{room}/config``, ``GET|PUT /v1/admin/rooms/{room}/words``,
  ``GET /v1/admin/rooms/{room}/audit?count=``.
- Admin tokens only: ``POST /v1/admin/users/{user}/revoke`` (every token of the user issued
  until now is refused, and its connections everywhere are closed with 4003),
  ``POST /v1/admin/users/{user}/kick``, ``GET /v1/admin/audit?count=``.

Status codes: 200; 400 ``bad_request``; 401 ``unauthorized`` (no, bad, expired or revoked token);
403 ``unauthorized`` (a valid token whose role may not do this); 404; 405; 429; 503.
"""

from __future__ import annotations

import re
import weakref
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Final

import orjson

from engine import protocol as p
from engine.accounts import AccountError, AccountStore, kick_user, revoke_user
from engine.errors import TokenError
from engine.gateway import moderation_ops
from engine.gateway.http_api import error_response, json_response
from engine.gateway.http_server import MAX_BODY_BYTES, Request, Response, query_int
from engine.tokens import Identity, mint_token, verify_token
from rooms.moderation import words_key
from rooms.moderation_actions import (
    ModerationError,
    apply_action,
    audit_fields,
    audit_key,
    read_audit,
)

if TYPE_CHECKING:
    from engine.gateway.app import Gateway

_ROOM: Final = re.compile(r"^/v1/admin/rooms/([A-Za-z0-9_.:-]{1,64})/(actions|config|words|audit)$")
_USER: Final = re.compile(r"^/v1/admin/users/([^/]{1,64})/(revoke|kick)$")
_stores: weakref.WeakKeyDictionary[Gateway, AccountStore] = weakref.WeakKeyDictionary()


def accounts_of(gw: Gateway) -> AccountStore:
    store = _stores.get(gw)
    if store is None:
        s = gw.settings
        store = _stores[gw] = AccountStore(
            gw.shards, max_failures=s.login_max_failures, lockout_s=s.login_lockout_s,
            max_lockout_s=s.login_max_lockout_s,
        )
    return store


async def route(gw: Gateway, req: Request) -> Response:
    if req.path == "/v1/login":
        if req.method != "POST":
            return error_response(405, "method_not_allowed", "POST /v1/login")
        return await _login(gw, req)
    ident = await _authenticate(gw, req)
    if isinstance(ident, Response):
        return ident
    try:
        match = _ROOM.match(req.path)
        if match is not None:
            return await _room(gw, req, ident, match.group(1), match.group(2))
        match = _USER.match(req.path)
        if match is not None:
            return await _user(gw, req, ident, match.group(1), match.group(2))
        if req.path == "/v1/admin/audit" and req.method == "GET":
            _require_admin(ident)
            count = query_int(req, "count", 100, 1, 1000)
            if count is None:
                return error_response(400, p.ERR_BAD_REQUEST, "count in 1..1000")
            return json_response(200, {"entries": await read_audit(gw.shards, room=None,
                                                                   count=count)})
    except ModerationError as exc:
        status = 403 if exc.code == p.ERR_UNAUTHORIZED else 400
        return error_response(status, exc.code, exc.message)
    return error_response(404, "not_found", f"no such endpoint: {req.path}")


async def _login(gw: Gateway, req: Request) -> Response:
    try:
        data = orjson.loads(req.body)
    except orjson.JSONDecodeError:
        return error_response(400, p.ERR_BAD_REQUEST, "body is not valid JSON")
    name = data.get("name") if isinstance(data, dict) else None
    password = data.get("password") if isinstance(data, dict) else None
    if not isinstance(name, str) or not isinstance(password, str):
        return error_response(400, p.ERR_BAD_REQUEST, 'body must be {"name":..,"password":..}')
    try:
        account = await accounts_of(gw).login(name, password, peer=req.peer)
    except AccountError as exc:
        headers = []
        if exc.retry_after_ms is not None:
            headers.append(("retry-after", str(max(1, -(-exc.retry_after_ms // 1000)))))
        return error_response(exc.status, exc.code, exc.message, headers)
    ttl = gw.settings.login_token_ttl_s
    token = mint_token(
        gw.secret, user=account.name, name=account.display, role=account.role, ttl_s=ttl,
        rooms=list(account.rooms) if account.rooms else None,
    )
    return json_response(
        200, {"token": token, "user": account.name, "role": account.role, "expires_in": ttl}
    )


async def _authenticate(gw: Gateway, req: Request) -> Identity | Response:
    auth = req.headers.get("authorization", "")
    if not auth.lower().startswith("bearer "):
        return error_response(401, p.ERR_UNAUTHORIZED, "Authorization: Bearer <token> required")
    try:
        ident = verify_token(gw.secret, auth[7:].strip())
    except TokenError as exc:
        return error_response(401, p.ERR_UNAUTHORIZED, str(exc))
    if await moderation_ops.token_revoked(gw, ident):
        return error_response(401, p.ERR_UNAUTHORIZED, "token revoked")
    return ident


def _require_admin(ident: Identity) -> None:
    if ident.role != "admin":
        raise ModerationError(p.ERR_UNAUTHORIZED, "this needs an admin token")


def _body(req: Request) -> dict[str, Any]:
    try:
        data = orjson.loads(req.body or b"{}")
    except orjson.JSONDecodeError:
        raise ModerationError(p.ERR_BAD_REQUEST, "body is not valid JSON") from None
    if not isinstance(data, dict):
        raise ModerationError(p.ERR_BAD_REQUEST, "body must be a JSON object")
    return data


async def _action(
    gw: Gateway, ident: Identity, room: str, fields: dict[str, Any]
) -> dict[str, object]:
    # The same validation as the WebSocket op, with the HTTP body limit instead of the frame's.
    limits = replace(gw.limits, max_frame_bytes=MAX_BODY_BYTES + 1024)
    event = p.decode_client_frame(
        orjson.dumps({**fields, "op": "mod", "room": room}), limits, extensions=True
    )
    if isinstance(event, p.ProtocolError):
        raise ModerationError(event.code, event.message)
    assert isinstance(event, p.Mod)

    async def kick(user: str, kick_room: str | None, reason: str) -> int:
        return await kick_user(gw.shards, user, kick_room, reason)

    return await apply_action(gw.shards, ident, event, via="http", kick=kick)


async def _room(gw: Gateway, req: Request, ident: Identity, room: str, what: str) -> Response:
    method = req.method
    if what == "actions" and method == "POST":
        return json_response(200, await _action(gw, ident, room, _body(req)))
    if what == "config" and method == "GET":
        return json_response(200, await _action(gw, ident, room, {"action": "get_config"}))
    if what == "config" and method == "PUT":
        config = _body(req)
        return json_response(
            200, await _action(gw, ident, room, {"action": "config", "config": config})
        )
    if what == "words" and method == "PUT":
        words = _body(req).get("words")
        return json_response(
            200, await _action(gw, ident, room, {"action": "words_set", "words": words})
        )
    if what == "words" and method == "GET":
        await _action(gw, ident, room, {"action": "get_config"})  # the same role check
        members = await gw.shards.client_for(room).execute("SMEMBERS", words_key(room))
        return json_response(200, {"words": sorted(w.decode() for w in members)})
    if what == "audit" and method == "GET":
        await _action(gw, ident, room, {"action": "get_config"})
        count = query_int(req, "count", 100, 1, 1000)
        if count is None:
            return error_response(400, p.ERR_BAD_REQUEST, "count in 1..1000")
        return json_response(200, {"entries": await read_audit(gw.shards, room=room,
                                                               count=count)})
    return error_response(405, "method_not_allowed", f"{method} not allowed on {req.path}")


async def _user(gw: Gateway, req: Request, ident: Identity, user: str, what: str) -> Response:
    _require_admin(ident)
    if req.method != "POST":
        return error_response(405, "method_not_allowed", f"{req.method} not allowed")
    reason = _body(req).get("reason")
    reason = reason[:200] if isinstance(reason, str) else what
    if what == "revoke":
        nodes = await revoke_user(gw.shards, user, reason=reason,
                                  ttl_s=gw.settings.revocation_ttl_s)
    else:
        nodes = await kick_user(gw.shards, user, None, reason)
    fields = audit_fields(actor=ident, role=ident.role, room=None, action=what, target=user,
                          via="http", reason=reason)
    await gw.shards.client_for_index(0).execute(
        "XADD", audit_key(None, cluster=gw.shards.cluster), "MAXLEN", "~", 100_000, "*", *fields
    )
    return json_response(200, {"user": user, "gateways": nodes})
