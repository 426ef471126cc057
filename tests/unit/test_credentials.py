"""The credential rule: which changes to a node's record end a credential it authenticated with."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from broker.domain.records import Credential, NodeRecord, credential_lapsed

NOW = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)
NODE = NodeRecord(
    id="swe-1",
    nation="SWE",
    clearance="SECRET",
    caveats=(),
    roles=("subscribe",),
    token_hash="a" * 64,
    created_at=NOW - timedelta(days=1),
)
BY_TOKEN = Credential(token_hash="a" * 64)
BY_CERT = Credential(certificate="c" * 64)
BOTH = Credential(token_hash="a" * 64, certificate="c" * 64)


def test_the_table() -> None:
    cases = [
        (NODE, BY_TOKEN, None),
        (NODE, BY_CERT, None),
        (replace(NODE, revoked_at=NOW), BY_CERT, "node_revoked"),
        (replace(NODE, revoked_at=NOW), BY_TOKEN, "node_revoked"),
        (replace(NODE, token_hash="b" * 64), BY_TOKEN, "token_replaced"),
        (replace(NODE, token_hash="b" * 64), BY_CERT, None),  # a certificate holds without the token
        (replace(NODE, token_hash="b" * 64), BOTH, "token_replaced"),
        (replace(NODE, token_expires_at=NOW), BY_TOKEN, "token_expired"),
        (replace(NODE, token_expires_at=NOW + timedelta(seconds=1)), BY_TOKEN, None),
        (replace(NODE, token_expires_at=NOW), BY_CERT, None),
        (replace(NODE, tls_fingerprint="c" * 64), BY_CERT, None),
        (replace(NODE, tls_fingerprint="d" * 64), BY_CERT, "certificate_not_pinned"),
        (replace(NODE, tls_fingerprint="d" * 64), BOTH, "certificate_not_pinned"),
        (replace(NODE, tls_fingerprint="d" * 64), BY_TOKEN, None),  # a pin binds certificates only
        (NODE, None, None),
        (replace(NODE, token_expires_at=NOW), None, "token_expired"),
    ]
    for node, credential, expected in cases:
        assert credential_lapsed(node, credential, now=NOW) == expected, (node, credential)


@given(
    revoked=st.booleans(),
    rotated=st.booleans(),
    expired=st.booleans(),
    pinned=st.sampled_from([None, "c" * 64, "d" * 64]),
    credential=st.sampled_from([BY_TOKEN, BY_CERT, BOTH]),
)
def test_any_change_the_credential_depends_on_ends_it(
    revoked: bool, rotated: bool, expired: bool, pinned: str | None, credential: Credential
) -> None:
    node = replace(
        NODE,
        revoked_at=NOW if revoked else None,
        token_hash="b" * 64 if rotated else NODE.token_hash,
        token_expires_at=NOW - timedelta(seconds=1) if expired else None,
        tls_fingerprint=pinned,
    )
    uses_token = credential.token_hash is not None
    uses_cert = credential.certificate is not None
    ends = (
        revoked
        or (uses_token and (rotated or expired))
        or (uses_cert and pinned is not None and pinned != credential.certificate)
    )
    assert (credential_lapsed(node, credential, now=NOW) is not None) == ends
