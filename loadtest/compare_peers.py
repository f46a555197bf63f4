"""Peer comparison (issue 4): danmaku against the servers people would otherwise pick.

    python loadtest/compare_peers.py --smoke                     # 50 viewers, seconds: wiring
    flock /tmp/danmaku-bench.lock python loadtest/compare_peers.py   # the documented run

Engines, each serving one room of N viewers on CPU 0 (taskset) while every client runs on CPU 1:

- ``danmaku``: the real engine as ``fanout_bench.py`` starts it (``engine_stack``: private
  redis-server and ``danmaku worker`` on CPU 1, ``danmaku gateway`` on CPU 0, default tick
  settings); sender ``loadtest/sender.py``.
- ``websockets``: ``peers/websockets_server.py`` (python ``websockets`` 15, asyncio,
  ``broadcast()``);
- ``socketio``: ``peers/socketio_server.js`` (Socket.IO 4.8 on Node.js, ``io.to(room).emit``);
- ``ws``: ``peers/ws_server.js`` (Node.js ``ws`` 8, one frame built per message and written to
  each raw socket: the fastest design of ../shared/research/fanout.md, the bar to beat).
  Peers get their comments from ``peer_sender.py`` (sender.py over the peer's protocol).

Per run, the same load for every engine: the C swarm (``swarm/swarm --proto ...``) connects N
viewers (2,000/s) that join the room; RSS of the server process is sampled before and 2 s after
(RSS per idle connection); the sender starts R comments/s (default 200, 40-character texts
carrying ``t=<unix us>``, one WebSocket per 100 comments/s); warmup, then the measured window:
viewer-frames/s and delivered messages/s (read by the swarm), latency percentiles (sender's
clock in the text -> swarm's clock at receipt), lost messages (seqs a viewer never got: gaps in
its per-room seqs), the server process's CPU (utime + stime, % of one core), CPU 0 as a whole,
and CPU used by processes outside this benchmark (noise: such runs are retried when the time
budget allows). Runs alternate engines for each N. Results: ``loadtest/results/peers-<time>.json``
(gitignored), ``docs/img/peers-*.png`` and the section of ``docs/benchmarks.md`` between
``<!-- peers:begin -->`` and ``<!-- peers:end -->`` (nothing else in that file is touched).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from fanout_bench import (
    CLIENT_CPU,
    CLK_TCK,
    GATEWAY_CPU,
    LOADTEST,
    REPO,
    RESULTS,
    ROOM,
    SWARM_BIN,
    SWARM_SRC,
    Lines,
    ProcessWatch,
    Scenario,
    build_c,
    core_times,
    cpu_seconds,
    engine_digest,
    engine_stack,
    finish_profiler,
    fmt,
    machine_info,
    raise_nofile,
    rss_kb,
    start_profiler,
    stop_process,
    wait_for_quiet,
)

from engine.embedded_redis import pick_free_port

PEERS = LOADTEST / "peers"
DOCS = REPO / "docs" / "benchmarks.md"
IMG = REPO / "docs" / "img"
BEGIN, END = "<!-- peers:begin -->", "<!-- peers:end -->"
SECTION_TITLE = "## Peer comparison (issue 4)"
NODE = "node"


@dataclass(frozen=True)
class Engine:
    name: str
    label: str  # for tables and plots
    proto: str  # the swarm's --proto
    server: list[str] = field(default_factory=list)  # peer command (danmaku: engine_stack)
    python: bool = False  # py-spy can profile it


ENGINES = {
    "danmaku": Engine("danmaku", "danmaku (trio, Redis, batches)", "danmaku", python=True),
    "websockets": Engine("websockets", "python websockets 15 broadcast()", "ws",
                         [sys.executable, str(PEERS / "websockets_server.py")], python=True),
    "socketio": Engine("socketio", "Socket.IO 4.8 (Node 20)", "sio",
                       [NODE, str(PEERS / "socketio_server.js")]),
    "ws": Engine("ws", "Node ws 8, pre-built frame", "ws", [NODE, str(PEERS / "ws_server.js")]),
}


@dataclass
class Server:
    port: int
    pid: int
    others: dict[str, int]  # more processes of the engine (danmaku: worker, redis on CPU 1)


@contextlib.contextmanager
def start_server(engine: Engine, n: int, rate: float, tmp: Path, secret: str,
                 log_dir: Path) -> Iterator[Server]:
    if engine.name == "danmaku":
        scn = Scenario(f"peers-{n}", "steady", n, rate)
        with engine_stack(tmp, scn, secret, log_dir) as (port, gateway, worker, redis):
            yield Server(port, gateway.pid, {"worker": worker.pid, "redis": redis.pid or 0})
        return
    if not (PEERS / "node_modules").is_dir() and engine.server[0] == NODE:
        raise SystemExit("run `npm ci --prefix loadtest/peers` first (Socket.IO and ws)")
    port = pick_free_port()
    # Heartbeats as in danmaku's run (DANMAKU_GATEWAY_HEARTBEAT_MS=600000): none in the window.
    cmd = ["taskset", "-c", str(GATEWAY_CPU), *engine.server, "--port", str(port),
           "--heartbeat-ms", "600000"]
    with open(log_dir / "server.log", "ab") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=log)
    try:
        assert proc.stdout is not None
        Lines(proc.stdout).wait_event("listening", 20)
        yield Server(port, proc.pid, {})
    finally:
        stop_process(proc)


def sender_command(engine: Engine, port: int, secret: str, rate: float,
                   args: argparse.Namespace) -> list[str]:
    common = ["--rate", str(rate), "--duration", str(args.warmup + args.duration + 2),
              "--warmup", str(args.warmup), "--measure", str(args.duration)]
    if engine.name == "danmaku":
        return [sys.executable, str(LOADTEST / "sender.py"), "--url", f"ws://127.0.0.1:{port}/ws",
                "--secret", secret, "--room", ROOM, *common]
    return [sys.executable, str(LOADTEST / "peer_sender.py"), "--proto", engine.proto,
            "--url", f"ws://127.0.0.1:{port}/ws", "--room", ROOM, *common]


@contextlib.contextmanager
def child(cmd: list[str], log: Path,
          **popen: Any) -> Iterator[tuple[subprocess.Popen[bytes], Lines]]:
    """A client process with its stderr read as lines (and saved to ``log`` at the end); killed
    on the way out if it is still running."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **popen)
    assert proc.stderr is not None
    lines = Lines(proc.stderr, echo=lambda s: print(f"    {log.stem}: {s}"))
    try:
        yield proc, lines
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        lines.join()
        log.write_text("\n".join(lines.lines) + "\n")


