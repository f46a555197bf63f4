"""Locust load test of a danmaku engine: WebSocket viewers, senders and HTTP long-poll viewers.

    pip install -e '.[loadtest]'                      # locust 2.47.0, websocket-client 1.8.0
    danmaku up                                        # or any engine; note its secret (below)
    locust -f loadtest/locustfile.py --headless -u 60 -r 20 -t 60s \\
        --host http://127.0.0.1:8080 --csv loadtest/results/locust
    echo $?                                           # 0: no message lost; 1: lost (or errors)

Bounded by ``-t`` (run time) and ``-u`` (users); ``-r`` is the spawn rate. User classes
(weights): ``WsViewer`` (8), ``WsSender`` (1), ``LongPollViewer`` (1); name classes after the
options to run only those (``locust -f loadtest/locustfile.py --headless -u 200 -r 100 -t 30s
WsViewer``; locust gives every class at least one user when ``-u`` allows).

Tokens: senders sign their own tokens (``engine.tokens.mint_token``, role ``streamer`` so they
may send gifts) with the engine's secret: ``--danmaku-secret`` or ``$DANMAKU_SECRET``, else the
file ``secret`` in ``--danmaku-data-dir`` (``$DANMAKU_DATA_DIR``, default ``./var``: what
``danmaku up`` creates there). Viewers are guests. Options (``locust --help``, "danmaku"):
``--danmaku-room`` (default ``locust``), ``--danmaku-send-rate`` (messages/s per sender, 2),
``--danmaku-gift-every`` (every Nth send is a ``gift``, 10; 0: none), ``--danmaku-ack-timeout``
(s before a resend with the same cmid, 5), ``--danmaku-loss-grace`` (s, 5).

Protocol: exactly docs/protocol.md. A ``WsViewer`` says ``hello`` (guest), ``join``s the room
and reads ``batch`` frames; per batch ``from`` must be the previous ``to`` + 1 and the seqs
inside must cover ``from..to`` together with ``skipped``; on a lost connection it reconnects
and re-joins with ``since`` (its last seq). A ``WsSender`` joins and sends comments (``cmid``,
text ``t=<unix µs> ...``), waits for the ``ack``, resends the same frame after the ack timeout
and after a reconnect. A ``LongPollViewer`` polls ``GET /v1/rooms/{room}/messages?after=&
wait_ms=5000`` and checks that each answer continues at ``after + 1``.

Custom statistics (request type ``WS`` in locust's tables and ``--csv`` files): ``deliver``
(one per message a WebSocket viewer got; time = send-to-delivery latency, from the sender's
clock in the text, else the server's ``ts``), ``ack`` (send to ack), ``resend``,
``skipped`` (length = seqs skipped), ``reconnect``, and failures ``gap``, ``reset``,
``nack``; type ``HTTP`` ``poll deliver``/``poll hole``.

Loss check, when the run ends (``quitting``), over every user of this process: a message is
lost when (1) a WebSocket viewer saw a gap not covered by ``skipped``, or a ``reset``; (2) a
long-poll viewer saw a hole or a ``reset``; (3) an acked seq never reached a viewer that had
joined before it was sequenced and stayed ``--danmaku-loss-grace`` seconds after its ack; or
(4) a gift was listed in ``skipped``. Any loss sets the exit code to 1 (so do request failures,
locust's own rule) and a ``danmaku-locust: {...}`` JSON line on stderr gives the counts. The
check needs senders and viewers in the same locust process (no ``--processes``/workers).

Fault injection, for testing the loss check only: ``DANMAKU_LOCUST_FAULT_DROP_BATCH_EVERY=N``
makes each WebSocket viewer discard every Nth batch frame it receives, as if it was lost.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import re
import secrets
import select
import ssl
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson
import websocket
from locust import HttpUser, User, constant, events, task
from locust.env import Environment

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from engine.tokens import mint_token  # noqa: E402

log = logging.getLogger("danmaku.locust")

FAULT_DROP_EVERY = int(os.environ.get("DANMAKU_LOCUST_FAULT_DROP_BATCH_EVERY", "0") or 0)
PING_EVERY_S = 10.0  # the gateway's heartbeat is 30 s by default: ping well within it
RELIABLE = frozenset({"gift", "superchat", "system"})
_T_RE = re.compile(r"t=(\d{16})")


# ---- options -----------------------------------------------------------------------------------
@events.init_command_line_parser.add_listener  # type: ignore[misc]
def _options(parser: Any) -> None:
    group = parser.add_argument_group("danmaku")
    group.add_argument("--danmaku-room", default="locust", help="the room every user joins")
    group.add_argument("--danmaku-secret", env_var="DANMAKU_SECRET", default="",
                       help="the engine's DANMAKU_SECRET (senders sign their tokens with it)")
    group.add_argument("--danmaku-data-dir", env_var="DANMAKU_DATA_DIR", default="var",
                       help="without a secret: read <dir>/secret (danmaku up's data dir)")
    group.add_argument("--danmaku-send-rate", type=float, default=2.0,
                       help="messages per second per WsSender")
    group.add_argument("--danmaku-gift-every", type=int, default=10,
                       help="every Nth send of a sender is a gift (0: none)")
    group.add_argument("--danmaku-ack-timeout", type=float, default=5.0,
                       help="seconds without an ack before resending the same cmid")
    group.add_argument("--danmaku-loss-grace", type=float, default=5.0,
                       help="an ack older than this must have reached every joined viewer")


def _opt(env: Environment, name: str) -> Any:
    return getattr(env.parsed_options, name)


def engine_secret(env: Environment) -> str:
    secret = str(_opt(env, "danmaku_secret") or "")
    if secret:
        return secret
    path = Path(_opt(env, "danmaku_data_dir")) / "secret"
    try:
        return path.read_text().strip()
    except OSError:
        raise SystemExit(
            f"danmaku locustfile: no secret: set DANMAKU_SECRET or --danmaku-data-dir "
            f"(no {path})"
        ) from None


def ws_url(host: str) -> str:
    parts = urlsplit(host)
    scheme = "wss" if parts.scheme == "https" else "ws"
    return f"{scheme}://{parts.netloc}/ws"


# ---- the ledger: what was acked, what each viewer saw ------------------------------------------
@dataclass
class Watch:
    """One viewer's view of the room: subscribed for seqs > start, saw everything up to last."""

    kind: str  # "ws" | "poll"
    start: int | None = None
    last: int = 0
    stopped_at: float = float("inf")  # monotonic time it stopped watching (inf: still on)
    gaps: int = 0
    resets: int = 0
    skipped: list[tuple[int, int]] = field(default_factory=list)


