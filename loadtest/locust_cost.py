"""What a locust WebSocket viewer costs, next to the C swarm (issue 4).

    flock /tmp/danmaku-bench.lock python loadtest/locust_cost.py        # 25..400 viewers + swarm
    python loadtest/locust_cost.py --viewers 20 --seconds 15 --swarm 0  # a quick check

Per run, fresh and on 127.0.0.1 (``fanout_bench.engine_stack``): a private redis-server, one
``danmaku worker``, one ``danmaku gateway`` pinned to CPU 0; this driver pins itself to CPU 1,
so redis, the worker, the sender and the client under test share CPU 1 (as in
``fanout_bench.py``). ``loadtest/sender.py`` sends ``--rate`` comments/s (200) into one room;
then either

- ``locust -f loadtest/locustfile.py --headless -u N WsViewer`` (one locust process, gevent),
  or
- ``loadtest/swarm/swarm -n N`` (the C swarm, epoll),

joins N viewers. Over a window after every viewer joined, the client's CPU (utime + stime) and
RSS are sampled from /proc; delivered messages come from locust's ``--csv-full-history`` (the
``WS deliver`` row, one per message) or the swarm's JSON. Reported per run: delivered messages/s
against N x rate (a client that keeps up delivers all of them), CPU % of one core, CPU µs per
delivered frame and message, RSS, and the delivery latency (p50/p99 of the window).

The JSON goes to ``loadtest/results/locust-cost-<time>.json``, a table to stdout.
"""

from __future__ import annotations

import argparse
import csv
import os
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from loadtest.fanout_bench import (  # noqa: E402
    CLIENT_CPU,
    LOADTEST,
    RESULTS,
    SWARM_BIN,
    SWARM_SRC,
    Lines,
    Scenario,
    build_c,
    cpu_seconds,
    engine_digest,
    engine_stack,
    raise_nofile,
    rss_kb,
    stop_process,
)

ROOM = "bench"