def last_json(proc: subprocess.Popen[bytes], lines: Lines, timeout_s: float) -> dict[str, Any]:
    """The one JSON line a client prints on stdout when it is done."""
    out, _ = proc.communicate(timeout=timeout_s)
    if not out.strip():
        tail = "\n".join(lines.lines[-15:])
        raise RuntimeError(f"{proc.args!r} exited {proc.returncode} without a result:\n{tail}")
    obj: dict[str, Any] = orjson.loads(out.strip().splitlines()[-1])
    return obj


def run_once(engine: Engine, n: int, args: argparse.Namespace, label: str) -> dict[str, Any]:
    secret = secrets.token_urlsafe(32)
    log_dir = RESULTS / "logs" / label
    log_dir.mkdir(parents=True, exist_ok=True)
    r: dict[str, Any] = {"engine": engine.name, "viewers": n, "rate": args.rate,
                         "started_at": time.strftime("%H:%M:%S")}
    if engine.name == "danmaku":
        r["engine_digest"] = engine_digest()
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="danmaku-peers-")))
        server = stack.enter_context(start_server(engine, n, args.rate, tmp, secret, log_dir))
        time.sleep(1.0)
        rss_base = rss_kb(server.pid)
        swarm, swarm_lines = stack.enter_context(child(
            [str(SWARM_BIN), "--proto", engine.proto, "--port", str(server.port), "--room", ROOM,
             "-n", str(n), "--duration", str(args.duration), "--warmup", str(args.warmup),
             "--rate", str(args.connect_rate), "--connect-timeout", "60", "--wait-go"],
            log_dir / "swarm.stderr", stdin=subprocess.PIPE,
        ))
        r["connect"] = swarm_lines.wait_event("ready", 90)
        time.sleep(2.0)  # RSS with every viewer joined and idle
        rss_idle = rss_kb(server.pid)
        r["rss_kb"] = {"baseline": rss_base, "idle": rss_idle}
        r["rss_kb_per_idle_viewer"] = round((rss_idle - rss_base) / max(1, r["connect"]["ok"]), 2)

        sender, sender_lines = stack.enter_context(child(
            sender_command(engine, server.port, secret, args.rate, args),
            log_dir / "sender.stderr", cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
        ))
        sender_lines.wait_event("ready", 30)
        assert swarm.stdin is not None
        swarm.stdin.write(b"go\n")
        swarm.stdin.flush()
        swarm_lines.wait_event("measuring", args.warmup + 10)

        # The measured window: CPU times before and after, RSS and other processes sampled.
        t0 = time.monotonic()
        pids = {"server": server.pid, "sender": sender.pid, **server.others}
        cpu_a = {k: cpu_seconds(pid) for k, pid in pids.items()}
        split_a = user_system_s(server.pid)
        cores_a = [core_times(GATEWAY_CPU), core_times(CLIENT_CPU)]
        watch = ProcessWatch()
        spy = None
        if args.profile and engine.python and n == max(args.viewers):
            spy = start_profiler(server.pid, max(3, int(args.duration) - 2), label)
            stack.callback(spy[0].kill)
        rss_peak = rss_kb(server.pid)
        while True:
            with contextlib.suppress(TimeoutError):
                swarm_lines.wait_event("done", 1.0)
                break
            rss_peak = max(rss_peak, rss_kb(server.pid))
            watch.sample()
            if time.monotonic() - t0 > args.duration + 15:
                raise TimeoutError("the swarm did not finish its measured window")
        elapsed = time.monotonic() - t0
        cpu_b = {k: cpu_seconds(pid) for k, pid in pids.items()}
        split_b = user_system_s(server.pid)
        cores_b = [core_times(GATEWAY_CPU), core_times(CLIENT_CPU)]

        def pct(a: float, b: float) -> float:
            return round(100 * (b - a) / elapsed, 1)

        r["noise"] = watch.result(elapsed)
        r["rss_kb"]["under_load_peak"] = rss_peak
        r["cpu_pct"] = {k: pct(cpu_a[k], cpu_b[k]) for k in pids}
        r["cpu_pct"]["server_user"] = pct(split_a[0], split_b[0])
        r["cpu_pct"]["server_system"] = pct(split_a[1], split_b[1])
        for key, a, b in zip(("core0_pct", "core1_pct"), cores_a, cores_b, strict=True):
            r[key] = {k: pct(a[k], b[k]) for k in a}
        r["swarm"] = last_json(swarm, swarm_lines, 30)
        r["sender"] = last_json(sender, sender_lines, args.warmup + args.duration + 90)
        if spy is not None:
            r["profile"] = finish_profiler(spy)
    r["summary"] = summarize(r)
    return r


