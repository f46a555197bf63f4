"""Prometheus metrics of one gateway (a private registry, so several gateways fit one process).

Counters on the hot path are bumped once per batch, never once per viewer.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest


class GatewayMetrics:
    def __init__(self, node_id: str) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        labels = {"node": node_id}
        r = self.registry
        self.connections = Gauge(
            "danmaku_connections", "Open WebSocket connections", registry=r
        )
        self.rooms = Gauge("danmaku_rooms", "Rooms with a hub on this gateway", registry=r)
        self.frames_out = Counter(
            "danmaku_frames_out", "Batch frames written to viewers", registry=r
        )
        self.messages_out = Counter(
            "danmaku_messages_out", "Messages delivered to viewers (frames x messages)", registry=r
        )
        self.batches = Counter("danmaku_batches", "Batches built (one encode each)", registry=r)
        self.catch_up_frames = Counter(
            "danmaku_catch_up_frames", "Per-viewer frames for resume or lag catch-up", registry=r
        )
        self.holes_filled = Counter(
            "danmaku_holes_filled", "Messages fetched from the room stream to fill holes",
            registry=r,
        )
        self.queue_drops = Counter(
            "danmaku_queue_drops", "Viewers disconnected over their memory bound", registry=r
        )
        self.sends = Counter("danmaku_sends", "send ops accepted for sequencing", registry=r)
        self.errors = Counter(
            "danmaku_errors", "Error frames sent, by code", ["code"], registry=r
        )
        self.ack_latency = Histogram(
            "danmaku_ack_latency_seconds",
            "Gateway receive of a send to its ack",
            buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
            registry=r,
        )
        self.info = Gauge("danmaku_gateway_info", "Gateway identity", ["node"], registry=r)
        self.info.labels(**labels).set(1)

    def render(self) -> bytes:
        return generate_latest(self.registry)
