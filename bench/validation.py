"""Publish-body validation: the declared models (``services.wire``) against the hand-written
checks they replaced, interleaved.

    .venv/bin/python -m bench.validation [--rounds 15] [--calls 2000]

Each round runs both sides over the same corpus, in alternating order (A B, then B A), and times
``--calls`` calls per body; the table gives each side's median over rounds of the time per call
and the ratio declared/hand, for the whole ``parse_submission`` (what a publish runs: validation,
canonical JSON, the request hash) and for validation alone. The corpus: typical publishes (a
STIX indicator, a 100-object bundle) and hostile bodies from tests/corpus that are refused (the
refusal is timed: a flood of bad bodies costs the same path). In one process; prints and appends
to bench/RESULTS.md. Not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import re
import statistics
import subprocess
import time
import uuid
from collections.abc import Callable, Collection, Mapping
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from broker.domain.canonical import canonical, sha256_hex
from broker.domain.labels import DEFAULT_POLICY, parse_label
from broker.errors import InvalidInput
from broker.services import publishing
from broker.services.wire.decode import decode
from broker.services.wire.requests import PublishRequest

ROOT = Path(__file__).resolve().parent.parent
ALLIANCES = frozenset({"NATO", "FVEY", "EU"})
CTX: Any = SimpleNamespace(policy=DEFAULT_POLICY)
CONTEXT = {"policy": DEFAULT_POLICY, "known_alliances": ALLIANCES}


# -- the hand-written checks as they were before the declarations (commit f92d618) ---------------
_TOPIC = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
_BODY_KEYS = frozenset({"id", "label", "topics", "payload", "signature"})


def _hand_uuid(value: object) -> str:
    if not isinstance(value, str):
        raise InvalidInput("id must be a UUID string", code="invalid_id")
    try:
        return str(uuid.UUID(value))
    except ValueError as exc:
        raise InvalidInput("id must be a UUID string", code="invalid_id") from exc


def _hand_topics(value: object) -> tuple[str, ...]:
    if not isinstance(value, list) or len(value) > 16:
        raise InvalidInput("topics must be a list of at most 16 tags", code="invalid_topics")
    for topic in value:
        if not isinstance(topic, str) or not _TOPIC.fullmatch(topic):
            raise InvalidInput(f"topic {topic!r} must match", code="invalid_topics")
    return tuple(dict.fromkeys(value))


def hand_check(body: object, known: Collection[str]) -> tuple[Any, ...]:
    """The old checks alone: what ``decode`` replaces."""
    if not isinstance(body, Mapping):
        raise InvalidInput("the body must be a JSON object", code="invalid_body")
    unknown = set(body) - _BODY_KEYS
    if unknown:
        raise InvalidInput(f"unknown fields: {sorted(unknown)}", code="invalid_body")
    report_id = body.get("id")
    if report_id is not None:
        report_id = _hand_uuid(report_id)
    label = parse_label(body.get("label"), policy=DEFAULT_POLICY, known_alliances=known)
    payload = body.get("payload")
    if not isinstance(payload, Mapping):
        raise InvalidInput("payload must be a JSON object", code="invalid_payload")
    signature = body.get("signature")
    if signature is not None and not isinstance(signature, str):
        raise InvalidInput("signature must be a base64 string", code="invalid_signature")
    return report_id, dict(body["label"]), label, payload, signature, _hand_topics(body.get("topics", []))


def hand_parse(body: object, known: Collection[str]) -> str:
    report_id, label_raw, _label, payload, signature, topics = hand_check(body, known)
    canonical_label, canonical_payload = canonical(label_raw), canonical(payload)
    del canonical_label
    return sha256_hex(
        canonical(
            {
                "id": report_id,
                "label": label_raw,
                "topics": list(topics),
                "payload": sha256_hex(canonical_payload),
                "signature": signature,
            }
        )
    )


def declared_check(body: object, known: Collection[str]) -> object:
    return decode(PublishRequest, body, context={"policy": DEFAULT_POLICY, "known_alliances": known})


def declared_parse(body: object, known: Collection[str]) -> object:
    return publishing.parse_submission(body, ctx=CTX, known_alliances=known)


# -- the corpus -------------------------------------------------------------------------------------
def _indicator(i: int) -> dict[str, Any]:
    return {
        "type": "indicator",
        "spec_version": "2.1",
        "id": f"indicator--{uuid.UUID(int=i)}",
        "created": "2026-11-25T10:00:00.000Z",
        "modified": "2026-11-25T10:00:00.000Z",
        "pattern": f"[ipv4-addr:value = '198.51.100.{i % 250}']",
        "pattern_type": "stix",
        "valid_from": "2026-11-25T10:00:00Z",
    }


def corpus() -> dict[str, object]:
    label = {"classification": "SECRET", "releasable_to": ["NATO", "SWE", "FIN"], "caveats": []}
    bodies: dict[str, object] = {
        "typical": {"label": label, "topics": ["ied", "c2"], "payload": _indicator(1)},
        "typical+id+signature": {
            "id": str(uuid.UUID(int=7)),
            "label": label,
            "topics": ["ied"],
            "payload": _indicator(2),
            "signature": "A" * 86 + "==",
        },
        "bundle-100": {
            "label": label,
            "topics": [f"t{i}" for i in range(16)],
            "payload": {"type": "bundle", "objects": [_indicator(i) for i in range(100)]},
        },
    }
    for path in sorted((ROOT / "tests" / "corpus").glob("422-*.json")):
        bodies[path.stem] = json.loads(path.read_bytes())
    return bodies


# -- the run ----------------------------------------------------------------------------------------
def _per_call(fn: Callable[[object, Collection[str]], object], body: object, calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        with contextlib.suppress(InvalidInput):
            fn(body, ALLIANCES)
    return (time.perf_counter() - start) / calls * 1e6


def run(rounds: int, calls: int) -> list[tuple[str, str, float, float]]:
    bodies = corpus()
    pairs = {"parse": (hand_parse, declared_parse), "check": (hand_check, declared_check)}
    times: dict[tuple[str, str, str], list[float]] = {}
    for r in range(rounds):
        for what, (hand, declared) in pairs.items():
            sides = [("hand", hand), ("declared", declared)]
            for side, fn in sides if r % 2 == 0 else sides[::-1]:
                for name, body in bodies.items():
                    if name.startswith("422") and what == "parse":
                        continue  # a refused body never gets past the check
                    times.setdefault((what, name, side), []).append(_per_call(fn, body, calls))
    rows = []
    for what, name, side in sorted(times):
        if side == "hand":
            hand_us = statistics.median(times[(what, name, "hand")])
            declared_us = statistics.median(times[(what, name, "declared")])
            rows.append((what, name, hand_us, declared_us))
    return rows


def _commit() -> str:
    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT)
    return out.stdout.strip() or "unknown"


def table(rows: list[tuple[str, str, float, float]], rounds: int, calls: int) -> str:
    load = " ".join(Path("/proc/loadavg").read_text().split()[:3]) if Path("/proc/loadavg").exists() else "?"
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        f"## bench.validation, {stamp}, {platform.machine()}, commit {_commit()}, load {load}",
        "",
        f"Median over {rounds} interleaved rounds of {calls} calls; µs per call.",
        "",
        "| path | body | hand µs | declared µs | declared/hand |",
        "|---|---|---:|---:|---:|",
    ]
    lines += [f"| {w} | {n} | {h:.2f} | {d:.2f} | {d / h:.2f} |" for w, n, h, d in rows]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--calls", type=int, default=2000)
    args = parser.parse_args()
    text = table(run(args.rounds, args.calls), args.rounds, args.calls)
    print(text)
    with (ROOT / "bench" / "RESULTS.md").open("a") as results:
        results.write("\n" + text)


if __name__ == "__main__":
    main()
