"""Federation attestations: round trips, the signed bytes checked independently, and each kind
of tampering named by its reason."""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import os
from collections.abc import Callable
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from broker.crypto import attest

USA, NATO, FRA = os.urandom(32), os.urandom(32), os.urandom(32)
ORIGINATOR = Ed25519PrivateKey.generate()
LABEL_JSON = '{"classification": "SECRET", "releasable_to": ["NATO"], "caveats": []}'


def _jcs(value: Any) -> bytes:
    """RFC 8785 for the plain values used here (no floats, ASCII keys), written independently."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _report() -> dict[str, Any]:
    label = json.loads(LABEL_JSON)
    payload = {"type": "bundle", "n": 1, "name": "Zoë"}
    digest = hashlib.sha256(_jcs(payload)).hexdigest().encode()
    signed = b"alliance-broker/v1/sign\n" + _jcs(label) + b"\n" + digest
    return {
        "id": "0b6f1a4e-8f47-4a52-9d7a-6f0e2f5d3c11",
        "sequence": 7,
        "originator": {"node": "usa-1", "nation": "USA"},
        "label": label,
        "topics": ["ied"],
        "created": "2026-12-06T09:00:00.000000Z",
        "signature": base64.b64encode(ORIGINATOR.sign(signed)).decode(),
        "payload": payload,
    }


def _originator_key() -> str:
    return base64.b64encode(ORIGINATOR.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)).decode()


def _a0(report: dict[str, Any], *, key: bytes = USA, name: str = "usa.example") -> dict[str, Any]:
    facts = attest.report_facts(
        report_id=report["id"],
        originator_node=report["originator"]["node"],
        originator_nation=report["originator"]["nation"],
        label_json=LABEL_JSON,
        topics=report["topics"],
        created=report["created"],
        payload=report["payload"],
        signature=report["signature"],
    )
    return attest.attest_origin(
        broker=name,
        sequence=7,
        event_hash="ab" * 32,
        facts=facts,
        originator_key=_originator_key(),
        private_key=key,
    )


def _vkey(key: bytes, name: str) -> str:
    return attest.vkey_of(name=name, private_key=key)


def _chain(report: dict[str, Any]) -> list[dict[str, Any]]:
    a0 = _a0(report)
    a1 = attest.attest_hop(
        broker="nato.example", sequence=3, event_hash="cd" * 32, previous=a0, private_key=NATO
    )
    return [a0, a1]


def test_origin_attestation_round_trip() -> None:
    report = _report()
    verified = attest.verify_chain(
        [_a0(report)], pinned_vkey=_vkey(USA, "usa.example"), report=report, label_json=LABEL_JSON
    )
    assert verified.hops == (attest.Hop(broker="usa.example", sequence=7, event_hash="ab" * 32),)
    assert verified.originator_key == _originator_key()
    assert verified.origin_signer == _vkey(USA, "usa.example")


def test_the_signed_bytes_checked_independently() -> None:
    """The design's bytes, recomputed here without broker code: prefix + JCS(body without sig),
    the signer's key read from its vkey, ``previous`` = SHA-256(JCS(A0)), label hash over the
    label_json's UTF-8, payload hash over JCS(payload)."""
    report = _report()
    a0, a1 = _chain(report)
    for item in (a0, a1):
        name, key_id, encoded = item["signer"].split("+", 2)
        raw = base64.b64decode(encoded)
        assert raw[0] == 1 and name == item["broker"]
        assert hashlib.sha256(name.encode() + b"\n" + raw).digest()[:4].hex() == key_id
        body = {k: v for k, v in item.items() if k != "sig"}
        Ed25519PublicKey.from_public_bytes(raw[1:]).verify(
            base64.b64decode(item["sig"]), b"alliance-broker/v1/attest\n" + _jcs(body)
        )
    assert a1["previous"] == hashlib.sha256(_jcs(a0)).hexdigest()
    assert a0["report"]["label_sha256"] == hashlib.sha256(LABEL_JSON.encode()).hexdigest()
    assert a0["report"]["payload_sha256"] == hashlib.sha256(_jcs(report["payload"])).hexdigest()


