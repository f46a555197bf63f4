"""Soak test (issue 4): churn, reconnect storms and slow viewers against a 2-gateway engine.

    flock /tmp/danmaku-bench.lock python loadtest/soak.py              # 10 minutes (default)
    python loadtest/soak.py --minutes 1.5 --viewers 200 --storm-every 40   # a quick check

Everything on 127.0.0.1, started fresh: a private redis-server (appendonly off), two
``danmaku gateway`` processes and ``--workers`` (default 2) ``danmaku worker`` processes. The
clients run in this process (one trio run) on the engine's client SDK (``engine.client``):

- **viewers** (``--viewers``, default 700): guests, each on one gateway (alternating) and one
  room (``--rooms``); each lives an exponential time (mean ``--lifetime-s``), then leaves and a
  new viewer takes its place (churn). ``--slow-fraction`` (5 %) of them read nothing for
  ``--slow-pause-s`` after joining, then slowly (``--slow-read-s`` per message), on sockets
  with a small receive buffer (``--slow-rcvbuf``), so that the gateway's queue for them passes
  its shedding threshold and it sheds plain danmaku to them (``skipped``); slow viewers live
  longer (4x).
- **senders**: two per room (one on each gateway, ``streamer`` tokens so they may send gifts),
  together ``--rate`` messages/s per room on a fixed schedule, ``--reliable-fraction`` of them
  ``gift``/``superchat`` (never shed), each sent with a cmid and awaited until its ``ack``; the
  SDK resends the same cmid after an ack timeout and after every reconnect.
- **reconnect storms**: every ``--storm-every`` seconds one gateway (alternately, or those of
  ``--storm-gateways``) is killed (SIGKILL and SIGTERM alternately) and restarted on the same
  port: all its viewers and senders drop at once and resume with ``since`` (the SDK does it).
- gateways' RSS (and the workers', redis's and this process's) sampled every ``--sample-s``.

After ``--minutes`` of sending, the senders stop and wait for their last acks; every viewer
then gets up to ``--drain-s`` to reach its room's last acked seq (slow viewers stop dawdling),
and everything is closed. Checks (any violation: exit code 1):

1. per viewer, from its first ``joined`` (the room's seq then) to its last event, every seq
   came as a message or inside ``skipped``: no hole, no ``reset``; the SDK reports no
   hole it had to repair (``holes_detected``) and no protocol violation;
2. no ``skipped`` range covers an acked gift or superchat (any viewer);
3. no ``skipped`` range covers any acked seq for a viewer that is not slow;
4. every viewer still there at the end reached its room's last acked seq;
5. every send was acked (no ``SendTimeout``, no nack);
6. each gateway's RSS stays flat: per process lifetime (a restarted gateway starts a new
   series), after ``--rss-warmup-s``, the fitted growth over the series is under
   ``max(--rss-max-growth-pct of its first sample, --rss-max-growth-mb)``.

The JSON goes to ``loadtest/results/soak-<time>.json`` (gitignored), a summary to stdout, child
logs to ``loadtest/results/logs/soak-<time>/``.
"""

from __future__ import annotations

import argparse
import bisect
import contextvars
import functools
import logging
import math
import os
import random
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import trio

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from engine.client import (  # noqa: E402
    ClientError,
    DanmakuClient,
    Disconnected,
    Joined,
    Message,
    Nacked,
    Reconnected,
    Reset,
    SendTimeout,
    Skipped,
)
from engine.embedded_redis import RedisProcess, pick_free_port  # noqa: E402
from engine.tokens import mint_token  # noqa: E402
from loadtest import soak_whatif  # noqa: E402
from loadtest.fanout_bench import (  # noqa: E402
    RESULTS,
    cpu_seconds,
    engine_digest,
    machine_info,
    raise_nofile,
    rss_kb,
    stop_process,
    wait_healthy,
)

RELIABLE_KINDS = ("gift", "superchat")
CLI = [sys.executable, "-m", "engine.cli"]


# ---- engine processes --------------------------------------------------------------------------
@dataclass
class GatewayProc:
    index: int
    port: int
    proc: subprocess.Popen[bytes]
    started_at: float  # trio clock
    generation: int = 0


