"""Settings: the only reader of os.environ and of the TOML files in the config directory.

Precedence: built-in defaults < ``config/broker.toml`` < ``BROKER_*`` environment variables.
Everything is validated here, once; a bad value stops start-up with the file, key and problem.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from broker.config_files import AllianceSeed, load_alliances, load_policy, read_toml, suggest, toml_table
from broker.domain.labels import DEFAULT_POLICY, Policy
from broker.errors import ConfigError
from broker.witness_settings import WitnessSettings, load_witnesses

DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///var/broker.db"


@dataclass(frozen=True)
class Option:
    """One setting of broker.toml, declared once: its key, the Settings field it fills, its
    default and bounds in the file's units, and what it means. Loading, the refusal of unknown
    keys and the configuration table in docs/operations.md all come from these declarations.

    ``kind``: ``int``; ``float`` (a whole number in the file, a float in Settings); ``ms`` and
    ``hours`` (a whole number of those, seconds in Settings); ``text``; ``choice``; ``list`` (of
    non-empty strings); ``networks`` (addresses or CIDR networks); ``path``; ``bool``; ``paths``
    (one path or a list of them); ``own`` (read by code of its own, such as the witness list)."""

    key: str
    field: str | None
    default: Any
    meaning: str
    kind: str = "int"
    low: int = 0
    high: int = 0
    choices: tuple[str, ...] = ()
    env: str | None = None

    @property
    def table(self) -> str:
        return self.key.split(".", 1)[0]

    @property
    def name(self) -> str:
        return self.key.split(".", 1)[1]

    def shown_default(self) -> str:
        """The default as the documentation's table shows it."""
        if self.default is None:
            return "none"
        if isinstance(self.default, bool):
            return "`true`" if self.default else "`false`"
        if isinstance(self.default, tuple):
            return "`[]`" if not self.default else "`[" + ", ".join(f'"{v}"' for v in self.default) + "]`"
        return f"`{self.default}`"


def _o(
    key: str, field: str | None, default: Any, low: int, high: int, meaning: str, kind: str = "int"
) -> Option:
    return Option(key=key, field=field, default=default, meaning=meaning, kind=kind, low=low, high=high)


DEFAULT_KEYRING = "var/keyring.json"
DEFAULT_ORIGIN = "alliance-broker.example/audit"
TLS_CLIENT_AUTH = ("off", "optional", "required")
_MINUTE_MS, _HOUR_MS = 60_000, 3_600_000

