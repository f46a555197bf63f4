"""``danmaku archiver``, ``danmaku replay`` and ``danmaku dashboard``.

``add_subcommands(subparsers)`` registers them; ``run(args)`` runs one and returns its exit code,
or None when the command is not one of these (engine/cli.py then carries on).

Exit codes as the rest of the CLI: 0 success, 1 runtime failure (archive or gateway
unreachable), 2 usage or configuration error.
"""

from __future__ import annotations

import argparse
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import replace
from typing import Any

import orjson
import trio

from engine.errors import ConfigError, DanmakuError

COMMANDS = frozenset({"archiver", "replay", "dashboard"})
DEFAULT_URL = "http://127.0.0.1:8080"


def add_subcommands(sub: Any) -> None:
    arch = sub.add_parser(
        "archiver", help="archive sequenced messages into ClickHouse (DANMAKU_ARCHIVE_DSN)"
    )
    arch.add_argument("--dsn", default=None,
                      help="chdb:///path or http(s)://host:8123/db (default $DANMAKU_ARCHIVE_DSN)")
    arch.add_argument("--metrics-port", type=int, default=None,
                      help="serve /metrics on this port (default 9464, 0 = off)")
    arch.add_argument("--config", help="TOML config file (also DANMAKU_CONFIG)")
    arch.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING (default INFO)")

    rep = sub.add_parser("replay", help="print a room's archived comments by video offset")
    rep.add_argument("room")
    rep.add_argument("--from", dest="from_", default="0", metavar="OFFSET",
                     help="video offset to start at, e.g. 00:10:00 (inclusive; default 0)")
    rep.add_argument("--to", default=None, metavar="OFFSET",
                     help="video offset to stop at, e.g. 00:12:30 (exclusive; default: the end)")
    rep.add_argument("--json", action="store_true", help="one message object per line")
    rep.add_argument("--url", default=DEFAULT_URL, help="gateway URL (default %(default)s)")
    rep.add_argument("--dsn", default=None, help="read the archive directly instead")
    rep.add_argument("--limit", type=int, default=0, help="stop after N messages (0 = all)")

    dash = sub.add_parser("dashboard", help="write the analysts' dashboards as one HTML file")
    dash.add_argument("--room", default="", help="one room (default: all rooms)")
    dash.add_argument("--since", default="1h", help="window up to now: 15m, 1h, 2d (default 1h)")
    dash.add_argument("--html", required=True, help="where to write the report")
    dash.add_argument("--dsn", default=None,
                      help="archive DSN (default $DANMAKU_ARCHIVE_DSN, else the gateway)")
    dash.add_argument("--url", default=None,
                      help="fetch the report from a gateway's /dashboards instead")
    dash.add_argument("--limit", type=int, default=20, help="rows of the top-N tables")
    dash.add_argument("--config", help="TOML config file (also DANMAKU_CONFIG)")


def run(args: argparse.Namespace) -> int | None:
    if args.command not in COMMANDS:
        return None
    if args.command == "archiver":
        return _archiver(args)
    if args.command == "replay":
        return _replay(args)
    return _dashboard(args)


# ---- archiver ----------------------------------------------------------------------------------
def _archiver(args: argparse.Namespace) -> int:
    from engine.archive.service import run_archiver_process
    from engine.config import load_settings

    settings = load_settings(config_file=args.config)
    archive = settings.archive
    if args.dsn is not None:
        archive = replace(archive, dsn=args.dsn)
    if args.metrics_port is not None:
        archive = replace(archive, metrics_port=args.metrics_port)
    trio.run(run_archiver_process, replace(settings, archive=archive))
    return 0


# ---- replay ------------------------------------------------------------------------------------
def parse_offset_ms(text: str) -> int:
    """``HH:MM:SS[.mmm]``, ``MM:SS[.mmm]`` or seconds (``754.5``) -> ms."""
    parts = text.strip().split(":")
    if not 1 <= len(parts) <= 3 or not all(parts):
        raise ConfigError(f"bad offset {text!r} (e.g. 00:10:00, 10:00, 600)")
    try:
        seconds = float(parts[-1])
        minutes = int(parts[-2]) if len(parts) >= 2 else 0
        hours = int(parts[-3]) if len(parts) == 3 else 0
    except ValueError:
        raise ConfigError(f"bad offset {text!r} (e.g. 00:10:00, 10:00, 600)") from None
    if seconds < 0 or minutes < 0 or hours < 0 or (len(parts) >= 2 and seconds >= 60):
        raise ConfigError(f"bad offset {text!r}")
    return round(((hours * 60 + minutes) * 60 + seconds) * 1000)


def format_offset(ms: int) -> str:
    seconds, milli = divmod(ms, 1000)
    minutes, sec = divmod(seconds, 60)
    hours, minute = divmod(minutes, 60)
    return f"{hours:02d}:{minute:02d}:{sec:02d}.{milli:03d}"


