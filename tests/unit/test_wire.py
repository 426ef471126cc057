"""The declared bodies (services.wire): refusals declared for every request field, the label's
declared shape in agreement with domain.labels, and the stable codes at the edge."""

from __future__ import annotations

import pytest

from broker.domain.labels import CAVEAT, DEFAULT_POLICY, LABEL_KEYS, MAX_CAVEATS, MAX_RELEASABLE, TLP_VALUES
from broker.errors import InvalidInput
from broker.services.wire import requests as rq
from broker.services.wire.decode import Refusal, Wire, decode

REQUESTS: list[type[Wire]] = [
    rq.PublishRequest,
    rq.NodeSpec,
    rq.NodeUpdate,
    rq.TokenRequest,
    rq.MembershipRequest,
    rq.CollectionSpec,
    rq.Envelope,
]
CONTEXT = {"policy": DEFAULT_POLICY, "known_alliances": frozenset({"NATO"})}


@pytest.mark.parametrize("model", REQUESTS, ids=lambda m: m.__name__)
def test_every_request_field_declares_its_refusal(model: type[Wire]) -> None:
    for name, field in model.model_fields.items():
        if field.annotation is not object and name not in {"more", "next"}:  # TAXII's: anything goes
            assert any(isinstance(m, Refusal) for m in field.metadata), f"{model.__name__}.{name}"


def test_label_declaration_follows_domain_labels() -> None:
    schema = rq.Label.model_json_schema()
    assert set(schema["properties"]) == LABEL_KEYS
    assert schema["properties"]["releasable_to"]["maxItems"] == MAX_RELEASABLE
    assert schema["properties"]["caveats"]["maxItems"] == MAX_CAVEATS
    assert schema["properties"]["caveats"]["items"]["pattern"] == CAVEAT.pattern
    assert schema["properties"]["tlp"]["anyOf"][0]["enum"] == sorted(TLP_VALUES)


LABEL = {"classification": "SECRET"}


@pytest.mark.parametrize(
    ("body", "code", "message"),
    [
        ([], "invalid_body", "the body must be a JSON object"),
        ({"label": LABEL, "payload": {}, "x": 1, "a": 2}, "invalid_body", "unknown fields: ['a', 'x']"),
        ({"id": 5, "label": LABEL, "payload": {}}, "invalid_id", "id must be a UUID string"),
        ({"id": "nope", "label": "x", "payload": []}, "invalid_id", "id must be a UUID string"),
        ({"payload": {}}, "invalid_label", "label must be a JSON object"),
        ({"label": {**LABEL, "caveats": ["a"]}, "payload": {}}, "invalid_label", None),
        ({"label": {"classification": "X"}, "payload": {}}, "unknown_classification", None),
        ({"label": LABEL, "payload": []}, "invalid_payload", "payload must be a JSON object"),
        ({"label": LABEL, "payload": {}, "signature": 1}, "invalid_signature", None),
        ({"label": LABEL, "payload": {}, "topics": ["a b"]}, "invalid_topics", None),
        ({"label": LABEL, "payload": {}, "topics": ["a"] * 17}, "invalid_topics", None),
        ({"label": LABEL, "payload": {}, "topics": "a"}, "invalid_topics", None),
    ],
)
def test_publish_refusals_keep_their_codes(body: object, code: str, message: str | None) -> None:
    with pytest.raises(InvalidInput) as caught:
        decode(rq.PublishRequest, body, context=CONTEXT)
    assert caught.value.code == code
    assert message is None or caught.value.message == message


def test_strict_types_refuse_lookalikes() -> None:
    """No coercion: true is no integer, "7" no number of days."""
    for days in (True, "7", 7.0, 0, 3651):
        with pytest.raises(InvalidInput) as caught:
            decode(rq.TokenRequest, {"token_days": days})
        assert caught.value.code == "invalid_node"
    assert decode(rq.TokenRequest, {"token_days": 7}).token_days == 7


def test_node_refusals_name_the_nation() -> None:
    spec = {"id": "n1", "nation": "usa", "clearance": "SECRET", "roles": ["publish"]}
    with pytest.raises(InvalidInput) as caught:
        decode(rq.NodeSpec, spec, context=CONTEXT)
    assert caught.value.code == "unknown_nation" and "upper case, USA" in caught.value.message
    with pytest.raises(InvalidInput) as caught:
        decode(rq.NodeSpec, {**spec, "nation": "USA", "x": 1}, context=CONTEXT)
    assert caught.value.code == "invalid_node"
