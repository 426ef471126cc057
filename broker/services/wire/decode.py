"""Turning a parsed JSON body into a declared request model, with the broker's stable refusals.

The strict JSON reader (``web.middleware.read_json``) runs first: it refuses duplicate keys and
NaN/Infinity, which pydantic would accept. Models validate in strict mode (no "1" for 1, no
``true`` for an integer) and refuse unknown fields.

A refusal is an ``InvalidInput`` whose code and message are declared with the field that failed
(``Refusal`` in the field's ``Annotated`` metadata), or raised by a check that needs more than a
type (``refused``: a nation, a label against the policy), so clients keep the problem types and
messages they always had. When several fields fail, unknown fields are named first, then the
first failing field in declaration order.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError
from pydantic_core import ErrorDetails, PydanticCustomError

from broker.errors import BrokerError, InvalidInput

REFUSED = "broker_refused"  # the pydantic error type that carries a declared refusal


@dataclass(frozen=True)
class Refusal:
    """The refusal for a field that fails its declaration: ``message`` for the field as a whole,
    ``item`` (when given) for one entry of a list; ``{value!r}`` names the value refused and
    ``{unknown}`` (in a model's ``UNKNOWN``) the unknown fields, sorted."""

    code: str
    message: str
    item: str | None = None

    def error(self, value: object = None, *, item: bool = False) -> InvalidInput:
        text = self.item if item and self.item is not None else self.message
        return InvalidInput(
            text.replace("{value!r}", repr(value)).replace("{value}", str(value)), code=self.code
        )


class Wire(BaseModel):
    """A declared body. Requests set ``NOT_OBJECT`` and ``UNKNOWN``; responses are never
    validated at run time, and their ``extra="forbid"`` makes the generated schema close them
    (``additionalProperties: false``), so a field added to an answer and not here fails the
    tests that check every answer against the document."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)
    NOT_OBJECT: ClassVar[Refusal] = Refusal("invalid_body", "the body must be a JSON object")
    UNKNOWN: ClassVar[Refusal] = Refusal("invalid_body", "unknown fields: {value}")


W = TypeVar("W", bound=Wire)


def refused(exc: BrokerError) -> PydanticCustomError:
    """A check's own refusal (code and message), carried through pydantic unchanged."""
    return PydanticCustomError(REFUSED, "{message}", {"code": exc.code, "message": exc.message})


def refusing(check: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """``check`` as a field validator: its InvalidInput becomes the field's refusal."""

    def validate(value: Any) -> Any:
        try:
            return check(value)
        except InvalidInput as exc:
            raise refused(exc) from None

    return validate


def decode(model: type[W], body: object, *, context: Mapping[str, Any] | None = None) -> W:
    """``body`` (as the strict JSON reader returned it) as ``model``; InvalidInput (422) names
    the first problem, as declared."""
    if not isinstance(body, dict):
        raise model.NOT_OBJECT.error()
    try:
        return model.model_validate(body, context=context)
    except ValidationError as exc:
        raise _first_refusal(model, exc.errors(include_url=False)) from None


def _first_refusal(model: type[Wire], errors: list[ErrorDetails]) -> InvalidInput:
    unknown = sorted(str(e["loc"][0]) for e in errors if e["type"] == "extra_forbidden")
    if unknown:
        return model.UNKNOWN.error(unknown)
    order = list(model.model_fields)
    first = min(errors, key=lambda e: order.index(str(e["loc"][0])) if e["loc"] else -1)
    value = None if first["type"] == "missing" else first["input"]
    if first["type"] == REFUSED:
        context = first.get("ctx", {})
        return InvalidInput(context["message"], code=context["code"])
    name = str(first["loc"][0]) if first["loc"] else "the body"
    return refusal_of(model, name).error(value, item=len(first["loc"]) > 1)


def refusal_of(model: type[Wire], name: str) -> Refusal:
    """The refusal declared for field ``name`` (a unit test checks that every request field
    declares one; a field without falls back to the body's code, never to a 500)."""
    field = model.model_fields.get(name)
    for meta in () if field is None else field.metadata:
        if isinstance(meta, Refusal):
            return meta
    return Refusal(model.NOT_OBJECT.code, f"{name} is invalid")
