"""``danmaku watch`` and ``danmaku send``: thin commands over the Python SDK."""

from __future__ import annotations

import argparse
import os
import sys

import orjson
import trio

from engine.client import (
    ClientError,
    DanmakuClient,
    Disconnected,
    Message,
    Nacked,
    Reconnected,
    Reset,
    Skipped,
)


def run(args: argparse.Namespace) -> int:
    if args.command == "watch":
        return trio.run(_watch, args)
    return trio.run(_send, args)


async def _watch(args: argparse.Namespace) -> int:
    count = 0
    try:
        async with DanmakuClient(args.url, token=args.token, dispatch_room=args.room) as client:
            await client.join(args.room)
            print(f"# watching {args.room} (Ctrl-C to stop)", file=sys.stderr, flush=True)
            async for event in client.events():
                if isinstance(event, Message):
                    if args.json:
                        print(orjson.dumps({
                            "seq": event.seq, "user": event.user, "name": event.name,
                            "ts": event.ts, "kind": event.kind, "body": event.body,
                        }).decode(), flush=True)
                    else:
                        text = event.body.get("text", "")
                        print(f"[{event.seq}] {event.name}: {text}", flush=True)
                    count += 1
                    if args.count and count >= args.count:
                        return 0
                elif isinstance(event, Skipped):
                    print(f"# skipped {event.first}..{event.last}", file=sys.stderr, flush=True)
                elif isinstance(event, Reset):
                    print(f"# reset ({event.reason}) at seq {event.seq}", file=sys.stderr,
                          flush=True)
                elif isinstance(event, Disconnected):
                    print(f"# disconnected ({event.code}); reconnecting", file=sys.stderr,
                          flush=True)
                elif isinstance(event, Reconnected):
                    print("# reconnected, resumed", file=sys.stderr, flush=True)
    except ClientError as exc:
        print(f"danmaku watch: {exc}", file=sys.stderr)
        return 1
    return 0


async def _send(args: argparse.Namespace) -> int:
    token = args.token or os.environ.get("DANMAKU_TOKEN")
    if not token:
        print("danmaku send: a token is needed (--token or DANMAKU_TOKEN)", file=sys.stderr)
        return 2
    try:
        async with DanmakuClient(
            args.url, token=token, dispatch_room=args.room, receive_events=False,
            max_reconnect_attempts=3,
        ) as client:
            await client.join(args.room)
            ack = await client.send(
                args.room, args.text, mode=args.mode, color=args.color, offset_ms=args.offset_ms
            )
    except Nacked as exc:
        extra = f" (retry after {exc.retry_after_ms} ms)" if exc.retry_after_ms else ""
        print(f"danmaku send: refused: {exc.code}: {exc.message}{extra}", file=sys.stderr)
        return 1
    except ClientError as exc:
        print(f"danmaku send: {exc}", file=sys.stderr)
        return 1
    print(f"seq={ack.seq}")
    return 0