def user_system_s(pid: int) -> tuple[float, float]:
    """utime and stime of a process, in seconds (cpu_seconds gives their sum)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2:].split()
    return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK


def summarize(r: dict[str, Any]) -> dict[str, Any]:
    sw, snd, cpu = r["swarm"], r["sender"], r["cpu_pct"]
    lat = sw["latency_ms"]
    frames, msgs = sw["frames"], sw["messages"]
    fps = sw["frames_per_s"]
    core0 = r["core0_pct"]["busy"]
    return {
        "viewers_ok": sw["ok"],
        "comments_per_s": snd["rate_achieved"],
        "demand_msgs_per_s": sw["ok"] * snd["rate_achieved"],
        "viewer_frames_per_s": fps,
        "delivered_msgs_per_s": sw["messages_per_s"],
        "msgs_per_frame": round(msgs / frames, 1) if frames else None,
        "p50_ms": lat["p50"] if lat["n"] else None,
        "p99_ms": lat["p99"] if lat["n"] else None,
        "p999_ms": lat["p999"] if lat["n"] else None,
        "max_ms": lat["max"] if lat["n"] else None,
        "server_cpu_pct": cpu["server"],
        "server_user_pct": cpu.get("server_user"),
        # Kernel time: the server's system time (send syscalls) and CPU 0's softirq (loopback
        # TCP). Tick-based accounting may count a tick in both, so they are not added up.
        "server_system_pct": cpu.get("server_system"),
        "engine_cpu1_pct": round(sum(v for k, v in cpu.items() if k in {"worker", "redis"}), 1),
        "core0_busy_pct": core0,
        "core0_softirq_pct": r["core0_pct"]["softirq"],
        "core1_busy_pct": r["core1_pct"]["busy"],
        "swarm_cpu_pct": sw["swarm_cpu_pct"],
        # Busy time of the server's core per frame it wrote (its own CPU + the loopback softirq).
        "core0_us_per_frame": round(core0 / 100 / fps * 1e6, 2) if fps else None,
        "rss_kb_per_idle_viewer": r["rss_kb_per_idle_viewer"],
        "rss_mb_under_load": round(r["rss_kb"]["under_load_peak"] / 1024, 1),
        "lost_msgs": sw["lost_msgs"],
        "gaps": sw["gaps"],
        "order_errors": sw["inner_gaps"],
        "skipped_msgs": sw["skipped_msgs"],
        "closes": sum(sw["closes"].values()) + sw["eof_after_join"],
        "behind_at_end": sw["behind_at_end"],
        "lag_max_seqs": sw["lag_max_seqs"],
        "sent": snd["sent"],
        "acked": snd["acked"],
        "unanswered": snd["unanswered"],
        "sender_slip_ms": snd["max_slip_ms"],
        "ack_p99_ms": snd["ack_latency_ms"]["p99"],
        "foreign_cpu_pct": r["noise"]["foreign_cpu_pct"],
    }


# ---- aggregation and report --------------------------------------------------------------------
WORST = {"lost_msgs", "gaps", "order_errors", "closes", "skipped_msgs", "unanswered"}


def median_row(runs: list[dict[str, Any]]) -> dict[str, Any] | None:
    done = [r for r in runs if r.get("summary")]
    use = [r for r in done if not r.get("noisy")] or done
    if not use:
        return None
    row: dict[str, Any] = {"engine": use[0]["engine"], "viewers": use[0]["viewers"],
                           "runs": len(use), "noisy": all(r.get("noisy") for r in use)}
    for key in use[0]["summary"]:
        values = sorted(r["summary"][key] for r in use
                        if isinstance(r["summary"].get(key), int | float))
        if not values:
            row[key] = None
        elif key in WORST:
            row[key] = values[-1]
        else:
            mid = len(values) // 2
            median = values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2
            row[key] = int(median) if all(isinstance(v, int) for v in values) else median
    return row


COLUMNS = [
    ("engine", "engine"), ("viewers", "viewers"), ("runs", "runs"),
    ("comments_per_s", "comments/s sent"),
    ("viewer_frames_per_s", "viewer-frames/s"),
    ("delivered_msgs_per_s", "delivered msgs/s"),
    ("msgs_per_frame", "msgs/frame"),
    ("p50_ms", "p50 ms"), ("p99_ms", "p99 ms"), ("p999_ms", "p99.9 ms"),
    ("server_cpu_pct", "server CPU %"), ("core0_busy_pct", "CPU 0 busy %"),
    ("server_system_pct", "server sys %"), ("core0_softirq_pct", "CPU 0 softirq %"),
    ("core0_us_per_frame", "CPU 0 µs/frame"),
    ("engine_cpu1_pct", "worker+redis CPU %"),
    ("rss_kb_per_idle_viewer", "RSS KB/conn"), ("rss_mb_under_load", "RSS MB loaded"),
    ("lost_msgs", "lost msgs"), ("skipped_msgs", "skipped"), ("closes", "closes"),
]


def table(rows: list[dict[str, Any]]) -> str:
    head = "| " + " | ".join(t for _k, t in COLUMNS) + " |"
    sep = "|" + "---|" * len(COLUMNS)
    body = []
    for row in rows:
        cells = [row["engine"] if k == "engine" else fmt(row.get(k)) for k, _t in COLUMNS]
        if row.get("noisy"):
            cells[2] += " noisy"
        body.append("| " + " | ".join(cells) + " |")
    return "\n".join([head, sep, *body])


def plots(rows: list[dict[str, Any]], names: list[str], rate: float) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    IMG.mkdir(parents=True, exist_ok=True)
    by_engine = {name: sorted((r for r in rows if r["engine"] == name),
                              key=lambda r: r["viewers"]) for name in names}
    out: list[Path] = []

    colors = {name: f"C{i}" for i, name in enumerate(ENGINES)}  # one colour per engine

    def save(fig: Any, name: str) -> None:
        for ax in fig.axes:
            ax.legend(fontsize=6 if len(fig.axes) == 1 else 7)
        fig.tight_layout()
        out.append(IMG / name)
        fig.savefig(out[-1], dpi=110)
        plt.close(fig)

    def lines(ax: Any, key: str, style: str = "-o", suffix: str = "") -> None:
        for name, rs in by_engine.items():
            pts = [(r["viewers"], r[key]) for r in rs if r.get(key)]
            if pts:
                ax.plot(*zip(*pts, strict=True), style, color=colors[name],
                        label=ENGINES[name].label + suffix)

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    lines(ax1, "delivered_msgs_per_s")
    ax1.set(title=f"delivered messages/s ({rate:g} comments/s)", xlabel="viewers in the room",
            yscale="log")
    demand = sorted({r["viewers"] for r in rows})
    ax1.plot(demand, [v * rate for v in demand], "k:", label=f"demand (viewers x {rate:g}/s)")
    lines(ax2, "viewer_frames_per_s")
    ax2.set(title="viewer-frames/s written (one core)", xlabel="viewers in the room",
            ylim=(0, None))
    save(fig, "peers-throughput.png")

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    lines(ax, "p99_ms", "-o", " p99")
    lines(ax, "p50_ms", "--x", " p50")
    ax.set(title="latency, sender -> viewer (log)", xlabel="viewers in the room", ylabel="ms",
           yscale="log")
    save(fig, "peers-latency.png")

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    lines(ax1, "rss_kb_per_idle_viewer")
    ax1.set(title="server RSS per idle connection", xlabel="viewers", ylabel="KB", ylim=(0, None))
    lines(ax2, "core0_us_per_frame")
    ax2.set(title="CPU 0 time per viewer-frame written", xlabel="viewers", ylabel="µs",
            ylim=(0, None))
    save(fig, "peers-cost.png")
    return out


def verdicts(rows: list[dict[str, Any]]) -> list[str]:
    """The issue's targets at the largest N, each met or not, with the measured figures."""
    n = max(r["viewers"] for r in rows)
    at = {r["engine"]: r for r in rows if r["viewers"] == n}
    d = at.get("danmaku")
    if d is None:
        return ["- no danmaku run at the largest N: nothing to judge"]
    out: list[str] = []
    lost = d["lost_msgs"] + d["order_errors"]
    out.append(
        f"- **{n:,} viewers, {d['comments_per_s']:g} comments/s, zero lost acknowledged messages "
        f"(danmaku): {'met' if lost == 0 and d['closes'] == 0 else 'NOT met'}** — lost "
        f"{d['lost_msgs']}, out-of-order {d['order_errors']}, closes {d['closes']}, "
        f"{d['acked']:,} of {d['sent']:,} sends acked, {d['skipped_msgs']:,} deliveries "
        f"shed as `skipped` (counted apart, not lost)."
    )
    for peer, factor in (("websockets", 1.5), ("socketio", 2.0), ("ws", 1.0)):
        p = at.get(peer)
        if p is None:
            continue
        ratio = d["delivered_msgs_per_s"] / p["delivered_msgs_per_s"] if p[
            "delivered_msgs_per_s"] else float("inf")
        p99_ok = (d["p99_ms"] or 0) <= (p["p99_ms"] or float("inf"))
        met = ratio >= factor and p99_ok
        what = "the bar to beat" if peer == "ws" else f">= {factor:g}x"
        out.append(
            f"- **vs {ENGINES[peer].label} ({what}) at equal or lower p99: "
            f"{'met' if met else 'NOT met'}** — {ratio:,.1f}x the delivered messages/s "
            f"({fmt(d['delivered_msgs_per_s'])} vs {fmt(p['delivered_msgs_per_s'])}), p99 "
            f"{fmt(d['p99_ms'])} vs {fmt(p['p99_ms'])} ms; viewer-frames/s "
            f"{fmt(d['viewer_frames_per_s'])} vs {fmt(p['viewer_frames_per_s'])} "
            f"({d['viewer_frames_per_s'] / max(1.0, p['viewer_frames_per_s']):.2f}x)."
        )
    return out


