"""Settings: the only reader of os.environ and of the TOML files in the config directory.

Precedence: built-in defaults < ``config/broker.toml`` < ``BROKER_*`` environment variables.
Everything is validated here, once; a bad value stops start-up with the file, key and problem.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any

from broker.domain.alliances import HISTORY_VALUES, Alliance, Membership
from broker.domain.labels import DEFAULT_POLICY, Policy
from broker.domain.nations import check_alliance_id, is_nation
from broker.errors import ConfigError, InvalidInput
from broker.witness_settings import WitnessSettings, load_witnesses

DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///var/broker.db"


@dataclass(frozen=True)
class AllianceSeed:
    alliance: Alliance
    members: tuple[Membership, ...]


# Every key broker.toml may hold, by table: anything else is refused at start-up (a typo such as
# ``max_body_byte`` must not silently leave a default in force).
KNOWN_KEYS: dict[str, frozenset[str]] = {
    "audit": frozenset(
        [
            "checkpoint_every_events",
            "checkpoint_every_seconds",
            "origin",
            "witness_quorum",
            "witness_timeout_ms",
            "witnesses",
        ]
    ),
    "database": frozenset(
        [
            "connect_timeout_ms",
            "idle_in_transaction_timeout_ms",
            "pool_timeout_ms",
            "statement_timeout_ms",
            "transaction_timeout_ms",
            "url",
        ]
    ),
    "keyring": frozenset(["path"]),
    "server": frozenset(
        [
            "ack_flush_ms",
            "allowed_origins",
            "auth_failure_burst",
            "auth_failure_max_sources",
            "auth_failure_window_seconds",
            "auth_failures_per_second",
            "body_read_timeout_seconds",
            "change_poll_ms",
            "connection_cap_exempt",
            "event_loop",
            "health_timeout_ms",
            "host",
            "kek_period_hours",
            "max_body_bytes",
            "max_connections_per_source",
            "max_page_bytes",
            "max_page_size",
            "max_scan_rows",
            "max_streams_per_node",
            "max_ws_frame_bytes",
            "port",
            "publish_burst",
            "publish_rate_per_second",
            "recall_burst",
            "recall_rate_per_second",
            "request_head_timeout_seconds",
            "retention_batch_size",
            "retention_interval_seconds",
            "safety_poll_ms",
            "stream_feed_bytes",
            "stream_heartbeat_seconds",
            "stream_queue_bytes",
            "stream_queue_size",
            "trusted_proxies",
        ]
    ),
    "tls": frozenset(["cert", "client_auth", "client_ca", "insecure_http", "key"]),
}


TLS_CLIENT_AUTH = ("off", "optional", "required")


@dataclass(frozen=True)
class TlsSettings:
    """``[tls]`` in broker.toml (``broker serve`` flags override it). Without a certificate the
    broker serves plain HTTP, and only on a loopback address unless ``insecure_http``."""

    cert: Path | None = None
    key: Path | None = None
    client_ca: tuple[Path, ...] = ()
    client_auth: str = "off"
    insecure_http: bool = False

    @property
    def enabled(self) -> bool:
        return self.cert is not None


@dataclass(frozen=True)
class Settings:
    database_url: str = DEFAULT_DATABASE_URL
    keyring_path: Path = Path("var/keyring.json")
    config_dir: Path = Path("config")
    host: str = "127.0.0.1"
    port: int = 8080
    max_body_bytes: int = 1024 * 1024
    publish_rate_per_second: float = 200.0
    publish_burst: int = 400
    recall_rate_per_second: float = 1.0
    recall_burst: int = 20
    max_page_size: int = 500
    max_scan_rows: int = 5000
    stream_queue_size: int = 1000
    stream_heartbeat_seconds: float = 15.0
    max_ws_frame_bytes: int = 64 * 1024
    allowed_origins: tuple[str, ...] = ()
    max_page_bytes: int = 8 * 1024 * 1024
    stream_queue_bytes: int = 16 * 1024 * 1024
    # The in-memory window of recent reports that live streams are served from (services.deliver).
    stream_feed_bytes: int = 64 * 1024 * 1024
    max_streams_per_node: int = 16
    ack_flush_seconds: float = 0.5
    auth_failures_per_second: float = 5.0
    auth_failure_burst: int = 50
    auth_failure_window_seconds: float = 10.0
    # Failing sources the limiter keeps a bucket for (the oldest is forgotten past it), and the
    # distinct sources one audit window counts by name (the rest are counted together).
    auth_failure_max_sources: int = 20_000
    # Networks (CIDR) of reverse proxies whose X-Forwarded-For names the client's address.
    trusted_proxies: tuple[str, ...] = ()
    body_read_timeout_seconds: float = 30.0
    request_head_timeout_seconds: float = 10.0
    max_connections_per_source: int = 64
    connection_cap_exempt: tuple[str, ...] = ()  # networks (CIDR) the per-source cap spares
    change_poll_seconds: float = 0.05
    safety_poll_seconds: float = 1.0
    event_loop: str = "auto"
    # Deadlines on the database (PostgreSQL, and the group commit on both engines; SQLite
    # otherwise waits on its busy timeout): every wait of a request ends in a 503 within a few
    # seconds instead of hanging on a server that stopped answering (docs/operations.md).
    db_connect_timeout_seconds: float = 3.0
    db_statement_timeout_seconds: float = 5.0
    db_pool_timeout_seconds: float = 2.0
    db_transaction_timeout_seconds: float = 5.0
    db_idle_in_transaction_timeout_seconds: float = 10.0
    health_timeout_seconds: float = 1.0
    tls: TlsSettings = field(default_factory=lambda: TlsSettings())
    audit_origin: str = "alliance-broker.example/audit"
    checkpoint_every_events: int = 1000
    checkpoint_every_seconds: float = 10.0
    # Witnesses asked to cosign each checkpoint, and how many cosignatures make it witnessed.
    witnesses: tuple[WitnessSettings, ...] = ()
    witness_quorum: int = 0
    witness_timeout_seconds: float = 5.0  # one add-checkpoint request, connection included
    retention_interval_seconds: float = 60.0
    retention_batch_size: int = 500
    # New reports' data keys are wrapped under a KEK per period this long (services/shred.py).
    kek_period_seconds: float = 86_400.0
    policy: Policy = DEFAULT_POLICY
    alliances: tuple[AllianceSeed, ...] = ()

    @classmethod
    def load(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read the config directory and the environment; raise ConfigError on any problem."""
        env = os.environ if env is None else env
        config_dir = Path(env.get("BROKER_CONFIG_DIR", "config"))
        if not config_dir.is_dir():
            if "BROKER_CONFIG_DIR" in env:
                raise ConfigError(file=str(config_dir), key="BROKER_CONFIG_DIR", problem="not a directory")
            raise ConfigError(
                file=str(config_dir.resolve()),
                key="config directory",
                problem="not found: run from the project's directory or set BROKER_CONFIG_DIR",
            )
        broker_file = config_dir / "broker.toml"
        raw = _read_toml(broker_file) if broker_file.exists() else {}
        _no_unknown_keys(raw, broker_file)
        database = _table(raw, "database", broker_file)
        keyring = _table(raw, "keyring", broker_file)
        server = _table(raw, "server", broker_file)
        audit = _table(raw, "audit", broker_file)
        tls = _table(raw, "tls", broker_file)
        get = _Getter(broker_file)
        witnesses, quorum = load_witnesses(audit, broker_file)
        return cls(
            database_url=env.get("BROKER_DATABASE_URL")
            or get.text(database, "database.url", DEFAULT_DATABASE_URL),
            keyring_path=Path(
                env.get("BROKER_KEYRING") or get.text(keyring, "keyring.path", "var/keyring.json")
            ),
            config_dir=config_dir,
            host=get.text(server, "server.host", "127.0.0.1"),
            port=get.number(server, "server.port", 8080, 0, 65535),
            max_body_bytes=get.number(server, "server.max_body_bytes", 1024 * 1024, 1024, 1 << 30),
            publish_rate_per_second=float(
                get.number(server, "server.publish_rate_per_second", 200, 1, 1_000_000)
            ),
            publish_burst=get.number(server, "server.publish_burst", 400, 1, 1_000_000),
            recall_rate_per_second=float(
                get.number(server, "server.recall_rate_per_second", 1, 1, 1_000_000)
            ),
            recall_burst=get.number(server, "server.recall_burst", 20, 1, 1_000_000),
            max_page_size=get.number(server, "server.max_page_size", 500, 1, 10_000),
            max_scan_rows=get.number(server, "server.max_scan_rows", 5000, 1, 1_000_000),
            stream_queue_size=get.number(server, "server.stream_queue_size", 1000, 1, 1_000_000),
            stream_heartbeat_seconds=float(
                get.number(server, "server.stream_heartbeat_seconds", 15, 1, 3600)
            ),
            max_ws_frame_bytes=get.number(server, "server.max_ws_frame_bytes", 64 * 1024, 256, 1 << 26),
            allowed_origins=_origins(server, broker_file),
            max_page_bytes=get.number(server, "server.max_page_bytes", 8 << 20, 64 << 10, 1 << 30),
            stream_queue_bytes=get.number(server, "server.stream_queue_bytes", 16 << 20, 64 << 10, 1 << 32),
            stream_feed_bytes=get.number(server, "server.stream_feed_bytes", 64 << 20, 1 << 20, 1 << 36),
            max_streams_per_node=get.number(server, "server.max_streams_per_node", 16, 1, 10_000),
            ack_flush_seconds=get.number(server, "server.ack_flush_ms", 500, 10, 60_000) / 1000,
            auth_failures_per_second=float(
                get.number(server, "server.auth_failures_per_second", 5, 1, 1_000_000)
            ),
            auth_failure_burst=get.number(server, "server.auth_failure_burst", 50, 1, 1_000_000),
            auth_failure_window_seconds=float(
                get.number(server, "server.auth_failure_window_seconds", 10, 1, 3600)
            ),
            auth_failure_max_sources=get.number(
                server, "server.auth_failure_max_sources", 20_000, 100, 10_000_000
            ),
            trusted_proxies=_networks(server, broker_file, "trusted_proxies"),
            body_read_timeout_seconds=float(
                get.number(server, "server.body_read_timeout_seconds", 30, 1, 3600)
            ),
            request_head_timeout_seconds=float(
                get.number(server, "server.request_head_timeout_seconds", 10, 1, 3600)
            ),
            max_connections_per_source=get.number(
                server, "server.max_connections_per_source", 64, 1, 1_000_000
            ),
            connection_cap_exempt=_networks(server, broker_file, "connection_cap_exempt"),
            change_poll_seconds=get.number(server, "server.change_poll_ms", 50, 10, 10_000) / 1000,
            safety_poll_seconds=get.number(server, "server.safety_poll_ms", 1000, 10, 60_000) / 1000,
            event_loop=get.choice(server, "server.event_loop", "auto", ("auto", "asyncio")),
            db_connect_timeout_seconds=get.number(database, "database.connect_timeout_ms", 3000, 100, 60_000)
            / 1000,
            db_statement_timeout_seconds=get.number(
                database, "database.statement_timeout_ms", 5000, 100, 3_600_000
            )
            / 1000,
            db_pool_timeout_seconds=get.number(database, "database.pool_timeout_ms", 2000, 100, 60_000)
            / 1000,
            db_transaction_timeout_seconds=get.number(
                database, "database.transaction_timeout_ms", 5000, 100, 3_600_000
            )
            / 1000,
            db_idle_in_transaction_timeout_seconds=get.number(
                database, "database.idle_in_transaction_timeout_ms", 10_000, 100, 3_600_000
            )
            / 1000,
            health_timeout_seconds=get.number(server, "server.health_timeout_ms", 1000, 100, 60_000) / 1000,
            retention_interval_seconds=float(
                get.number(server, "server.retention_interval_seconds", 60, 1, 86_400)
            ),
            retention_batch_size=get.number(server, "server.retention_batch_size", 500, 1, 10_000),
            kek_period_seconds=3600.0 * get.number(server, "server.kek_period_hours", 24, 1, 24 * 366),
            tls=_tls(tls, broker_file, get),
            audit_origin=get.text(audit, "audit.origin", "alliance-broker.example/audit"),
            checkpoint_every_events=get.number(audit, "audit.checkpoint_every_events", 1000, 1, 10**9),
            checkpoint_every_seconds=float(
                get.number(audit, "audit.checkpoint_every_seconds", 10, 1, 86_400)
            ),
            witnesses=witnesses,
            witness_quorum=quorum,
            witness_timeout_seconds=get.number(audit, "audit.witness_timeout_ms", 5000, 100, 600_000) / 1000,
            policy=load_policy(config_dir / "policy.toml"),
            alliances=load_alliances(config_dir / "alliances.toml"),
        )


