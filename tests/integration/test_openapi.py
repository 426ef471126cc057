"""The OpenAPI document is valid, served, and names exactly the routes the app has."""

from __future__ import annotations

from openapi_spec_validator import validate

from broker.app import create_app
from broker.settings import Settings
from broker.web.openapi import DOCUMENT
from tests.integration.conftest import Api


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
