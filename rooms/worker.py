"""The room worker: ingress streams -> business rules -> atomic Lua sequencing -> replies.

Guarantees:
- An ingress entry is XACKed only after its Lua step ran and its reply was published, so a worker
  that dies mid-batch leaves the entries pending; another worker takes them over (XAUTOCLAIM)
  and re-runs them. The Lua step dedupes by (user, cmid): the re-run returns the first seq and
  writes nothing, so no acked message is lost and none is sequenced twice.
- All Lua calls of one read are pipelined: one round trip per batch and shard, not per message.
"""

from __future__ import annotations

import logging
import os
import secrets
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import orjson
import trio

from engine import keys
from engine.config import RedisSettings, WorkerSettings
from engine.ingress import IngressMessage, Reply, encode_replies, parse_ingress
from engine.redis import RedisReplyError, Script, ShardSet
from rooms.moderation import MODERATED_INGEST, RoomModeration
from rooms.rules import check_message

log = logging.getLogger("danmaku.worker")

INGEST = Script.from_file(Path(__file__).with_name("ingest.lua"))


def message_tail(msg: IngressMessage) -> bytes:
    """The message JSON after ``ts``; the Lua step prepends seq, id and ts."""
    return b"".join(
        (
            b',"user":', orjson.dumps(msg.user),
            b',"name":', orjson.dumps(msg.name),
            b',"kind":', orjson.dumps(msg.kind),
            b',"body":', msg.body, b"}",
        )
    )