def _no_unknown_keys(raw: Mapping[str, Any], path: Path) -> None:
    for table, body in raw.items():
        if table not in KNOWN_KEYS:
            raise ConfigError(
                file=str(path), key=table, problem=f"unknown table{_suggest(table, KNOWN_KEYS)}"
            )
        if isinstance(body, Mapping):
            for key in body:
                if key not in KNOWN_KEYS[table]:
                    hint = _suggest(key, KNOWN_KEYS[table])
                    raise ConfigError(file=str(path), key=f"{table}.{key}", problem=f"unknown key{hint}")


def _suggest(word: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean {close[0]}?)" if close else ""


def _tls(table: Mapping[str, Any], path: Path, get: _Getter) -> TlsSettings:
    def optional_path(key: str) -> Path | None:
        value = table.get(key)
        if value is None:
            return None
        if not isinstance(value, str) or not value:
            raise ConfigError(file=str(path), key=f"tls.{key}", problem="must be a file path")
        return Path(value)

    cas = table.get("client_ca", [])
    if isinstance(cas, str):
        cas = [cas]
    if not isinstance(cas, list) or not all(isinstance(c, str) and c for c in cas):
        raise ConfigError(file=str(path), key="tls.client_ca", problem="must be a list of PEM file paths")
    insecure = table.get("insecure_http", False)
    if not isinstance(insecure, bool):
        raise ConfigError(file=str(path), key="tls.insecure_http", problem="must be true or false")
    return TlsSettings(
        cert=optional_path("cert"),
        key=optional_path("key"),
        client_ca=tuple(Path(c) for c in cas),
        client_auth=get.choice(table, "tls.client_auth", "off", TLS_CLIENT_AUTH),
        insecure_http=insecure,
    )


