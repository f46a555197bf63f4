"""Which Redis holds a room: a fixed list of shards, or one Redis Cluster.

**Shards** (``ShardSet(["redis://a:6379", "redis://b:6379"])``): a room goes to the shard with the
highest rendezvous (HRW) score ``blake2b(shard_name + b"\\0" + room, digest_size=8)``, compared as
big-endian bytes. Shard names are ``"shard-0"``, ``"shard-1"``, ... by position (or given
explicitly), *not* the URLs: a shard can move to another host without moving its rooms. The result
depends only on the names and the room id, so every process and every Python run agrees (no
``hash()``, no seeds). Adding a shard at the *end* of the list moves only the ~1/n of rooms that
now score highest on it; never reorder or remove entries in the middle.

**Cluster** (``ShardSet(["redis+cluster://host:port"])`` or ``cluster=True``): one
``ClusterClient`` serves every room. It learns the slot map with ``CLUSTER SLOTS`` on first use,
routes each command by the CRC16 (XMODEM) slot of its first key (or of the key's ``{hash tag}``),
and on a ``MOVED`` reply updates the map, re-reads it and retries once; on ``ASK`` it retries once
on the named node after ``ASKING``. All keys of a room share the tag ``{r:<room>}``, so a room's
scripts and pipelines stay on one node. Pub/sub messages are broadcast to every node of a cluster,
so a subscriber may connect to any node; ``pubsub_url_for`` spreads rooms over the seed nodes.
"""

from __future__ import annotations

import binascii
import hashlib
from collections.abc import Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any

import trio

from engine.errors import ConfigError

from .client import RedisClient, RedisCommands, Script, ScriptCall
from .connection import RedisAddress, parse_url
from .errors import RedisConnectionError, RedisError, RedisReplyError
from .resp import Arg, Command

if TYPE_CHECKING:
    from engine.config import RedisSettings

SLOTS = 16384
CLUSTER_SCHEME = "redis+cluster://"


# ---- slots -------------------------------------------------------------------------------------
def key_slot(key: bytes | str) -> int:
    """Redis Cluster's hash slot of a key: CRC16/XMODEM of the key (or of its non-empty
    ``{hash tag}``) modulo 16384."""
    data = key.encode() if isinstance(key, str) else key
    start = data.find(b"{")
    if start != -1:
        end = data.find(b"}", start + 1)
        if end > start + 1:
            data = data[start + 1 : end]
    # binascii.crc_hqx is CRC-CCITT with polynomial 0x1021; with initial value 0 it is XMODEM.
    return binascii.crc_hqx(data, 0) & (SLOTS - 1)


_SCRIPT_COMMANDS = frozenset(("EVAL", "EVALSHA", "EVAL_RO", "EVALSHA_RO", "FCALL", "FCALL_RO"))
_STREAM_READS = frozenset(("XREAD", "XREADGROUP"))
_SUBCOMMAND_KEY = frozenset(("XGROUP", "XINFO", "OBJECT", "MEMORY"))
_NO_KEY = frozenset(
    (
        "PING", "ECHO", "INFO", "TIME", "PUBLISH", "PUBSUB", "SCRIPT", "FUNCTION", "CLUSTER",
        "CLIENT", "CONFIG", "DBSIZE", "FLUSHALL", "FLUSHDB", "MULTI", "EXEC", "DISCARD", "UNWATCH",
        "WAIT", "COMMAND", "SELECT", "AUTH", "HELLO", "ASKING", "READONLY", "READWRITE", "KEYS",
        "SCAN", "RANDOMKEY", "LASTSAVE", "SAVE", "BGSAVE", "BGREWRITEAOF", "SHUTDOWN", "SLOWLOG",
        "LATENCY", "ACL", "DEBUG", "MONITOR", "ROLE", "LOLWUT", "SWAPDB", "QUIT", "RESET",
    )
)  # fmt: skip


def _name(arg: Arg) -> str:
    if isinstance(arg, str):
        return arg.upper()
    if isinstance(arg, bytes):
        return arg.decode("ascii", "replace").upper()
    return str(arg)


