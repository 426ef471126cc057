"""The sending side of federation: what a link (a node with the ``federate`` role) receives.

A link's report frame is an ordinary report frame, payload in clear (never sealed: the
receiving broker stores it encrypted under its own keys and seals for its own nodes), plus::

    "federation": {"label_json": <the label exactly as stored>, "attestations": [A0, ...]}

A0 is this broker's signed statement of one of its own reports (crypto/attest.py), made at
delivery with the checkpoint key. A recall notice to a link carries this broker's signed recall
statement the same way. The receiving side extends both chains for reports it imported.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from broker.crypto import attest
from broker.crypto.keyring import Keyring
from broker.domain.records import NodeRecord, ReportRecord
from broker.services.context import Context
from broker.services.reports import open_payload
from broker.storage.repos import Tx


def own_name(ctx: Context) -> str:
    """This broker's federation name: its log origin."""
    return ctx.settings.audit_origin


def provenance_brokers(ctx: Context, report: ReportRecord) -> frozenset[str]:
    """The brokers a report has passed through (its origin at least): it is never sent to a
    link whose receiving broker is among them."""
    return frozenset({own_name(ctx)})


def report_document(report: ReportRecord, *, plaintext: bytes) -> dict[str, Any]:
    """The report as ``GET /v1/reports/{id}`` shows it, payload in clear."""
    return {
        "id": report.id,
        "sequence": report.seq,
        "originator": {"node": report.originator_node, "nation": report.originator_nation},
        "label": report.label,
        "topics": list(report.topics),
        "created": report.created_at.isoformat(),
        "signature": report.signature,
        "payload": json.loads(plaintext),
    }


async def _origin_attestation(
    ctx: Context, tx: Tx, report: ReportRecord, doc: dict[str, Any]
) -> dict[str, Any]:
    event_hash = await tx.publish_event_hash(report.id)
    originator = await tx.node(report.originator_node)
    facts = attest.report_facts(
        report_id=report.id,
        originator_node=report.originator_node,
        originator_nation=report.originator_nation,
        label_json=report.label_json,
        topics=report.topics,
        created=doc["created"],
        payload=doc["payload"],
        signature=report.signature,
    )
    return attest.attest_origin(
        broker=own_name(ctx),
        sequence=report.seq,
        event_hash=event_hash or "",
        facts=facts,
        originator_key=None if originator is None else originator.ed25519_public_key,
        private_key=ctx.keyring.checkpoint_key,
    )


async def report_frames(ctx: Context, reports: Sequence[ReportRecord], keyring: Keyring) -> list[str]:
    """The frames of ``reports`` for a link, each with its label_json and attestation chain."""
    frames: list[str] = []
    async with ctx.db.read_transaction() as tx:
        for report in reports:
            doc = report_document(report, plaintext=open_payload(ctx, report, keyring))
            chain = [await _origin_attestation(ctx, tx, report, doc)]
            federation = {"label_json": report.label_json, "attestations": chain}
            frames.append(json.dumps({"type": "report", "report": doc, "federation": federation}))
    return frames


def recall_notice(ctx: Context, node: NodeRecord, report: ReportRecord) -> str:
    """``{"type": "recall", "id", "sequence"}``; for a link with this broker's signed recall
    statement as ``federation.attestations``."""
    notice: dict[str, Any] = {"type": "recall", "id": report.id, "sequence": report.seq}
    if attest_links(node):
        statement = attest.recall_origin(
            broker=own_name(ctx), report_id=report.id, private_key=ctx.keyring.checkpoint_key
        )
        notice["federation"] = {"attestations": [statement]}
    return json.dumps(notice)


def attest_links(node: NodeRecord) -> bool:
    """Whether ``node`` is a federation link (its frames carry attestations)."""
    return "federate" in node.roles
