"""Everything needed to drive an old ClickHouse server (Debian's 18.16) with clickhouse-connect.

This is the ONE place that knows about old servers; it runs once, when a store connects, and
never on the insert or read path. What it handles (measured in research/clickhouse.md):

1. ``get_client`` reads ``system.settings.readonly``, a column 18.16 lacks: the legacy client
   answers that one start-up query with ``readonly = 0`` for every setting instead.
2. lz4/zstd request compression fails on 18.16 ("Unknown Content-Encoding"): off.
3. ``insert()`` without column types runs DESCRIBE, whose 18.16 output the client cannot read:
   the store always passes ``column_type_names`` (it knows its schema; this also saves a round
   trip per insert on every server, so it is not a compatibility branch).
4. No ``DateTime64`` or ``LowCardinality``: the schema avoids both (see ``schema``).
5. No server-side ``{x:Type}`` parameters or Arrow: the store binds ``%(x)s`` client-side.
6. One client shared by threads must not use a session id: ``autogenerate_session_id=False``
   for every HTTP client.

Which servers are "legacy" is decided by asking ``SELECT version()`` over plain HTTP first.
"""

from __future__ import annotations

import logging
import urllib.request
from base64 import b64encode
from typing import Any

log = logging.getLogger("danmaku.archive")

# Servers older than this lack system.settings.readonly and HTTP lz4/zstd request bodies.
LEGACY_BEFORE = (20, 1)


def server_version(url: str, username: str, password: str, *, timeout_s: float = 5.0) -> str:
    """The server's ``version()`` over plain HTTP (works on every ClickHouse since 1.1)."""
    request = urllib.request.Request(url.rstrip("/") + "/?query=SELECT%20version()")
    token = b64encode(f"{username}:{password}".encode()).decode()
    request.add_header("Authorization", f"Basic {token}")
    with urllib.request.urlopen(request, timeout=timeout_s) as response:
        return str(response.read().decode().strip())


def is_legacy(version: str) -> bool:
    parts: list[int] = []
    for piece in version.split(".")[:2]:
        if not piece.isdigit():
            return False
        parts.append(int(piece))
    return tuple(parts) < LEGACY_BEFORE


def http_client(
    url: str, username: str, password: str, database: str | None, **options: Any
) -> Any:
    """A clickhouse-connect HTTP client for any server version (see the module docstring)."""
    import clickhouse_connect
    from clickhouse_connect.driver.httpclient import HttpClient

    options.setdefault("autogenerate_session_id", False)
    version = server_version(url, username, password)
    scheme, _, hostport = url.partition("://")
    host, _, port = hostport.rpartition(":")
    if not is_legacy(version):
        return clickhouse_connect.get_client(
            interface=scheme, host=host, port=int(port), username=username, password=password,
            database=database, **options,
        )
    log.info("ClickHouse %s at %s: using the legacy client settings", version, url)
    from clickhouse_connect.driver._backend.operations import QueryOp

    class LegacyHttpClient(HttpClient):
        def _execute_operation(self, operation: Any) -> object:
            if isinstance(operation, QueryOp) and "system.settings" in operation.text:
                operation = QueryOp(
                    "SELECT name, value, toUInt8(0) AS readonly FROM system.settings LIMIT 10000"
                )
            return super()._execute_operation(operation)

    options["compress"] = False
    return LegacyHttpClient(
        scheme, host, int(port), username, password, database, **options
    )
