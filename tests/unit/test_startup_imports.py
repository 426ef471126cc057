"""What a process loads before it serves: heavy libraries only where they are used.

A broker process that never receives a TAXII write must not load the OASIS STIX validator
(jsonschema's RFC 3987 grammar alone takes over a second of CPU per process), and the witness,
a small server of its own, must not load SQLAlchemy."""

from __future__ import annotations

import json
import subprocess
import sys


def loaded(*modules: str) -> set[str]:
    """The top-level packages loaded by importing ``modules`` in a fresh interpreter."""
    code = (
        "import importlib, json, sys\n"
        f"for name in {list(modules)!r}: importlib.import_module(name)\n"
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    return set(json.loads(done.stdout))


def test_the_broker_loads_the_stix_validator_only_for_a_taxii_write() -> None:
    packages = loaded("broker.app", "broker.cli.serve")  # what `broker serve` builds its app from
    assert "aiohttp" in packages  # the check sees what was loaded
    assert not {"stix2validator", "jsonschema", "rfc3987_syntax"} & packages


def test_the_witness_server_loads_no_sqlalchemy() -> None:
    packages = loaded("broker.witness.server", "broker.witness.cli")
    assert "aiohttp" in packages
    assert "sqlalchemy" not in packages
