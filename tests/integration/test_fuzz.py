"""Schemathesis against a real broker, on both engines: every HTTP operation of the served OpenAPI
document gets a bounded number of generated requests, valid and invalid, sent with the token of an
admin that holds every role or of a plain node. No answer may be a 5xx, and every answer must match
the document. Then the edge cases the fuzzer is unlikely to stumble on, checked one by one. The
TAXII operations are fuzzed in test_taxii_fuzz.py, against a collection that exists.

The broker runs on the test's event loop; the fuzzer (Hypothesis driving synchronous ``requests``)
runs in a worker thread, so the loop keeps serving while the fuzzer waits for each answer. Failures
are collected rather than raised at the first one, so one run lists every distinct 5xx with the
request that caused it."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis.core import NotSet
from schemathesis.core.failures import FailureGroup
from schemathesis.specs.openapi.checks import response_schema_conformance

from tests.integration.conftest import Api
from tests.integration.helpers import body

# Per operation and generation mode (valid, invalid): few enough that every operation is reached
# within BUDGET on a loaded machine.
EXAMPLES = 15
BUDGET = 40.0  # seconds of sending per engine; operations not reached by then are printed, not failed
TIMEOUT = 10.0
SKIPPED_PATHS = {"/v1/stream"}  # a websocket upgrade, not an HTTP answer
# Fuzzed by test_taxii_fuzz.py, as many cases, most naming the collection that exists; here each
# named a generated one, a 404 before any object was looked at.
TAXII = "/taxii2/"
# The operations of roles the plain node lacks (admin, audit): each handler refuses it (403) before
# it reads a parameter or a body, so its requests there take one path whatever was generated. A few
# show that refusal; the admin, whose requests are read, gets as many as it drew from the two.
ROLE_GATED = ("/v1/admin/", "/v1/audit/")
REFUSED_EXAMPLES = 2

# Values the generators mix into strings and integers (schemathesis "dictionaries"): the kinds of
# input that have answered 500 before, which random text and integers rarely hit.
EDGE_STRINGS = [
    "\x00",
    "a\x00b",
    "\x1f",
    "USA\n",
    " ",
    "9999-12-31T23:59:59-01:00",
    "0001-01-01T00:00:00+01:00",
    "2026-11-25",
    "2026-11-25T12:00:00Z",
    "urn:uuid:00000000-0000-4000-8000-000000000000",
    "{00000000-0000-4000-8000-000000000000}",
    "NATO",
    "USA",
    "SECRET",
]  # never the fuzzing nodes' ids: a generated revocation of one would turn the rest into 401s
EDGE_INTEGERS = [0, 1, 2, 3, 7, -1, 2**31, 2**62, 2**62 + 1, 2**63, 2**64]
CONFIG = {
    "dictionaries": {"edge-strings": {"values": EDGE_STRINGS}, "edge-integers": {"values": EDGE_INTEGERS}},
    "generation": {
        # The bearer token is ours to send; generating (and, for invalid cases, dropping) it would
        # spend half the examples on 401s.
        "with-security-parameters": False,
        "dictionaries": {
            "string": {"dictionary": "edge-strings", "probability": 0.2},
            "integer": {"dictionary": "edge-integers", "probability": 0.3},
        },
    },
}


@dataclass
class Findings:
    deadline: float
    sent: dict[str, int] = field(default_factory=dict)
    server_errors: dict[tuple[str, int], str] = field(default_factory=dict)
    mismatches: dict[tuple[str, int], str] = field(default_factory=dict)
    unreached: list[str] = field(default_factory=list)

    def expired(self) -> bool:
        return time.monotonic() > self.deadline


def _repro(case: schemathesis.Case, token: str, response: requests.Response | None) -> str:
    answer = "" if response is None else f" -> {response.status_code} {response.text[:160]!r}"
    parts = [f"[{token}] {case.method} {case.formatted_path}"]
    if case.path_parameters:
        parts.append(f"path={case.path_parameters!r}")
    if case.query:
        parts.append(f"query={case.query!r}")
    if case.headers:
        parts.append(f"headers={dict(case.headers)!r}")
    if not isinstance(case.body, NotSet):
        parts.append(f"body={case.body!r}")
    return " ".join(parts) + answer


def call_and_check(
    case: schemathesis.Case,
    token_name: str,
    token: str,
    base_url: str,
    session: requests.Session,
    label: str,
    findings: Findings,
) -> None:
    """Send ``case`` with ``token``; note a 5xx, a dropped connection or an answer that does not
    match the document in ``findings``."""
    headers = {"Authorization": f"Bearer {token}"}
    try:
        response = case.call(base_url=base_url, session=session, headers=headers, timeout=TIMEOUT)
    except requests.exceptions.InvalidHeader:  # `requests` refuses to send it (a NUL, a newline)
        return
    except requests.RequestException as exc:  # a dropped connection is as bad as a 5xx
        findings.server_errors.setdefault((label, 0), f"{_repro(case, token_name, None)}: {exc!r}")
        return
    findings.sent[label] = findings.sent.get(label, 0) + 1
    if response.status_code >= 500:
        findings.server_errors.setdefault((label, response.status_code), _repro(case, token_name, response))
        return
    try:
        case.validate_response(response, checks=[response_schema_conformance], headers=headers)
    except FailureGroup as exc:
        failure = exc.exceptions[0]
        detail = f"{getattr(failure, 'title', '')}: {getattr(failure, 'message', failure)}"
        findings.mismatches.setdefault(
            (label, response.status_code), f"{_repro(case, token_name, response)}: {detail[:400]}"
        )


def _fuzz_operation(
    operation: Any, base_url: str, tokens: dict[str, str], findings: Findings, session: requests.Session
) -> None:
    label = f"{operation.method.upper()} {operation.path}"
    cases = st.one_of(
        operation.as_strategy(generation_mode=schemathesis.GenerationMode.POSITIVE),
        operation.as_strategy(generation_mode=schemathesis.GenerationMode.NEGATIVE),
    )
    if operation.path.startswith(ROLE_GATED):
        runs = [(["admin"], EXAMPLES), (["plain"], REFUSED_EXAMPLES)]
    else:
        runs = [(sorted(tokens), 2 * EXAMPLES)]
    for names, count in runs:

        @settings(
            max_examples=count,
            deadline=None,
            database=None,  # no .hypothesis directory; every run explores afresh
            phases=[Phase.explicit, Phase.generate],  # failures are collected, so nothing to shrink
            suppress_health_check=list(HealthCheck),  # each example is a round trip to a server
        )
        @given(case=cases, token=st.sampled_from(names))
        def send(case: schemathesis.Case, token: str) -> None:
            if findings.expired():
                return
            call_and_check(case, token, tokens[token], base_url, session, label, findings)

        send()


def _fuzz(base_url: str, tokens: dict[str, str], budget: float) -> Findings:
    findings = Findings(deadline=time.monotonic() + budget)
    config = schemathesis.Config.from_dict(CONFIG)  # not discover(): no schemathesis.toml is read
    schema = schemathesis.openapi.from_url(f"{base_url}/v1/openapi.json", config=config, timeout=TIMEOUT)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert operations, "the served document names no operations"
    with requests.Session() as session:
        session.trust_env = False  # a loopback broker: no proxy settings to look up for each request
        for operation in operations:
            if operation.path in SKIPPED_PATHS or operation.path.startswith(TAXII):
                continue
            if findings.expired():
                findings.unreached.append(f"{operation.method.upper()} {operation.path}")
                continue
            _fuzz_operation(operation, base_url, tokens, findings, session)
    return findings


def _listing(title: str, found: dict[tuple[str, int], str]) -> str:
    return "\n".join(
        [f"{title}:"] + [f"  {op} {status}: {line}" for (op, status), line in sorted(found.items())]
    )


async def test_fuzzed_requests_never_answer_5xx_and_match_the_document(api: Api) -> None:
    tokens = {
        "admin": await api.node(
            "fuzz-admin", "BEL", clearance="TOP_SECRET", roles=("admin", "audit", "publish", "subscribe")
        ),
        "plain": await api.node("fuzz-plain", "NLD"),
    }
    for _ in range(3):  # something in the log and a report to read, recall and prove
        assert (await api.publish(tokens["admin"], body(to=["NATO"])))[0] == 201
    started = time.monotonic()
    findings = await asyncio.to_thread(_fuzz, api.base_url, tokens, BUDGET)
    print(
        f"sent {sum(findings.sent.values())} requests in {time.monotonic() - started:.1f}s: {findings.sent}"
    )
    if findings.unreached:
        print(f"budget spent before reaching: {findings.unreached}")
    assert sum(findings.sent.values()) > 100, findings.sent
    assert not findings.server_errors, _listing("5xx answers", findings.server_errors)
    assert not findings.mismatches, _listing("answers the document does not describe", findings.mismatches)


REPORT = "5f0c6c1e-5a8e-4d8b-9c1a-2b3c4d5e6f70"
AUDIT_QUERIES = [
    # Filter values the database must never see: NUL (PostgreSQL refuses it in text), control
    # characters, a trailing newline (which a `$` pattern lets through), wrong shapes and lengths.
    ("node=a%00b", 400),
    ("node=usa-1%0A", 400),
    ("node=-usa", 400),
    ("node=" + "n" * 65, 400),
    ("node=", 400),
    ("report=a%00", 400),
    (f"report={REPORT}%0A", 400),
    (f"report=%7B{REPORT}", 400),
    (f"report=urn:uuid:{REPORT}%00", 400),
    ("nation=US%00", 400),
    ("nation=usa", 400),
    ("nation=USA%0A", 400),
    ("action=%01", 400),
    ("action=Publish", 400),
    ("action=" + "a" * 41, 400),
    ("decision=allow%00", 400),
    # Times: unparseable, not a real moment, out of range, or overflowing when converted to UTC.
    ("since=yesterday", 422),
    ("since=2026-11-25%00", 422),
    ("since=2026-11-25T12:00:00Z%0A", 422),
    ("since=9999-12-31T23:59:59-01:00", 422),
    ("until=0001-01-01T00:00:00%2B01:00", 422),
    ("until=2026-02-30", 422),
    ("until=10000-01-01", 422),
    # Accepted forms.
    ("node=usa-1&nation=USA&action=publish&decision=allow", 200),
    (f"report={REPORT}", 200),
    (f"report=urn:uuid:{REPORT.upper()}", 200),
    (f"report=%7B{REPORT.replace('-', '')}%7D", 200),
    ("since=2026-11-25&until=9999-12-31T23:59:59Z", 200),
    ("since=0001-01-01T00:00:00-01:00", 200),
]
PROOF_QUERIES = [
    ("inclusion?seq=1&size=1000", 404),  # a tree larger than the log
    ("inclusion?seq=1&size=4611686018427387904", 404),  # 2**62: the largest size accepted at all
    ("inclusion?seq=1&size=4611686018427387905", 400),
    ("inclusion?seq=-1", 400),
    ("inclusion?seq=1&size=-1", 400),
    ("inclusion?seq=1&size=0", 404),
    ("inclusion?seq=99999999999999999999999", 400),
    ("consistency?first=1&second=4611686018427387904", 422),
    ("consistency?first=4611686018427387905&second=4611686018427387905", 400),
    ("consistency?first=-1&second=1", 400),
    ("consistency?first=0&second=1", 400),
    ("inclusion?seq=1&size=2", 200),
    ("consistency?first=1&second=2", 200),
]


async def test_audit_queries_at_the_edge_answer_4xx(api: Api) -> None:
    auditor = await api.node("aud", "BEL", roles=("audit",))
    answers = [
        (query, (await api.get(f"/v1/audit/events?{query}", auditor))[0]) for query, _ in AUDIT_QUERIES
    ] + [(query, (await api.get(f"/v1/audit/proofs/{query}", auditor))[0]) for query, _ in PROOF_QUERIES]
    assert answers == AUDIT_QUERIES + PROOF_QUERIES


async def test_every_form_of_a_report_id_finds_the_stored_report(api: Api) -> None:
    usa, auditor = await api.node("usa-1", "USA"), await api.node("aud", "BEL", roles=("audit",))
    _, receipt = await api.publish(usa, body())
    canonical = receipt["id"]
    for form in (
        canonical,
        canonical.upper(),
        f"urn:uuid:{canonical}",
        f"%7B{canonical.replace('-', '')}%7D",
    ):
        _, page = await api.get(f"/v1/audit/events?report={form}", auditor)
        assert [e["report"] for e in page["events"]] == [canonical], form
