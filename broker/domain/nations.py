"""ISO 3166-1 alpha-3 country codes: the nations a label or a node may name.

The codes come from ``pycountry`` (the ISO 3166-1 database, maintained upstream), read once at
import. Alliance ids share the namespace of label entries with nations, so an alliance may never
take a nation's code: ``releasable_to: ["UKR"]`` must mean Ukraine and nothing else.
"""

from __future__ import annotations

import re

import pycountry

from broker.errors import InvalidInput

NATIONS: frozenset[str] = frozenset(country.alpha_3 for country in pycountry.countries)

# Upper-case letters, digits, '-' and '_', 2 to 32 characters. Always match it with
# ``fullmatch``: with ``match`` the ``$`` would also accept a trailing newline.
ALLIANCE_ID = re.compile(r"^[A-Z][A-Z0-9_-]{1,31}$")


def is_nation(code: str) -> bool:
    """True when ``code`` is an assigned ISO 3166-1 alpha-3 code."""
    return code in NATIONS


def check_alliance_id(value: object) -> str:
    """Return ``value`` when it may name a new alliance; raise InvalidInput (422) otherwise.

    Codes: ``invalid_alliance`` when it does not look like ``NATO``, ``alliance_id_is_nation``
    when it is an ISO 3166-1 alpha-3 code (it would be read as that nation in every label).
    """
    if not isinstance(value, str) or ALLIANCE_ID.fullmatch(value) is None:
        raise InvalidInput(
            f"alliance id {value!r} must be 2-32 of A-Z, 0-9, '-' and '_', starting with a letter",
            code="invalid_alliance",
        )
    if is_nation(value):
        raise InvalidInput(
            f"alliance id {value!r} is an ISO 3166-1 alpha-3 nation code; choose another id",
            code="alliance_id_is_nation",
        )
    return value
