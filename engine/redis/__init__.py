"""The engine's Redis access layer: a small Trio-native RESP2 client.

Its job: talk to Redis (commands, pipelines, Lua scripts, pub/sub) from trio with bounded, leak-free
connection pools, and decide which server holds a room (``ShardSet``: HRW over a list of shards,
or slot routing in a Redis Cluster). Its boundaries: it knows nothing about rooms' key layout
(``engine.keys``) or the Lua scripts' meaning (they live next to the code that loads them).

Layering, bottom up: ``resp`` (sans-IO codec around ``hiredis.Reader``) -> ``connection`` (one
socket, one request at a time) -> ``client`` (pool, scripts) and ``pubsub`` -> ``sharding``.
Exceptions: see ``engine.redis.errors``.
"""

from .client import PoolStatistics as PoolStatistics
from .client import RedisClient as RedisClient
from .client import RedisCommands as RedisCommands
from .client import Script as Script
from .client import ScriptCall as ScriptCall
from .connection import RedisAddress as RedisAddress
from .connection import RedisConnection as RedisConnection
from .connection import parse_url as parse_url
from .errors import RedisConnectionError as RedisConnectionError
from .errors import RedisError as RedisError
from .errors import RedisProtocolError as RedisProtocolError
from .errors import RedisReplyError as RedisReplyError
from .errors import RedisTimeoutError as RedisTimeoutError
from .pubsub import Message as Message
from .pubsub import PubSub as PubSub
from .resp import Arg as Arg
from .resp import Command as Command
from .sharding import ClusterClient as ClusterClient
from .sharding import ShardSet as ShardSet
from .sharding import key_slot as key_slot