def test_a_hop_chain_rests_on_the_pinned_last_signer_only() -> None:
    report = _report()
    chain = _chain(report)
    verified = attest.verify_chain(
        chain, pinned_vkey=_vkey(NATO, "nato.example"), report=report, label_json=LABEL_JSON
    )
    assert [h.broker for h in verified.hops] == ["usa.example", "nato.example"]
    with pytest.raises(attest.AttestationInvalid):  # the origin's key is not the direct peer
        attest.verify_chain(
            chain, pinned_vkey=_vkey(USA, "usa.example"), report=report, label_json=LABEL_JSON
        )


def _tamper_sig(chain: list[dict[str, Any]]) -> None:
    raw = bytearray(base64.b64decode(chain[0]["sig"]))
    raw[0] ^= 1
    chain[0]["sig"] = base64.b64encode(bytes(raw)).decode()


def _forge_origin(chain: list[dict[str, Any]]) -> None:
    """The hub re-makes A0 under the origin's name with a key of its own, and links to it."""
    report = _report()
    chain[0] = _a0(report, key=os.urandom(32))
    chain[1] = attest.attest_hop(
        broker="nato.example", sequence=3, event_hash="cd" * 32, previous=chain[0], private_key=NATO
    )


def _swap_signer(chain: list[dict[str, Any]]) -> None:
    """A0 re-signed by the hub's key under the hub's vkey, the link left as it was."""
    body = {k: v for k, v in chain[0].items() if k != "sig"}
    body["signer"] = _vkey(NATO, "nato.example")
    chain[0] = {
        **body,
        "sig": base64.b64encode(Ed25519PrivateKey.from_private_bytes(NATO).sign(b"x")).decode(),
    }


Chain = list[dict[str, Any]]
INVALID: dict[str, Callable[[Chain], object]] = {
    "origin signature": _tamper_sig,
    "hub signature": lambda c: c[1].update(sig=c[0]["sig"]),
    "broken link": lambda c: c[1].update(previous="00" * 32),
    "A0 altered after the hub signed": lambda c: c[0].update(sequence=8),
    "extra member": lambda c: c[0].update(note="x"),
    "missing member": lambda c: c[1].pop("previous"),
    "reordered": lambda c: c.reverse(),
    "emptied": lambda c: c.clear(),
    "signer swapped": _swap_signer,
    "broker name not the key's": lambda c: c[0].update(broker="fra.example"),
    "bool sequence": lambda c: c.__setitem__(0, _resign_a0(c[0], sequence=True)),
    "originator signature invalid": lambda c: c.__setitem__(0, _resign_a0(c[0], originator_key=_other_key())),
}


def _other_key() -> str:
    other = Ed25519PrivateKey.generate().public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return base64.b64encode(other).decode()


def _resign_a0(a0: dict[str, Any], **changes: Any) -> dict[str, Any]:
    body = {k: v for k, v in a0.items() if k != "sig"} | changes
    sig = Ed25519PrivateKey.from_private_bytes(USA).sign(b"alliance-broker/v1/attest\n" + _jcs(body))
    return {**body, "sig": base64.b64encode(sig).decode()}


@pytest.mark.parametrize("kind", sorted(INVALID))
def test_tampered_chains_are_invalid(kind: str) -> None:
    report = _report()
    chain = _chain(report)
    if kind in {"bool sequence", "originator signature invalid"}:
        chain = chain[:1]
    INVALID[kind](chain)
    pinned = (
        _vkey(USA, "usa.example") if len(chain) == 1 and kind != "emptied" else _vkey(NATO, "nato.example")
    )
    with pytest.raises(attest.AttestationInvalid) as caught:
        attest.verify_chain(chain, pinned_vkey=pinned, report=report, label_json=LABEL_JSON)
    assert caught.value.reason == "attestation_invalid"