def first_key(args: Command) -> Arg | None:
    """The key a command is routed by, or None for commands without keys."""
    name = _name(args[0])
    if name in _NO_KEY or len(args) < 2:
        return None
    if name in _SCRIPT_COMMANDS:
        return args[3] if len(args) > 3 and int(args[2]) > 0 else None
    if name in _STREAM_READS:
        for i in range(1, len(args) - 1):
            if _name(args[i]) == "STREAMS":
                return args[i + 1]
        return None
    if name in _SUBCOMMAND_KEY:
        return args[2] if len(args) > 2 else None
    return args[1]


def _redirect(error: RedisReplyError) -> tuple[int, str, int]:
    # "MOVED 3999 127.0.0.1:6381" / "ASK 3999 127.0.0.1:6381"
    _kind, slot, endpoint = error.message.split(" ")[:3]
    host, _, port = endpoint.rpartition(":")
    return int(slot), host.strip("[]"), int(port)


# ---- cluster -----------------------------------------------------------------------------------
class ClusterClient:
    """A Redis Cluster client: one ``RedisClient`` pool per master, routed by key slot.

    Same interface as ``RedisClient`` (``execute``, ``pipeline``, ``run_script``,
    ``run_scripts``). A command is sent at most once, except after a ``MOVED``/``ASK`` reply,
    which means it did not run. Replicas are not used.
    """

    def __init__(
        self,
        seeds: Sequence[str | RedisAddress],
        *,
        max_connections: int = 32,
        pool_timeout_s: float = 5.0,
        connect_timeout_s: float = 5.0,
    ) -> None:
        if not seeds:
            raise ConfigError("a cluster needs at least one seed node")
        self._seeds = [s if isinstance(s, RedisAddress) else parse_url(s) for s in seeds]
        self._pool_options: dict[str, Any] = {
            "max_connections": max_connections,
            "pool_timeout_s": pool_timeout_s,
            "connect_timeout_s": connect_timeout_s,
        }
        self._nodes: dict[tuple[str, int], RedisClient] = {}
        self._slots: list[RedisClient | None] = [None] * SLOTS
        self._version = 0  # bumped by every slot map refresh
        self._stale = True  # refresh before the next command
        self._refresh_lock = trio.Lock()
        self._closed = False

    # ---- topology -------------------------------------------------------------------------------
    @property
    def seeds(self) -> list[RedisAddress]:
        return list(self._seeds)

    @property
    def nodes(self) -> list[RedisClient]:
        """The pools of the masters that own slots (after the first refresh)."""
        owners = {id(c): c for c in self._slots if c is not None}
        return list(owners.values())

    def _node(self, host: str, port: int) -> RedisClient:
        client = self._nodes.get((host, port))
        if client is None:
            seed = self._seeds[0]
            address = RedisAddress(
                host=host, port=port, username=seed.username, password=seed.password
            )
            client = self._nodes[(host, port)] = RedisClient(address, **self._pool_options)
        return client

    async def initialize(self) -> None:
        """Learn the slot map now (otherwise it happens on the first command)."""
        await self.refresh_slots()

    async def refresh_slots(self, *, seen_version: int | None = None) -> None:
        """Re-read the slot map with CLUSTER SLOTS (skipped if someone refreshed since
        ``seen_version``)."""
        async with self._refresh_lock:
            if seen_version is not None and seen_version != self._version:
                return
            candidates = [*self.nodes, *(self._node(s.host, s.port) for s in self._seeds)]
            errors: list[str] = []
            for client in dict.fromkeys(candidates):
                try:
                    reply = await client.execute("CLUSTER", "SLOTS")
                except (RedisError, OSError) as exc:
                    errors.append(f"{client.url}: {exc}")
                    continue
                self._apply_slots(reply, client.address.host)
                return
            raise RedisConnectionError(
                "no cluster node answered CLUSTER SLOTS: " + "; ".join(errors)
            )

    def _apply_slots(self, reply: list[Any], asked_host: str) -> None:
        slots: list[RedisClient | None] = [None] * SLOTS
        for entry in reply:
            start, end, master = int(entry[0]), int(entry[1]), entry[2]
            host = master[0].decode() if isinstance(master[0], bytes) else str(master[0])
            if host in ("", "?"):
                host = asked_host  # the node does not know its own address: the one we used
            client = self._node(host, int(master[1]))
            slots[start : end + 1] = [client] * (end - start + 1)
        self._slots = slots
        self._version += 1
        self._stale = False

    async def _client_for_slot(self, slot: int) -> RedisClient:
        if self._stale:
            await self.refresh_slots(seen_version=self._version)
        client = self._slots[slot]
        if client is None:
            raise RedisError(f"slot {slot} is not served by any cluster node")
        return client

    async def _default_client(self) -> RedisClient:
        if self._stale:
            await self.refresh_slots(seen_version=self._version)
        for client in self._slots:
            if client is not None:
                return client
        return self._node(self._seeds[0].host, self._seeds[0].port)

    async def client_for_key(self, key: bytes | str) -> RedisClient:
        """The pool of the master that serves ``key`` (e.g. for a long blocking read loop)."""
        return await self._client_for_slot(key_slot(key))

    async def _route(self, args: Command) -> RedisClient:
        key = first_key(args)
        if key is None:
            return await self._default_client()
        if not isinstance(key, str | bytes):
            key = str(key)
        return await self._client_for_slot(key_slot(key))

    async def _on_moved(self, error: RedisReplyError) -> RedisClient:
        slot, host, port = _redirect(error)
        client = self._node(host, port)
        seen = self._version
        self._slots[slot] = client  # good enough for the retry; the refresh fixes the rest
        try:
            await self.refresh_slots(seen_version=seen)
        except RedisError:
            self._stale = True
        return client

    # ---- requests -------------------------------------------------------------------------------
    async def execute(self, *args: Arg) -> Any:
        """Run one command on the node of its first key; error replies are raised."""
        client = await self._route(args)
        try:
            return await client.execute(*args)
        except RedisReplyError as exc:
            if exc.kind == "MOVED":
                target = await self._on_moved(exc)
                return await target.execute(*args)
            if exc.kind == "ASK":
                _slot, host, port = _redirect(exc)
                _ok, reply = await self._node(host, port).pipeline([("ASKING",), args])
                if type(reply) is RedisReplyError:
                    raise reply from None
                return reply
            raise
        except RedisConnectionError:
            self._stale = True  # the node may be gone: re-read the map before the next command
            raise

    async def pipeline(self, commands: Sequence[Command]) -> list[Any]:
        """Run commands in one round trip per node; errors are returned in place.

        Each command goes to the node of its own first key; a command without a key (MULTI,
        EXEC, PUBLISH, ...) goes with the keyed command before it, or with the first keyed command
        when it leads. A command answered MOVED/ASK is re-sent once to the right node, except
        inside MULTI/EXEC (the transaction then fails with EXECABORT, as it would on one node).
        """
        if not commands:
            await trio.lowlevel.checkpoint()
            return []
        keys = [first_key(c) for c in commands]
        lead: Arg | None = next((k for k in keys if k is not None), None)
        clients: list[RedisClient] = []
        default = (
            await self._default_client()
            if lead is None
            else await self._client_for_slot(key_slot(_key_bytes(lead)))
        )
        current = default
        for key in keys:
            if key is not None:
                current = await self._client_for_slot(key_slot(_key_bytes(key)))
            clients.append(current)
        replies = await self._send_grouped(commands, clients)

        retry: list[int] = []
        in_transaction = False
        for i, reply in enumerate(replies):
            name = _name(commands[i][0])
            if name == "MULTI":
                in_transaction = True
            elif name in ("EXEC", "DISCARD"):
                in_transaction = False
            elif (
                not in_transaction
                and type(reply) is RedisReplyError
                and reply.kind in ("MOVED", "ASK")
            ):
                retry.append(i)
        if retry:
            await self._redirect_pipeline(commands, replies, retry)
        return replies

    async def _redirect_pipeline(
        self, commands: Sequence[Command], replies: list[Any], retry: list[int]
    ) -> None:
        batch: list[Command] = []
        targets: list[RedisClient] = []
        for i in retry:
            error: RedisReplyError = replies[i]
            if error.kind == "MOVED":
                slot, host, port = _redirect(error)
                self._slots[slot] = self._node(host, port)
                batch.append(commands[i])
            else:
                _slot, host, port = _redirect(error)
                batch += [("ASKING",), commands[i]]
            targets.append(self._node(host, port))
        if any(replies[i].kind == "MOVED" for i in retry):
            try:
                await self.refresh_slots(seen_version=self._version)
            except RedisError:
                self._stale = True
        # ASKING must immediately precede its command on the same connection: expand targets.
        expanded: list[RedisClient] = []
        for i, target in zip(retry, targets, strict=True):
            expanded += [target, target] if replies[i].kind == "ASK" else [target]
        again = await self._send_grouped(batch, expanded)
        pos = 0
        for i in retry:
            if replies[i].kind == "ASK":
                pos += 1  # skip the ASKING reply
            replies[i] = again[pos]
            pos += 1

    async def _send_grouped(
        self, commands: Sequence[Command], clients: Sequence[RedisClient]
    ) -> list[Any]:
        first = clients[0]
        if all(c is first for c in clients):
            return await self._node_pipeline(first, commands)
        groups: dict[RedisClient, list[int]] = {}
        for i, client in enumerate(clients):
            groups.setdefault(client, []).append(i)
        replies: list[Any] = [None] * len(commands)
        failures: list[BaseException] = []

        async def run(client: RedisClient, indices: list[int]) -> None:
            try:
                got = await self._node_pipeline(client, [commands[i] for i in indices])
            except (RedisError, trio.ClosedResourceError) as exc:
                failures.append(exc)
                return
            for i, reply in zip(indices, got, strict=True):
                replies[i] = reply

        async with trio.open_nursery() as nursery:
            for client, indices in groups.items():
                nursery.start_soon(run, client, indices)
        if failures:
            raise failures[0]
        return replies

    async def _node_pipeline(self, client: RedisClient, commands: Sequence[Command]) -> list[Any]:
        try:
            return await client.pipeline(commands)
        except RedisConnectionError:
            self._stale = True
            raise

    async def run_script(
        self, script: Script, keys: Sequence[Arg] = (), args: Sequence[Arg] = ()
    ) -> Any:
        """EVALSHA on the node of ``keys[0]`` (EVAL once after NOSCRIPT)."""
        try:
            return await self.execute("EVALSHA", script.sha1, len(keys), *keys, *args)
        except RedisReplyError as exc:
            if exc.kind != "NOSCRIPT":
                raise
        return await self.execute("EVAL", script.source, len(keys), *keys, *args)

    async def run_scripts(self, script: Script, calls: Sequence[ScriptCall]) -> list[Any]:
        """Each call on the node of its first key, one round trip per node; results in order."""
        replies = await self.pipeline([script.evalsha_command(k, a) for k, a in calls])
        missing = [
            i
            for i, reply in enumerate(replies)
            if type(reply) is RedisReplyError and reply.kind == "NOSCRIPT"
        ]
        if missing:
            again = await self.pipeline(
                [
                    ["EVAL", script.source, len(calls[i][0]), *calls[i][0], *calls[i][1]]
                    for i in missing
                ]
            )
            for i, reply in zip(missing, again, strict=True):
                replies[i] = reply
        return replies

    # ---- lifetime -------------------------------------------------------------------------------
    async def aclose(self) -> None:
        self._closed = True
        for client in self._nodes.values():
            await client.aclose()
        await trio.lowlevel.checkpoint()

    async def __aenter__(self) -> ClusterClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return f"<ClusterClient seeds={[s.url for s in self._seeds]} nodes={len(self.nodes)}>"


