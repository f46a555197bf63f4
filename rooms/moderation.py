"""The worker's moderation step: what runs for each message before it is sequenced.

Theory of operation
-------------------
Every per-room rule whose state lives in Redis (bans, timed mutes, shadow-bans, the allow list,
slow mode, duplicate detection, the per-user and per-room token buckets) is checked by
``moderate.lua``, which is composed with the sequencing step ``ingest.lua`` into ONE script
(``MODERATED_INGEST``): the worker still makes exactly one pipelined script call per message, and
checks, sequencing and bookkeeping are atomic (a resend or a re-run after a crash is never
charged twice). The rules read the room's config hash on every call, so a change made by a
moderator applies to the very next message.

The word filter is the exception: matching thousands of words is done here, in the worker, with
an Aho-Corasick matcher (``rooms.keyword_filter``) built once per word list and cached. The
script is told which version of the list (the config's ``wv``) the verdict came from; when the
list changed meanwhile it answers "stale" (``-3``) without writing anything, and the worker
reloads the list and calls again, so a live change is never missed.

A shadow-banned sender's message is sequenced like any other, but with ``HIDDEN_MARK`` appended
to its JSON and ``"hidden":1`` in its archive fields; the gateways show it only to the sender's
own connections, and to everyone else as a ``skipped`` range. The worker learns about the
shadow-ban from the script (``-4``) and calls again with the marked message (one extra round trip,
for shadow-banned senders only).

Role ranks: viewer 0, moderator 1, streamer 2, admin 3 (the token's role). Moderators (by token or
appointed to the room) are exempt from the allow list, slow mode, duplicate detection and the
user bucket; streamers and admins also from sanctions and the room bucket; moderator tokens and
above skip the word filter.
"""

from __future__ import annotations

import time
import weakref
import zlib
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Final

import orjson

from engine import keys
from engine.ingress import HIDDEN_MARK, IngressMessage, Reply
from engine.redis import Script
from rooms.keyword_filter import EMPTY_MATCHER, KeywordMatcher, fold

ROLE_RANK: Final = {"viewer": 0, "moderator": 1, "streamer": 2, "admin": 3}
OUTCOME_STREAM: Final = keys.MODERATION_STREAM  # refused messages, for the archive
OUTCOME_MAXLEN: Final = 100_000
FILTER_MODES: Final = ("off", "deny", "mask")
_HERE = Path(__file__).parent
_MARKER = "--@@INGEST_STEP@@"


def compose(moderate_source: str, ingest_source: str) -> str:
    """The moderation step with the sequencing step as its inner function (see moderate.lua)."""
    if moderate_source.count(_MARKER) != 1:
        raise ValueError("moderate.lua must hold the ingest marker line exactly once")
    return moderate_source.replace(_MARKER, ingest_source)


MODERATED_INGEST: Final = Script(
    compose(
        (_HERE / "moderate.lua").read_text(encoding="utf-8"),
        (_HERE / "ingest.lua").read_text(encoding="utf-8"),
    ),
    name="moderate+ingest.lua",
)


# -- key names (every key carries the room's hash tag) --------------------------------------------
def mod_prefix(room: str) -> str:
    return keys.room_tag(room) + ":mod:"


def config_key(room: str) -> str:
    return keys.room_tag(room) + ":mod:cfg"


def words_key(room: str) -> str:
    return keys.room_tag(room) + ":mod:words"


def sanctions_key(room: str, user: str) -> str:
    return mod_prefix(room) + "x:" + user


def user_state_key(room: str, user: str) -> str:
    return mod_prefix(room) + "u:" + user


def mods_key(room: str) -> str:
    return mod_prefix(room) + "mods"


def allow_key(room: str) -> str:
    return mod_prefix(room) + "allow"


def text_hash(text: str) -> int:
    """Stable across processes (unlike ``hash``): duplicate detection compares these."""
    return folded_hash(fold(text))


def folded_hash(folded: str) -> int:
    """``text_hash`` of a text already folded (the worker folds each text once)."""
    return zlib.crc32(folded.encode("utf-8", "surrogatepass"))


# -- the word filter cache ------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class RoomFilter:
    """What a worker caches of a room's config (valid while the config's ``wv`` is ``version``)."""

    version: str  # the config's wv this was built from ("" = the room never had a config)
    mode: str  # off | deny | mask
    matcher: KeywordMatcher
    dup: bool = False  # duplicate detection on: the text hash is needed


_NO_FILTER: Final = RoomFilter("", "off", EMPTY_MATCHER)

# One ingest call of a read as the worker built it: the message, its text, the script's keys
# and args (changed in place by ``RoomModeration.prepare_batch``).
PreparedCall = tuple[IngressMessage, str, list[Any], list[Any]]


_REFUSALS: Final = {
    "ban": "you are banned from this room",
    "mute": "you are muted in this room",
    "allow_list": "only members of this room's allow list may send here",
    "words": "the message contains words this room does not allow",
    "duplicate": "the same message was sent a moment ago",
    "slow": "slow mode is on; wait before sending again",
    "user_rate": "too many messages; slow down",
    "room_rate": "the room is too busy; retry shortly",
}