# fmt: off
OPTIONS: tuple[Option, ...] = (
    Option("database.url", "database_url", DEFAULT_DATABASE_URL,
        "SQLite file, or `postgresql+asyncpg://user@host:5432/db`; its query (`?ssl=require`, a Unix "
        "socket's `?host=/run/postgresql`) applies to every connection, the LISTEN one included "
        "(environment: `BROKER_DATABASE_URL`)", kind="text", env="BROKER_DATABASE_URL"),
    _o("database.connect_timeout_ms", "db_connect_timeout_seconds", 3000, 100, _MINUTE_MS,
        "PostgreSQL: opening a connection that takes longer fails (503)", "ms"),
    _o("database.statement_timeout_ms", "db_statement_timeout_seconds", 5000, 100, _HOUR_MS,
        "PostgreSQL: a statement running longer is ended by the server (`statement_timeout`), and one the "
        "server does not answer at all is given up by the broker (asyncpg `command_timeout`): 503", "ms"),
    _o("database.pool_timeout_ms", "db_pool_timeout_seconds", 2000, 100, _MINUTE_MS,
        "PostgreSQL: a request waiting longer for a free pooled connection gets 503", "ms"),
    _o("database.transaction_timeout_ms", "db_transaction_timeout_seconds", 5000, 100, _HOUR_MS,
        "one transaction on PostgreSQL, from waiting for its connection to its commit, and (both engines) "
        "a group-committed publish or delivery record from its arrival; past it the transaction is "
        "abandoned (its connection closed, so the server rolls it back) and the request gets 503. One "
        "stuck connection never holds the lock every publish queues on for longer", "ms"),
    _o("database.idle_in_transaction_timeout_ms", "db_idle_in_transaction_timeout_seconds", 10_000, 100,
        _HOUR_MS,
        "PostgreSQL: the server ends a session left idle inside a transaction "
        "(`idle_in_transaction_session_timeout`), so an abandoned transaction cannot hold the head row",
        "ms"),
    Option("keyring.path", "keyring_path", DEFAULT_KEYRING,
        "the keyring (KEKs, checkpoint key); created 0600, atomically (environment: `BROKER_KEYRING`)",
        kind="path", env="BROKER_KEYRING"),
    Option("server.host", "host", "127.0.0.1", "listen address; plain HTTP only on loopback", kind="text"),
    _o("server.port", "port", 8080, 0, 65535, "listen port"),
    _o("server.max_body_bytes", "max_body_bytes", 1024 * 1024, 1024, 1 << 30,
        "largest request body (413 above)"),
    _o("server.body_read_timeout_seconds", "body_read_timeout_seconds", 30, 1, 3600,
        "a body still arriving after this gets 408", "float"),
    _o("server.request_head_timeout_seconds", "request_head_timeout_seconds", 10, 1, 3600,
        "a TLS handshake, or a request head, not complete after this: the connection is closed "
        "(and a peer link's upstream must accept the stream within it)", "float"),
    _o("server.max_connections_per_source", "max_connections_per_source", 64, 1, 1_000_000,
        "open connections per source address; more are closed at once"),
    Option("server.connection_cap_exempt", "connection_cap_exempt", (),
        "addresses or networks (CIDR) with no connection cap: a TLS-terminating proxy or load balancer",
        kind="networks"),
    _o("server.publish_rate_per_second", "publish_rate_per_second", 200, 1, 1_000_000,
        "per-node publish rate (across brokers on PostgreSQL)", "float"),
    _o("server.publish_burst", "publish_burst", 400, 1, 1_000_000, "per-node publish burst"),
    _o("server.recall_rate_per_second", "recall_rate_per_second", 1, 1, 1_000_000,
        "per-node recall rate (REST and TAXII `DELETE`; per broker process)", "float"),
    _o("server.recall_burst", "recall_burst", 20, 1, 1_000_000, "per-node recall burst"),
    _o("server.max_page_size", "max_page_size", 500, 1, 10_000, "largest `limit` of a listing"),
    _o("server.max_page_bytes", "max_page_bytes", 8 << 20, 64 << 10, 1 << 30,
        "a listing page stops at about this many bytes"),
    _o("server.max_scan_rows", "max_scan_rows", 5000, 1, 1_000_000,
        "stored rows one listing request may examine"),
    _o("server.auth_failures_per_second", "auth_failures_per_second", 5, 1, 1_000_000,
        "failed authentications per source address per second", "float"),
    _o("server.auth_failure_burst", "auth_failure_burst", 50, 1, 1_000_000,
        "... saved up; past it, 429 before the token is read"),
    _o("server.auth_failure_max_sources", "auth_failure_max_sources", 20_000, 100, 10_000_000,
        "failing source addresses the limiter keeps a bucket for (about 600 bytes each); past it the one "
        "that failed longest ago is forgotten, and a window's further sources are audited together as "
        "source `other` (metric `broker_auth_failure_sources`)"),
    Option("server.trusted_proxies", "trusted_proxies", (),
        "addresses or networks (CIDR) of reverse proxies whose `X-Forwarded-For` names the client for the "
        "failed-authentication limit ([deployment.md](deployment.md), Slow and greedy clients)",
        kind="networks"),
    _o("server.auth_failure_window_seconds", "auth_failure_window_seconds", 10, 1, 3600,
        "failures are audited as one event per source per window; repeated missing-role refusals as one "
        "per node and act", "float"),
    _o("server.stream_queue_size", "stream_queue_size", 1000, 1, 1_000_000,
        "frames queued per stream before 4008"),
    _o("server.stream_queue_bytes", "stream_queue_bytes", 16 << 20, 64 << 10, 1 << 32,
        "bytes queued per stream before 4008 (the frames' JSON text; metric `broker_stream_queue_bytes`)"),
    _o("server.stream_feed_bytes", "stream_feed_bytes", 64 << 20, 1 << 20, 1 << 36,
        "the in-memory window of recent reports live streams are served from, in the bytes the process "
        "holds for it (records, and the plaintexts and frames cached for delivery); past it the oldest "
        "quarter is dropped and a stream behind it reads from the database (metric "
        "`broker_stream_feed_bytes`)"),
    _o("server.max_streams_per_node", "max_streams_per_node", 16, 1, 10_000,
        "open streams per node per broker (429 beyond); held slots per node are the `broker_stream_slots` "
        "metric"),
    _o("server.ack_flush_ms", "ack_flush_seconds", 500, 10, _MINUTE_MS,
        "the newest ack per stream is stored this often (and at close)", "ms"),
    _o("server.stream_heartbeat_seconds", "stream_heartbeat_seconds", 15, 1, 3600,
        "heartbeat frame on an idle stream; also a websocket ping after this long without traffic from the "
        "client, and a pong not back within half of it drops the connection (a vanished peer gives its "
        "slot and queue back within two intervals)", "float"),
    _o("server.max_ws_frame_bytes", "max_ws_frame_bytes", 64 * 1024, 256, 1 << 26,
        "largest frame a client may send"),
    Option("server.allowed_origins", "allowed_origins", (),
        "browser origins allowed to open streams; they and the broker's own origin may also send state "
        "changes and client-certificate requests ([deployment.md](deployment.md), Browsers)", kind="list"),
    _o("server.change_poll_ms", "change_poll_seconds", 50, 10, 10_000,
        "how often to look for other processes' changes (SQLite; PostgreSQL without LISTEN)", "ms"),
    _o("server.safety_poll_ms", "safety_poll_seconds", 1000, 10, _MINUTE_MS,
        "the same while PostgreSQL LISTEN/NOTIFY works", "ms"),
    _o("server.health_timeout_ms", "health_timeout_seconds", 1000, 100, _MINUTE_MS,
        "`GET /v1/health` answers 503 when the database has not answered within this", "ms"),
    Option("server.event_loop", "event_loop", "auto", "`auto` (uvloop where installed) or `asyncio`",
        kind="choice", choices=("auto", "asyncio")),
    _o("server.retention_interval_seconds", "retention_interval_seconds", 60, 1, 86_400,
        "how often each broker looks for reports whose retention ran out", "float"),
    _o("server.retention_batch_size", "retention_batch_size", 500, 1, 10_000,
        "reports one retention transaction examines (and at most erases)"),
    _o("server.kek_period_hours", "kek_period_seconds", 24, 1, 24 * 366,
        "new reports' data keys are wrapped under a fresh KEK each period this long, which bounds what one "
        "erasure re-wraps", "hours"),
    Option("tls.cert", None, None, "server certificate chain (PEM); enables TLS", kind="own"),
    Option("tls.key", None, None, "its private key", kind="own"),
    Option("tls.client_ca", None, (), "alliance CAs for client certificates", kind="own"),
    Option("tls.client_auth", None, "off", "`off`, `optional` or `required`", kind="own"),
    Option("tls.insecure_http", None, False, "allow plain HTTP on a non-loopback address", kind="own"),
    Option("audit.origin", "audit_origin", DEFAULT_ORIGIN, "the log's name in signed checkpoints",
        kind="text"),
    _o("audit.checkpoint_every_events", "checkpoint_every_events", 1000, 1, 10**9,
        "sign a checkpoint after this many events"),
    _o("audit.checkpoint_every_seconds", "checkpoint_every_seconds", 10, 1, 86_400,
        "... or this long after the last one", "float"),
    Option("audit.witnesses", None, (),
        "`[[audit.witnesses]]` tables, one per witness asked to cosign each checkpoint (below, "
        "[Witnesses](#witnesses))", kind="own"),
    Option("audit.witness_quorum", None, 0,
        "cosignatures that make a checkpoint witnessed, 0 to the number of witnesses; `/v1/health` says "
        "`\"witnessed\": false` below it", kind="own"),
    _o("audit.witness_timeout_ms", "witness_timeout_seconds", 5000, 100, 600_000,
        "one add-checkpoint request to a witness, connection included; each is tried 3 times with backoff",
        "ms"),
)
# fmt: on