class RoomWorker:
    def __init__(
        self,
        shards: ShardSet,
        redis: RedisSettings,
        settings: WorkerSettings,
        *,
        max_text_chars: int = 200,
    ) -> None:
        self._shards = shards
        self._redis = redis
        self._settings = settings
        self._max_text_chars = max_text_chars
        self.node_id = settings.node_id or f"worker-{os.getpid()}-{secrets.token_hex(3)}"
        self.processed = 0
        self.sequenced = 0
        # Set by the archive integration: the archive's highest seq of a room.
        self.floor_source: Callable[[str], Awaitable[int]] | None = None
        # The moderation step (rooms/moderation.py) runs inside the sequencing script.
        self.moderation: RoomModeration | None = None
        self._script = INGEST
        if settings.moderation:
            self.moderation = RoomModeration(
                tail_of=message_tail, max_rooms=settings.filter_cache_rooms
            )
            self._script = MODERATED_INGEST

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            for client in self._ingress_clients():
                for partition in range(self._redis.ingress_partitions):
                    stream = keys.ingress_stream(partition)
                    await self._ensure_group(client, stream)
                    nursery.start_soon(self._consume, client, stream)
                    nursery.start_soon(self._claim_loop, client, stream)
            task_status.started()

    def _ingress_clients(self) -> Sequence[Any]:
        return [self._shards.client_for_index(i) for i in range(len(self._shards.shards))]

    @staticmethod
    async def _ensure_group(client: Any, stream: str) -> None:
        try:
            await client.execute("XGROUP", "CREATE", stream, keys.WORKER_GROUP, "0", "MKSTREAM")
        except RedisReplyError as exc:
            if exc.kind != "BUSYGROUP":
                raise

    async def _consume(self, client: Any, stream: str) -> None:
        s = self._settings
        cursor = "0"  # first our own pending entries (a restart with the same node id), then new
        while True:
            reply = await client.execute(
                "XREADGROUP", "GROUP", keys.WORKER_GROUP, self.node_id,
                "COUNT", s.read_count, "BLOCK", s.block_ms, "STREAMS", stream, cursor,
            )
            entries = reply[0][1] if reply else []
            if cursor == "0" and not entries:
                cursor = ">"
                continue
            if entries:
                await self.process(client, stream, entries)

    async def _claim_loop(self, client: Any, stream: str) -> None:
        s = self._settings
        while True:
            await trio.sleep(s.claim_every_ms / 1000)
            start = "0-0"
            while True:
                reply = await client.execute(
                    "XAUTOCLAIM", stream, keys.WORKER_GROUP, self.node_id,
                    s.claim_idle_ms, start, "COUNT", 256,
                )
                start = reply[0].decode() if isinstance(reply[0], bytes) else str(reply[0])
                entries = [e for e in reply[1] if e is not None and e[1] is not None]
                if entries:
                    log.info("took over %d pending entries of %s", len(entries), stream)
                    await self.process(client, stream, entries)
                if start == "0-0":
                    break

    async def process(self, client: Any, stream: str, entries: Sequence[Any]) -> None:
        """Sequence one read of ingress entries, publish the replies, then XACK them."""
        ids = [entry[0] for entry in entries]
        replies: dict[str, list[Reply]] = defaultdict(list)
        calls: list[tuple[IngressMessage, list[Any], list[Any]]] = []
        texts: list[str] = []
        for _id, fields in entries:
            msg = parse_ingress(fields)
            if msg is None:
                log.warning("dropping malformed ingress entry %r", _id)
                continue
            text = _text_of(msg.body)
            verdict = check_message(
                role=msg.role, kind=msg.kind, text=text,
                max_text_chars=self._max_text_chars,
            )
            if not verdict.ok:
                replies[msg.gateway].append(
                    Reply(msg.session, msg.room, msg.cmid, code=verdict.code,
                          message=verdict.message, retry_after_ms=verdict.retry_after_ms)
                )
                continue
            k, a = self._script_call(msg)
            calls.append((msg, k, a))
            texts.append(text)
        if self.moderation is not None:  # the whole read at once (see prepare_batch)
            self.moderation.prepare_batch(
                [(msg, text, k, a) for (msg, k, a), text in zip(calls, texts, strict=True)]
            )
        results = await self._run_calls(client, calls)
        outcomes: list[list[Any]] = []  # refused by moderation: recorded for the archive
        for i, ((msg, k, a), result) in enumerate(zip(calls, results, strict=True)):
            if not isinstance(result, Exception) and int(result[0]) < 0:
                results[i] = result = await self._rerun(client, msg, k, a, result)
            if (
                self.moderation is not None
                and not isinstance(result, Exception)
                and result[0] == -2  # refused by the moderation step
            ):
                refusal = self.moderation.refusal(msg, result)
                if refusal is not None:
                    replies[msg.gateway].append(refusal)
                    outcomes.append(self.moderation.outcome_command(
                        msg, refusal, _text_of(msg.body), cluster=self._redis.cluster))
                    continue
            if isinstance(result, Exception):
                log.error("ingest of %s/%s failed: %s", msg.room, msg.cmid, result)
                replies[msg.gateway].append(
                    Reply(msg.session, msg.room, msg.cmid, code="internal",
                          message="sequencing failed, retry with the same cmid")
                )
                continue
            is_new, seq, ts = int(result[0]), int(result[1]), int(result[2])
            self.sequenced += is_new
            replies[msg.gateway].append(Reply(msg.session, msg.room, msg.cmid, seq=seq, ts=ts))
        commands: list[list[Any]] = [
            ["PUBLISH", keys.gateway_channel(node), encode_replies(items)]
            for node, items in replies.items()
        ]
        if outcomes and not self._redis.cluster:
            commands += outcomes  # same shard as the ingress stream and the rooms
        elif outcomes:
            for command in outcomes:  # one room per slot: each on its own
                await self._shards.client_for(command[7]).execute(*command)
        commands.append(["XACK", stream, keys.WORKER_GROUP, *ids])
        commands.append(["XDEL", stream, *ids])
        await client.pipeline(commands)
        self.processed += len(ids)

    async def _rerun(
        self, client: Any, msg: IngressMessage, k: list[Any], a: list[Any], result: Any
    ) -> Any:
        """Call the script again after an answer asking for it: -1, a room without an epoch
        (new, or its counter was lost) is seeded above the archive's highest seq so a seq is
        never reused; -3, the word filter is stale; -4, the sender's shadow-ban state is not
        what the call assumed. The script wrote nothing when it answered so."""
        hidden = False
        for _ in range(4):
            code = int(result[0])
            if code == -1:
                a[7] = await self.seq_floor(msg.room)
            elif code in (-3, -4) and self.moderation is not None:
                if code == -3:
                    await self.moderation.reload(
                        self._shards.client_for(msg.room), msg.room, _text(result[1])
                    )
                else:
                    hidden = int(result[1]) == 1
                floor = a[7]
                k, a = self._script_call(msg)
                a[7] = floor
                self.moderation.prepare(msg, _text_of(msg.body), k, a, hidden=hidden)
            else:
                return result
            result = (await self._run_calls(client, [(msg, k, a)]))[0]
            if isinstance(result, Exception):
                return result
        if int(result[0]) < 0:
            return RuntimeError(f"the sequencing step did not settle: {result!r}")
        return result

    async def seq_floor(self, room: str) -> int:
        """The highest seq of ``room`` known outside Redis (the archive); 0 without one."""
        if self.floor_source is None:
            return 0
        return await self.floor_source(room)

    def _script_call(self, msg: IngressMessage) -> tuple[list[Any], list[Any]]:
        room = msg.room
        keys_ = [
            keys.seq_key(room), keys.epoch_key(room), keys.stream_key(room),
            keys.archive_stream(room, cluster=self._redis.cluster),
            keys.dedupe_key(room, msg.user, msg.cmid),
        ]
        args = [
            room, keys.room_channel(room), secrets.token_hex(6), secrets.token_hex(8),
            message_tail(msg), self._redis.hot_buffer_len, self._redis.dedupe_ttl_s, -1,
            orjson.dumps({"rt": msg.received_ms, "gw": msg.gateway}),
        ]
        return keys_, args

    async def _run_calls(
        self, client: Any, calls: Sequence[tuple[IngressMessage, list[Any], list[Any]]]
    ) -> list[Any]:
        if not calls:
            return []
        if not self._redis.cluster:  # the shard's ingress holds only the shard's rooms
            return list(await client.run_scripts(self._script, [(k, a) for _m, k, a in calls]))
        results: list[Any] = []
        for msg, k, a in calls:  # one room per slot: route each call on its own
            try:
                results.append(
                    await self._shards.client_for(msg.room).run_script(self._script, k, a)
                )
            except RedisReplyError as exc:
                results.append(exc)
        return results


def _text_of(body: bytes) -> str:
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError:
        return ""
    text = value.get("text", "") if isinstance(value, dict) else ""
    return text if isinstance(text, str) else ""


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
