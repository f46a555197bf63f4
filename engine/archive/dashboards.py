"""The analysts' dashboards: named SQL files in ``dashboards/``, their parameters, and running them.

Each ``dashboards/NN_name.sql`` starts with a header of ``-- key: value`` lines (a value may go
on over ``--   `` continuation lines): ``name``, ``title``, ``description``, ``params`` and
``chart`` (``line x=COL y=COL[,COL...] [series=COL]`` or ``bar x=COL y=COL``). The SQL binds the
parameters client-side as ``%(name)s``; every dashboard gets the same parameter set:

==============  ================================================================
``since_ms``    start of the window, Unix ms, inclusive
``until_ms``    end of the window, Unix ms, exclusive
``room``        one room id, or ``''`` for every room
``bucket_ms``   width of the time buckets of time series, ms
``limit``       rows of the top-N tables
==============  ================================================================

The same files feed the HTML report (``danmaku dashboard``, the gateway's ``/dashboards``) and the
Grafana dashboard (``grafana.py``), so the three never disagree.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

from engine.archive.store import ArchiveStore, Param, QueryResult
from engine.errors import ConfigError

_HEADER = re.compile(r"^--\s*([a-z_]+):\s*(.*)$")
_DURATION = re.compile(r"^(\d+)\s*(ms|s|m|h|d|w)?$")
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000}
_NICE_BUCKETS_MS = (60_000, 300_000, 900_000, 3_600_000, 21_600_000, 86_400_000)


@dataclass(frozen=True, slots=True)
class Chart:
    kind: str  # "line" or "bar"
    x: str
    y: tuple[str, ...]
    series: str = ""


@dataclass(frozen=True, slots=True)
class Dashboard:
    name: str
    title: str
    description: str
    params: str
    chart: Chart
    sql: str
    path: Path


@dataclass(frozen=True, slots=True)
class DashboardParams:
    since_ms: int
    until_ms: int
    room: str = ""
    bucket_ms: int = 60_000
    limit: int = 20

    def as_dict(self) -> dict[str, Param]:
        return {
            "since_ms": self.since_ms, "until_ms": self.until_ms, "room": self.room,
            "bucket_ms": self.bucket_ms, "limit": self.limit,
        }


def dashboards_dir() -> Path:
    """``$DANMAKU_DASHBOARDS_DIR``, else the repository's ``dashboards/``."""
    env = os.environ.get("DANMAKU_DASHBOARDS_DIR")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / "dashboards"


def parse_chart(spec: str) -> Chart:
    kind, *pairs = spec.split()
    values = dict(pair.split("=", 1) for pair in pairs)
    if kind not in {"line", "bar"} or "x" not in values or "y" not in values:
        raise ConfigError(f"bad chart spec {spec!r}")
    return Chart(kind, values["x"], tuple(values["y"].split(",")), values.get("series", ""))


def parse_dashboard(path: Path) -> Dashboard:
    header: dict[str, str] = {}
    key = ""
    sql_lines: list[str] = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not sql_lines and line.startswith("--"):
            match = _HEADER.match(line)
            if match:
                key = match.group(1)
                header[key] = match.group(2).strip()
            elif key:
                header[key] += " " + line.lstrip("-").strip()
            continue
        sql_lines.append(line)
    missing = {"name", "title", "description", "params", "chart"} - header.keys()
    if missing:
        raise ConfigError(f"{path}: header lacks {', '.join(sorted(missing))}")
    return Dashboard(
        name=header["name"], title=header["title"], description=header["description"],
        params=header["params"], chart=parse_chart(header["chart"]),
        sql="\n".join(sql_lines).strip(), path=path,
    )


def load_dashboards(directory: Path | None = None) -> list[Dashboard]:
    directory = directory or dashboards_dir()
    paths = sorted(directory.glob("*.sql"))
    if not paths:
        raise ConfigError(f"no dashboards in {directory}")
    return [parse_dashboard(p) for p in paths]


def parse_duration_ms(text: str) -> int:
    """``90s``, ``15m``, ``1h``, ``2d``, ``1w``, ``500ms`` or plain seconds -> ms."""
    match = _DURATION.match(text.strip().lower())
    if not match:
        raise ConfigError(f"bad duration {text!r} (e.g. 15m, 1h, 2d)")
    return int(match.group(1)) * _UNIT_MS[match.group(2) or "s"]


def bucket_for(window_ms: int, *, max_points: int = 360) -> int:
    """One minute, or the smallest nice bucket that keeps a series under ``max_points``."""
    for bucket in _NICE_BUCKETS_MS:
        if window_ms / bucket <= max_points:
            return bucket
    return _NICE_BUCKETS_MS[-1]


def window_params(
    *, since: str = "1h", room: str = "", until_ms: int | None = None, limit: int = 20
) -> DashboardParams:
    until = until_ms if until_ms is not None else int(time.time() * 1000) + 1
    window = parse_duration_ms(since)
    return DashboardParams(
        since_ms=max(0, until - window), until_ms=until, room=room,
        bucket_ms=bucket_for(window), limit=limit,
    )


async def run_dashboard(
    store: ArchiveStore, dashboard: Dashboard, params: DashboardParams
) -> QueryResult:
    return await store.query(dashboard.sql, params.as_dict())


async def run_all(
    store: ArchiveStore, params: DashboardParams, dashboards: list[Dashboard] | None = None
) -> list[tuple[Dashboard, QueryResult]]:
    out = []
    for dashboard in dashboards or load_dashboards():
        out.append((dashboard, await run_dashboard(store, dashboard, params)))
    return out