class Engine:
    """redis + workers + two gateways on fixed ports; gateways can be killed and restarted."""

    def __init__(
        self, tmp: Path, log_dir: Path, secret: str, workers: int, whatif: str | None = None,
        gateway_env: dict[str, str] | None = None,
    ) -> None:
        self.tmp = tmp
        self.whatif = whatif
        self.gateway_env = gateway_env or {}
        self.log_dir = log_dir
        self.redis = RedisProcess(tmp / "redis", appendonly=False)
        self.secret = secret
        self.n_workers = workers
        self.workers: list[subprocess.Popen[bytes]] = []
        self.gateways: list[GatewayProc] = []
        self.env: dict[str, str] = {}

    def _spawn(
        self, args: list[str], log_name: str, env: dict[str, str]
    ) -> subprocess.Popen[bytes]:
        cmd = [*CLI, *args]
        if args == ["gateway"] and self.whatif:
            cmd = [sys.executable, str(REPO / "loadtest" / "soak_whatif.py"), self.whatif]
        with open(self.log_dir / log_name, "ab") as log:
            return subprocess.Popen([*cmd, "--log-level", "WARNING"], env=env, cwd=REPO,
                                    stdout=log, stderr=subprocess.STDOUT)

    def start(self, now: float) -> None:
        self.redis.start()
        self.env = {k: v for k, v in os.environ.items()
                    if not k.startswith("DANMAKU_") or k.startswith("DANMAKU_SOAK_")}
        self.env.update({
            "DANMAKU_REDIS_URLS": self.redis.url,
            "DANMAKU_SECRET": self.secret,
            "DANMAKU_DATA_DIR": str(self.tmp / "data"),
            "DANMAKU_GATEWAY_HOST": "127.0.0.1",
            "DANMAKU_ARCHIVE_DSN": "off",
            "DANMAKU_SOAK_TRACEMALLOC_DIR": str(self.log_dir),
        })
        for i in range(self.n_workers):
            self.workers.append(self._spawn(["worker"], f"worker{i}.log", self.env))
        for i in range(2):
            port = pick_free_port()
            self.gateways.append(GatewayProc(i, port, self._start_gateway(i, port), now))
        for gw in self.gateways:
            wait_healthy(gw.port, gw.proc)

    def _start_gateway(self, index: int, port: int) -> subprocess.Popen[bytes]:
        env = {**self.env, **self.gateway_env, "DANMAKU_GATEWAY_PORT": str(port)}
        return self._spawn(["gateway"], f"gateway{index}.log", env)

    def kill_gateway(self, gw: GatewayProc, sig: signal.Signals) -> dict[str, Any]:
        """Blocking (run it in a thread): signal the gateway and reap it."""
        t0 = time.monotonic()
        old_pid = gw.proc.pid
        gw.proc.send_signal(sig)
        try:
            gw.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            gw.proc.kill()
            gw.proc.wait()
        return {"gateway": gw.index, "signal": sig.name, "old_pid": old_pid,
                "exit_s": round(time.monotonic() - t0, 3), "exit_code": gw.proc.returncode}

    def start_again(self, gw: GatewayProc) -> None:
        """Blocking: a new gateway process on the same port, until it answers /healthz."""
        gw.proc = self._start_gateway(gw.index, gw.port)
        gw.generation += 1
        wait_healthy(gw.port, gw.proc, timeout_s=30)

    def stop(self) -> None:
        for gw in self.gateways:
            stop_process(gw.proc)
        for w in self.workers:
            stop_process(w)
        self.redis.stop()


# Slow viewers get a small receive buffer (set before connect, so the window stays small):
# otherwise the kernel's loopback buffers (the gateway's send buffer grows to megabytes with a
# 64 KB MSS) would hold minutes of a slow viewer's backlog before the gateway's own queue fills.
SMALL_RCVBUF: contextvars.ContextVar[int] = contextvars.ContextVar("small_rcvbuf", default=0)


class SoakSocketFactory(trio.abc.SocketFactory):
    """trio's sockets as usual, with SO_RCVBUF set in tasks where SMALL_RCVBUF is set."""

    def socket(
        self,
        family: socket.AddressFamily | int = socket.AF_INET,
        type: socket.SocketKind | int = socket.SOCK_STREAM,  # trio's parameter names
        proto: int = 0,
    ) -> trio.socket.SocketType:
        sock = trio.socket.from_stdlib_socket(socket.socket(family, type, proto))
        size = SMALL_RCVBUF.get()
        if size:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)
        return sock


async def poll_until(predicate: Callable[[], bool], period_s: float = 0.2) -> None:
    """Checks state that many tasks change (counted, not signalled) every ``period_s``."""
    while True:
        if predicate():
            return
        await trio.sleep(period_s)


