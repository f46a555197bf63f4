"""Steady comment sender for the fan-out benchmark (one trio process, a few WebSockets).

    python loadtest/sender.py --url ws://127.0.0.1:8080/ws --secret S --room bench \
        --rate 200 --duration 30 [--connections K]

Each connection mints an admin token (``engine.tokens.mint_token``), says hello, joins the room
and sends comments without waiting for acks. The schedule is fixed in advance on trio's clock:
comment j of connection k is due at ``start + (j * K + k) / rate``; a connection that fell behind
sends the overdue ones at once (catch-up), so the long-run rate is exact and sleep drift does not
accumulate. The text is ``t=<unix time in microseconds> `` padded to 40 characters: the swarm
reads that wall-clock time back out of every delivered batch to measure send-to-receive latency.

``{"event":"ready"}`` goes to stderr once every connection has joined (sending starts right
after); ONE JSON line goes to stdout at the end: sent, acks, nacks by code, ack latency (send to
ack on the same connection; sends within --warmup .. --warmup + --measure), the worst ack
latency of each second of sending, the achieved rate and how far the schedule slipped.
"""

from __future__ import annotations

import argparse
import math
import secrets
import sys
import time
from dataclasses import dataclass, field

import orjson
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, open_websocket_url

from engine.tokens import mint_token

TEXT_CHARS = 40
ACK_GRACE_S = 5.0


@dataclass
class Stats:
    sent: int = 0
    acked: int = 0
    nacks: dict[str, int] = field(default_factory=dict)
    batches: int = 0
    errors: list[str] = field(default_factory=list)
    ack_latency_s: list[float] = field(default_factory=list)  # sends after the warmup
    ack_worst_by_second: dict[int, float] = field(default_factory=dict)
    max_slip_s: float = 0.0
    closed: list[str] = field(default_factory=list)


def comment_text() -> str:
    head = f"t={time.time_ns() // 1000} "
    return head + "x" * max(0, TEXT_CHARS - len(head))


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.floor(q * len(ordered)))]


class SenderConn:
    def __init__(self, args: argparse.Namespace, index: int, stats: Stats, run_id: str) -> None:
        self.args = args
        self.index = index
        self.stats = stats
        self.run_id = run_id
        self.pending: dict[str, float] = {}
        self.joined = trio.Event()
        self.done_sending = False
        self.all_answered = trio.Event()
        self.start = 0.0

    async def run(self, ready: trio.Semaphore, go: trio.Event, start: list[float]) -> None:
        args = self.args
        token = mint_token(
            args.secret, user=f"bench-sender-{self.index}", role="admin", ttl_s=3600
        )
        async with open_websocket_url(args.url, message_queue_size=4096) as ws:
            await ws.send_message(
                orjson.dumps({"op": "hello", "token": token, "client": "bench-sender/1"}).decode()
            )
            await ws.send_message(orjson.dumps({"op": "join", "room": args.room}).decode())
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._reader, ws, nursery.cancel_scope)
                await self.joined.wait()
                ready.release()
                await go.wait()
                self.start = start[0]
                await self._writer(ws, start[0])
                self.done_sending = True
                if not self.pending:
                    self.all_answered.set()
                with trio.move_on_after(ACK_GRACE_S):
                    await self.all_answered.wait()
                nursery.cancel_scope.cancel()

    async def _reader(self, ws: WebSocketConnection, scope: trio.CancelScope) -> None:
        stats = self.stats
        try:
            while True:
                msg = await ws.get_message()
                if isinstance(msg, str) and msg.startswith('{"op":"batch"'):
                    stats.batches += 1
                    continue
                obj = orjson.loads(msg)
                op = obj.get("op")
                if op == "ack":
                    started = self.pending.pop(obj.get("cmid", ""), None)
                    if started is not None:
                        stats.acked += 1
                        took = trio.current_time() - started
                        second = int(started - self.start)
                        worst = stats.ack_worst_by_second
                        worst[second] = max(worst.get(second, 0.0), took)
                        window = started - self.start - self.args.warmup
                        if window >= 0 and (not self.args.measure or window < self.args.measure):
                            stats.ack_latency_s.append(took)
                elif op == "nack":
                    self.pending.pop(obj.get("cmid", ""), None)
                    code = str(obj.get("code"))
                    stats.nacks[code] = stats.nacks.get(code, 0) + 1
                if self.done_sending and not self.pending:
                    self.all_answered.set()
                if op == "joined":
                    self.joined.set()
                elif op == "error" and len(stats.errors) < 5:
                    stats.errors.append(msg if isinstance(msg, str) else msg.decode())
        except ConnectionClosed as exc:
            stats.closed.append(str(exc.reason))
            scope.cancel()

    async def _writer(self, ws: WebSocketConnection, start: float) -> None:
        args = self.args
        k, conns, rate = self.index, args.connections, args.rate
        end = start + args.duration
        stats = self.stats
        j = 0
        while True:
            due = start + (j * conns + k) / rate
            if due >= end:
                return
            now = trio.current_time()
            if due > now:
                await trio.sleep_until(due)
            else:
                stats.max_slip_s = max(stats.max_slip_s, now - due)
            cmid = f"{self.run_id}-{k}-{j}"
            frame = orjson.dumps(
                {
                    "op": "send",
                    "room": args.room,
                    "cmid": cmid,
                    "body": {"text": comment_text(), "mode": "scroll", "color": "#ffffff"},
                }
            ).decode()
            self.pending[cmid] = trio.current_time()
            try:
                await ws.send_message(frame)
            except ConnectionClosed:
                del self.pending[cmid]
                return  # the reader records the close reason
            stats.sent += 1
            j += 1


