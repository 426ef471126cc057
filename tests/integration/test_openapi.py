"""The OpenAPI document is valid, served, and names exactly the routes the app has."""

from __future__ import annotations

import json
from pathlib import Path

from jsonschema import Draft202012Validator
from openapi_spec_validator import validate

from broker.app import create_app
from broker.settings import Settings
from broker.web.openapi import DOCUMENT
from tests.integration.conftest import Api

CORPUS = Path(__file__).resolve().parent.parent / "corpus"


def test_document_is_valid_openapi_3_1() -> None:
    validate(DOCUMENT)


def test_document_names_exactly_the_routes(settings: Settings) -> None:
    app = create_app(settings)
    routes = {
        (route.method.lower(), route.resource.canonical)
        for route in app.router.routes()
        if route.resource is not None and route.method != "HEAD"
    }
    documented = {(method, path) for path, ops in DOCUMENT["paths"].items() for method in ops}
    assert routes == documented


async def test_document_is_served(api: Api) -> None:
    status, served = await api.get("/v1/openapi.json")
    assert status == 200
    assert served == DOCUMENT


def _schema(name: str) -> Draft202012Validator:
    schema = {"$ref": f"#/components/schemas/{name}", "components": DOCUMENT["components"]}
    return Draft202012Validator(schema)


def test_publish_schema_refuses_what_the_validator_refuses() -> None:
    """The document's PublishRequest holds the validator's topic rules (pattern, at most 16): it
    is generated from the declaration the validator decodes with."""
    publish = _schema("PublishRequest")
    ok = {"label": {"classification": "SECRET"}, "payload": {}, "topics": ["ied"]}
    assert publish.is_valid(ok)
    for path in ("422-too-many-topics.json", "422-topic-with-spaces.json", "422-caveat-lowercase.json"):
        assert not publish.is_valid(json.loads((CORPUS / path).read_bytes())), path


def test_node_schemas_name_the_roles_and_token_days_bounds() -> None:
    spec = {"id": "n1", "nation": "USA", "clearance": "SECRET", "roles": ["publish"]}
    assert _schema("NodeSpec").is_valid(spec)
    assert not _schema("NodeSpec").is_valid({**spec, "roles": ["root"]})
    assert not _schema("NodeSpec").is_valid({**spec, "token_days": 3651})
    assert not _schema("NodeUpdate").is_valid({})