class SdkLogCount(logging.Handler):
    """Counts the SDK's log records by message template (its watchdog's reconnects, ...)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.counts: Counter[str] = Counter()

    def emit(self, record: logging.LogRecord) -> None:
        self.counts[str(record.msg)] += 1


# ---- bookkeeping --------------------------------------------------------------------------------
@dataclass
class Viewer:
    vid: int
    room: str
    gateway: int
    slow: bool
    lifetime_s: float
    start: int | None = None  # the room's seq at the first joined: subscribed for seqs > start
    last: int | None = None  # the last seq delivered or skipped
    delivered: int = 0
    skipped: list[tuple[int, int]] = field(default_factory=list)
    holes: list[tuple[int, int]] = field(default_factory=list)
    resets: list[dict[str, Any]] = field(default_factory=list)
    disconnects: Counter[int] = field(default_factory=Counter)
    reconnects: int = 0
    reconnected_at: float = -math.inf  # trio time of the last Reconnected event
    sdk_holes: int = 0
    sdk_duplicates: int = 0
    sdk_violations: int = 0
    connect_failures: int = 0
    error: str | None = None
    alive: bool = False  # joined and not yet left
    end_alive: bool = False  # still there when the run ended
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)


@dataclass
class Acked:
    seqs: list[int] = field(default_factory=list)  # every acked seq (sorted at the end)
    reliable: list[int] = field(default_factory=list)


class Soak:
    def __init__(self, args: argparse.Namespace, engine: Engine) -> None:
        self.args = args
        self.engine = engine
        self.rng = random.Random(args.seed)
        self.rooms = [f"soak{i}" for i in range(args.rooms)]
        self.viewers: list[Viewer] = []
        self.next_vid = 0
        self.acked: dict[str, Acked] = {r: Acked() for r in self.rooms}
        self.ack_lat_ms: Counter[int] = Counter()
        self.deliver_lat_ms: Counter[int] = Counter()  # viewers that are not slow
        self.slow_lat_ms: Counter[int] = Counter()
        self.sent = 0
        self.nacks: Counter[str] = Counter()
        self.send_timeouts = 0
        self.send_errors: Counter[str] = Counter()
        self.storms: list[dict[str, Any]] = []
        self.rss: dict[str, list[tuple[float, int]]] = {}
        self.cpu: dict[str, list[tuple[float, float]]] = {}
        self.draining = False
        self.sdk_log = SdkLogCount()
        self.drain_started = trio.Event()
        self.stop_churn = trio.Event()
        self.t0 = 0.0
        self.delivered_total = 0
        self.delivered_by_second: Counter[int] = Counter()

    def now(self) -> float:
        return trio.current_time() - self.t0

    # -- viewers --------------------------------------------------------------------------------
    def new_viewer(self) -> Viewer:
        args = self.args
        slow = self.rng.random() < args.slow_fraction
        life = self.rng.expovariate(1 / args.lifetime_s) * (4 if slow else 1)
        v = Viewer(self.next_vid, self.rng.choice(self.rooms), self.next_vid % 2, slow,
                   max(5.0, life))
        self.next_vid += 1
        self.viewers.append(v)
        return v

    async def run_viewer(self, v: Viewer, churn: bool) -> None:
        """One viewer's life; with ``churn``, a new viewer replaces it when it leaves."""
        url = f"ws://127.0.0.1:{self.engine.gateways[v.gateway].port}/ws"
        SMALL_RCVBUF.set(self.args.slow_rcvbuf if v.slow else 0)  # this task and its children
        with v.scope:
            if churn:
                v.scope.deadline = trio.current_time() + v.lifetime_s
            while True:  # the first connect may hit a gateway that is down (a storm)
                try:
                    async with DanmakuClient(
                        url, client_name="soak/1", backoff_base_s=0.25, backoff_max_s=4.0,
                        event_buffer=8 if v.slow else 1024, connect_timeout_s=10.0,
                        join_attempts=4,
                    ) as client:
                        await client.join(v.room)
                        v.alive = True
                        try:
                            await self._consume(v, client)
                        finally:
                            v.alive = False
                            st = client.stats
                            v.sdk_holes, v.sdk_duplicates = st.holes_detected, st.duplicates_dropped
                            v.sdk_violations = st.protocol_violations
                    return
                except ClientError as exc:
                    v.connect_failures += 1
                    v.error = repr(exc)
                    await trio.sleep(0.25 + self.rng.random() * 0.5)

    async def _consume(self, v: Viewer, client: DanmakuClient) -> None:
        slow_s = self.args.slow_read_s
        if v.slow:  # not reading at all first: the kernel's buffers fill, then the gateway's
            with trio.move_on_after(self.args.slow_pause_s):
                await self.drain_started.wait()
        async for ev in client.events():
            if isinstance(ev, Message):
                self._advance(v, ev.seq, ev.seq)
                v.delivered += 1
                self.delivered_total += 1
                lat = self.slow_lat_ms if v.slow else self.deliver_lat_ms
                lat[int(time.time() * 1000 - ev.ts)] += 1
                self.delivered_by_second[int(self.now())] += 1
                if v.slow and not self.draining:
                    await trio.sleep(slow_s)
            elif isinstance(ev, Skipped):
                self._advance(v, ev.first, ev.last)
                v.skipped.append((ev.first, ev.last))
            elif isinstance(ev, Joined):
                if v.start is None:
                    v.start = v.last = ev.seq
            elif isinstance(ev, Reset):
                v.resets.append({"epoch": ev.epoch, "seq": ev.seq, "reason": ev.reason,
                                 "at_s": round(self.now(), 1)})
                if v.last is not None and ev.seq > v.last:
                    v.holes.append((v.last + 1, ev.seq))
                v.last = ev.seq if v.last is None else max(v.last, ev.seq)
            elif isinstance(ev, Disconnected):
                v.disconnects[ev.code] += 1
            elif isinstance(ev, Reconnected):
                v.reconnects += 1
                v.reconnected_at = trio.current_time()

    @staticmethod
    def _advance(v: Viewer, first: int, last: int) -> None:
        if v.last is None:  # cannot happen: joined comes first
            v.start = first - 1
        elif first != v.last + 1:
            v.holes.append((v.last + 1, first - 1))
        v.last = last

    async def churn_slot(self, nursery: trio.Nursery) -> None:
        """Keeps one viewer slot filled: a viewer lives, leaves, the next one joins."""
        while not self.stop_churn.is_set():
            v = self.new_viewer()
            await self.run_viewer(v, churn=True)
            if v.scope.cancelled_caught and self.stop_churn.is_set():
                return

    # -- senders --------------------------------------------------------------------------------
    async def run_sender(self, room: str, gateway: int, k: int, rate: float,
                         start: float, end: float) -> None:
        url = f"ws://127.0.0.1:{self.engine.gateways[gateway].port}/ws"
        token = mint_token(self.engine.secret, user=f"soak-sender-{room}-{k}", role="streamer")
        async with DanmakuClient(url, token=token, receive_events=False, client_name="soak-send/1",
                                 backoff_base_s=0.25, backoff_max_s=4.0, ack_timeout_s=5.0,
                                 send_attempts=12) as client:
            await client.join(room)
            async with trio.open_nursery() as nursery:
                j = 0
                while True:
                    due = start + j / rate
                    if due >= end:
                        break
                    await trio.sleep_until(due)
                    nursery.start_soon(self._send_one, client, room, j)
                    j += 1

    async def _send_one(self, client: DanmakuClient, room: str, j: int) -> None:
        args = self.args
        reliable = self.rng.random() < args.reliable_fraction
        kind = self.rng.choice(RELIABLE_KINDS) if reliable else None
        text = f"soak {room} #{j} " + "x" * args.text_chars
        text = text[: args.text_chars]
        t = trio.current_time()
        self.sent += 1
        try:
            ack = await client.send(room, text, kind=kind)
        except Nacked as exc:
            self.nacks[exc.code] += 1
            return
        except SendTimeout:
            self.send_timeouts += 1
            return
        except ClientError as exc:
            self.send_errors[type(exc).__name__] += 1
            return
        self.ack_lat_ms[int((trio.current_time() - t) * 1000)] += 1
        acked = self.acked[room]
        acked.seqs.append(ack.seq)
        if kind is not None:
            acked.reliable.append(ack.seq)

    # -- storms and sampling --------------------------------------------------------------------
    async def storms_task(self, start: float, end: float) -> None:
        args = self.args
        n = 0
        while True:
            at = start + (n + 1) * args.storm_every
            if at > end - args.storm_every / 2 or args.storm_every <= 0:
                return
            await trio.sleep_until(at)
            targets = args.storm_gateways
            gw = self.engine.gateways[targets[n % len(targets)]]
            sig = signal.SIGKILL if n % 2 == 0 else signal.SIGTERM
            # Slow viewers notice the drop only when they read on: not counted in the recovery.
            victims = [v for v in self.viewers
                       if v.alive and v.gateway == gw.index and not v.slow]
            before = {v.vid: v.reconnects for v in victims}
            self.sample_once()  # the last RSS of this process lifetime
            t_kill = trio.current_time()
            info = await trio.to_thread.run_sync(self.engine.kill_gateway, gw, sig)
            t_dead = trio.current_time()
            # Viewers that reconnected before the old process was gone got in again during
            # its shutdown (and were dropped a second time when it exited).
            info["reconnected_to_dying_gateway"] = sum(
                1 for v in victims if v.reconnects > before[v.vid])
            await trio.to_thread.run_sync(self.engine.start_again, gw)
            t_up = trio.current_time()
            gw.started_at = t_up
            info.update({"new_pid": gw.proc.pid, "down_s": round(t_up - t_kill, 3),
                         "at_s": round(self.now(), 1),
                         "viewers_on_gateway": len(victims)})  # not counting slow viewers
            # How long until every viewer of the killed gateway had resumed on the new one.
            with trio.move_on_after(60):
                await poll_until(functools.partial(self._all_back, victims, t_dead), 0.1)
            info["viewers_back"] = self._back(victims, t_dead)
            info["all_back_after_up_s"] = round(max(0.0, trio.current_time() - t_up), 2)
            self.storms.append(info)
            print(f"  storm {n + 1}: {orjson.dumps(info).decode()}", flush=True)
            n += 1

    @staticmethod
    def _back(victims: list[Viewer], t_dead: float) -> int:
        """How many viewers of a killed gateway reconnected since it died (or left)."""
        return sum(1 for v in victims if v.reconnected_at > t_dead or not v.alive)

    def _all_back(self, victims: list[Viewer], t_dead: float) -> bool:
        return self._back(victims, t_dead) >= len(victims)

    def sample_once(self) -> None:
        t = round(self.now(), 1)
        procs: dict[str, int] = {"client": os.getpid()}
        for gw in self.engine.gateways:
            procs[f"gateway{gw.index}.{gw.generation}"] = gw.proc.pid
        for i, w in enumerate(self.engine.workers):
            procs[f"worker{i}"] = w.pid
        procs["redis"] = self.engine.redis.pid or 0
        for name, pid in procs.items():
            try:
                kb = rss_kb(pid)
            except OSError:
                continue
            self.rss.setdefault(name, []).append((t, kb))
            self.cpu.setdefault(name, []).append((t, cpu_seconds(pid)))

    async def sampler(self) -> None:
        while True:
            self.sample_once()
            await trio.sleep(self.args.sample_s)

    async def progress(self) -> None:
        last_d = 0
        while True:
            await trio.sleep(30)
            alive = sum(1 for v in self.viewers if v.alive)
            acked = sum(len(a.seqs) for a in self.acked.values())
            rate = (self.delivered_total - last_d) / 30
            last_d = self.delivered_total
            gw_rss = {k: v[-1][1] // 1024 for k, v in self.rss.items() if k.startswith("gateway")}
            print(f"  t={self.now():.0f}s viewers={alive} joined_total={len(self.viewers)} "
                  f"sent={self.sent} acked={acked} delivered/s={rate:,.0f} "
                  f"gateway RSS MB={gw_rss}", flush=True)

    # -- the run --------------------------------------------------------------------------------
    async def main(self) -> None:
        args = self.args
        self.t0 = trio.current_time()
        trio.socket.set_custom_socket_factory(SoakSocketFactory())
        sdk_log = logging.getLogger("danmaku.client")
        sdk_log.setLevel(logging.INFO)
        sdk_log.propagate = False  # counted, not printed (a storm logs hundreds of lines)
        sdk_log.addHandler(self.sdk_log)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.sampler)
            nursery.start_soon(self.progress)
            async with trio.open_nursery() as viewers:
                # Ramp up: viewers join at --connect-rate per second.
                for _ in range(args.viewers):
                    viewers.start_soon(self.churn_slot, viewers)
                    await trio.sleep(1 / args.connect_rate)
                with trio.move_on_after(60):
                    await poll_until(
                        lambda: sum(1 for v in self.viewers if v.alive) >= args.viewers * 0.9
                    )
                print(f"  t={self.now():.0f}s ramp-up done: "
                      f"{sum(1 for v in self.viewers if v.alive)} viewers", flush=True)
                start = trio.current_time() + 0.5
                end = start + args.minutes * 60
                self.send_started = round(start - self.t0, 1)
                async with trio.open_nursery() as senders:
                    senders.start_soon(self.storms_task, start, end)
                    per = args.rate / 2
                    for room in self.rooms:
                        for k in range(2):
                            senders.start_soon(self.run_sender, room, k, k, per, start, end)
                self.send_ended = round(self.now(), 1)
                print(f"  t={self.now():.0f}s sending done, draining", flush=True)
                self.stop_churn.set()
                self.draining = True
                self.drain_started.set()
                for v in self.viewers:  # churning viewers stay until the end now
                    v.scope.deadline = math.inf
                last = {r: max(a.seqs, default=0) for r, a in self.acked.items()}
                t_drain = trio.current_time()
                with trio.move_on_after(args.drain_s):
                    await poll_until(lambda: not any(
                        v.alive and (v.last or 0) < last[v.room] for v in self.viewers))
                self.drain_s = round(trio.current_time() - t_drain, 2)
                self.sample_once()
                for v in self.viewers:
                    v.end_alive = v.alive
                    v.scope.cancel()
            nursery.cancel_scope.cancel()


