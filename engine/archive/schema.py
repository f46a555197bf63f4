"""The archive's schema: versioned migrations and the SQL of the hot reads.

Portability rule: every statement here runs unchanged on the embedded engine (chdb, ClickHouse
26.x) and on Debian's clickhouse-server 18.16. Hence: times are ``UInt64`` milliseconds (no
``DateTime64``), small vocabularies are ``Enum8`` (no ``LowCardinality``), no skip indexes or
projections, ``ReplacingMergeTree`` keyed by the natural key so a re-insert replaces instead of
duplicating, and reads that deduplicate themselves (``LIMIT 1 BY``, ``FINAL``) because merges
happen whenever the engine likes.

Migrations are applied in order at start (``ensure_schema``); each is a list of idempotent
statements (``IF NOT EXISTS``), so two processes migrating at once cannot break anything, and
the ``schema_migrations`` table records what was applied.
"""

from __future__ import annotations

from dataclasses import dataclass

KINDS = ("danmaku", "gift", "superchat", "system")
MODES = ("scroll", "top", "bottom")

_KIND_ENUM = "Enum8('other' = 0, 'danmaku' = 1, 'gift' = 2, 'superchat' = 3, 'system' = 4)"
_MODE_ENUM = "Enum8('other' = 0, 'scroll' = 1, 'top' = 2, 'bottom' = 3)"

MESSAGE_COLUMNS: tuple[tuple[str, str], ...] = (
    ("room", "String"),
    ("seq", "UInt64"),
    ("epoch", "String"),
    ("id", "String"),
    ("user", "String"),
    ("name", "String"),
    ("kind", _KIND_ENUM),
    ("text", "String"),
    ("mode", _MODE_ENUM),
    ("color", "String"),
    ("offset_ms", "UInt64"),
    ("ts", "UInt64"),  # sequenced (Redis TIME in the Lua step), Unix ms
    ("rt", "UInt64"),  # received by the gateway, Unix ms (0 when unknown)
    ("gateway", "String"),  # the gateway node that received the send
    ("hidden", "UInt8"),  # 1: shown to its sender only (shadow-ban); never replayed
    ("msg", "String"),  # the message JSON as delivered live (without the hidden mark)
)

MODERATION_COLUMNS: tuple[tuple[str, str], ...] = (
    ("room", "String"),
    ("user", "String"),
    ("code", "String"),
    ("ts", "UInt64"),
    ("cmid", "String"),
    ("text", "String"),
    ("gateway", "String"),
)

VIEWER_COLUMNS: tuple[tuple[str, str], ...] = (
    ("gateway", "String"),
    ("room", "String"),
    ("online", "UInt32"),
    ("ts", "UInt64"),
)

# The audit log (rooms/moderation_actions.py ``audit_fields``). Role and action stay ``String``:
# an action added later must never block the archiver on an Enum it does not know.
AUDIT_COLUMNS: tuple[tuple[str, str], ...] = (
    ("room", "String"),  # '' for actions on no room (revoke, a global kick)
    ("ts", "UInt64"),  # when the action was taken, Unix ms
    ("id", "String"),  # the audit stream entry's id: with room and ts, what makes a row unique
    ("actor", "String"),
    ("role", "String"),  # the actor's effective role in the room
    ("action", "String"),
    ("target", "String"),  # the user acted on ('' when none)
    ("via", "String"),  # the door: ws or http
    ("duration_s", "UInt32"),  # of a mute or ban; 0 = none (permanent, or not a sanction)
    ("reason", "String"),
    ("detail", "String"),  # JSON of the action's details ('' when none)
)


def _columns_ddl(columns: tuple[tuple[str, str], ...]) -> str:
    return ",\n    ".join(f"`{name}` {type_}" for name, type_ in columns)


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    statements: tuple[str, ...]


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "messages, moderation outcomes, viewers online",
        (
            f"""CREATE TABLE IF NOT EXISTS messages (
    {_columns_ddl(MESSAGE_COLUMNS)}
) ENGINE = ReplacingMergeTree() ORDER BY (room, seq)""",
            f"""CREATE TABLE IF NOT EXISTS moderation (
    {_columns_ddl(MODERATION_COLUMNS)}
) ENGINE = ReplacingMergeTree() ORDER BY (room, ts, user, cmid, code)""",
            f"""CREATE TABLE IF NOT EXISTS viewers_online (
    {_columns_ddl(VIEWER_COLUMNS)}
) ENGINE = ReplacingMergeTree() ORDER BY (room, gateway, ts)""",
        ),
    ),
    Migration(
        2,
        "audit log of moderator and admin actions",
        (
            # Keyed by the entry (room, ts, stream id, and what it says): a batch inserted again
            # after a crash between insert and XACK replaces itself.
            f"""CREATE TABLE IF NOT EXISTS audit (
    {_columns_ddl(AUDIT_COLUMNS)}
) ENGINE = ReplacingMergeTree() ORDER BY (room, ts, id, actor, action, target)""",
        ),
    ),
)

SCHEMA_VERSION = MIGRATIONS[-1].version

MIGRATIONS_TABLE_DDL = """CREATE TABLE IF NOT EXISTS schema_migrations (
    version UInt32,
    name String,
    applied_ms UInt64
) ENGINE = ReplacingMergeTree() ORDER BY version"""

# ---- the hot reads (results come back as TSVRaw: one message JSON per line) ------------------
# JSON text never holds a raw newline or tab, so TSVRaw lines are exactly the stored messages.

SQL_MAX_SEQ = "SELECT max(seq) FROM messages WHERE room = %(room)s"

SQL_SEQ_RANGE = """SELECT hidden, msg FROM messages
WHERE room = %(room)s AND seq >= %(first)s AND seq <= %(last)s{epoch}
ORDER BY seq LIMIT 1 BY seq"""

SQL_REPLAY = """SELECT msg FROM messages
WHERE room = %(room)s AND offset_ms >= %(from_ms)s AND offset_ms < %(to_ms)s
  AND (offset_ms > %(from_ms)s OR seq > %(after_seq)s) AND hidden = 0
ORDER BY offset_ms, seq LIMIT 1 BY seq LIMIT %(limit)s"""
