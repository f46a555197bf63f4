"""Typed configuration, loaded once at a process entry point.

One frozen object per component; defaults live in the signatures, units in the names. Values come
from (lowest to highest precedence) the defaults, an optional TOML file (``DANMAKU_CONFIG`` or
``--config``), and ``DANMAKU_*`` environment variables. Nothing here is global: the CLI builds a
``Settings`` and hands the parts to the components.
"""

from __future__ import annotations

import os
import secrets
import tomllib
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from engine.errors import ConfigError, TokenError
from engine.tokens import KeyRing


@dataclass(frozen=True, slots=True)
class RedisSettings:
    """Where the live backbone is: several shard URLs, or one Redis Cluster URL."""

    urls: tuple[str, ...] = ("redis://127.0.0.1:6379",)
    cluster: bool = False
    ingress_partitions: int = 1
    hot_buffer_len: int = 10_000
    dedupe_ttl_s: int = 86_400


@dataclass(frozen=True, slots=True)
class GatewaySettings:
    host: str = "127.0.0.1"
    port: int = 8080
    node_id: str = ""
    public_url: str = ""
    heartbeat_ms: int = 30_000
    hello_timeout_ms: int = 5_000
    max_frame_bytes: int = 4_096
    max_text_chars: int = 200
    max_rooms_per_conn: int = 8
    batch_window_ms: int = 25
    max_batch_window_ms: int = 250
    frames_per_s_budget: int = 120_000
    shed_after_bytes: int = 64 * 1024
    max_pending_bytes: int = 1024 * 1024
    ring_size: int = 4_096
    errors_before_close: int = 20
    frames_per_s: int = 50
    frames_burst: int = 200
    online_ttl_ms: int = 15_000
    allowed_origins: tuple[str, ...] = ()
    socket_sndbuf_bytes: int = 0
    send_timeout_ms: int = 10_000
    # -- security (issue 5; docs/security.md) --
    tls_cert_file: str = ""  # PEM certificate chain; with tls_key_file: https:// and wss://
    tls_key_file: str = ""
    max_conns_per_ip: int = 0  # open connections per client IP; 0 = unlimited
    login_token_ttl_s: int = 86_400  # lifetime of the tokens POST /v1/login hands out
    login_max_failures: int = 5  # failed logins (per name and client IP) before the lock-out
    login_lockout_s: int = 30  # first lock-out; it doubles with each further failure
    login_max_lockout_s: int = 900
    revocation_ttl_s: int = 30 * 86_400  # how long "tokens before T are invalid" is kept


@dataclass(frozen=True, slots=True)
class WorkerSettings:
    node_id: str = ""
    read_count: int = 512
    block_ms: int = 1_000
    claim_idle_ms: int = 5_000
    claim_every_ms: int = 2_000
    moderation: bool = True  # run the moderation step (rooms/moderate.lua) before sequencing
    filter_cache_rooms: int = 4_096  # rooms whose word filter a worker keeps built


@dataclass(frozen=True, slots=True)
class ArchiveSettings:
    """The ClickHouse archive (issue 3; engine/archive/). Empty dsn: no archive, except that
    ``danmaku up`` then uses the embedded engine under the data dir (``off`` disables it)."""

    dsn: str = ""  # chdb:///path or http(s)://user:pw@host:port/database
    node_id: str = ""  # the archiver's consumer name (default: random)
    batch_rows: int = 5_000  # insert when this many rows are collected ...
    batch_ms: int = 250  # ... or when the oldest collected row waited this long
    retry_min_ms: int = 100  # backoff after a failed insert, doubling up to retry_max_ms
    retry_max_ms: int = 10_000
    claim_idle_ms: int = 30_000  # take over a dead archiver's entries after this idle time
    metrics_port: int = 9464  # `danmaku archiver` serves /metrics here (0 = off)
    metrics_host: str = "127.0.0.1"
    viewers_sample_ms: int = 15_000  # how often a gateway records its viewers per room


@dataclass(frozen=True, slots=True)
class Settings:
    redis: RedisSettings = field(default_factory=RedisSettings)
    gateway: GatewaySettings = field(default_factory=GatewaySettings)
    worker: WorkerSettings = field(default_factory=WorkerSettings)
    archive: ArchiveSettings = field(default_factory=ArchiveSettings)
    secret: str = ""
    data_dir: str = "./var"
    secrets: str = ""  # DANMAKU_SECRETS: "kid1:secret1,kid2:secret2" (key rotation; tokens.py)