async def main_async(args: argparse.Namespace) -> dict[str, object]:
    stats = Stats()
    run_id = secrets.token_hex(4)
    conns = [SenderConn(args, k, stats, run_id) for k in range(args.connections)]
    ready = trio.Semaphore(0)
    go = trio.Event()
    start = [0.0]
    with trio.move_on_after(args.duration + 60):
        async with trio.open_nursery() as nursery:
            for conn in conns:
                nursery.start_soon(conn.run, ready, go, start)
            with trio.fail_after(30):
                for _ in conns:
                    await ready.acquire()
            print('{"event":"ready"}', file=sys.stderr, flush=True)
            start[0] = trio.current_time() + 0.01
            go.set()
    elapsed = args.duration
    lat = stats.ack_latency_s
    p50, p99 = percentile(lat, 0.50), percentile(lat, 0.99)
    return {
        "connections": args.connections,
        "rate_target": args.rate,
        "duration_s": args.duration,
        "sent": stats.sent,
        "acked": stats.acked,
        "nacks": stats.nacks,
        "unanswered": sum(len(c.pending) for c in conns),
        "rate_achieved": round(stats.sent / elapsed, 1),
        "ack_latency_ms": {
            "p50": None if p50 is None else round(p50 * 1000, 2),
            "p99": None if p99 is None else round(p99 * 1000, 2),
            "max": round(max(lat) * 1000, 2) if lat else None,
        },
        "ack_worst_ms_by_second": [
            round(stats.ack_worst_by_second.get(sec, 0.0) * 1000)
            for sec in range(int(args.duration) + 1)
        ],
        "max_slip_ms": round(stats.max_slip_s * 1000, 2),
        "batches_received": stats.batches,
        "errors": stats.errors,
        "closed": stats.closed,
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="ws://127.0.0.1:8080/ws")
    parser.add_argument("--secret", required=True, help="the gateway's DANMAKU_SECRET")
    parser.add_argument("--room", default="bench")
    parser.add_argument("--rate", type=float, default=200.0, help="comments per second, total")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of sending")
    parser.add_argument("--warmup", type=float, default=0.0,
                        help="leave the first seconds' sends out of the ack latency percentiles")
    parser.add_argument("--measure", type=float, default=0.0,
                        help="ack latency percentiles only for sends in the MEASURE seconds "
                        "after the warmup (0: until the end)")
    parser.add_argument(
        "--connections", type=int, default=0,
        help="sender connections (default: one per 100 comments/s, so the gateway's "
        "per-connection flood limit is never the bound)",
    )
    args = parser.parse_args(argv)
    if args.connections <= 0:
        args.connections = max(1, math.ceil(args.rate / 100))
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    result = trio.run(main_async, args)
    print(orjson.dumps(result).decode(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