def reading(rows: list[dict[str, Any]]) -> list[str]:
    """Frames against messages at the largest N: where danmaku's lead comes from."""
    n = max(r["viewers"] for r in rows)
    at = {r["engine"]: r for r in rows if r["viewers"] == n}
    d = at.get("danmaku")
    peers = [r for name, r in at.items() if name != "danmaku" and r["viewer_frames_per_s"]]
    if d is None or not peers:
        return []
    best = max(peers, key=lambda r: r["viewer_frames_per_s"])
    return [
        f"Reading: at {n:,} viewers the fastest peer ({best['engine']}) wrote "
        f"{fmt(best['viewer_frames_per_s'])} frames/s at {fmt(best['core0_us_per_frame'])} µs "
        f"of CPU 0 per frame, danmaku's gateway {fmt(d['viewer_frames_per_s'])} frames/s "
        f"({d['viewer_frames_per_s'] / best['viewer_frames_per_s']:.2f}x) at "
        f"{fmt(d['core0_us_per_frame'])} µs; the kernel ("
        "send syscalls and the loopback TCP path) was busy for both alike: server system "
        f"time {fmt(best['server_system_pct'])} % ({best['engine']}) and "
        f"{fmt(d['server_system_pct'])} % (danmaku), CPU 0 softirq "
        f"{fmt(best['core0_softirq_pct'])} % and {fmt(d['core0_softirq_pct'])} %. "
        "The difference in delivered messages is "
        f"the batching: danmaku's frames carried {fmt(d['msgs_per_frame'])} comments each, so "
        "it delivered every comment to every viewer while each peer, writing one frame per "
        "comment, could deliver at most its frames/s and fell behind by the rest. A peer "
        "that batched per tick would close most of that gap; none of the three does it out "
        "of the box.",
    ]