def new_node_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def _coerce(value: Any, like: Any, name: str) -> Any:
    if isinstance(like, bool):
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in {"1", "true", "yes", "on"}:
            return True
        if text in {"0", "false", "no", "off"}:
            return False
        raise ConfigError(f"{name}: expected a boolean, got {value!r}")
    if isinstance(like, int):
        try:
            return int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{name}: expected an integer, got {value!r}") from None
    if isinstance(like, tuple):
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        if isinstance(value, list | tuple):
            return tuple(str(v) for v in value)
        raise ConfigError(f"{name}: expected a list, got {value!r}")
    return str(value)


def _apply(section: Any, values: Mapping[str, Any], prefix: str) -> Any:
    known = {f.name for f in fields(section)}
    changes: dict[str, Any] = {}
    for key, value in values.items():
        if key not in known:
            raise ConfigError(f"unknown setting {prefix}{key}")
        changes[key] = _coerce(value, getattr(section, key), prefix + key)
    return replace(section, **changes)


def load_settings(
    *,
    config_file: str | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
) -> Settings:
    """Build Settings from defaults, a TOML file and ``DANMAKU_<SECTION>_<NAME>`` variables.

    Top-level names: ``DANMAKU_SECRET``, ``DANMAKU_DATA_DIR``. Sections: ``REDIS``, ``GATEWAY``,
    ``WORKER`` (e.g. ``DANMAKU_REDIS_URLS=redis://a:6379,redis://b:6379``).
    """
    env = os.environ if env is None else env
    settings = Settings()
    path = config_file or env.get("DANMAKU_CONFIG")
    data: dict[str, Any] = {}
    if path:
        try:
            data = tomllib.loads(Path(path).read_text())
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    sections: dict[str, dict[str, Any]] = {
        "redis": {}, "gateway": {}, "worker": {}, "archive": {},
    }
    top: dict[str, Any] = {}
    for key, value in data.items():
        if key in sections:
            if not isinstance(value, dict):
                raise ConfigError(f"[{key}] must be a table")
            sections[key].update(value)
        elif key in {"secret", "data_dir", "secrets"}:
            top[key] = str(value)
        else:
            raise ConfigError(f"unknown setting {key}")
    for name, value in env.items():
        if not name.startswith("DANMAKU_") or name == "DANMAKU_CONFIG":
            continue
        rest = name[len("DANMAKU_"):].lower()
        if rest in {"secret", "data_dir", "secrets"}:
            top[rest] = value
            continue
        section, _, key = rest.partition("_")
        if section in sections and key:
            sections[section][key] = value
    for section, values in (overrides or {}).items():
        sections.setdefault(section, {}).update(values)
    return Settings(
        redis=_apply(settings.redis, sections["redis"], "redis."),
        gateway=_apply(settings.gateway, sections["gateway"], "gateway."),
        worker=_apply(settings.worker, sections["worker"], "worker."),
        archive=_apply(settings.archive, sections["archive"], "archive."),
        secret=top.get("secret", settings.secret),
        data_dir=top.get("data_dir", settings.data_dir),
        secrets=top.get("secrets", settings.secrets),
    )


def secret_from_data_dir(data_dir: str) -> str:
    """The engine's JWT secret: created once (0600) in the data dir and reused afterwards."""
    path = Path(data_dir) / "secret"
    try:
        text = path.read_text().strip()
        if text:
            return text
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    value = secrets.token_urlsafe(48)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(value + "\n")
    return value


def resolve_secret(settings: Settings, env: Mapping[str, str] | None = None) -> str:
    env = os.environ if env is None else env
    if settings.secret:
        return settings.secret
    if env.get("DANMAKU_SECRET"):
        return env["DANMAKU_SECRET"]
    return secret_from_data_dir(settings.data_dir)


def resolve_keyring(settings: Settings, env: Mapping[str, str] | None = None) -> str | KeyRing:
    """The ``KeyRing`` of ``DANMAKU_SECRETS`` plus the legacy secret, or just the legacy secret
    (as ``resolve_secret``) when no rotation keys are configured."""
    env = os.environ if env is None else env
    spec = settings.secrets or env.get("DANMAKU_SECRETS", "")
    if not spec.strip():
        return resolve_secret(settings, env)
    legacy = settings.secret or env.get("DANMAKU_SECRET", "")
    try:
        return KeyRing.parse(spec, legacy)
    except TokenError as exc:
        raise ConfigError(str(exc)) from None
