"""Every dashboard query on both real engines against a hand-computed fixture; the Grafana JSON;
the HTML report (file and live ``/dashboards``) opened in headless Chromium."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import orjson
import pytest
import trio

from engine.archive import grafana
from engine.archive.dashboards import (
    DashboardParams,
    bucket_for,
    load_dashboards,
    parse_duration_ms,
    run_all,
    window_params,
)
from engine.archive.report import render_report
from engine.archive.rows import rows_from_entries
from engine.archive.store import (
    ArchiveStore,
    AuditEntry,
    ModerationOutcome,
    QueryResult,
    ViewerSample,
)
from engine.errors import ConfigError
from tests.archive_fixtures import ClickHouseServer, archive_stack, server_dsn
from tests.httpclient import request
from tests.web_fixtures import CHROMIUM, CHROMIUM_ARGS, require_browser

pytest_plugins = ["tests.archive_fixtures"]

DANMAKU = [sys.executable, "-m", "engine.cli"]
T0 = 1_699_999_980_000  # a minute boundary
M = 60_000
WINDOW = DashboardParams(since_ms=T0, until_ms=T0 + 3 * M, room="", bucket_ms=M, limit=20)

# (room, seq, user, name, kind, ts, latency ms; None = no receive time)
MESSAGES: list[tuple[str, int, str, str, str, int, int | None]] = [
    ("a", 1, "u1", "U1", "danmaku", T0 + 1000, 5),
    ("a", 2, "u1", "U1", "danmaku", T0 + 2000, 7),
    ("a", 3, "u2", "U2", "danmaku", T0 + 3000, 9),
    ("b", 1, "u2", "U2", "danmaku", T0 + 4000, 11),
    ("b", 2, "u4", "U4", "danmaku", T0 + 5000, 100),
    ("a", 4, "u1", "U1", "danmaku", T0 + M + 1000, 1),
    ("a", 5, "u3", "U3", "danmaku", T0 + M + 2000, 2),
    ("a", 6, "u3", "U3", "gift", T0 + M + 3000, 3),
    ("a", 7, "u3", "U3", "danmaku", T0 + M + 4000, 4),
    ("a", 8, "u2", "U2", "danmaku", T0 + M + 5000, 50),
    ("a", 9, "sys", "System", "system", T0 + 2 * M + 1000, None),
    ("a", 10, "u1", "U1 renamed", "superchat", T0 + 2 * M + 2000, 10),
    ("b", 3, "u4", "U4", "danmaku", T0 + 2 * M + 3000, -5),  # gateway clock ahead: 0
    ("b", 4, "u4", "U4", "danmaku", T0 + 2 * M + 4000, 20),
    ("b", 5, "u4", "U4", "danmaku", T0 + 2 * M + 5000, 30),
    ("b", 6, "u4", "U4", "danmaku", T0 + 2 * M + 6000, 40),
    ("c", 1, "u9", "U9", "danmaku", T0 - 1, 1),  # before the window
    ("c", 2, "u9", "U9", "danmaku", T0 + 3 * M, 1),  # at its end: excluded
]

MODERATION = [
    ModerationOutcome("a", "u1", "muted", T0 + 10),
    ModerationOutcome("a", "u2", "muted", T0 + 20),
    ModerationOutcome("b", "u1", "muted", T0 + 30),
    ModerationOutcome("a", "u3", "filtered", T0 + 40, text="bad word"),
    ModerationOutcome("a", "u1", "rate_limited", T0 + 50),
    ModerationOutcome("a", "u1", "rate_limited", T0 + 60),
    ModerationOutcome("a", "u1", "rate_limited", T0 + M),
    ModerationOutcome("a", "u5", "banned", T0 + 3 * M),  # outside
]

# (id, ts, actor, role, room, action, target)
AUDIT = [
    AuditEntry("1-0", T0 + 100, "m1", "moderator", "a", "mute", "u1"),
    AuditEntry("1-1", T0 + 200, "m1", "moderator", "a", "ban", "u2"),
    AuditEntry("1-2", T0 + 300, "m1", "moderator", "b", "kick", "u3"),
    AuditEntry("2-0", T0 + M, "host", "streamer", "a", "config"),
    AuditEntry("2-1", T0 + M + 1, "host", "streamer", "a", "shadowban", "u4"),
    AuditEntry("3-0", T0 + 2 * M, "root", "admin", "", "revoke", "u9"),  # on no room
    AuditEntry("3-1", T0 + 2 * M + 1, "root", "admin", "a", "unban", "u2"),
    AuditEntry("0-1", T0 - 1, "old", "moderator", "a", "mute", "u5"),  # before the window
    AuditEntry("4-0", T0 + 3 * M, "m1", "moderator", "a", "mute", "u5"),  # at its end
]

VIEWERS = [
    ViewerSample("gw1", "a", 10, T0),
    ViewerSample("gw1", "a", 12, T0 + 30_000),
    ViewerSample("gw2", "a", 5, T0 + 15_000),
    ViewerSample("gw1", "b", 3, T0 + 1000),
    ViewerSample("gw1", "a", 8, T0 + M),
]


def _entries() -> list[tuple[bytes, list[bytes]]]:
    out = []
    for room, seq, user, name, kind, ts, latency in MESSAGES:
        msg = orjson.dumps({"seq": seq, "id": f"{room}{seq}", "ts": ts, "user": user,
                            "name": name, "kind": kind,
                            "body": {"text": "x", "mode": "scroll", "color": "#ffffff",
                                     "offset_ms": seq}})
        extra = orjson.dumps({"rt": 0 if latency is None else ts - latency, "gw": "gw1"})
        out.append((b"1-0", [b"r", room.encode(), b"e", b"e", b"s", str(seq).encode(),
                             b"m", msg, b"x", extra]))
    return out


async def load_fixture(store: ArchiveStore) -> None:
    rows, bad = rows_from_entries(_entries())
    assert bad == 0
    for _ in range(2):  # everything twice: the dashboards must not count duplicates
        await store.insert(rows)
        await store.insert_moderation(MODERATION)
        await store.insert_viewers(VIEWERS)
        await store.insert_audit(AUDIT)


def quantile_exact(values: list[int], level: float) -> int:
    """ClickHouse's quantileExact: the element at index floor(level * n) of the sorted values."""
    ordered = sorted(values)
    return ordered[min(int(level * len(ordered)), len(ordered) - 1)]


