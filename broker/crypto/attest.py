"""Federation attestations: what a broker signs when a report or a recall crosses a link.

An attestation chain ``[A0, A1, ..., An]`` travels with a report. A0 is made by the ORIGIN
broker and states the report's facts (id, originator, label hash, topics, created, payload
hash, originator signature and key); each hub that forwards the report appends Ai, which
names its own sequence and import event and the hash of A(i-1). Every attestation carries the
signer's C2SP vkey (type 0x01, the broker's checkpoint key) and an Ed25519 signature over::

    "alliance-broker/v1/attest\\n" + canonical(attestation without "sig")

A recall statement chain ``[R0, ..., Rn]`` has the same shape with the prefix
``"alliance-broker/v1/recall\\n"``; R0 names the recalled id, each Ri the hash of R(i-1).

The receiver pins only its direct peer's vkey: the last attestation must be signed by it, and
each earlier one by the signer that the next one vouches for (its ``previous`` hash covers the
earlier attestation, signer vkey included). So the whole chain rests on one pinned key.

::

    AttestationError                (base; ``reason`` is the audit reason code)
    ├── AttestationInvalid          attestation_invalid: malformed, a signature fails, chain broken
    └── AttestationMismatch         attestation_mismatch: the frame's report differs from A0
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from broker.crypto import notes, signing
from broker.crypto.cosignature import CosignatureError, parse_vkey
from broker.domain.canonical import canonical
from broker.errors import InvalidInput

ATTEST_CONTEXT = b"alliance-broker/v1/attest\n"
RECALL_CONTEXT = b"alliance-broker/v1/recall\n"
MAX_CHAIN = 16
_ORIGIN_KEYS = frozenset({"broker", "sequence", "event_hash", "report", "originator_key", "signer", "sig"})
_HOP_KEYS = frozenset({"broker", "sequence", "event_hash", "previous", "signer", "sig"})
_REPORT_KEYS = frozenset(
    {"id", "originator", "label_sha256", "topics", "created", "payload_sha256", "signature"}
)
_RECALL_ORIGIN_KEYS = frozenset({"broker", "recall", "signer", "sig"})
_RECALL_HOP_KEYS = frozenset({"broker", "recall", "previous", "signer", "sig"})


class AttestationError(Exception):
    """An attestation chain does not hold; ``reason`` is the stable audit reason code."""

    reason = "attestation_invalid"


class AttestationInvalid(AttestationError):
    """Malformed, a signature fails, a link of the chain is broken, or the last signer is not
    the pinned peer key."""


class AttestationMismatch(AttestationError):
    """The chain verifies, but the report in the frame is not the one the origin attested."""

    reason = "attestation_mismatch"


@dataclass(frozen=True)
class Hop:
    """One broker on a report's path: its name, its sequence and its audit event's hash."""

    broker: str
    sequence: int
    event_hash: str


@dataclass(frozen=True)
class VerifiedChain:
    """What a verified chain establishes: the path (origin first) and the originator's key."""

    hops: tuple[Hop, ...]
    originator_key: str | None
    origin_signer: str  # the origin broker's vkey, so a later recall can be tied to it


def vkey_of(*, name: str, private_key: bytes) -> str:
    """The vkey (type 0x01) a broker named ``name`` signs attestations under."""
    return notes.vkey(name, notes.public_key(private_key))


def digest(attestation: Mapping[str, Any]) -> str:
    """Hex SHA-256 of canonical(attestation): the ``previous`` of the next hop."""
    return hashlib.sha256(canonical(dict(attestation))).hexdigest()


def _sign(body: dict[str, Any], *, context: bytes, private_key: bytes) -> dict[str, Any]:
    key = Ed25519PrivateKey.from_private_bytes(private_key)
    sig = key.sign(context + canonical(body))
    return {**body, "sig": base64.b64encode(sig).decode()}


def report_facts(
    *,
    report_id: str,
    originator_node: str,
    originator_nation: str,
    label_json: str,
    topics: Sequence[str],
    created: str,
    payload: Any,
    signature: str | None,
) -> dict[str, Any]:
    """The ``report`` member of A0: what the origin states about the report it sends."""
    return {
        "id": report_id,
        "originator": {"node": originator_node, "nation": originator_nation},
        "label_sha256": hashlib.sha256(label_json.encode()).hexdigest(),
        "topics": list(topics),
        "created": created,
        "payload_sha256": hashlib.sha256(canonical(payload)).hexdigest(),
        "signature": signature,
    }