# Every key broker.toml may hold, by table: anything else is refused at start-up (a typo such as
# ``max_body_byte`` must not silently leave a default in force).
KNOWN_KEYS: dict[str, frozenset[str]] = {
    table: frozenset(o.name for o in OPTIONS if o.table == table)
    for table in dict.fromkeys(o.table for o in OPTIONS)
}
_BY_FIELD = {o.field: o for o in OPTIONS if o.field is not None}
_SCALE = {"ms": 1 / 1000, "hours": 3600.0}


def reference_table() -> str:
    """The configuration reference of docs/operations.md, from the declarations."""
    rows = ["| key | default | meaning |", "|---|---|---|"]
    rows += [f"| `{o.key}` | {o.shown_default()} | {o.meaning} |" for o in OPTIONS]
    return "\n".join(rows) + "\n"


def _default(name: str) -> Any:
    """A Settings field's default, from its declaration (in Settings' units)."""
    option = _BY_FIELD[name]
    if option.kind in _SCALE:
        return option.default * _SCALE[option.kind]
    if option.kind == "float":
        return float(option.default)
    if option.kind == "path":
        return Path(option.default)
    return option.default


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
    database_url: str = _default("database_url")
    keyring_path: Path = _default("keyring_path")  # noqa: RUF009 (a Path never changes)
    config_dir: Path = Path("config")
    host: str = _default("host")
    port: int = _default("port")
    max_body_bytes: int = _default("max_body_bytes")
    publish_rate_per_second: float = _default("publish_rate_per_second")
    publish_burst: int = _default("publish_burst")
    recall_rate_per_second: float = _default("recall_rate_per_second")
    recall_burst: int = _default("recall_burst")
    max_page_size: int = _default("max_page_size")
    max_scan_rows: int = _default("max_scan_rows")
    stream_queue_size: int = _default("stream_queue_size")
    stream_heartbeat_seconds: float = _default("stream_heartbeat_seconds")
    max_ws_frame_bytes: int = _default("max_ws_frame_bytes")
    allowed_origins: tuple[str, ...] = _default("allowed_origins")
    max_page_bytes: int = _default("max_page_bytes")
    stream_queue_bytes: int = _default("stream_queue_bytes")
    # The in-memory window of recent reports that live streams are served from (services.deliver).
    stream_feed_bytes: int = _default("stream_feed_bytes")
    max_streams_per_node: int = _default("max_streams_per_node")
    ack_flush_seconds: float = _default("ack_flush_seconds")
    auth_failures_per_second: float = _default("auth_failures_per_second")
    auth_failure_burst: int = _default("auth_failure_burst")
    auth_failure_window_seconds: float = _default("auth_failure_window_seconds")
    # Failing sources the limiter keeps a bucket for (the oldest is forgotten past it), and the
    # distinct sources one audit window counts by name (the rest are counted together).
    auth_failure_max_sources: int = _default("auth_failure_max_sources")
    # Networks (CIDR) of reverse proxies whose X-Forwarded-For names the client's address.
    trusted_proxies: tuple[str, ...] = _default("trusted_proxies")
    body_read_timeout_seconds: float = _default("body_read_timeout_seconds")
    request_head_timeout_seconds: float = _default("request_head_timeout_seconds")
    max_connections_per_source: int = _default("max_connections_per_source")
    connection_cap_exempt: tuple[str, ...] = _default("connection_cap_exempt")
    change_poll_seconds: float = _default("change_poll_seconds")
    safety_poll_seconds: float = _default("safety_poll_seconds")
    event_loop: str = _default("event_loop")
    # Deadlines on the database (PostgreSQL, and the group commit on both engines; SQLite
    # otherwise waits on its busy timeout): every wait of a request ends in a 503 within a few
    # seconds instead of hanging on a server that stopped answering (docs/operations.md).
    db_connect_timeout_seconds: float = _default("db_connect_timeout_seconds")
    db_statement_timeout_seconds: float = _default("db_statement_timeout_seconds")
    db_pool_timeout_seconds: float = _default("db_pool_timeout_seconds")
    db_transaction_timeout_seconds: float = _default("db_transaction_timeout_seconds")
    db_idle_in_transaction_timeout_seconds: float = _default("db_idle_in_transaction_timeout_seconds")
    health_timeout_seconds: float = _default("health_timeout_seconds")
    tls: TlsSettings = field(default_factory=lambda: TlsSettings())
    audit_origin: str = _default("audit_origin")
    checkpoint_every_events: int = _default("checkpoint_every_events")
    checkpoint_every_seconds: float = _default("checkpoint_every_seconds")
    # Witnesses asked to cosign each checkpoint, and how many cosignatures make it witnessed.
    witnesses: tuple[WitnessSettings, ...] = ()
    witness_quorum: int = 0
    witness_timeout_seconds: float = _default("witness_timeout_seconds")
    retention_interval_seconds: float = _default("retention_interval_seconds")
    retention_batch_size: int = _default("retention_batch_size")
    # New reports' data keys are wrapped under a KEK per period this long (services/shred.py).
    kek_period_seconds: float = _default("kek_period_seconds")
    policy: Policy = DEFAULT_POLICY
    alliances: tuple[AllianceSeed, ...] = ()

    def effective(self) -> dict[str, Any]:
        """Every declared setting in force, by its broker.toml key and in the file's units."""
        found: dict[str, Any] = {}
        for option in OPTIONS:
            if option.field is None:
                continue
            value = getattr(self, option.field)
            if option.kind in _SCALE:
                value = round(value / _SCALE[option.kind])
            elif option.kind == "float" and float(value).is_integer():
                value = int(value)
            found[option.key] = (
                list(value) if isinstance(value, tuple) else str(value) if isinstance(value, Path) else value
            )
        return found

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
        raw = read_toml(broker_file) if broker_file.exists() else {}
        _no_unknown_keys(raw, broker_file)
        tables = {table: toml_table(raw, table, broker_file) for table in KNOWN_KEYS}
        values = {
            o.field: _read(o, tables[o.table], broker_file, env) for o in OPTIONS if o.field is not None
        }
        witnesses, quorum = load_witnesses(tables["audit"], broker_file)
        return cls(
            **values,
            config_dir=config_dir,
            tls=_tls(tables["tls"], broker_file),
            witnesses=witnesses,
            witness_quorum=quorum,
            policy=load_policy(config_dir / "policy.toml"),
            alliances=load_alliances(config_dir / "alliances.toml"),
        )