def latency_row(minute: int, lats: list[int]) -> tuple[int, ...]:
    return (T0 + minute * M, len(lats), quantile_exact(lats, 0.5), quantile_exact(lats, 0.9),
            quantile_exact(lats, 0.99), max(lats))


EXPECTED: dict[str, list[tuple[Any, ...]]] = {
    "comments_per_minute": [
        (T0, "a", 3), (T0, "b", 2), (T0 + M, "a", 5), (T0 + 2 * M, "a", 1),
        (T0 + 2 * M, "b", 4),
    ],
    "rooms_by_peak": [("a", 5, T0 + M, 9), ("b", 4, T0 + 2 * M, 6)],
    "top_senders": [
        ("u4", "U4", 5, 1, 0, 0), ("u1", "U1 renamed", 4, 1, 0, 1), ("u2", "U2", 3, 2, 0, 0),
        ("u3", "U3", 3, 1, 1, 0),
    ],
    "moderation_by_code": [("muted", 3, 2, 2), ("rate_limited", 3, 1, 1), ("filtered", 1, 1, 1)],
    "send_to_seq_latency": [
        latency_row(0, [5, 7, 9, 11, 100]),
        latency_row(1, [1, 2, 3, 4, 50]),
        latency_row(2, [10, 0, 20, 30, 40]),
    ],
    "viewers_online": [(T0, "a", 17), (T0, "b", 3), (T0 + M, "a", 8)],
    "moderator_actions": [("m1", 3, 2, 2, 1, "moderator"), ("host", 2, 1, 1, 0, "streamer"),
                          ("root", 2, 1, 0, 0, "admin")],
}

