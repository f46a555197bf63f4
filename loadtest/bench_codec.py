"""Micro-benchmark of the wire codec's hot paths (single core, no I/O).

    python loadtest/bench_codec.py [--seconds 1.0]

Prints operations per second for: decoding a typical `send` frame (bytes and str), decoding a
`ping`, encoding one message object, splicing a `batch` of 20 pre-serialised messages, the same
batch built the naive way (parse + re-serialise) for comparison, and framing a batch for
WebSocket.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import orjson

from engine import protocol as p
from engine import wsframe


def rate(fn: Callable[[], object], seconds: float) -> float:
    """Calls per second of `fn`, timed in rounds until `seconds` have passed."""
    n, rounds, start = 0, 1000, time.perf_counter()
    while True:
        for _ in range(rounds):
            fn()
        n += rounds
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return n / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.0, help="time per benchmark")
    seconds = parser.parse_args().seconds

    send = p.client_send(
        "room:12345", "c-8f3a2b", "主播好厉害！666 wow", "scroll", "#FFCC00", 1234567
    )
    send_str = send.decode()
    ping = p.client_ping(1700000000000)
    body = p.Body("主播好厉害！666 wow", "scroll", "#ffcc00", 1234567)
    msgs = [
        p.encode_message(
            1000 + i,
            f"1700000000000-{i}",
            f"u{i}",
            f"viewer{i}",
            1700000000000 + i,
            "danmaku",
            body,
        )
        for i in range(20)
    ]
    batch = p.encode_batch("room:12345", "e1", msgs, 1000, 1019, None)

    def naive_batch() -> bytes:
        return orjson.dumps(
            {
                "op": "batch",
                "room": "room:12345",
                "epoch": "e1",
                "from": 1000,
                "to": 1019,
                "msgs": [orjson.loads(m) for m in msgs],
            }
        )

    cases: list[tuple[str, Callable[[], object]]] = [
        ("decode_client_frame(send, bytes)", lambda: p.decode_client_frame(send)),
        ("decode_client_frame(send, str)", lambda: p.decode_client_frame(send_str)),
        ("decode_client_frame(ping)", lambda: p.decode_client_frame(ping)),
        (
            "encode_message",
            lambda: p.encode_message(1, "1-0", "u1", "viewer", 1700000000000, "danmaku", body),
        ),
        (
            "encode_batch(20 msgs, spliced)",
            lambda: p.encode_batch("room:12345", "e1", msgs, 1000, 1019, None),
        ),
        (
            "encode_batch(20 msgs, skipped)",
            lambda: p.encode_batch("room:12345", "e1", msgs, 1000, 1021, [(1005, 1006)]),
        ),
        ("naive batch (loads + dumps)", naive_batch),
        (f"encode_text_frame({len(batch)} B batch)", lambda: wsframe.encode_text_frame(batch)),
    ]
    print(f"batch of 20 messages: {len(batch)} bytes; send frame: {len(send)} bytes")
    for name, fn in cases:
        ops = rate(fn, seconds)
        print(f"{name:40s} {ops:>12,.0f} ops/s  {1e9 / ops:>8,.0f} ns/op")


if __name__ == "__main__":
    main()
