"""Prometheus metrics of the archiver (a private registry, like the gateway's).

The lag figures are what an operator watches: ``danmaku_archive_backlog`` (entries not yet
archived: read-but-not-inserted plus not-yet-read), ``danmaku_archive_pending`` (read but not
yet acknowledged) and ``danmaku_archive_oldest_age_seconds`` (how long the oldest un-archived
entry has waited), summed (age: the maximum) over every stream the archiver drains. The same
three with a ``table`` label (``danmaku_archive_table_backlog{table="moderation"}``, ...) split
them by what is archived: ``messages``, ``moderation`` (refused messages), ``audit``; so do
``danmaku_archive_table_rows_total`` and the unlabelled ``danmaku_archive_rows_total``
(all tables).
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.registry import Collector


class ArchiverMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.rows = Counter("danmaku_archive_rows", "Rows inserted into the archive", registry=r)
        self.batches = Counter("danmaku_archive_batches", "Batches inserted", registry=r)
        self.malformed = Counter(
            "danmaku_archive_malformed", "Archive stream entries skipped as malformed",
            registry=r,
        )
        self.insert_errors = Counter(
            "danmaku_archive_insert_errors", "Failed insert attempts (each is retried)",
            registry=r,
        )
        self.insert_seconds = Histogram(
            "danmaku_archive_insert_seconds", "Time of one successful batch insert",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
            registry=r,
        )
        self.backlog = Gauge(
            "danmaku_archive_backlog", "Entries in the archive streams not yet archived",
            registry=r,
        )
        self.pending = Gauge(
            "danmaku_archive_pending", "Entries read by an archiver but not yet acknowledged",
            registry=r,
        )
        self.oldest_age = Gauge(
            "danmaku_archive_oldest_age_seconds",
            "Age of the oldest entry not yet archived (0 when none)", registry=r,
        )
        self.last_success = Gauge(
            "danmaku_archive_last_insert_timestamp_seconds",
            "Unix time of the last successful insert", registry=r,
        )
        self.streams = Gauge(
            "danmaku_archive_streams", "Archive streams this archiver consumes", registry=r
        )
        self.table_rows = Counter(
            "danmaku_archive_table_rows", "Rows inserted into the archive, by table", ["table"],
            registry=r,
        )
        self.table_backlog = Gauge(
            "danmaku_archive_table_backlog", "Entries not yet archived, by table", ["table"],
            registry=r,
        )
        self.table_pending = Gauge(
            "danmaku_archive_table_pending", "Entries read but not yet acknowledged, by table",
            ["table"], registry=r,
        )
        self.table_oldest_age = Gauge(
            "danmaku_archive_table_oldest_age_seconds",
            "Age of the oldest entry not yet archived, by table (0 when none)", ["table"],
            registry=r,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)


class RegistryCollector(Collector):
    """Exposes another registry's metrics through a second registry (embedded mode: the
    gateway's ``/metrics`` then includes the archiver's)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry

    def collect(self) -> Iterable[object]:  # type: ignore[override]
        return self._registry.collect()
