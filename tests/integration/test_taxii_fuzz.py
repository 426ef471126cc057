"""Schemathesis against the TAXII operations of the served OpenAPI document, on both engines.

The general fuzz run (test_fuzz.py) walks every operation in document order under one time
budget, and the TAXII paths come last, so it often spends its budget before reaching them. Here
only the TAXII operations are fuzzed, with their own budget, by the same machinery: no 5xx, and
every answer as the document describes it."""

from __future__ import annotations

import asyncio
import time

import requests
import schemathesis

from tests.integration.conftest import Api
from tests.integration.test_fuzz import CONFIG, TIMEOUT, Findings, _fuzz_operation, _listing
from tests.integration.test_taxii import collection_id, indicator, publish

BUDGET = 30.0  # seconds of sending per engine


def _fuzz_taxii(base_url: str, tokens: dict[str, str]) -> Findings:
    findings = Findings(deadline=time.monotonic() + BUDGET)
    config = schemathesis.Config.from_dict(CONFIG)
    schema = schemathesis.openapi.from_url(f"{base_url}/v1/openapi.json", config=config, timeout=TIMEOUT)
    operations = [r.ok() for r in schema.get_all_operations()]
    taxii = [op for op in operations if op.path.startswith("/taxii2/")]
    assert len(taxii) == 11, [f"{op.method} {op.path}" for op in taxii]
    with requests.Session() as session:
        for operation in taxii:
            if findings.expired():
                findings.unreached.append(f"{operation.method.upper()} {operation.path}")
                continue
            _fuzz_operation(operation, base_url, tokens, findings, session)
    return findings


async def test_fuzzed_taxii_requests_never_answer_5xx_and_match_the_document(api: Api) -> None:
    tokens = {
        "admin": await api.node(
            "fuzz-admin", "BEL", clearance="TOP_SECRET", roles=("admin", "audit", "publish", "subscribe")
        ),
        "plain": await api.node("fuzz-plain", "NLD"),
    }
    await collection_id(api)
    for n in range(3):
        await publish(api, tokens["admin"], indicator(n))
    started = time.monotonic()
    findings = await asyncio.to_thread(_fuzz_taxii, api.base_url, tokens)
    print(f"sent {sum(findings.sent.values())} in {time.monotonic() - started:.1f}s: {findings.sent}")
    if findings.unreached:
        print(f"budget spent before reaching: {findings.unreached}")
    assert len(findings.sent) >= 6, findings.sent  # most operations reached within the budget
    assert not findings.server_errors, _listing("5xx answers", findings.server_errors)
    assert not findings.mismatches, _listing("answers the document does not describe", findings.mismatches)