@dataclass
class Ledger:
    acked: dict[str, list[tuple[int, float, str]]] = field(default_factory=dict)  # seq, t, kind
    watches: dict[str, list[Watch]] = field(default_factory=dict)
    frames: int = 0
    messages: int = 0
    dropped_by_fault: int = 0

    def watch(self, room: str, kind: str) -> Watch:
        w = Watch(kind)
        self.watches.setdefault(room, []).append(w)
        return w

    def losses(self, grace_s: float) -> dict[str, int]:
        out = {"ws_gaps": 0, "ws_resets": 0, "poll_holes": 0, "poll_resets": 0,
               "acked_not_delivered": 0, "reliable_skipped": 0}
        for room, watches in self.watches.items():
            acked = self.acked.get(room, [])
            reliable = {seq for seq, _t, kind in acked if kind in RELIABLE}
            for w in watches:
                if w.kind == "ws":
                    out["ws_gaps"] += w.gaps
                    out["ws_resets"] += w.resets
                else:
                    out["poll_holes"] += w.gaps
                    out["poll_resets"] += w.resets
                for first, last in w.skipped:
                    out["reliable_skipped"] += sum(1 for s in reliable if first <= s <= last)
                if w.start is None:
                    continue
                for seq, t_ack, _kind in acked:
                    if seq > w.start and seq > w.last and w.stopped_at > t_ack + grace_s:
                        out["acked_not_delivered"] += 1
        return out


LEDGER = Ledger()