# ---- checks and report --------------------------------------------------------------------------
def percentiles(
    hist: Counter[int], qs: tuple[float, ...] = (0.5, 0.9, 0.99, 0.999)
) -> dict[str, Any]:
    total = sum(hist.values())
    if not total:
        return {"n": 0}
    out: dict[str, Any] = {"n": total}
    items = sorted(hist.items())
    for q in qs:
        target = q * total
        acc = 0
        for value, count in items:
            acc += count
            if acc >= target:
                out[f"p{q * 100:g}"] = value
                break
    out["max"] = items[-1][0]
    return out


def count_in(sorted_seqs: list[int], first: int, last: int) -> int:
    return bisect.bisect_right(sorted_seqs, last) - bisect.bisect_left(sorted_seqs, first)


def rss_series(soak: Soak, warmup_s: float, args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, samples in soak.rss.items():
        if not samples:
            continue
        t_first = samples[0][0]
        warm = [(t, kb) for t, kb in samples if t - t_first >= warmup_s]
        entry: dict[str, Any] = {"samples": len(samples), "first_kb": samples[0][1],
                                 "max_kb": max(kb for _t, kb in samples),
                                 "last_kb": samples[-1][1], "span_s": samples[-1][0] - t_first}
        if len(warm) >= 4:
            ts = [t for t, _kb in warm]
            ks = [kb for _t, kb in warm]
            mt, mk = sum(ts) / len(ts), sum(ks) / len(ks)
            den = sum((t - mt) ** 2 for t in ts)
            slope = sum((t - mt) * (k - mk) for t, k in warm) / den if den else 0.0
            growth = slope * (ts[-1] - ts[0])
            limit = max(ks[0] * args.rss_max_growth_pct / 100, args.rss_max_growth_mb * 1024)
            entry.update({
                "after_warmup": {"first_kb": ks[0], "last_kb": ks[-1], "max_kb": max(ks),
                                 "samples": len(ks)},
                "slope_kb_per_min": round(slope * 60, 1),
                "fitted_growth_kb": round(growth),
                "limit_kb": round(limit),
                "flat": growth <= limit,
            })
        out[name] = entry
    return out


def check(soak: Soak, args: argparse.Namespace) -> dict[str, Any]:
    for a in soak.acked.values():
        a.seqs.sort()
        a.reliable.sort()
    last = {r: (a.seqs[-1] if a.seqs else 0) for r, a in soak.acked.items()}
    violations: Counter[str] = Counter()
    examples: list[dict[str, Any]] = []

    def bad(kind: str, v: Viewer | None, detail: Any) -> None:
        violations[kind] += 1
        if len(examples) < 40:
            examples.append({"kind": kind, "viewer": None if v is None else v.vid,
                             "room": None if v is None else v.room,
                             "slow": None if v is None else v.slow, "detail": detail})

    stats: Counter[str] = Counter()
    for v in soak.viewers:
        if v.start is None:
            stats["never_joined"] += 1
            continue
        stats["viewers"] += 1
        stats["slow_viewers"] += v.slow
        acked = soak.acked[v.room]
        window = (v.start + 1, v.last or v.start)
        stats["acked_in_windows"] += max(0, count_in(acked.seqs, *window))
        stats["reliable_in_windows"] += max(0, count_in(acked.reliable, *window))
        reset_ends = {r["seq"] for r in v.resets}
        for first, lst in v.holes:
            lost = count_in(acked.seqs, first, lst)
            cause = "after_reset" if lst in reset_ends else "no_reset"
            stats[f"holes_{cause}_{'slow' if v.slow else 'other'}"] += 1
            stats[f"seqs_lost_{cause}_{'slow' if v.slow else 'other'}"] += lost
            bad("hole", v, [first, lst, lost, f"acked seqs lost ({cause})"])
        for r in v.resets:
            bad("reset", v, r)
        if v.sdk_holes:
            bad("sdk_hole_repaired", v, v.sdk_holes)
        if v.sdk_violations:
            bad("protocol_violation", v, v.sdk_violations)
        stats["sdk_duplicates_dropped"] += v.sdk_duplicates
        for first, lst in v.skipped:
            stats["skipped_ranges_slow" if v.slow else "skipped_ranges_other"] += 1
            n_rel = count_in(acked.reliable, first, lst)
            n_acked = count_in(acked.seqs, first, lst)
            stats["skipped_seqs_slow" if v.slow else "skipped_seqs_other"] += n_acked
            if n_rel:
                bad("reliable_skipped", v, [first, lst, n_rel])
            if not v.slow and n_acked:
                bad("non_slow_viewer_skipped", v, [first, lst, n_acked])
        if v.end_alive and (v.last or 0) < last[v.room]:
            bad("not_caught_up", v, [v.last, last[v.room],
                                     count_in(acked.seqs, (v.last or 0) + 1, last[v.room])])
        stats["reconnects"] += v.reconnects
        stats["connect_failures"] += v.connect_failures
        for code, n in v.disconnects.items():
            stats[f"disconnect_{code}"] += n
    if soak.send_timeouts:
        bad("send_timeout", None, soak.send_timeouts)
    for nack_code, n in soak.nacks.items():
        bad(f"nack_{nack_code}", None, n)
    for name, n in soak.send_errors.items():
        bad(f"send_error_{name}", None, n)
    rss = rss_series(soak, args.rss_warmup_s, args)
    for name, entry in rss.items():
        if name.startswith("gateway") and entry.get("flat") is False:
            bad("rss_growth", None, {name: entry})
    return {"violations": dict(violations), "examples": examples, "stats": dict(stats),
            "rss": rss, "room_last_seq": last}


def summarize(soak: Soak, result: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    sending_s = args.minutes * 60
    acked = sum(len(a.seqs) for a in soak.acked.values())
    reliable = sum(len(a.reliable) for a in soak.acked.values())
    per_s = [n for s, n in soak.delivered_by_second.items()
             if soak.send_started + 5 <= s < soak.send_ended - 1]
    cpu: dict[str, float] = {}
    for name, samples in soak.cpu.items():
        good = [(t, c) for t, c in samples if not math.isnan(c)]
        if len(good) >= 2 and good[-1][0] > good[0][0]:
            cpu[name] = round(100 * (good[-1][1] - good[0][1]) / (good[-1][0] - good[0][0]), 1)
    return {
        "sent": soak.sent,
        "acked": acked,
        "acked_reliable": reliable,
        "comments_per_s": round(acked / sending_s, 1),
        "viewers_total": len(soak.viewers),
        "viewers_concurrent": args.viewers,
        "delivered": soak.delivered_total,
        "delivered_per_s_median": sorted(per_s)[len(per_s) // 2] if per_s else 0,
        "deliver_latency_ms": percentiles(soak.deliver_lat_ms),
        "deliver_latency_ms_slow_viewers": percentiles(soak.slow_lat_ms),
        "ack_latency_ms": percentiles(soak.ack_lat_ms),
        "storms": len(soak.storms),
        "drain_s": getattr(soak, "drain_s", None),
        "cpu_pct_avg": cpu,
        "sdk_log": dict(soak.sdk_log.counts),
        "violations": result["violations"],
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=10.0, help="minutes of sending (default 10)")
    p.add_argument("--viewers", type=int, default=700,
                   help="concurrent viewers (default 700)")
    p.add_argument("--rooms", type=int, default=2)
    p.add_argument("--rate", type=float, default=5.0, help="messages/s per room (default 5)")
    p.add_argument("--reliable-fraction", type=float, default=0.1,
                   help="share of gift/superchat among the messages (default 0.1)")
    p.add_argument("--text-chars", type=int, default=150)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--lifetime-s", type=float, default=60.0, help="mean viewer lifetime")
    p.add_argument("--slow-fraction", type=float, default=0.05)
    p.add_argument("--slow-pause-s", type=float, default=50.0,
                   help="a slow viewer reads nothing for this long after joining (keep it "
                   "under 2.5 x heartbeat, 75 s, or the SDK's watchdog reconnects)")
    p.add_argument("--slow-read-s", type=float, default=0.5,
                   help="then waits this long after each message it reads")
    p.add_argument("--slow-rcvbuf", type=int, default=4096,
                   help="SO_RCVBUF of slow viewers' sockets (0: the kernel's default)")
    p.add_argument("--storm-every", type=float, default=120.0,
                   help="seconds between gateway kills (0: none)")
    p.add_argument("--storm-gateways", type=int, nargs="+", choices=[0, 1], default=[0, 1],
                   help="the gateways killed in turn (default both; '0' leaves gateway 1 one "
                   "long RSS series)")
    p.add_argument("--connect-rate", type=float, default=200.0, help="viewers/s at ramp-up")
    p.add_argument("--sample-s", type=float, default=10.0, help="RSS sampling period")
    p.add_argument("--rss-warmup-s", type=float, default=60.0,
                   help="RSS samples of each process lifetime's first seconds are left out")
    p.add_argument("--rss-max-growth-pct", type=float, default=15.0)
    p.add_argument("--rss-max-growth-mb", type=float, default=8.0)
    p.add_argument("--drain-s", type=float, default=60.0)
    p.add_argument("--ring-size", type=int, default=0,
                   help="the gateways' per-room message ring (DANMAKU_GATEWAY_RING_SIZE; 0: the "
                   "default, 4,096, which a 10-minute run at 5 messages/s per room never fills, "
                   "so the gateways' RSS grows by the ring for the whole run)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--whatif", default=None, metavar="PATCH[,PATCH]",
                   help="run the gateways with patches of loadtest/soak_whatif.py: "
                   "tracemalloc (allocation growth report)")
    args = p.parse_args(argv)
    if args.whatif and not soak_whatif.valid(args.whatif):
        p.error(f"--whatif: patches are {', '.join(soak_whatif.PATCHES)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.seed is None:
        args.seed = secrets.randbelow(2**31)
    raise_nofile(args.viewers * 4 + 1024)
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    log_dir = RESULTS / "logs" / f"soak-{stamp}"
    log_dir.mkdir(parents=True, exist_ok=True)
    info = machine_info()
    digest = engine_digest()
    print(f"soak {stamp}: {vars(args)}", flush=True)
    with tempfile.TemporaryDirectory(prefix="danmaku-soak-") as tmp:
        gateway_env = {"DANMAKU_GATEWAY_RING_SIZE": str(args.ring_size)} if args.ring_size else {}
        engine = Engine(Path(tmp), log_dir, secrets.token_urlsafe(32), args.workers,
                        args.whatif, gateway_env)
        wall0 = time.monotonic()
        try:
            engine.start(0.0)
            soak = Soak(args, engine)
            trio.run(soak.main)
        finally:
            engine.stop()
        wall = time.monotonic() - wall0
    result = check(soak, args)
    summary = summarize(soak, result, args)
    doc = {
        "args": vars(args), "machine": info, "engine_digest": digest, "wall_s": round(wall, 1),
        "summary": summary, "checks": result, "storms": soak.storms,
        "rss_samples": soak.rss,
        "send_started_s": soak.send_started, "send_ended_s": soak.send_ended,
    }
    whatif = "-whatif-" + args.whatif.replace(",", "-") if args.whatif else ""
    out = RESULTS / f"soak-{stamp}{whatif}.json"
    out.write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2))
    print("\nsummary:", orjson.dumps(summary, option=orjson.OPT_INDENT_2).decode())
    print("stats:", orjson.dumps(result["stats"]).decode())
    for name, entry in result["rss"].items():
        aw = entry.get("after_warmup")
        if aw:
            print(f"  RSS {name}: first {aw['first_kb'] / 1024:.1f} MB, last "
                  f"{aw['last_kb'] / 1024:.1f} MB, max {aw['max_kb'] / 1024:.1f} MB, slope "
                  f"{entry['slope_kb_per_min']:+.0f} KB/min over {entry['span_s']:.0f} s "
                  f"({'flat' if entry['flat'] else 'GROWING'})")
    if result["examples"]:
        print("violations (examples):")
        for ex in result["examples"][:15]:
            print("  ", orjson.dumps(ex).decode())
    print(f"\nresults: {out.relative_to(REPO)}")
    ok = not result["violations"]
    print("SOAK PASSED" if ok else f"SOAK FAILED: {result['violations']}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
