"""The access log's request target: secrets in a query string never reach the log."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from broker.web.accesslog import REDACTED, safe_target


def test_plain_queries_are_kept() -> None:
    assert safe_target("/v1/reports", "") == "/v1/reports"
    assert safe_target("/v1/reports", "after=3&topics=a,b") == "/v1/reports?after=3&topics=a,b"


def test_secret_parameters_and_token_values_are_redacted() -> None:
    assert safe_target("/v1/stream", "token=abk_x&after=1") == f"/v1/stream?token={REDACTED}&after=1"
    assert safe_target("/x", "Access_Token=s3cret") == f"/x?Access_Token={REDACTED}"
    assert safe_target("/x", "name=abk_leaked") == f"/x?name={REDACTED}"


@given(st.text(alphabet=st.characters(codec="utf-8"), min_size=1, max_size=40))
def test_a_token_never_survives_in_any_parameter(secret: str) -> None:
    from urllib.parse import quote

    token = "abk_" + quote(secret, safe="")
    for name in ("token", "x", "key"):
        assert token not in safe_target("/p", f"{name}={token}&a=1")