def fire(env: Environment, rtype: str, name: str, ms: float = 0.0, length: int = 0,
         exc: BaseException | None = None) -> None:
    env.events.request.fire(  # type: ignore[no-untyped-call]
        request_type=rtype, name=name, response_time=ms,
                            response_length=length, exception=exc, context={})


def latency_ms(msg: dict[str, Any], now_us: int) -> float:
    """Send-to-delivery: the sender's clock in the text (``t=<unix µs>``), else server ``ts``."""
    body = msg.get("body")
    text = body.get("text", "") if isinstance(body, dict) else ""
    m = _T_RE.match(text) if isinstance(text, str) else None
    if m is not None:
        return max(0.0, (now_us - int(m.group(1))) / 1000)
    ts = msg.get("ts")
    return max(0.0, now_us / 1000 - ts) if isinstance(ts, int) else 0.0


class Lost(Exception):
    """A failure entry in locust's statistics (gaps, resets, nacks)."""


# ---- WebSocket plumbing ------------------------------------------------------------------------
class WsConn:
    """One websocket-client connection speaking the danmaku protocol (gevent-friendly)."""

    def __init__(self, url: str, token: str | None) -> None:
        self.ws = websocket.create_connection(url, timeout=10, enable_multithread=False,
                                              skip_utf8_validation=True)
        self.ws.send(orjson.dumps({"op": "hello", "token": token, "client": "locust/1"}).decode())
        welcome = orjson.loads(self.ws.recv())
        if welcome.get("op") != "welcome":
            raise ConnectionError(f"expected welcome, got {welcome}")
        self.last_ping = time.monotonic()
        self.pings = itertools.count(1)

    def send(self, obj: dict[str, Any]) -> None:
        self.ws.send(orjson.dumps(obj).decode())

    def recv(self, timeout_s: float) -> str | None:
        """The next frame, or None if none came within ``timeout_s``; pings when due."""
        now = time.monotonic()
        if now - self.last_ping >= PING_EVERY_S:
            self.last_ping = now
            self.send({"op": "ping", "t": next(self.pings)})
        sock = self.ws.sock
        if sock is None:
            raise websocket.WebSocketConnectionClosedException("closed")
        # Wait for readability first, so a timeout never interrupts a frame half-read
        # (websocket-client reads no further than the frame it is after: nothing is buffered
        # in it between frames, except decrypted TLS bytes).
        if not (isinstance(sock, ssl.SSLSocket) and sock.pending()):
            ready, _w, _x = select.select([sock], [], [], timeout_s)
            if not ready:
                return None
        data = self.ws.recv()
        return data if isinstance(data, str) else data.decode()

    def close(self) -> None:
        with contextlib.suppress(OSError, websocket.WebSocketException):
            self.ws.close()


