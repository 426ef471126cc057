"""What the acts on reports share: the access decision for a node, its audit drafts, a report
opened and shaped for its reader, and the retry of an act whose security state moved."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from broker.crypto import envelope, seal
from broker.crypto import keyring as keyring_file
from broker.crypto.keyring import Keyring
from broker.domain.access import Decision, decide, receiving_role
from broker.domain.canonical import canonical
from broker.domain.records import AuditDraft, NodeRecord, ReportRecord
from broker.errors import NotFound, Stale
from broker.services import metrics
from broker.services.auth import NodeGone, RoleLost, refuse_gone
from broker.services.context import Context

# How often an act is decided again when the security state changed under it (services.audit
# raises Stale) before the client is told to retry (503).
STALE_RETRIES = 5
SEAL_SLICE = 8  # reports sealed between two yields to the event loop
T = TypeVar("T")


def label_details(report: ReportRecord) -> dict[str, Any]:
    """Metadata an auditor may see: the label's hash and classification, never content."""
    return {
        "label_hash": report.label_hash,
        "classification": report.label.get("classification"),
        "originator": report.originator_node,
    }


def deny_draft(node: NodeRecord, report_id: str | None, reason: str, action: str) -> AuditDraft:
    return AuditDraft(
        action=action,
        actor=node.id,
        report=report_id,
        node=node.id,
        nation=node.nation,
        decision="deny",
        reason=reason,
    )


def allow_draft(node: NodeRecord, report: ReportRecord, action: str) -> AuditDraft:
    return AuditDraft(
        action=action,
        actor=node.id,
        report=report.id,
        node=node.id,
        nation=node.nation,
        decision="allow",
        reason="allowed",
        details={"label_hash": report.label_hash, "sequence": report.seq},
    )


def decide_for(ctx: Context, node: NodeRecord, report: ReportRecord, directory: Any) -> Decision:
    """The access rule for ``node`` receiving ``report`` now, under the role it receives with
    (a federation link by its audience and origins, any other node by its nation)."""
    return decide(
        node=node.subject(),
        report=report.facts(),
        directory=directory,
        policy=ctx.policy,
        now=ctx.now(),
        role=receiving_role(node.roles),
    )


def open_payload(ctx: Context, report: ReportRecord, keyring: Keyring | None = None) -> bytes:
    """The report's canonical payload bytes, decrypted; NotFound when it was erased; ``Stale``
    (read it again) when its KEK was destroyed since it was read. ``keyring``: the one current
    when ``report`` was read (a re-wrap may retire its KEK from the process's keyring
    meanwhile); the process's own by default."""
    if report.ciphertext is None or report.wrapped_key is None or report.kek_id is None:
        raise NotFound("no such report", code="not_found")
    keyring = ctx.keyring if keyring is None else keyring
    if report.kek_id not in keyring.keks:
        # Wrapped by a KEK made after this keyring was loaded: an erasure in another process
        # re-wrapped its period's data keys (services/shred.py) between the counter read and the
        # row read. The file holds it.
        keyring = keyring_file.load(ctx.keyring_path)
    if report.kek_id not in keyring.keks:
        # Or the row is older than the keyring: an erasure of another report committed after
        # the row was read (a SQLite snapshot, a feed's held copy), re-wrapping this one's data
        # key under a replacement, and its KEK was destroyed. The row as it is now opens.
        raise Stale("the report's key-encryption key was replaced since it was read")
    return envelope.decrypt_payload(
        stored=envelope.StoredPayload(report.ciphertext, report.wrapped_key, report.kek_id),
        report_id=report.id,
        canonical_label=canonical(report.label),
        keyring=keyring,
    )


def report_fields(report: ReportRecord) -> dict[str, Any]:
    """A report's fields as the contract shows them, without its payload."""
    return {
        "id": report.id,
        "sequence": report.seq,
        "originator": {"node": report.originator_node, "nation": report.originator_nation},
        "label": report.label,
        "topics": list(report.topics),
        "created": report.created_at.isoformat(),
        "signature": report.signature,
    }


def document(
    ctx: Context,
    node: NodeRecord,
    report: ReportRecord,
    *,
    plaintext: bytes | None = None,
    canonical_label: bytes | None = None,
    keyring: Keyring | None = None,
) -> dict[str, Any]:
    """The report as the contract shows it to ``node``: payload decrypted (or ``plaintext``, when
    the caller already holds it), then sealed to the node's X25519 key when it has one (the access
    rule already refused nodes without a key where the policy requires sealing)."""
    if plaintext is None:
        plaintext = open_payload(ctx, report, keyring)
    doc = report_fields(report)
    if node.x25519_public_key:
        with metrics.SEAL_SECONDS.time():
            doc["sealed"] = seal.seal(
                plaintext=plaintext,
                recipient_public_key_b64=node.x25519_public_key,
                report_id=report.id,
                canonical_label=canonical(report.label) if canonical_label is None else canonical_label,
            )
    else:
        doc["payload"] = json.loads(plaintext)
    return doc


async def documents(
    ctx: Context, node: NodeRecord, reports: Sequence[ReportRecord], keyring: Keyring
) -> list[dict[str, Any]]:
    """``document`` for each report, outside any transaction, yielding to the event loop every
    ``SEAL_SLICE`` reports so a long page does not stall other requests while it is sealed.
    ``keyring``: the one current in the transaction that read ``reports``."""
    found: list[dict[str, Any]] = []
    for index, report in enumerate(reports):
        if index and index % SEAL_SLICE == 0:
            await asyncio.sleep(0)
        found.append(document(ctx, node, report, keyring=keyring))
    return found


async def decided(ctx: Context, act: str, attempt: Callable[[], Awaitable[T]]) -> T:
    """Run ``attempt`` (one transaction that decides and records its decision) again while the
    security state changes under it; a node revoked meanwhile is refused and audited."""
    for _ in range(STALE_RETRIES):
        try:
            return await attempt()
        except Stale:
            continue
        except (NodeGone, RoleLost) as exc:
            await refuse_gone(ctx, exc, act=act)
    raise Stale("the security state keeps changing: retry")
