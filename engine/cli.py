"""The ``danmaku`` command line.

Exit codes: 0 success, 1 runtime failure (e.g. a nack, a connection refused), 2 usage or
configuration error.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import trio

from engine.config import load_settings, resolve_keyring
from engine.errors import DanmakuError
from engine.tokens import ROLES, mint_token


def _common_engine_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="TOML config file (also DANMAKU_CONFIG)")
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING (default INFO)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="danmaku", description="Live-streaming danmaku and room broadcast engine."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    up = sub.add_parser("up", help="run the embedded all-in-one engine (nothing to configure)")
    up.add_argument("--host", default="127.0.0.1", help="listen address (default 127.0.0.1)")
    up.add_argument("--port", type=int, default=8080, help="listen port (default 8080, 0 = any)")
    up.add_argument("--data-dir", default=None, help="where data lives (default ./var)")
    _common_engine_args(up)

    gw = sub.add_parser("gateway", help="run a gateway (configured by DANMAKU_* / --config)")
    gw.add_argument("--host", default=None)
    gw.add_argument("--port", type=int, default=None)
    _common_engine_args(gw)

    wk = sub.add_parser("worker", help="run a room worker (configured by DANMAKU_* / --config)")
    _common_engine_args(wk)

    tok = sub.add_parser("token", help="print a token the running engine accepts")
    tok.add_argument("--user", required=True, help="user id (the token's sub)")
    tok.add_argument("--name", default=None, help="display name (default: the user id)")
    tok.add_argument("--role", default="viewer", choices=ROLES)
    tok.add_argument("--ttl", type=int, default=86_400, help="lifetime in seconds (default 1 day)")
    tok.add_argument("--room", action="append", default=None, help="limit to a room (repeatable)")
    tok.add_argument("--data-dir", default=None, help="the engine's data dir (default ./var)")
    tok.add_argument("--config", help="TOML config file")

    watch = sub.add_parser("watch", help="print a room's live comments; resumes after reconnects")
    watch.add_argument("room")
    watch.add_argument("--url", default="http://127.0.0.1:8080", help="gateway HTTP or ws URL")
    watch.add_argument("--token", default=None, help="token (default: watch as a guest)")
    watch.add_argument("--json", action="store_true", help="one JSON object per line")
    watch.add_argument("--count", type=int, default=0, help="exit after N messages (0 = never)")

    send = sub.add_parser("send", help="send one comment and print its seq")
    send.add_argument("room")
    send.add_argument("text")
    send.add_argument("--url", default="http://127.0.0.1:8080", help="gateway HTTP or ws URL")
    send.add_argument("--token", default=None, help="token (default: $DANMAKU_TOKEN)")
    send.add_argument("--mode", default="scroll", choices=("scroll", "top", "bottom"))
    send.add_argument("--color", default="#ffffff")
    send.add_argument("--offset-ms", type=int, default=0)

    from engine.accounts import add_cli

    add_cli(sub)  # danmaku user add/passwd/disable/enable

    from engine.archive import cli as archive_cli

    archive_cli.add_subcommands(sub)  # danmaku archiver / replay / dashboard (issue 3)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, str(getattr(args, "log_level", "WARNING")).upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return _run(args)
    except DanmakuError as exc:
        print(f"danmaku: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _run(args: argparse.Namespace) -> int:
    from engine import runner
    from engine.archive import cli as archive_cli

    archived = archive_cli.run(args)
    if archived is not None:
        return archived

    if args.command == "token":
        overrides: dict[str, Any] = {}
        settings = load_settings(config_file=args.config, overrides=overrides)
        if args.data_dir:
            settings = replace(settings, data_dir=args.data_dir)
        print(
            mint_token(
                resolve_keyring(settings), user=args.user, name=args.name, role=args.role,
                ttl_s=args.ttl, rooms=args.room,
            )
        )
        return 0
    if args.command == "user":
        from engine import accounts

        return accounts.run_cli(args)
    if args.command in {"watch", "send"}:
        from engine import cli_client

        return cli_client.run(args)
    settings = load_settings(config_file=args.config)
    from engine.gc_policy import tune_for_server

    tune_for_server()  # up, gateway, worker: long-running servers
    if args.command == "up":
        settings = replace(
            settings,
            data_dir=args.data_dir or settings.data_dir,
            gateway=replace(settings.gateway, host=args.host, port=args.port),
        )
        trio.run(runner.run_embedded, settings)
        return 0
    if args.command == "gateway":
        gs = settings.gateway
        settings = replace(
            settings,
            gateway=replace(
                gs,
                host=args.host if args.host is not None else gs.host,
                port=args.port if args.port is not None else gs.port,
            ),
        )
        trio.run(runner.run_gateway_process, settings)
        return 0
    if args.command == "worker":
        trio.run(runner.run_worker_process, settings)
        return 0
    raise AssertionError(args.command)  # pragma: no cover - argparse enforces the choices


if __name__ == "__main__":
    sys.exit(main())