def _origins(server: Mapping[str, Any], path: Path) -> tuple[str, ...]:
    value = server.get("allowed_origins", [])
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(file=str(path), key="server.allowed_origins", problem="must be a list of origins")
    return tuple(value)


def _networks(server: Mapping[str, Any], path: Path, name: str) -> tuple[str, ...]:
    value = server.get(name, [])
    problem = "must be a list of addresses or networks (CIDR), e.g. 10.0.0.5 or 10.0.0.0/24"
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(file=str(path), key=f"server.{name}", problem=problem)
    try:
        return tuple(str(ipaddress.ip_network(v, strict=False)) for v in value)
    except ValueError as exc:
        raise ConfigError(file=str(path), key=f"server.{name}", problem=problem) from exc


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except OSError as exc:
        raise ConfigError(file=str(path), key="-", problem=f"cannot read: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(file=str(path), key="-", problem=f"not valid TOML: {exc}") from exc


def _table(raw: Mapping[str, Any], key: str, path: Path) -> Mapping[str, Any]:
    value = raw.get(key, {})
    if not isinstance(value, dict):
        raise ConfigError(file=str(path), key=key, problem="must be a table")
    return value


@dataclass(frozen=True)
class _Getter:
    path: Path

    def text(self, table: Mapping[str, Any], dotted: str, default: str) -> str:
        value = table.get(dotted.rsplit(".", 1)[-1], default)
        if not isinstance(value, str) or not value:
            raise ConfigError(file=str(self.path), key=dotted, problem="must be a non-empty string")
        return value

    def choice(self, table: Mapping[str, Any], dotted: str, default: str, choices: tuple[str, ...]) -> str:
        value = table.get(dotted.rsplit(".", 1)[-1], default)
        if value not in choices:
            raise ConfigError(file=str(self.path), key=dotted, problem=f"must be one of {', '.join(choices)}")
        return str(value)

    def number(self, table: Mapping[str, Any], dotted: str, default: int, low: int, high: int) -> int:
        value = table.get(dotted.rsplit(".", 1)[-1], default)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ConfigError(
                file=str(self.path), key=dotted, problem=f"must be an integer in [{low}, {high}]"
            )
        return value


# Every key policy.toml may hold: anything else is refused (a misspelt ``retention`` table must
# not leave reports kept forever without a word).
POLICY_KEYS = frozenset(["id", "levels", "require_sealing_at_or_above", "retention"])
# Longest retention period, in days (about a century); leave a level out to keep it forever.
MAX_RETENTION_DAYS = 36_500


def load_policy(path: Path) -> Policy:
    """Read ``policy.toml``; the default policy when the file is absent."""
    if not path.exists():
        return DEFAULT_POLICY
    raw = _read_toml(path)
    for key in raw:
        if key not in POLICY_KEYS:
            raise ConfigError(file=str(path), key=key, problem=f"unknown key{_suggest(key, POLICY_KEYS)}")
    levels = raw.get("levels")
    if not isinstance(levels, list) or not levels or not all(isinstance(x, str) for x in levels):
        raise ConfigError(file=str(path), key="levels", problem="must be a non-empty list of strings")
    policy_id = raw.get("id", "ALLIANCE-BROKER")
    seal = raw.get("require_sealing_at_or_above")
    if not isinstance(policy_id, str) or not (seal is None or isinstance(seal, str)):
        raise ConfigError(
            file=str(path), key="id", problem="id and require_sealing_at_or_above must be strings"
        )
    retention = _retention(_table(raw, "retention", path), levels, path)
    try:
        return Policy(
            id=policy_id, levels=tuple(levels), require_sealing_at_or_above=seal, retention=retention
        )
    except ValueError as exc:
        raise ConfigError(file=str(path), key="levels", problem=str(exc)) from exc


def _retention(table: Mapping[str, Any], levels: list[str], path: Path) -> tuple[tuple[str, timedelta], ...]:
    """``[retention]``: a whole number of days per classification level (``SECRET = 365``)."""
    periods = []
    for level, days in table.items():
        key = f"retention.{level}"
        if level not in levels:
            hint = _suggest(level, levels)
            raise ConfigError(file=str(path), key=key, problem=f"not a level of this policy{hint}")
        if isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= MAX_RETENTION_DAYS:
            raise ConfigError(
                file=str(path),
                key=key,
                problem=f"must be a whole number of days in [1, {MAX_RETENTION_DAYS}] "
                "(leave the level out to keep its reports forever)",
            )
        periods.append((level, timedelta(days=days)))
    return tuple(periods)


def as_utc(value: object, *, file: Path, key: str) -> datetime:
    """A TOML date or offset datetime as an aware UTC datetime (a date means 00:00 UTC)."""
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ConfigError(file=str(file), key=key, problem="datetime needs a UTC offset")
        return value.astimezone(UTC)
    if isinstance(value, date):
        return datetime.combine(value, time(0), tzinfo=UTC)
    raise ConfigError(file=str(file), key=key, problem="must be a date (YYYY-MM-DD)")


def load_alliances(path: Path) -> tuple[AllianceSeed, ...]:
    """Read ``alliances.toml`` into alliance seeds; nothing when the file is absent."""
    if not path.exists():
        return ()
    table = _table(_read_toml(path), "alliances", path)
    seeds = []
    for alliance_id, body in table.items():
        key = f"alliances.{alliance_id}"
        try:
            check_alliance_id(alliance_id)
        except InvalidInput as exc:
            raise ConfigError(file=str(path), key=key, problem=exc.message) from exc
        if not isinstance(body, dict) or not isinstance(body.get("name"), str):
            raise ConfigError(file=str(path), key=f"{key}.name", problem="must be a string")
        history = body.get("history", "full")
        if history not in HISTORY_VALUES:
            raise ConfigError(
                file=str(path), key=f"{key}.history", problem=f"must be one of {HISTORY_VALUES}"
            )
        members = []
        for i, row in enumerate(body.get("members", [])):
            row_key = f"{key}.members[{i}]"
            nation = row.get("nation") if isinstance(row, dict) else None
            if not isinstance(nation, str) or not is_nation(nation):
                raise ConfigError(
                    file=str(path), key=f"{row_key}.nation", problem="not an ISO 3166-1 alpha-3 code"
                )
            joined = as_utc(row.get("joined"), file=path, key=f"{row_key}.joined")
            left = None if row.get("left") is None else as_utc(row["left"], file=path, key=f"{row_key}.left")
            if left is not None and left <= joined:
                raise ConfigError(file=str(path), key=f"{row_key}.left", problem="must be after joined")
            members.append(Membership(alliance=alliance_id, nation=nation, joined=joined, left=left))
        alliance = Alliance(id=alliance_id, name=body["name"], history=history)
        seeds.append(AllianceSeed(alliance=alliance, members=tuple(members)))
    return tuple(seeds)
