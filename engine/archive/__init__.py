"""The archive: every sequenced message in ClickHouse, for replay, deep resume and dashboards.

Job: move the archive streams' entries (written by the sequencing Lua step), the refused messages
and the moderators' audit log into ClickHouse with nothing lost and nothing shown twice
(``archiver``, one ``sinks.Sink`` per kind of stream), and answer what needs more history than the
Redis hot buffer holds: replay by video offset, resume older than the hot buffer (``resume``),
and the analysts' dashboards (``dashboards``, ``report``, ``grafana``; the SQL lives in the
repository's ``dashboards/``).

Boundaries: the gateway, the worker and the runner see only ``ArchiveStore``/``ArchiveReader``
(``store``) and the wiring helpers in ``service``; which engine serves a DSN
(``archive_clickhouse``: chdb embedded or a server over HTTP) and the compatibility handling for
old servers (``_compat``) stay inside this package. Importing the package imports neither chdb
nor clickhouse-connect.

Layering, bottom up: ``schema`` (portable DDL, the hot reads' SQL) -> ``store`` (interface, rows,
DSN) -> ``archive_clickhouse`` (+ ``_compat``) -> ``rows`` (stream entries -> rows) -> ``sinks``
-> ``archiver`` / ``resume`` / ``viewers`` / ``dashboards`` -> ``report`` / ``grafana`` ->
``http_routes`` / ``service`` / ``cli``.
Errors: ``archive_clickhouse.ArchiveUnavailable`` (a ``DanmakuError``) for anything the archive
could not answer; callers retry (archiver), degrade (resume answers ``reset too_old``, HTTP 503)
or fail (worker floor look-up, after retrying).
"""

from .store import ArchiveReader as ArchiveReader
from .store import ArchiveStore as ArchiveStore
from .store import AuditEntry as AuditEntry
from .store import MessageRows as MessageRows
from .store import ModerationOutcome as ModerationOutcome
from .store import QueryResult as QueryResult
from .store import ViewerSample as ViewerSample
from .store import open_store as open_store
from .store import parse_dsn as parse_dsn