def _key_bytes(key: Arg) -> bytes | str:
    return key if isinstance(key, str | bytes) else str(key)


def parse_cluster_url(url: str) -> list[RedisAddress]:
    """Seeds of ``redis+cluster://[:pw@]host:port[,host:port...]``."""
    if not url.startswith(CLUSTER_SCHEME):
        return [parse_url(url)]
    rest = url[len(CLUSTER_SCHEME) :]
    userinfo, at, hosts = rest.rpartition("@")
    prefix = "redis://" + (userinfo + at if at else "")
    return [parse_url(prefix + host.strip("/")) for host in hosts.split(",") if host]


# ---- the shard set -----------------------------------------------------------------------------
class ShardSet:
    """The Redis servers of a deployment, and which one holds a room (see module docstring)."""

    def __init__(
        self,
        urls: Sequence[str] | str,
        *,
        cluster: bool = False,
        names: Sequence[str] | None = None,
        max_connections: int = 32,
        pool_timeout_s: float = 5.0,
        connect_timeout_s: float = 5.0,
    ) -> None:
        url_list = [urls] if isinstance(urls, str) else list(urls)
        if not url_list:
            raise ConfigError("no Redis URLs")
        options: dict[str, Any] = {
            "max_connections": max_connections,
            "pool_timeout_s": pool_timeout_s,
            "connect_timeout_s": connect_timeout_s,
        }
        self._cluster = cluster or any(u.startswith(CLUSTER_SCHEME) for u in url_list)
        self._cluster_client: ClusterClient | None = None
        if self._cluster:
            seeds = [seed for u in url_list for seed in parse_cluster_url(u)]
            self._cluster_client = ClusterClient(seeds, **options)
            self._clients: list[RedisCommands] = [self._cluster_client]
            # Subscribers may use any node: spread rooms over the seeds.
            self._pubsub_urls = [_with_password(s) for s in seeds]
            names = [s.url for s in seeds]
        else:
            if names is not None and len(names) != len(url_list):
                raise ConfigError("one shard name per Redis URL")
            self._clients = [RedisClient(u, **options) for u in url_list]
            self._pubsub_urls = list(url_list)
            if names is None:
                names = [f"shard-{i}" for i in range(len(url_list))]
        if len(set(names)) != len(names):
            raise ConfigError(f"duplicate shard names/URLs: {names}")
        self._names = list(names)
        # HRW: per-name hash states, copied and fed the room id (cheaper than re-hashing names).
        self._hashers = [hashlib.blake2b(n.encode() + b"\0", digest_size=8) for n in names]
        self._cache: dict[str, int] = {}

    @classmethod
    def from_settings(cls, settings: RedisSettings, **options: Any) -> ShardSet:
        return cls(settings.urls, cluster=settings.cluster, **options)

    @property
    def cluster(self) -> bool:
        return self._cluster

    @property
    def shards(self) -> Sequence[RedisCommands]:
        """One client per shard (a single ``ClusterClient`` in cluster mode)."""
        return self._clients

    @property
    def names(self) -> list[str]:
        return list(self._names)

    @property
    def cluster_client(self) -> ClusterClient | None:
        return self._cluster_client

    def _hrw(self, room: str, hashers: Sequence[Any]) -> int:
        data = room.encode()
        best, best_score = 0, b""
        for i, hasher in enumerate(hashers):
            h = hasher.copy()
            h.update(data)
            score = h.digest()
            if score > best_score:
                best, best_score = i, score
        return best

    def index_for(self, room: str) -> int:
        """The shard of a room (always 0 in cluster mode)."""
        if len(self._clients) == 1:
            return 0
        index = self._cache.get(room)
        if index is None:
            if len(self._cache) >= 100_000:
                self._cache.clear()
            index = self._cache[room] = self._hrw(room, self._hashers)
        return index

    def client_for(self, room: str) -> RedisCommands:
        return self._clients[self.index_for(room)]

    def client_for_index(self, index: int) -> RedisCommands:
        return self._clients[index]

    def pubsub_url_for(self, room: str) -> str:
        """The URL (with credentials) a subscriber for the room's channel must connect to."""
        if self._cluster:
            if len(self._pubsub_urls) == 1:
                return self._pubsub_urls[0]
            return self._pubsub_urls[self._hrw(room, self._hashers)]
        return self._pubsub_urls[self.index_for(room)]

    def pubsub_urls(self) -> list[str]:
        """Every URL ``pubsub_url_for`` can return, each once, in shard order."""
        return list(dict.fromkeys(self._pubsub_urls))

    async def initialize(self) -> None:
        """Learn the cluster's slot map now (no-op for plain shards, which connect lazily)."""
        if self._cluster_client is not None:
            await self._cluster_client.initialize()

    async def aclose(self) -> None:
        for client in self._clients:
            await client.aclose()

    async def __aenter__(self) -> ShardSet:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        kind = "cluster" if self._cluster else "shards"
        return f"<ShardSet {kind} {self._names}>"


def _with_password(address: RedisAddress) -> str:
    if address.password is None:
        return address.url
    user = address.username or ""
    return f"redis://{user}:{address.password}@{address.host}:{address.port}"