def format_message(msg: dict[str, Any]) -> str:
    body = msg.get("body") or {}
    kind = msg.get("kind", "danmaku")
    tag = "" if kind == "danmaku" else f" [{kind}]"
    return (f"[{format_offset(int(body.get('offset_ms', 0)))}] #{msg.get('seq')}{tag} "
            f"{msg.get('name') or msg.get('user')}: {body.get('text', '')}")


def _replay(args: argparse.Namespace) -> int:
    from_ms = parse_offset_ms(args.from_)
    to_ms = parse_offset_ms(args.to) if args.to else 2**53
    if to_ms < from_ms:
        raise ConfigError("--to is before --from")
    try:
        if args.dsn:
            pages = trio.run(_replay_direct, args.room, from_ms, to_ms, args.limit, args.dsn)
        else:
            pages = _replay_http(args.url, args.room, from_ms, to_ms, args.limit)
    except (OSError, DanmakuError) as exc:
        print(f"danmaku replay: {exc}", file=sys.stderr)
        return 1
    out = sys.stdout
    for raw in pages:
        if args.json:
            out.write(raw.decode() + "\n")
        else:
            out.write(format_message(orjson.loads(raw)) + "\n")
    out.flush()
    return 0


PAGE = 1000


def _replay_http(url: str, room: str, from_ms: int, to_ms: int, limit: int) -> list[bytes]:
    base = _http_base(url)
    out: list[bytes] = []
    after_seq = 0
    while True:
        page = PAGE if not limit else min(PAGE, limit - len(out))
        query = urllib.parse.urlencode(
            {"from_ms": from_ms, "to_ms": to_ms, "limit": page, "after_seq": after_seq}
        )
        target = f"{base}/v1/rooms/{urllib.parse.quote(room)}/replay?{query}"
        try:
            with urllib.request.urlopen(target, timeout=30) as response:
                data = orjson.loads(response.read())
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")
            raise DanmakuError(f"{target}: HTTP {exc.code} {detail}") from None
        # Keep each message's bytes as the server sent them (re-serialised: same fields).
        out.extend(orjson.dumps(m) for m in data["msgs"])
        nxt = data.get("next")
        if not nxt or (limit and len(out) >= limit):
            return out
        from_ms, after_seq = int(nxt["from_ms"]), int(nxt["after_seq"])


async def _replay_direct(
    room: str, from_ms: int, to_ms: int, limit: int, dsn: str
) -> list[bytes]:
    from engine.archive.store import open_store

    store = open_store(dsn)
    out: list[bytes] = []
    after_seq = 0
    try:
        while True:
            page = PAGE if not limit else min(PAGE, limit - len(out))
            msgs = await store.replay(room, from_ms, to_ms, page, after_seq=after_seq)
            out.extend(msgs)
            if len(msgs) < page or (limit and len(out) >= limit):
                return out
            last = orjson.loads(msgs[-1])
            from_ms, after_seq = int(last["body"].get("offset_ms", 0)), int(last["seq"])
    finally:
        await store.aclose()


def _http_base(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme or "http")
    return f"{scheme}://{parts.netloc}"


# ---- dashboard ---------------------------------------------------------------------------------
def _dashboard(args: argparse.Namespace) -> int:
    from engine.archive.dashboards import parse_duration_ms
    from engine.config import load_settings

    parse_duration_ms(args.since)  # a usage error before any I/O
    settings = load_settings(config_file=args.config)
    dsn = args.dsn if args.dsn is not None else settings.archive.dsn
    try:
        if args.url or not dsn:
            page = _dashboard_http(args.url or DEFAULT_URL, args.room, args.since)
        else:
            page = trio.run(_dashboard_direct, dsn, args.room, args.since, args.limit)
    except (OSError, DanmakuError) as exc:
        print(f"danmaku dashboard: {exc}", file=sys.stderr)
        return 1
    with open(args.html, "w", encoding="utf-8") as handle:
        handle.write(page)
    print(f"wrote {args.html}", file=sys.stderr)
    return 0


def _dashboard_http(url: str, room: str, since: str) -> str:
    query = urllib.parse.urlencode({"room": room, "since": since})
    target = f"{_http_base(url)}/dashboards?{query}"
    try:
        with urllib.request.urlopen(target, timeout=60) as response:
            return str(response.read().decode())
    except urllib.error.HTTPError as exc:
        raise DanmakuError(f"{target}: HTTP {exc.code} {exc.read().decode()}") from None


async def _dashboard_direct(dsn: str, room: str, since: str, limit: int) -> str:
    from engine.archive.dashboards import run_all, window_params
    from engine.archive.report import render_report
    from engine.archive.store import open_store

    store = open_store(dsn)
    try:
        params = window_params(since=since, room=room, limit=limit)
        results = await run_all(store, params)
    finally:
        await store.aclose()
    return render_report(results, params, source=store.description, generated_ms=_now_ms())


def _now_ms() -> int:
    return int(time.time() * 1000)
