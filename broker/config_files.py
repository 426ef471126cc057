"""The policy and alliance files of the config directory (``policy.toml``, ``alliances.toml``),
and the TOML reading broker.toml shares: broker.settings reads broker.toml through it; nothing
else reads a config file."""

from __future__ import annotations

import difflib
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any

from broker.domain.alliances import HISTORY_VALUES, Alliance, Membership
from broker.domain.labels import DEFAULT_POLICY, Policy
from broker.domain.nations import check_alliance_id, is_nation
from broker.errors import ConfigError, InvalidInput


@dataclass(frozen=True)
class AllianceSeed:
    alliance: Alliance
    members: tuple[Membership, ...]


def suggest(word: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean {close[0]}?)" if close else ""


def read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except OSError as exc:
        raise ConfigError(file=str(path), key="-", problem=f"cannot read: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(file=str(path), key="-", problem=f"not valid TOML: {exc}") from exc


def toml_table(raw: Mapping[str, Any], key: str, path: Path) -> Mapping[str, Any]:
    value = raw.get(key, {})
    if not isinstance(value, dict):
        raise ConfigError(file=str(path), key=key, problem="must be a table")
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
    raw = read_toml(path)
    for key in raw:
        if key not in POLICY_KEYS:
            raise ConfigError(file=str(path), key=key, problem=f"unknown key{suggest(key, POLICY_KEYS)}")
    levels = raw.get("levels")
    if not isinstance(levels, list) or not levels or not all(isinstance(x, str) for x in levels):
        raise ConfigError(file=str(path), key="levels", problem="must be a non-empty list of strings")
    policy_id = raw.get("id", "ALLIANCE-BROKER")
    seal = raw.get("require_sealing_at_or_above")
    if not isinstance(policy_id, str) or not (seal is None or isinstance(seal, str)):
        raise ConfigError(
            file=str(path), key="id", problem="id and require_sealing_at_or_above must be strings"
        )
    retention = _retention(toml_table(raw, "retention", path), levels, path)
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
            hint = suggest(level, levels)
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
    table = toml_table(read_toml(path), "alliances", path)
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