def _read(option: Option, table: Mapping[str, Any], path: Path, env: Mapping[str, str]) -> Any:
    """The value of ``option`` in Settings' units: the environment's, the file's, or the default;
    ConfigError naming file, key and problem when it is not one the option allows."""
    if option.env is not None and env.get(option.env):
        value: Any = env[option.env]
    else:
        value = table.get(option.name, option.default)
    if option.kind == "networks":
        return _networks(value, path, option.key)
    check = _CHECKS.get(option.kind)
    if check is None:
        return value
    converted, problem = check(option, value)
    if problem is not None:
        raise ConfigError(file=str(path), key=option.key, problem=problem)
    return converted


# Each kind's check: the value in Settings' units, or the problem with it.
Checked = tuple[Any, str | None]


def _number(option: Option, value: Any) -> Checked:
    if isinstance(value, bool) or not isinstance(value, int) or not option.low <= value <= option.high:
        return value, f"must be an integer in [{option.low}, {option.high}]"
    if option.kind in _SCALE:
        return value * _SCALE[option.kind], None
    return (float(value) if option.kind == "float" else value), None


def _text(option: Option, value: Any) -> Checked:
    if not isinstance(value, str) or not value:
        return value, "must be a non-empty string"
    return (Path(value) if option.kind == "path" else value), None