def bounds(rows: list[dict[str, Any]]) -> list[str]:
    """What limits each engine at each N, from the measured figures."""
    out = []
    for r in rows:
        demand = r["demand_msgs_per_s"] or 1
        share = 100 * r["delivered_msgs_per_s"] / demand
        if share >= 99:
            continue
        out.append(
            f"- {r['engine']} at {r['viewers']:,}: delivered {share:.0f} % of the demand with the "
            f"server process at {fmt(r['server_cpu_pct'])} % and CPU 0 at "
            f"{fmt(r['core0_busy_pct'])} % busy ({fmt(r['core0_us_per_frame'])} µs of CPU 0 per "
            f"frame, {fmt(r['msgs_per_frame'])} msgs/frame). The server's core is the bound; "
            "the rest of the comments wait in socket buffers, so latency (p50 "
            f"{fmt(r['p50_ms'])} ms) grows for as long as the load lasts."
        )
    return out


def shown(argv: str) -> str:
    """A command line as the docs show it: --note paragraphs (always last) appear as text."""
    return argv.split(" --note ", 1)[0] + (' --note "..."' if " --note " in argv else "")


def section(doc: dict[str, Any], rows: list[dict[str, Any]], pngs: list[Path]) -> str:
    a = doc["args"]
    m = doc["machine"]
    lines = [
        "",
        f"One room of N viewers on one server core, the same {a['rate']:g} comments/s for every "
        "engine, measured in one session on one machine (engines alternate for each N). "
        "Delivered messages/s, latency, server CPU and RSS per connection, lost messages.",
        "",
        "```sh",
        "npm ci --prefix loadtest/peers    # Socket.IO 4.8.3, ws 8.21.3 (package-lock.json)",
        *[f"flock /tmp/danmaku-bench.lock python loadtest/compare_peers.py {shown(argv)}".rstrip()
          for _f, _t, argv in doc.get("merged", [])],
        *([] if a.get("report_only") else [
            "flock /tmp/danmaku-bench.lock python loadtest/compare_peers.py"
            + (f" {shown(doc['argv'])}" if doc["argv"] else "")]),
        "python loadtest/compare_peers.py --smoke    # 50 viewers, seconds: checks the wiring",
        "```",
        "",
        "Engines (servers in `loadtest/peers/`, each a minimal room broadcast doing the "
        "gateway's job for this test: viewers join one room, a sender's comments get the "
        "room's next seq, are broadcast, and acked to the sender):",
        "",
        "- **danmaku**: `danmaku gateway` on CPU 0 with `danmaku worker` and a private "
        "`redis-server` on CPU 1, started as in the fan-out benchmark above (default tick: "
        "25 ms, widened to viewers / 120,000 frames/s).",
        "- **websockets**: `websockets_server.py`, python `websockets` 15.0.1 on asyncio, "
        "`websockets.broadcast()` of each message to the room's connections.",
        "- **socketio**: `socketio_server.js`, Socket.IO 4.8.3 on Node.js 20, rooms and "
        "`io.to(room).emit('danmaku', msg)`; the swarm speaks Engine.IO v4 over WebSocket.",
        "- **ws**: `ws_server.js`, Node.js 20 + `ws` 8.21.3 for the handshake and client frames; "
        "each broadcast frame is built once and written to every viewer's raw socket "
        "(the fastest design in `../shared/research/fanout.md`): the bar to beat.",
        "",
        "Fairness notes. Same machine, same session, same swarm (`loadtest/swarm/swarm --proto "
        "danmaku|ws|sio`, C, epoll, CPU 1), same sender (`loadtest/sender.py`; for peers "
        "`loadtest/peer_sender.py` runs it over their protocol), same payload (the danmaku "
        "message object: seq, id, user, name, ts, kind, body with a 40-character "
        "`t=<unix µs>` text), no per-connection compression anywhere, no heartbeats in the "
        "window, server process pinned to CPU 0 with `taskset`. danmaku does more work per "
        "comment: token auth, moderation, an ingress stream in Redis, the worker's Lua step "
        "(dedupe, seq, hot buffer for resume, archive stream, PUBLISH), pub/sub back to the "
        "gateway, acks after durable sequencing, and its worker and Redis use CPU 1 next to the "
        "clients (column *worker+redis CPU %*). The peers keep no history, no dedupe and no "
        "auth: a seq counter and a loop. The design difference that matters: danmaku batches "
        "each room tick into one frame (*msgs/frame*), the peers send one frame per comment, so "
        "at N viewers and R comments/s they must write N x R frames/s.",
        "",
        "Measured per run: *viewer-frames/s* and *delivered msgs/s* as read by the swarm over "
        f"the {a['duration']:g} s window (after {a['warmup']:g} s warmup); latency from the "
        "sender's wall clock in the text to the swarm's at receipt; *server CPU %* = utime + "
        "stime of the server process (% of one core), *CPU 0 busy* = the whole core incl. the "
        "loopback softirq its writes cause, *server sys* = the server's stime alone (send "
        "syscalls), *CPU 0 softirq* = the core's softirq time (loopback TCP), "
        "*µs/frame* = CPU 0 busy time per viewer-frame "
        "written; *RSS KB/conn* = server RSS growth from before the swarm to 2 s after all N "
        "joined, / N; *lost msgs* = seqs a viewer never received (holes in its per-room seq "
        "sequence, all viewers summed); for danmaku *skipped* counts deliveries shed by the "
        "protocol's `skipped` ranges (not lost); *closes* = close frames or EOFs after the "
        "join. No engine drops messages here: what a server cannot write in time waits in "
        "socket buffers (the sender's and the server's), visible as latency and as delivered "
        "< viewers x comments/s. "
        "Each row is the median of the clean runs of that engine and N (column *runs*; the "
        "worst run for lost, skipped and closes); a run during which other processes used "
        "more than "
        f"{a['max_noise_pct']:g} % of a core is *noisy*, retried while the budget lasts, and "
        "left out of the median when a clean run exists.",
        "",
        f"Machine: {m.get('nproc')} vCPU {m.get('cpu_model')}, kernel {m.get('kernel')}, "
        f"Python {m.get('python')}, Node {doc.get('node_version')}, git {m.get('git_head')}"
        + (" + uncommitted engine changes" if m.get("engine_files_modified") else "")
        + f" (engine digest `{doc.get('engine_digest')}`), loadavg before "
        f"{' '.join(m.get('loadavg_before', []))}. Results: "
        + ("; ".join(f"`loadtest/results/{f}` (run started {t})"
                     for f, t, _a in doc.get("merged", [])) if a.get("report_only") else
           f"`loadtest/results/{doc['file']}`; run started {doc['started_utc']}, took "
           f"{doc['total_wall_s'] / 60:.1f} min"
           + "".join(f"; with the runs of `loadtest/results/{f}` (started {t}) merged in"
                     for f, t, _a in doc.get("merged", [])))
        + (f". {doc['failed_runs']} attempts failed and are left out (their errors are in the "
           "JSON)" if doc.get("failed_runs") else "") + ".",
        "",
        table(rows),
        "",
        *[f"![{p.stem}](img/{p.name})" for p in pngs],
        "",
        "Against the issue's targets (at the largest N):",
        "",
        *verdicts(rows),
        "",
        *reading(rows),
        "",
        "Where an engine could not keep up (delivered < 99 % of viewers x comments/s):",
        "",
        *(bounds(rows) or ["- none"]),
        "",
    ]
    if doc.get("notes"):
        lines += [*doc["notes"], ""]
    return "\n".join(lines)