def start_sender(port: int, secret: str, rate: float, seconds: float) -> tuple[
    subprocess.Popen[bytes], Lines
]:
    sender = subprocess.Popen(
        [sys.executable, str(LOADTEST / "sender.py"), "--url", f"ws://127.0.0.1:{port}/ws",
         "--secret", secret, "--room", ROOM, "--rate", str(rate), "--duration", str(seconds)],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert sender.stderr is not None
    lines = Lines(sender.stderr)
    lines.wait_event("ready", 30)
    return sender, lines


def sample_window(pid: int, seconds: float) -> dict[str, float]:
    """CPU % of one core and RSS of a process over the next ``seconds``."""
    t0, c0 = time.monotonic(), cpu_seconds(pid)
    rss = [rss_kb(pid)]
    while time.monotonic() - t0 < seconds:
        time.sleep(1.0)
        rss.append(rss_kb(pid))
    elapsed = time.monotonic() - t0
    return {"cpu_pct": round(100 * (cpu_seconds(pid) - c0) / elapsed, 1),
            "elapsed_s": round(elapsed, 2), "rss_kb_start": rss[0], "rss_kb_max": max(rss)}


def history_delta(path: Path, t0: float, t1: float) -> dict[str, Any]:
    """From locust's stats history: ``WS deliver`` requests between wall times t0 and t1."""
    rows = []
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            if row["Type"] == "WS" and row["Name"] == "deliver":
                rows.append(row)
    if not rows:
        return {"delivered": 0}
    before = [r for r in rows if float(r["Timestamp"]) <= t0] or rows[:1]
    after = [r for r in rows if float(r["Timestamp"]) <= t1] or rows[-1:]
    a, b = before[-1], after[-1]
    dt = float(b["Timestamp"]) - float(a["Timestamp"])
    n = int(b["Total Request Count"]) - int(a["Total Request Count"])
    return {"delivered": n, "history_dt_s": dt, "delivered_per_s": round(n / dt, 1) if dt else 0,
            "p50_ms": b.get("50%"), "p99_ms": b.get("99%")}


def run_locust(args: argparse.Namespace, n: int, tmp: Path, log_dir: Path) -> dict[str, Any]:
    secret = secrets.token_urlsafe(32)
    scn = Scenario(f"locust-{n}", "steady", n, args.rate)
    with engine_stack(tmp, scn, secret, log_dir) as (port, _gw, _worker, _redis):
        spawn_s = max(2.0, n / args.spawn_rate) + 3
        sender, _sl = start_sender(port, secret, args.rate, args.seconds + spawn_s + 15)
        prefix = tmp / "locust"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DANMAKU_", "LOCUST_"))}
        locust = subprocess.Popen(
            [sys.executable, "-m", "locust", "-f", str(LOADTEST / "locustfile.py"), "--headless",
             "-u", str(n), "-r", str(args.spawn_rate), "-t", f"{int(args.seconds + spawn_s)}s",
             "--host", f"http://127.0.0.1:{port}", "--csv", str(prefix), "--csv-full-history",
             "--only-summary", "--danmaku-room", ROOM, "--danmaku-secret", secret, "WsViewer"],
            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        try:
            assert locust.stderr is not None
            lines = Lines(locust.stderr)
            time.sleep(spawn_s)
            t0 = time.time()
            window = sample_window(locust.pid, args.seconds - 2)
            t1 = time.time()
            locust.wait(timeout=60)
            lines.join()
        finally:
            stop_process(locust)
            stop_process(sender)
    verdict: dict[str, Any] = {}
    for line in lines.lines:
        if line.startswith("danmaku-locust: "):
            verdict = orjson.loads(line.removeprefix("danmaku-locust: "))
    cpu_warn = any("CPU usage" in line for line in lines.lines)
    hist = history_delta(Path(f"{prefix}_stats_history.csv"), t0, t1)
    return finish("locust", n, args, window, hist.get("delivered_per_s", 0.0),
                  verdict.get("messages", 0) / max(1, verdict.get("frames", 1)),
                  hist.get("p50_ms"), hist.get("p99_ms"),
                  {"cpu_warning": cpu_warn, "verdict": verdict, "history": hist,
                   "exit_code": locust.returncode})


def run_swarm(args: argparse.Namespace, n: int, tmp: Path, log_dir: Path) -> dict[str, Any]:
    secret = secrets.token_urlsafe(32)
    scn = Scenario(f"swarm-{n}", "steady", n, args.rate)
    with engine_stack(tmp, scn, secret, log_dir) as (port, _gw, _worker, _redis):
        sender, _sl = start_sender(port, secret, args.rate, args.seconds + n / 2000 + 20)
        swarm = subprocess.Popen(
            [str(SWARM_BIN), "--port", str(port), "--room", ROOM, "-n", str(n),
             "--duration", str(args.seconds), "--warmup", "3", "--rate", "2000",
             "--connect-timeout", "60"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        try:
            assert swarm.stderr is not None
            lines = Lines(swarm.stderr)
            lines.wait_event("measuring", 90)
            window = sample_window(swarm.pid, args.seconds - 2)
            out, _ = swarm.communicate(timeout=60)
        finally:
            stop_process(swarm)
            stop_process(sender)
    sw = orjson.loads(out.strip().splitlines()[-1])
    lat = sw.get("latency_ms", {})
    frames = max(1, sw.get("frames", 1))
    return finish("swarm", n, args, window, sw.get("messages_per_s", 0.0),
                  sw.get("messages", 0) / frames, lat.get("p50"), lat.get("p99"),
                  {"swarm_cpu_pct_own": sw.get("swarm_cpu_pct"),
                   "gaps": sw.get("gaps", 0) + sw.get("inner_gaps", 0)})


def finish(client: str, n: int, args: argparse.Namespace, window: dict[str, float],
           delivered_per_s: float, msgs_per_frame: float, p50: Any, p99: Any,
           extra: dict[str, Any]) -> dict[str, Any]:
    cpu_s_per_s = window["cpu_pct"] / 100
    frames_per_s = delivered_per_s / msgs_per_frame if msgs_per_frame else 0.0
    expected = n * args.rate
    row = {
        "client": client, "viewers": n, "expected_msgs_per_s": expected,
        "delivered_msgs_per_s": round(delivered_per_s, 1),
        "kept_up_pct": round(100 * delivered_per_s / expected, 1) if expected else None,
        "frames_per_s": round(frames_per_s, 1), "msgs_per_frame": round(msgs_per_frame, 2),
        "cpu_pct": window["cpu_pct"],
        "cpu_us_per_frame": round(1e6 * cpu_s_per_s / frames_per_s, 1) if frames_per_s else None,
        "cpu_us_per_msg": round(1e6 * cpu_s_per_s / delivered_per_s, 2)
        if delivered_per_s else None,
        "rss_mb": round(window["rss_kb_max"] / 1024, 1),
        "rss_kb_start": window["rss_kb_start"],
        "p50_ms": p50, "p99_ms": p99, **extra,
    }
    print("   " + orjson.dumps(row).decode(), flush=True)
    return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--viewers", type=int, nargs="+", default=[25, 50, 100, 200, 400])
    p.add_argument("--swarm", type=int, nargs="*", default=[1000],
                   help="swarm runs (viewers each; none: skip)")
    p.add_argument("--rate", type=float, default=200.0, help="comments/s into the room")
    p.add_argument("--seconds", type=float, default=20.0, help="measured window")
    p.add_argument("--spawn-rate", type=float, default=100.0, help="locust users/s")
    args = p.parse_args(argv)
    os.sched_setaffinity(0, {CLIENT_CPU})
    raise_nofile(max([*args.viewers, *args.swarm, 0]) * 2 + 1024)
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    if args.swarm:
        build_c(SWARM_SRC, SWARM_BIN)
    plan = [("locust", run_locust, n) for n in args.viewers]
    plan += [("swarm", run_swarm, n) for n in args.swarm]
    rows: list[dict[str, Any]] = []
    for client, run, n in plan:
        print(f"== {client}, {n} viewers, {args.rate:g} comments/s", flush=True)
        log_dir = RESULTS / "logs" / f"locust-cost-{stamp}-{client}-{n}"
        log_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="danmaku-lcost-") as tmp:
            rows.append(run(args, n, Path(tmp), log_dir))
    loc = sorted((r for r in rows if r["client"] == "locust"), key=lambda r: r["viewers"])
    rss_per_user = None
    if len(loc) >= 2 and loc[-1]["viewers"] > loc[0]["viewers"]:
        rss_per_user = round((loc[-1]["rss_kb_start"] - loc[0]["rss_kb_start"])
                             / (loc[-1]["viewers"] - loc[0]["viewers"]), 1)
    doc = {"args": vars(args), "engine_digest": engine_digest(), "rows": rows,
           "locust_rss_kb_per_user": rss_per_user,
           "loadavg": Path("/proc/loadavg").read_text().split()[:3]}
    out = RESULTS / f"locust-cost-{stamp}.json"
    out.write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2))
    cols = ["client", "viewers", "expected_msgs_per_s", "delivered_msgs_per_s", "kept_up_pct",
            "frames_per_s", "cpu_pct", "cpu_us_per_frame", "cpu_us_per_msg", "rss_mb",
            "p50_ms", "p99_ms"]
    print("\n| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(str(r.get(c)) for c in cols) + " |")
    print(f"\nlocust RSS per WsViewer user: {rss_per_user} KB\nresults: {out.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