class RoomModeration:
    """Per-message preparation of the moderated script call, and the cached word filters."""

    def __init__(
        self, *, tail_of: Callable[[IngressMessage], bytes], max_rooms: int = 4096
    ) -> None:
        self._tail_of = tail_of
        self._max_rooms = max_rooms
        self._filters: OrderedDict[str, RoomFilter] = OrderedDict()
        # Identical word lists (a deployment pushing one list to every room) share one matcher.
        self._matchers: weakref.WeakValueDictionary[frozenset[str], KeywordMatcher] = (
            weakref.WeakValueDictionary()
        )
        self.filtered = 0
        self.masked = 0
        self.reloads = 0

    def filter_for(self, room: str) -> RoomFilter:
        return self._filters.get(room, _NO_FILTER)

    def prepare(
        self, msg: IngressMessage, text: str, k: list[Any], a: list[Any], *, hidden: bool = False
    ) -> None:
        """``prepare_batch`` of one call (the worker's re-runs)."""
        self.prepare_batch([(msg, text, k, a)], hidden=hidden)

    def prepare_batch(self, calls: Sequence[PreparedCall], *, hidden: bool = False) -> None:
        """Turn the ingest calls ``(msg, text, k, a)`` of one read into moderated ones, in place.

        May replace a message tail (``a[4]``: masked text, hidden marker) and the archive
        fields (``a[8]``), and appends the moderation step's one arg to each ``a`` (the script
        finds its keys from the ingest step's: see moderate.lua). The work goes in stages over
        the whole read (fold every text, then scan them, then hash them): interleaved with the
        rest of each message's handling, the same scan and fold measured 2-3x slower in the
        worker, the 5,000-word matcher's tables falling out of the CPU caches between two
        messages. A text is folded only when its room has a word filter or a duplicate window.
        """
        filters = self._filters
        rfs = [filters.get(msg.room, _NO_FILTER) for msg, _t, _k, _a in calls]
        folded = [
            fold(text) if rf.mode != "off" or rf.dup else text
            for (_m, text, _k, _a), rf in zip(calls, rfs, strict=True)
        ]
        ranks = [ROLE_RANK.get(msg.role, 0) for msg, _t, _k, _a in calls]
        verdicts = [0] * len(calls)
        for i, rf in enumerate(rfs):
            if rf.mode == "off" or ranks[i] or not rf.matcher.words:
                continue
            if rf.mode == "deny":
                if rf.matcher.contains_folded(folded[i]):
                    verdicts[i] = 1
                    self.filtered += 1
                continue
            msg, text, _k, a = calls[i]
            masked = rf.matcher.mask(text)
            if masked is not None:
                a[4] = self._tail_of(replace(msg, body=_with_text(msg.body, masked)))
                self.masked += 1
        hashes = [folded_hash(f) if rf.dup else 0 for f, rf in zip(folded, rfs, strict=True)]
        shown = 1 if hidden else 0
        for (msg, _t, _k, a), rf, rank, verdict, th in zip(
            calls, rfs, ranks, verdicts, hashes, strict=True
        ):
            if hidden:
                a[4] = bytes(a[4]) + HIDDEN_MARK
                x = bytes(a[8])
                a[8] = x[:-1] + (b',"hidden":1}' if len(x) > 2 else b'"hidden":1}')
            a.append(
                f"{rank} {'d' if msg.kind == 'danmaku' else 'p'} {th} {verdict}"
                f" {shown} {rf.version} {msg.user}"
            )

    def refusal(self, msg: IngressMessage, result: Sequence[Any]) -> Reply | None:
        """The nack for a ``-2`` answer of the script; None for any other answer."""
        if int(result[0]) != -2:
            return None
        code = _str(result[1])
        ms = int(result[2])
        detail = _str(result[3])
        message = _REFUSALS.get(detail, "refused by the room's moderation")
        retry_after: int | None = None
        if code == "rate_limited":
            retry_after = max(1, ms)
        elif ms > 0 and detail in {"ban", "mute"}:
            message += f" for {-(-ms // 1000)} more s"
        return Reply(msg.session, msg.room, msg.cmid, code=code, message=message,
                     retry_after_ms=retry_after)

    def outcome_command(
        self, msg: IngressMessage, reply: Reply, text: str, *, cluster: bool
    ) -> list[Any]:
        """The XADD recording a refused message for the archive's ``moderation`` table
        (``engine.archive.store.ModerationOutcome``: room, user, code, ts, cmid, text, gateway).

        The stream is ``danmaku:modout`` on the room's shard (``{r:<room>}:modout`` under Redis
        Cluster), capped; the archiver reads it like the archive stream."""
        key = keys.moderation_stream(msg.room, cluster=cluster)
        return [
            "XADD", key, "MAXLEN", "~", OUTCOME_MAXLEN, "*", "r", msg.room, "u", msg.user,
            "code", reply.code, "ts", int(time.time() * 1000), "c", msg.cmid, "t", text[:200],
            "g", msg.gateway,
        ]

    async def reload(self, client: Any, room: str, version: str | None = None) -> None:
        """Rebuild the room's cached config from Redis (after the script answered "stale").

        With ``version`` (what the script saw), nothing is read when the cache already holds
        it: a whole read of one room answered "stale" reloads once, not once per message."""
        if version is not None and self.filter_for(room).version == version:
            return
        cfg, words = await client.pipeline(
            [["HMGET", config_key(room), "wv", "filter", "dup_ms"], ["SMEMBERS", words_key(room)]]
        )
        version = _str(cfg[0]) if cfg[0] is not None else ""
        mode = _str(cfg[1]) if cfg[1] is not None else "off"
        if mode not in FILTER_MODES:
            mode = "off"
        word_set = frozenset(_str(w) for w in words or ())
        matcher = self._matchers.get(word_set)
        if matcher is None:
            matcher = KeywordMatcher(word_set)
            self._matchers[word_set] = matcher
        self._filters[room] = RoomFilter(version, mode, matcher, cfg[2] is not None)
        self._filters.move_to_end(room)
        while len(self._filters) > self._max_rooms:
            self._filters.popitem(last=False)
        self.reloads += 1


def _str(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _with_text(body: bytes, text: str) -> bytes:
    obj = orjson.loads(body)
    obj["text"] = text
    return orjson.dumps(obj)