def write_section(text: str) -> None:
    """Replace only what lies between the markers (others edit the rest of the file)."""
    current = DOCS.read_text()
    if BEGIN not in current or END not in current:
        sep = "" if current.endswith("\n") else "\n"
        current += f"{sep}\n{SECTION_TITLE}\n\n{BEGIN}\n{END}\n"
    head, rest = current.split(BEGIN, 1)
    _old, tail = rest.split(END, 1)
    DOCS.write_text(f"{head}{BEGIN}\n{text}\n{END}{tail}")


# ---- main --------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--engines", nargs="+", default=list(ENGINES), choices=list(ENGINES))
    parser.add_argument("--viewers", type=int, nargs="+", default=[1000, 5000, 10000])
    parser.add_argument("--rate", type=float, default=200.0, help="comments/s")
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument("--repeat", type=int, default=1, help="rounds over every N and engine")
    parser.add_argument("--extra-largest", type=int, default=1,
                        help="more rounds at the largest N only (time budget permitting)")
    parser.add_argument("--connect-rate", type=float, default=2000.0, help="new viewers/s")
    parser.add_argument("--budget-min", type=float, default=20.0,
                        help="no run starts that could end after this many minutes")
    parser.add_argument("--quiet-pct", type=float, default=25.0)
    parser.add_argument("--quiet-wait-s", type=float, default=20.0)
    parser.add_argument("--max-noise-pct", type=float, default=15.0)
    parser.add_argument("--max-retries", type=int, default=1, help="extra attempts per noisy cell")
    parser.add_argument("--profile", action="store_true",
                        help="py-spy the python servers (danmaku gateway, websockets) at max N")
    parser.add_argument("--smoke", action="store_true",
                        help="50 viewers, 50 comments/s, 1 + 3 s per engine, no docs")
    parser.add_argument("--merge", nargs="+", default=[], metavar="JSON",
                        help="add the runs of earlier results files (loadtest/results/peers-*.json)"
                        " to this run's, e.g. for cells an earlier run could not finish")
    parser.add_argument("--note", action="append", default=[],
                        help="a paragraph for the docs section (e.g. what went wrong in a run)")
    parser.add_argument("--report-only", action="store_true",
                        help="run nothing: the table, plots and docs section from --merge files")
    parser.add_argument("--no-docs", action="store_true",
                        help="do not write docs/benchmarks.md and docs/img/peers-*.png")
    args = parser.parse_args(argv)
    if args.smoke:
        args.viewers, args.rate, args.warmup, args.duration = [50], 50.0, 1.0, 3.0
        args.extra_largest, args.repeat, args.no_docs, args.quiet_wait_s = 0, 1, True, 0.0
        args.max_retries = 0
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.sched_setaffinity(0, {CLIENT_CPU})  # children (swarm, sender, redis, worker) inherit it
    nofile = raise_nofile(max(args.viewers) * 2 + 1024)
    build_c(SWARM_SRC, SWARM_BIN)
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    started = time.monotonic()
    node = subprocess.run([NODE, "--version"], capture_output=True, text=True, check=False)
    info = machine_info() | {"nofile_soft": nofile}
    print(f"machine: {info}", flush=True)
    names = args.engines
    plan: list[tuple[str, int]] = []
    for rep in range(args.repeat):
        for n in args.viewers:
            shift = rep % len(names)  # rotate who goes first each round
            plan += [(e, n) for e in names[shift:] + names[:shift]]
    if args.report_only:
        plan = []
    for rep in range(args.extra_largest if not args.report_only else 0):
        shift = (args.repeat + rep) % len(names)
        plan += [(e, max(args.viewers)) for e in names[shift:] + names[:shift]]
    runs: dict[tuple[str, int], list[dict[str, Any]]] = {(e, n): [] for e, n in plan}
    deadline = started + args.budget_min * 60

    def run_s(n: int) -> float:
        return float(args.warmup + args.duration + 25 + n / args.connect_rate)

    def attempt(name: str, n: int) -> None:
        label = f"peers-{stamp}-{name}-{n}-{len(runs[(name, n)]) + 1}"
        quiet = wait_for_quiet(min(args.quiet_wait_s,
                                   max(0.0, deadline - time.monotonic() - run_s(n))),
                               args.quiet_pct)
        print(f"== {name} N={n} (quiet check: {quiet})", flush=True)
        t0 = time.monotonic()
        try:
            r = run_once(ENGINES[name], n, args, label)
        except Exception as exc:  # one broken run must not lose the others
            print(f"   run failed: {exc!r}", flush=True)
            runs[(name, n)].append({"engine": name, "viewers": n, "error": repr(exc)})
            return
        r["wall_s"] = round(time.monotonic() - t0, 1)
        r["quiet_before"] = quiet
        r["noisy"] = r["noise"]["foreign_cpu_pct"] > args.max_noise_pct
        runs[(name, n)].append(r)
        print(("   NOISY " if r["noisy"] else "   ") + orjson.dumps(r["summary"]).decode(),
              flush=True)
        if "profile" in r:
            print("   profile (self %):", r["profile"]["self_pct"][:10], flush=True)

    for name, n in plan:
        if time.monotonic() + run_s(n) > deadline:
            print(f"== skipped {name} N={n}: time budget", flush=True)
            continue
        attempt(name, n)
    while True:  # retries of noisy or failed cells while the budget lasts
        short = [k for k, rs in runs.items()
                 if not any(r.get("summary") and not r.get("noisy") for r in rs)
                 and len(rs) <= args.max_retries
                 and time.monotonic() + run_s(k[1]) <= deadline]
        if not short:
            break
        attempt(*short[0])

    merged: list[tuple[str, str, str]] = []
    for path in args.merge:  # earlier runs of this script, for cells this run could not finish
        old = orjson.loads(Path(path).read_bytes())
        merged.append((Path(path).name, old.get("started_utc", "?"), old.get("argv", "")))
        for r in old["runs"]:
            if r.get("merged_from") is None:
                if "swarm" in r:
                    r["summary"] = summarize(r)  # this version's summary of the raw figures
                runs.setdefault((r["engine"], r["viewers"]), []).append(
                    r | {"merged_from": Path(path).name})
    names = [e for e in ENGINES if any(k[0] == e for k in runs)]
    rows = [row for key in sorted(runs, key=lambda k: (k[1], names.index(k[0])))
            if (row := median_row(runs[key])) is not None]
    file = f"peers-{stamp}{'-smoke' if args.smoke else ''}.json"
    doc: dict[str, Any] = {
        "machine": info, "node_version": node.stdout.strip(), "args": vars(args),
        "argv": " ".join(argv if argv is not None else sys.argv[1:]),
        # The engine each danmaku run measured (others edit it while benchmarks run).
        "engine_digest": ", ".join(sorted({r["engine_digest"] for rs in runs.values()
                                           for r in rs if r.get("engine_digest")})),
        "file": file,
        "started_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(time.time() - (
            time.monotonic() - started))),
        "total_wall_s": round(time.monotonic() - started, 1),
        "rows": rows, "merged": merged,
        "failed_runs": sum(1 for rs in runs.values() for r in rs if "error" in r),
        "runs": [r for rs in runs.values() for r in rs],
    }
    doc["notes"] = args.note
    if args.report_only and args.merge:  # the machine as the first merged run saw it
        first = orjson.loads(Path(args.merge[0]).read_bytes())
        doc["machine"], doc["node_version"] = first["machine"], first["node_version"]
    (RESULTS / file).write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2))
    print()
    print(table(rows))
    print()
    print("\n".join(verdicts(rows)) if rows else "no results")
    print("\n".join(bounds(rows)) if rows else "")
    if not args.no_docs and rows:
        pngs = plots(rows, names, args.rate)
        write_section(section(doc, rows, pngs))
        print(f"wrote {DOCS.relative_to(REPO)} (peers section) and "
              + ", ".join(str(p.relative_to(REPO)) for p in pngs))
    print(f"\nresults: {(RESULTS / file).relative_to(REPO)}")
    failed = sum(1 for rs in runs.values() for r in rs if "error" in r)
    return 1 if failed and not rows else 0


if __name__ == "__main__":
    sys.exit(main())