MISMATCH: dict[str, Callable[[dict[str, Any]], object]] = {
    "label widened": lambda r: r.update(label={**r["label"], "releasable_to": ["NATO", "SWE"]}),
    "payload changed": lambda r: r["payload"].update(n=2),
    "originator changed": lambda r: r.update(originator={"node": "usa-1", "nation": "GBR"}),
    "id changed": lambda r: r.update(id="1b6f1a4e-8f47-4a52-9d7a-6f0e2f5d3c11"),
    "topics changed": lambda r: r.update(topics=["ied", "x"]),
    "signature dropped": lambda r: r.update(signature=None),
    "payload missing": lambda r: r.pop("payload"),
}


@pytest.mark.parametrize("kind", sorted(MISMATCH))
def test_a_frame_that_differs_from_the_attested_is_a_mismatch(kind: str) -> None:
    report = _report()
    chain = _chain(report)
    MISMATCH[kind](report)
    with pytest.raises(attest.AttestationMismatch) as caught:
        attest.verify_chain(
            chain, pinned_vkey=_vkey(NATO, "nato.example"), report=report, label_json=LABEL_JSON
        )
    assert caught.value.reason == "attestation_mismatch"


def test_a_label_json_with_other_bytes_is_a_mismatch() -> None:
    report = _report()
    chain = _chain(report)
    respaced = json.dumps(json.loads(LABEL_JSON), separators=(",", ":"))  # same value, other bytes
    assert respaced != LABEL_JSON
    with pytest.raises(attest.AttestationMismatch):
        attest.verify_chain(
            chain, pinned_vkey=_vkey(NATO, "nato.example"), report=report, label_json=respaced
        )


def test_a_forged_origin_verifies_cryptographically_but_names_another_key() -> None:
    """A hub that re-makes A0 under the origin's name with its own key gets a chain that verifies
    (the hub vouches for it), but origin_signer is not the origin's real vkey: the receiver
    must compare it with what it knows (and the name/key binding makes the key id differ)."""
    report = _report()
    chain = _chain(report)
    _forge_origin(chain)
    verified = attest.verify_chain(
        chain, pinned_vkey=_vkey(NATO, "nato.example"), report=report, label_json=LABEL_JSON
    )
    assert verified.origin_signer != _vkey(USA, "usa.example")


def test_recall_chains() -> None:
    rid = _report()["id"]
    r0 = attest.recall_origin(broker="usa.example", report_id=rid, private_key=USA)
    r1 = attest.recall_hop(broker="nato.example", previous=r0, private_key=NATO)
    origin = _vkey(USA, "usa.example")
    assert attest.verify_recall(
        [r0, r1], pinned_vkey=_vkey(NATO, "nato.example"), report_id=rid, origin_signer=origin
    ) == (
        "usa.example",
        "nato.example",
    )
    body = {k: v for k, v in r0.items() if k != "sig"}
    Ed25519PublicKey.from_public_bytes(base64.b64decode(r0["signer"].split("+", 2)[2])[1:]).verify(
        base64.b64decode(r0["sig"]), b"alliance-broker/v1/recall\n" + _jcs(body)
    )
    with pytest.raises(attest.AttestationInvalid):  # another report
        attest.verify_recall(
            [r0, r1], pinned_vkey=_vkey(NATO, "nato.example"), report_id="x", origin_signer=origin
        )
    own = attest.recall_origin(broker="nato.example", report_id=rid, private_key=NATO)
    with pytest.raises(attest.AttestationInvalid):  # the hub recalling on its own
        attest.verify_recall(
            [own], pinned_vkey=_vkey(NATO, "nato.example"), report_id=rid, origin_signer=origin
        )
    with pytest.raises(attest.AttestationInvalid):  # an attestation is not a recall statement
        attest.verify_recall(
            [copy.deepcopy(_a0(_report()))], pinned_vkey=origin, report_id=rid, origin_signer=origin
        )
