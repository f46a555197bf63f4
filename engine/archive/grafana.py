"""The Grafana dashboard for the ClickHouse data source plugin (grafana-clickhouse-datasource),
generated from the same ``dashboards/*.sql`` files as the HTML report.

    python -m engine.archive.grafana > dashboards/grafana/danmaku-archive.json

Parameters become Grafana variables: ``since_ms``/``until_ms`` the dashboard's time range
(``${__from}``/``${__to}``, epoch ms), ``bucket_ms`` the panel interval (``$__interval_ms``),
``room`` and ``limit`` dashboard variables (a text box; empty room = all rooms). Time series are
wrapped to expose a DateTime ``time`` column, which Grafana needs for its x axis.
A test checks that the committed JSON is what this module generates.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from engine.archive.dashboards import Dashboard, load_dashboards

PLUGIN = "grafana-clickhouse-datasource"
DATASOURCE = {"type": PLUGIN, "uid": "${datasource}"}
FORMAT_TIMESERIES, FORMAT_TABLE = 0, 1

SUBSTITUTIONS = {
    "%(since_ms)s": "${__from}",
    "%(until_ms)s": "${__to}",
    "%(bucket_ms)s": "greatest(${__interval_ms}, 60000)",
    "%(room)s": "'${room}'",
    "%(limit)s": "${limit}",
}


def grafana_sql(dashboard: Dashboard) -> str:
    sql = dashboard.sql
    for param, value in SUBSTITUTIONS.items():
        sql = sql.replace(param, value)
    chart = dashboard.chart
    if chart.kind == "line":
        order = f"time, {chart.series}" if chart.series else "time"
        sql = (f"SELECT toDateTime(intDiv({chart.x}, 1000)) AS time, *\n"
               f"FROM (\n{sql}\n)\nORDER BY {order}")
    return sql


def panel(dashboard: Dashboard, index: int) -> dict[str, Any]:
    line = dashboard.chart.kind == "line"
    target = {
        "refId": "A",
        "datasource": DATASOURCE,
        "editorType": "sql",
        "queryType": "timeseries" if line else "table",
        "format": FORMAT_TIMESERIES if line else FORMAT_TABLE,
        "rawSql": grafana_sql(dashboard),
    }
    out: dict[str, Any] = {
        "id": index + 1,
        "title": dashboard.title,
        "description": dashboard.description,
        "type": "timeseries" if line else "barchart",
        "datasource": DATASOURCE,
        "gridPos": {"h": 9, "w": 12, "x": 12 * (index % 2), "y": 9 * (index // 2)},
        "targets": [target],
        "fieldConfig": {"defaults": {}, "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom"}},
    }
    if not line:
        out["options"]["xField"] = dashboard.chart.x
        out["options"]["orientation"] = "horizontal"
    return out


def render_grafana(dashboards: list[Dashboard]) -> dict[str, Any]:
    return {
        "title": "danmaku archive",
        "uid": "danmaku-archive",
        "description": "Generated from dashboards/*.sql by engine/archive/grafana.py",
        "tags": ["danmaku", "clickhouse"],
        "timezone": "utc",
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "time": {"from": "now-6h", "to": "now"},
        "refresh": "1m",
        "templating": {
            "list": [
                {"name": "datasource", "label": "ClickHouse", "type": "datasource",
                 "query": PLUGIN},
                {"name": "room", "label": "Room (empty = all)", "type": "textbox",
                 "query": "", "current": {"text": "", "value": ""}},
                {"name": "limit", "label": "Top N", "type": "textbox", "query": "20",
                 "current": {"text": "20", "value": "20"}},
            ]
        },
        "panels": [panel(d, i) for i, d in enumerate(dashboards)],
    }


def render_json() -> str:
    return json.dumps(render_grafana(load_dashboards()), indent=2, sort_keys=True) + "\n"


if __name__ == "__main__":
    sys.stdout.write(render_json())