def attest_origin(
    *,
    broker: str,
    sequence: int,
    event_hash: str,
    facts: Mapping[str, Any],
    originator_key: str | None,
    private_key: bytes,
) -> dict[str, Any]:
    """A0: the origin broker's signed statement of one of its own reports (``facts`` from
    ``report_facts``), made when it delivers the report to a link."""
    body = {
        "broker": broker,
        "sequence": sequence,
        "event_hash": event_hash,
        "report": dict(facts),
        "originator_key": originator_key,
        "signer": vkey_of(name=broker, private_key=private_key),
    }
    return _sign(body, context=ATTEST_CONTEXT, private_key=private_key)


def attest_hop(
    *, broker: str, sequence: int, event_hash: str, previous: Mapping[str, Any], private_key: bytes
) -> dict[str, Any]:
    """Ai (i >= 1): a hub's signed statement that it imported the report attested by
    ``previous`` (the chain's last attestation) under its own ``sequence`` and import event."""
    body = {
        "broker": broker,
        "sequence": sequence,
        "event_hash": event_hash,
        "previous": digest(previous),
        "signer": vkey_of(name=broker, private_key=private_key),
    }
    return _sign(body, context=ATTEST_CONTEXT, private_key=private_key)


def recall_origin(*, broker: str, report_id: str, private_key: bytes) -> dict[str, Any]:
    """R0: the origin broker's signed statement that it recalled ``report_id``."""
    body = {"broker": broker, "recall": report_id, "signer": vkey_of(name=broker, private_key=private_key)}
    return _sign(body, context=RECALL_CONTEXT, private_key=private_key)


def recall_hop(*, broker: str, previous: Mapping[str, Any], private_key: bytes) -> dict[str, Any]:
    """Ri (i >= 1): a hub forwarding the recall statement ``previous``."""
    body = {
        "broker": broker,
        "recall": previous.get("recall"),
        "previous": digest(previous),
        "signer": vkey_of(name=broker, private_key=private_key),
    }
    return _sign(body, context=RECALL_CONTEXT, private_key=private_key)


def _check_shape(item: object, keys: frozenset[str], *, index: int) -> dict[str, Any]:
    if not isinstance(item, dict) or set(item) != keys:
        raise AttestationInvalid(f"attestation {index} does not have the members {sorted(keys)}")
    if not isinstance(item["broker"], str) or not item["broker"]:
        raise AttestationInvalid(f"attestation {index}: broker is not a name")
    return item


def _check_signature(item: dict[str, Any], *, signer: str, context: bytes, index: int) -> None:
    """``item`` must name ``signer`` (a vkey whose name is its broker) and be signed by it."""
    if item["signer"] != signer:
        raise AttestationInvalid(f"attestation {index} is not signed by the key vouched for")
    try:
        key = parse_vkey(signer, kind=0x01)
    except (CosignatureError, AttributeError) as exc:
        raise AttestationInvalid(f"attestation {index}: signer is not a vkey: {exc}") from None
    if key.name != item["broker"]:
        raise AttestationInvalid(f"attestation {index}: broker {item['broker']!r} is not its key's name")
    body = {k: v for k, v in item.items() if k != "sig"}
    try:
        sig = base64.b64decode(item["sig"], validate=True)
        Ed25519PublicKey.from_public_bytes(key.public).verify(sig, context + canonical(body))
    except (TypeError, ValueError, binascii.Error, InvalidSignature, InvalidInput):
        raise AttestationInvalid(f"attestation {index} ({item['broker']}): signature fails") from None


def _walk(
    chain: object, *, pinned_vkey: str, context: bytes, keys: tuple[frozenset[str], frozenset[str]]
) -> list[dict[str, Any]]:
    """Verify the signatures and links of ``chain`` from the pinned last one down to the first."""
    if not isinstance(chain, list) or not 1 <= len(chain) <= MAX_CHAIN:
        raise AttestationInvalid(f"an attestation chain is a list of 1 to {MAX_CHAIN} attestations")
    items = [_check_shape(a, keys[0] if i == 0 else keys[1], index=i) for i, a in enumerate(chain)]
    signer = pinned_vkey
    for index in range(len(items) - 1, -1, -1):
        item = items[index]
        _check_signature(item, signer=signer, context=context, index=index)
        if index > 0:
            try:
                linked = item["previous"] == digest(items[index - 1])
            except InvalidInput:
                linked = False
            if not linked:
                raise AttestationInvalid(f"attestation {index} does not vouch for attestation {index - 1}")
            signer = items[index - 1]["signer"]
    return items