EXPECTED_ROOM_A: dict[str, list[tuple[Any, ...]]] = {
    "comments_per_minute": [(T0, "a", 3), (T0 + M, "a", 5), (T0 + 2 * M, "a", 1)],
    "rooms_by_peak": [("a", 5, T0 + M, 9)],
    "top_senders": [("u1", "U1 renamed", 4, 1, 0, 1), ("u3", "U3", 3, 1, 1, 0),
                    ("u2", "U2", 2, 1, 0, 0)],
    "moderation_by_code": [("rate_limited", 3, 1, 1), ("muted", 2, 2, 1),
                           ("filtered", 1, 1, 1)],
    "send_to_seq_latency": [latency_row(0, [5, 7, 9]), latency_row(1, [1, 2, 3, 4, 50]),
                            latency_row(2, [10])],
    "viewers_online": [(T0, "a", 17), (T0 + M, "a", 8)],
    "moderator_actions": [("host", 2, 1, 1, 0, "streamer"), ("m1", 2, 1, 2, 0, "moderator"),
                          ("root", 1, 1, 0, 0, "admin")],
}


def as_tuples(result: QueryResult) -> list[tuple[Any, ...]]:
    return [tuple(int(v) if isinstance(v, float) and v.is_integer() else v for v in row)
            for row in result.rows]


async def test_every_dashboard_matches_the_hand_computed_fixture(
    archive_store: ArchiveStore,
) -> None:
    await load_fixture(archive_store)
    dashboards = load_dashboards()
    assert [d.name for d in dashboards] == list(EXPECTED)
    for params, expected in ((WINDOW, EXPECTED),
                             (DashboardParams(T0, T0 + 3 * M, "a", M, 20), EXPECTED_ROOM_A)):
        for dashboard, result in await run_all(archive_store, params, dashboards):
            assert as_tuples(result) == expected[dashboard.name], (dashboard.name, params.room)
    # limit applies to the top-N tables
    limited = DashboardParams(T0, T0 + 3 * M, "", M, 1)
    results = dict((d.name, r) for d, r in await run_all(archive_store, limited, dashboards))
    assert as_tuples(results["top_senders"]) == EXPECTED["top_senders"][:1]
    assert as_tuples(results["rooms_by_peak"]) == EXPECTED["rooms_by_peak"][:1]
    assert as_tuples(results["moderator_actions"]) == EXPECTED["moderator_actions"][:1]


async def test_grafana_queries_run_and_match(archive_store: ArchiveStore) -> None:
    """The generated Grafana SQL (variables filled in as Grafana would) gives the same rows."""
    await load_fixture(archive_store)
    for dashboard in load_dashboards():
        sql = grafana.grafana_sql(dashboard)
        for var, value in (("${__from}", str(T0)), ("${__to}", str(T0 + 3 * M)),
                           ("${__interval_ms}", "1000"), ("${room}", ""), ("${limit}", "20")):
            sql = sql.replace(var, value)
        result = await archive_store.query(sql)
        rows = as_tuples(result)
        if dashboard.chart.kind == "line":
            assert result.columns[0] == "time"
            rows = [row[1:] for row in rows]
        assert rows == EXPECTED[dashboard.name], dashboard.name


def test_committed_grafana_json_is_generated_from_the_sql_files() -> None:
    path = Path(__file__).resolve().parent.parent / "dashboards" / "grafana" / (
        "danmaku-archive.json")
    assert path.read_text() == grafana.render_json(), (
        "regenerate: python -m engine.archive.grafana > dashboards/grafana/danmaku-archive.json")
    data = orjson.loads(path.read_bytes())
    assert {t["datasource"]["type"] for p in data["panels"] for t in p["targets"]} == {
        "grafana-clickhouse-datasource"}