class WsViewer(User):
    """A guest viewer on a WebSocket: joins the room, checks seq continuity, records latency."""

    weight = 8
    wait_time = constant(0)

    def on_start(self) -> None:
        env = self.environment
        self.url = ws_url(self.host or "http://127.0.0.1:8080")
        self.room: str = _opt(env, "danmaku_room")
        self.watch = LEDGER.watch(self.room, "ws")
        self.epoch = ""
        self.conn: WsConn | None = None
        self.batches = 0
        self._connect()

    def _connect(self) -> None:
        since = None
        if self.watch.start is not None:
            since = {"epoch": self.epoch, "seq": self.watch.last}
        self.conn = WsConn(self.url, None)
        self.conn.send({"op": "join", "room": self.room, "since": since})

    @task
    def read(self) -> None:
        """Read frames for about a second (then locust may stop the user)."""
        end = time.monotonic() + 1.0
        while (left := end - time.monotonic()) > 0:
            try:
                if self.conn is None:
                    self._connect()
                assert self.conn is not None
                data = self.conn.recv(left)
            except (OSError, websocket.WebSocketException) as exc:
                fire(self.environment, "WS", "reconnect", exc=None if self.conn else exc)
                if self.conn is not None:
                    self.conn.close()
                self.conn = None
                time.sleep(0.5)
                continue
            if data is not None:
                self._on_frame(data)

    def _on_frame(self, data: str) -> None:
        frame = orjson.loads(data)
        op = frame.get("op")
        env = self.environment
        w = self.watch
        if op == "batch":
            self.batches += 1
            if FAULT_DROP_EVERY and self.batches % FAULT_DROP_EVERY == 0:
                LEDGER.dropped_by_fault += 1
                return  # fault injection: as if this frame never arrived
            LEDGER.frames += 1
            first, last = frame["from"], frame["to"]
            if first != w.last + 1:
                w.gaps += 1
                fire(env, "WS", "gap", exc=Lost(f"expected {w.last + 1}, batch from {first}"))
            expect = first
            skipped = [tuple(r) for r in frame.get("skipped") or []]
            covered = sorted([(m["seq"], m["seq"]) for m in frame["msgs"]] + skipped)
            for a, b in covered:
                if a != expect:
                    w.gaps += 1
                    fire(env, "WS", "gap", exc=Lost(f"hole {expect}..{a - 1} inside a batch"))
                expect = b + 1
            if expect != last + 1:
                w.gaps += 1
                fire(env, "WS", "gap", exc=Lost(f"batch ends at {expect - 1}, to is {last}"))
            for a, b in skipped:
                w.skipped.append((a, b))
                fire(env, "WS", "skipped", length=b - a + 1)
            now_us = time.time_ns() // 1000
            for msg in frame["msgs"]:
                fire(env, "WS", "deliver", latency_ms(msg, now_us), len(msg.get("body", {})))
            LEDGER.messages += len(frame["msgs"])
            w.last = max(w.last, last)
        elif op == "joined":
            if w.start is None:
                w.start = w.last = frame["seq"]
            elif frame.get("epoch") != self.epoch:
                w.resets += 1
                fire(env, "WS", "reset", exc=Lost("epoch changed at rejoin"))
                w.last = frame["seq"]
            self.epoch = frame.get("epoch", "")
        elif op == "reset":
            w.resets += 1
            fire(env, "WS", "reset", exc=Lost(f"reset {frame.get('reason')}"))
            self.epoch, w.last = frame.get("epoch", ""), frame["seq"]
        elif op == "error":
            fire(env, "WS", "error", exc=Lost(f"{frame.get('code')}: {frame.get('message')}"))

    def on_stop(self) -> None:
        self.watch.stopped_at = time.monotonic()
        if self.conn is not None:
            self.conn.close()


class WsSender(User):
    """Sends comments with a cmid, waits for the ack, resends the same frame on timeout."""

    weight = 1

    def wait_time(self) -> float:  # type: ignore[override]
        return 1.0 / float(_opt(self.environment, "danmaku_send_rate"))

    def on_start(self) -> None:
        env = self.environment
        self.url = ws_url(self.host or "http://127.0.0.1:8080")
        self.room = _opt(env, "danmaku_room")
        self.user_id = f"locust-{secrets.token_hex(4)}"
        self.token = mint_token(engine_secret(env), user=self.user_id, role="streamer")
        self.n = 0
        self.conn: WsConn | None = None
        self._connect()

    def _connect(self) -> None:
        self.conn = WsConn(self.url, self.token)
        self.conn.send({"op": "join", "room": self.room})
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            data = self.conn.recv(deadline - time.monotonic())
            if data is not None and data.startswith('{"op":"joined"'):
                return
        raise ConnectionError("no joined within 10 s")

    @task
    def send(self) -> None:
        env = self.environment
        self.n += 1
        gift_every = int(_opt(env, "danmaku_gift_every"))
        kind = "gift" if gift_every and self.n % gift_every == 0 else "danmaku"
        cmid = f"{self.user_id}-{self.n}"
        text = f"t={time.time_ns() // 1000} locust {self.n}"
        frame = {"op": "send", "room": self.room, "cmid": cmid, "kind": kind,
                 "body": {"text": text, "mode": "scroll", "color": "#ffffff"}}
        timeout_s = float(_opt(env, "danmaku_ack_timeout"))
        t0 = time.monotonic()
        for attempt in range(6):
            if attempt:
                fire(env, "WS", "resend")
            try:
                if self.conn is None:
                    self._connect()
                assert self.conn is not None
                self.conn.send(frame)
                answer = self._await_answer(cmid, timeout_s)
            except (OSError, ConnectionError, websocket.WebSocketException):
                if self.conn is not None:
                    self.conn.close()
                self.conn = None
                fire(env, "WS", "reconnect")
                time.sleep(0.5)
                continue
            if answer is None:
                continue
            took = (time.monotonic() - t0) * 1000
            if answer["op"] == "ack":
                fire(env, "WS", "ack", took)
                LEDGER.acked.setdefault(self.room, []).append(
                    (answer["seq"], time.monotonic(), kind)
                )
            else:
                fire(env, "WS", "nack", took, exc=Lost(f"nack {answer.get('code')}"))
            return
        fire(env, "WS", "ack", (time.monotonic() - t0) * 1000,
             exc=Lost(f"no ack for {cmid} after 6 attempts"))

    def _await_answer(self, cmid: str, timeout_s: float) -> dict[str, Any] | None:
        assert self.conn is not None
        deadline = time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0:
            data = self.conn.recv(left)
            if data is None or data.startswith('{"op":"batch"'):
                continue
            obj = orjson.loads(data)
            if obj.get("op") in ("ack", "nack") and obj.get("cmid") == cmid:
                return dict(obj)
        return None

    def on_stop(self) -> None:
        if self.conn is not None:
            self.conn.close()