def _choice(option: Option, value: Any) -> Checked:
    return value, None if value in option.choices else f"must be one of {', '.join(option.choices)}"


def _strings(option: Option, value: Any) -> Checked:
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) and v for v in value):
        return value, "must be a list of non-empty strings"
    return tuple(value), None


_CHECKS: dict[str, Callable[[Option, Any], Checked]] = {
    "int": _number,
    "float": _number,
    "ms": _number,
    "hours": _number,
    "text": _text,
    "path": _text,
    "choice": _choice,
    "list": _strings,
}


def _no_unknown_keys(raw: Mapping[str, Any], path: Path) -> None:
    for table, body in raw.items():
        if table not in KNOWN_KEYS:
            raise ConfigError(file=str(path), key=table, problem=f"unknown table{suggest(table, KNOWN_KEYS)}")
        if isinstance(body, Mapping):
            for key in body:
                if key not in KNOWN_KEYS[table]:
                    hint = suggest(key, KNOWN_KEYS[table])
                    raise ConfigError(file=str(path), key=f"{table}.{key}", problem=f"unknown key{hint}")


def _tls(table: Mapping[str, Any], path: Path) -> TlsSettings:
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
        client_auth=_client_auth(table, path),
        insecure_http=insecure,
    )


def _client_auth(table: Mapping[str, Any], path: Path) -> str:
    value = table.get("client_auth", "off")
    if value not in TLS_CLIENT_AUTH:
        raise ConfigError(
            file=str(path), key="tls.client_auth", problem=f"must be one of {', '.join(TLS_CLIENT_AUTH)}"
        )
    return str(value)


def _networks(value: object, path: Path, key: str) -> tuple[str, ...]:
    problem = "must be a list of addresses or networks (CIDR), e.g. 10.0.0.5 or 10.0.0.0/24"
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise ConfigError(file=str(path), key=key, problem=problem)
    try:
        return tuple(str(ipaddress.ip_network(v, strict=False)) for v in value)
    except ValueError as exc:
        raise ConfigError(file=str(path), key=key, problem=problem) from exc
