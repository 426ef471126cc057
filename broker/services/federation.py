"""The sending side of federation: what a link (a node with the ``federate`` role) receives.

A link's report frame is an ordinary report frame, payload in clear (never sealed: the
receiving broker stores it encrypted under its own keys and seals for its own nodes), plus::

    "federation": {"label_json": <the label exactly as stored>, "attestations": [A0, ...]}

A0 is this broker's signed statement of one of its own reports (crypto/attest.py), made at
delivery with the checkpoint key; a report this broker imported (services/importer.py) goes on
with the chain it came with plus this broker's hop. A recall notice to a link carries the signed
recall statement the same way.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from broker.crypto import attest
from broker.crypto.keyring import Keyring
from broker.domain.federation import Imported
from broker.domain.records import NodeRecord, ReportRecord
from broker.services.context import Context
from broker.services.decisions import open_payload, report_fields
from broker.storage.federation import provenance_of
from broker.storage.repos import Tx


def own_name(ctx: Context) -> str:
    """This broker's federation name: its log origin."""
    return ctx.settings.audit_origin


def provenance_brokers(ctx: Context, imported: Imported | None) -> frozenset[str]:
    """The brokers a report has passed through (this one at least; for an imported report
    every hop of its provenance): it is never sent to a link whose receiving broker is among
    them."""
    return frozenset({own_name(ctx)}) | (frozenset() if imported is None else imported.brokers)


def forward_chain(ctx: Context, imported: Imported) -> list[dict[str, Any]]:
    """The attestation chain an imported report travels on with from this broker (a hub): the
    chain it arrived with, plus this broker's hop naming its own sequence and import event."""
    own = imported.provenance[-1]
    hop = attest.attest_hop(
        broker=own_name(ctx),
        sequence=int(own["sequence"]),
        event_hash=str(own["event_hash"]),
        previous=imported.attestations[-1],
        private_key=ctx.keyring.checkpoint_key,
    )
    return [*imported.attestations, hop]


def report_document(report: ReportRecord, *, plaintext: bytes) -> dict[str, Any]:
    """The report as ``GET /v1/reports/{id}`` shows it, payload in clear."""
    return {**report_fields(report), "payload": json.loads(plaintext)}


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
        imported = await provenance_of(tx, [r.seq for r in reports])
        for report in reports:
            doc = report_document(report, plaintext=open_payload(ctx, report, keyring))
            came = imported.get(report.seq)
            chain = forward_chain(ctx, came) if came else [await _origin_attestation(ctx, tx, report, doc)]
            federation = {"label_json": report.label_json, "attestations": chain}
            frames.append(json.dumps({"type": "report", "report": doc, "federation": federation}))
    return frames


def recall_notice(
    ctx: Context, node: NodeRecord, report: ReportRecord, imported: Imported | None = None
) -> str | None:
    """``{"type": "recall", "id", "sequence"}``; for a link with the signed recall statement as
    ``federation.attestations``: this broker's own for its own report, or for an imported one
    the chain it was recalled by, extended with this broker's hop.

    None for a link when there is no recall to sign: erasure is local (downstream brokers keep
    their copies unless the origin recalls), and an imported report without its origin's recall
    statement was not recalled by its origin (this broker never signs one in the origin's place)."""
    notice: dict[str, Any] = {"type": "recall", "id": report.id, "sequence": report.seq}
    if attest_links(node):
        if report.recalled_at is None or (imported is not None and not imported.recall):
            return None
        key = ctx.keyring.checkpoint_key
        if imported is not None and imported.recall:
            hop = attest.recall_hop(broker=own_name(ctx), previous=imported.recall[-1], private_key=key)
            chain = [*imported.recall, hop]
        else:
            chain = [attest.recall_origin(broker=own_name(ctx), report_id=report.id, private_key=key)]
        notice["federation"] = {"attestations": chain}
    return json.dumps(notice)


def attest_links(node: NodeRecord) -> bool:
    """Whether ``node`` is a federation link (its frames carry attestations)."""
    return "federate" in node.roles