class LongPollViewer(HttpUser):
    """Follows the room over HTTP long polls and checks that answers continue without holes."""

    weight = 1
    wait_time = constant(0)

    def on_start(self) -> None:
        self.room = _opt(self.environment, "danmaku_room")
        self.watch = LEDGER.watch(self.room, "poll")
        with self.client.get(f"/v1/rooms/{self.room}", name="/v1/rooms/[room]",
                             catch_response=True) as resp:
            if resp.status_code != 200:
                resp.failure(f"status {resp.status_code}")
                raise ConnectionError(f"GET /v1/rooms/{self.room}: {resp.status_code}")
            head = resp.json()
        self.watch.start = self.watch.last = int(head["last"])
        self.epoch = head.get("epoch", "")

    @task
    def poll(self) -> None:
        env = self.environment
        w = self.watch
        with self.client.get(
            f"/v1/rooms/{self.room}/messages",
            params={"after": w.last, "limit": 1000, "wait_ms": 5000},
            name="/v1/rooms/[room]/messages?wait_ms=5000", catch_response=True, timeout=15,
        ) as resp:
            if resp.status_code != 200:
                resp.failure(f"status {resp.status_code}")
                return
            answer = resp.json()
        if answer.get("reset") or (self.epoch and answer.get("epoch") != self.epoch):
            w.resets += 1
            fire(env, "HTTP", "poll reset", exc=Lost(f"reset {answer.get('reset')}"))
        self.epoch = answer.get("epoch", self.epoch)
        now_us = time.time_ns() // 1000
        for msg in answer.get("msgs", []):
            if msg["seq"] != w.last + 1:
                w.gaps += 1
                fire(env, "HTTP", "poll hole", exc=Lost(f"expected {w.last + 1}, got {msg['seq']}"))
            w.last = max(w.last, msg["seq"])
            fire(env, "HTTP", "poll deliver", latency_ms(msg, now_us))

    def on_stop(self) -> None:
        self.watch.stopped_at = time.monotonic()


# ---- the verdict -------------------------------------------------------------------------------
@events.quitting.add_listener  # type: ignore[misc]
def _verdict(environment: Environment, **_kw: Any) -> None:
    if environment.parsed_options is None or not LEDGER.watches:
        return
    losses = LEDGER.losses(float(_opt(environment, "danmaku_loss_grace")))
    acked = sum(len(a) for a in LEDGER.acked.values())
    report = {"acked": acked, "frames": LEDGER.frames, "messages": LEDGER.messages,
              "viewers": sum(len(w) for w in LEDGER.watches.values()),
              "dropped_by_fault_injection": LEDGER.dropped_by_fault, "losses": losses,
              "lost": sum(losses.values())}
    print("danmaku-locust: " + orjson.dumps(report).decode(), file=sys.stderr, flush=True)
    if report["lost"]:
        log.error("messages were lost: %s", losses)
        environment.process_exit_code = 1