def _hop(item: dict[str, Any], index: int) -> Hop:
    sequence, event_hash = item["sequence"], item["event_hash"]
    if type(sequence) is not int or sequence < 1 or not isinstance(event_hash, str) or not event_hash:
        raise AttestationInvalid(f"attestation {index}: sequence or event_hash malformed")
    return Hop(broker=item["broker"], sequence=sequence, event_hash=event_hash)


def verify_chain(
    chain: object, *, pinned_vkey: str, report: Mapping[str, Any], label_json: str
) -> VerifiedChain:
    """Verify a report's attestation chain as the receiver of a frame does.

    ``report`` is the frame's report (as ``GET /v1/reports/{id}``, payload in clear) and
    ``label_json`` the label exactly as the origin stored it. The last attestation must be
    signed by ``pinned_vkey``; each earlier one by the signer the next one vouches for. Then
    A0's facts must match the frame (id, originator, label, topics, created, payload hash,
    signature) and, when A0 carries the originator's key, the originator signature must verify
    over the contract's signing bytes. AttestationInvalid / AttestationMismatch otherwise."""
    items = _walk(chain, pinned_vkey=pinned_vkey, context=ATTEST_CONTEXT, keys=(_ORIGIN_KEYS, _HOP_KEYS))
    hops = tuple(_hop(item, i) for i, item in enumerate(items))
    origin = items[0]
    facts = origin["report"]
    if not isinstance(facts, dict) or set(facts) != _REPORT_KEYS:
        raise AttestationInvalid(f"attestation 0: report does not have the members {sorted(_REPORT_KEYS)}")
    key = origin["originator_key"]
    if key is not None and not isinstance(key, str):
        raise AttestationInvalid("attestation 0: originator_key is neither base64 nor null")
    _match(facts, report=report, label_json=label_json)
    if key is not None and facts["signature"] is not None:
        _check_originator(key, signature=facts["signature"], label_json=label_json, report=report)
    return VerifiedChain(hops=hops, originator_key=key, origin_signer=origin["signer"])


def _match(facts: dict[str, Any], *, report: Mapping[str, Any], label_json: str) -> None:
    try:
        label = json.loads(label_json)
        expected = report_facts(
            report_id=report["id"],
            originator_node=report["originator"]["node"],
            originator_nation=report["originator"]["nation"],
            label_json=label_json,
            topics=report["topics"],
            created=report["created"],
            payload=report["payload"],
            signature=report.get("signature"),
        )
    except (KeyError, TypeError, ValueError, InvalidInput) as exc:
        raise AttestationMismatch(f"the frame's report is incomplete: {exc}") from None
    if label != report.get("label"):
        raise AttestationMismatch("the frame's label is not its label_json")
    differing = sorted(k for k in _REPORT_KEYS if facts[k] != expected[k])
    if differing:
        raise AttestationMismatch(f"the report differs from the attested in {', '.join(differing)}")


def _check_originator(key: str, *, signature: str, label_json: str, report: Mapping[str, Any]) -> None:
    try:
        message = signing.signing_message(
            canonical_label=canonical(json.loads(label_json)), canonical_payload=canonical(report["payload"])
        )
        valid = signing.verify(public_key_b64=key, signature_b64=signature, message=message)
    except (InvalidInput, ValueError, TypeError):
        valid = False
    if not valid:  # the hashes matched: it is the origin's statement that is wrong
        raise AttestationInvalid("the originator's signature does not verify against the attested key")


def verify_recall(chain: object, *, pinned_vkey: str, report_id: str, origin_signer: str) -> tuple[str, ...]:
    """Verify a recall statement chain for ``report_id``: signed down from ``pinned_vkey`` to
    R0, every statement naming ``report_id``, and R0 signed by ``origin_signer`` (the origin
    broker that attested the report: no one else may recall it). Returns the brokers, origin
    first. AttestationInvalid otherwise."""
    items = _walk(
        chain, pinned_vkey=pinned_vkey, context=RECALL_CONTEXT, keys=(_RECALL_ORIGIN_KEYS, _RECALL_HOP_KEYS)
    )
    if any(item["recall"] != report_id for item in items):
        raise AttestationInvalid("the recall statement names another report")
    if items[0]["signer"] != origin_signer:
        raise AttestationInvalid("the recall was not made by the broker that originated the report")
    return tuple(item["broker"] for item in items)
