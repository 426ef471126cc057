"""The witnesses a broker asks to cosign its checkpoints: ``[[audit.witnesses]]`` and
``[audit] witness_quorum`` in broker.toml, parsed and checked once, at start-up.

Each table names one witness (C2SP tlog-witness): ``name`` (the cosigner's key name), ``url``
(its submission prefix; ``add-checkpoint`` is appended), ``vkey`` (its C2SP cosigner vkey,
signature type 0x04, whose name must be ``name``), and for mutual TLS ``ca`` (the PEM the
witness's certificate must chain to), ``cert`` and ``key`` (the broker's client certificate).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from broker.crypto import cosignature
from broker.errors import ConfigError

WITNESS_KEYS = frozenset(["ca", "cert", "key", "name", "url", "vkey"])


@dataclass(frozen=True)
class WitnessSettings:
    """One configured witness."""

    name: str
    url: str
    vkey: str
    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None

    @property
    def endpoint(self) -> str:
        return self.url.rstrip("/") + "/add-checkpoint"


def load_witnesses(audit: Mapping[str, Any], path: Path) -> tuple[tuple[WitnessSettings, ...], int]:
    """The witnesses and the quorum from the ``[audit]`` table; ConfigError naming the problem."""
    rows = audit.get("witnesses", [])
    if not isinstance(rows, list):
        raise ConfigError(file=str(path), key="audit.witnesses", problem="must be [[audit.witnesses]] tables")
    witnesses: list[WitnessSettings] = []
    for i, row in enumerate(rows):
        witness = _witness(row, path, f"audit.witnesses[{i}]")
        if any(w.name == witness.name for w in witnesses):
            raise ConfigError(
                file=str(path), key=f"audit.witnesses[{i}].name", problem=f"{witness.name!r} is named twice"
            )
        witnesses.append(witness)
    quorum = audit.get("witness_quorum", 0)
    if isinstance(quorum, bool) or not isinstance(quorum, int) or not 0 <= quorum <= len(witnesses):
        raise ConfigError(
            file=str(path),
            key="audit.witness_quorum",
            problem=f"must be an integer in [0, {len(witnesses)}] (the number of [[audit.witnesses]])",
        )
    return tuple(witnesses), quorum


def _witness(row: object, path: Path, where: str) -> WitnessSettings:
    if not isinstance(row, dict):
        raise ConfigError(file=str(path), key=where, problem="must be a table")
    for key in row:
        if key not in WITNESS_KEYS:
            raise ConfigError(
                file=str(path),
                key=f"{where}.{key}",
                problem=f"unknown key (known: {', '.join(sorted(WITNESS_KEYS))})",
            )
    text: dict[str, str] = {}
    for key in ("name", "url", "vkey"):
        value = row.get(key)
        if not isinstance(value, str) or not value:
            raise ConfigError(file=str(path), key=f"{where}.{key}", problem="must be a non-empty string")
        text[key] = value
    url = urlsplit(text["url"])
    if url.scheme not in ("http", "https") or not url.hostname or url.query or url.fragment:
        raise ConfigError(
            file=str(path),
            key=f"{where}.url",
            problem="must be an http:// or https:// URL (the submission prefix)",
        )
    try:
        vkey = cosignature.parse_vkey(text["vkey"], kind=cosignature.COSIGNATURE_TYPE)
    except cosignature.CosignatureError as exc:
        raise ConfigError(file=str(path), key=f"{where}.vkey", problem=f"not a cosigner vkey: {exc}") from exc
    if vkey.name != text["name"]:
        raise ConfigError(
            file=str(path),
            key=f"{where}.vkey",
            problem=f"names {vkey.name!r}, not the witness {text['name']!r}",
        )
    files = {key: _file(row, key, path, where) for key in ("ca", "cert", "key")}
    if (files["cert"] is None) != (files["key"] is None):
        raise ConfigError(file=str(path), key=f"{where}.cert", problem="cert and key go together")
    if files["cert"] is not None and url.scheme != "https":
        raise ConfigError(file=str(path), key=f"{where}.url", problem="a client certificate needs https://")
    return WitnessSettings(name=text["name"], url=text["url"], vkey=text["vkey"].strip(), **files)


def _file(row: Mapping[str, Any], key: str, path: Path, where: str) -> Path | None:
    value = row.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise ConfigError(file=str(path), key=f"{where}.{key}", problem="must be a file path")
    return Path(value)