def test_parameters_and_windows() -> None:
    assert parse_duration_ms("90s") == 90_000 and parse_duration_ms("1h") == 3_600_000
    assert parse_duration_ms("2d") == 172_800_000 and parse_duration_ms("15") == 15_000
    with pytest.raises(ConfigError):
        parse_duration_ms("soon")
    assert bucket_for(3_600_000) == 60_000 and bucket_for(7 * 86_400_000) == 3_600_000
    p = window_params(since="1h", room="r", until_ms=10_000_000)
    assert (p.since_ms, p.until_ms, p.room, p.bucket_ms) == (6_400_000, 10_000_000, "r", 60_000)


# ---- the HTML report in a real browser ------------------------------------------------------
def inspect_in_chromium(url: str, screenshot: Path | None = None) -> dict[str, Any]:
    """Open the page; return its console errors, requests and what each chart drew."""
    from playwright.sync_api import sync_playwright

    errors: list[str] = []
    requests: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("request", lambda r: requests.append(r.url))
            page.goto(url)
            charts = page.evaluate(
                """() => Array.from(document.querySelectorAll('section')).map(s => ({
                    name: s.dataset.dashboard,
                    svgs: s.querySelectorAll('svg.chart').length,
                    drawn: Array.from(s.querySelectorAll('svg.chart .series')).filter(e => {
                        const b = e.getBBox(); return b.width > 0 || b.height > 0; }).length,
                    rows: Number(s.dataset.rows),
                }))"""
            )
            if screenshot is not None:
                page.screenshot(path=str(screenshot), full_page=True)
        finally:
            browser.close()
    return {"errors": errors, "requests": requests, "charts": charts}


def check_page(info: dict[str, Any], url: str) -> None:
    assert info["errors"] == []
    assert info["requests"] == [url]  # self-contained: nothing else is fetched
    assert [c["name"] for c in info["charts"]] == list(EXPECTED)
    for chart in info["charts"]:
        assert chart["svgs"] == 1 and chart["drawn"] >= 1 and chart["rows"] > 0, chart


async def test_html_report_draws_every_chart_in_chromium(
    archive_store: ArchiveStore, tmp_path: Path
) -> None:
    require_browser()
    await load_fixture(archive_store)
    results = await run_all(archive_store, WINDOW)
    page = render_report(results, WINDOW, source="test")
    path = tmp_path / "report.html"
    path.write_text(page, encoding="utf-8")
    out = Path(__file__).resolve().parent.parent / "test-output" / "archive"
    out.mkdir(parents=True, exist_ok=True)
    info = await trio.to_thread.run_sync(
        inspect_in_chromium, path.as_uri(), out / f"report-{archive_store.description[:4]}.png"
    )
    check_page(info, path.as_uri())


@pytest.mark.redis
async def test_gateway_serves_dashboards_live_and_the_command_writes_them(
    redis_url: str, clickhouse_server: ClickHouseServer, tmp_path: Path
) -> None:
    require_browser()
    from engine.archive.store import open_store

    dsn = server_dsn(clickhouse_server)
    store = open_store(dsn)
    await store.ensure_schema()
    try:
        await load_fixture(store)
        with trio.fail_after(60):
            async with archive_stack([redis_url], store) as st:
                status, headers, body = await request(
                    "GET", f"{st.http_url()}/dashboards?since=3650d&room=a"
                )
                assert status == 200 and headers["content-type"].startswith("text/html")
                assert "default-src 'none'" in headers["content-security-policy"]
                assert body.count(b"<section") == len(EXPECTED)
                status, _h, _b = await request("GET", f"{st.http_url()}/dashboards?since=x")
                assert status == 400
                # The command line: straight from the archive, and from the gateway.
                direct, via = tmp_path / "direct.html", tmp_path / "via.html"
                await trio.run_process(
                    [*DANMAKU, "dashboard", "--since", "3650d", "--dsn", dsn, "--html",
                     str(direct)], capture_stderr=True,
                )
                await trio.run_process(
                    [*DANMAKU, "dashboard", "--since", "3650d", "--url", st.http_url(),
                     "--html", str(via)], capture_stderr=True,
                )
        for path in (direct, via):
            info = await trio.to_thread.run_sync(inspect_in_chromium, path.as_uri())
            check_page(info, path.as_uri())
    finally:
        await store.aclose()
