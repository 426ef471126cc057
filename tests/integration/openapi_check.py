"""Checks every response the integration tests receive against /v1/openapi.json."""

from __future__ import annotations

import re
from typing import Any

from jsonschema import Draft202012Validator

from broker.web.openapi import DOCUMENT

_PATHS = [
    (re.compile("^" + re.sub(r"\{[^}]+\}", "[^/]+", template) + "$"), template)
    for template in DOCUMENT["paths"]
]


def check_response(method: str, path: str, status: int, content_type: str, body: Any) -> None:
    """Raise AssertionError unless the documented response for this call matches."""
    bare = path.split("?", 1)[0]
    if not bare.startswith("/v1/"):
        return
    templates = [t for regex, t in _PATHS if regex.match(bare)]
    if status in (404, 405) and not templates:
        return  # unrouted paths answer with a problem document and are not part of the API
    assert templates, f"{bare} is not in the OpenAPI document"
    operation = DOCUMENT["paths"][templates[-1]].get(method.lower())
    assert operation is not None, f"{method} {templates[-1]} is not in the OpenAPI document"
    response = operation["responses"].get(str(status))
    assert response is not None, f"{method} {templates[-1]} does not document status {status}"
    media = response["content"].get(content_type)
    assert media is not None, f"{method} {templates[-1]} {status} does not document {content_type}"
    schema = {**media["schema"], "components": DOCUMENT["components"]}
    Draft202012Validator(schema).validate(body)
