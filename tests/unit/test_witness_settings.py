"""``[[audit.witnesses]]`` and ``[audit] witness_quorum``: loaded, and every mistake refused at
start-up naming file, key and problem."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from broker.crypto import cosignature, notes
from broker.errors import ConfigError
from broker.settings import Settings
from tests.conftest import CONFIG


def _vkey(name: str) -> str:
    public = Ed25519PrivateKey.generate().public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return cosignature.cosigner_vkey(name, public)


def _load(tmp_path: Path, audit: str) -> Settings:
    folder = tmp_path / "config"
    shutil.copytree(CONFIG, folder)
    (folder / "broker.toml").write_text(audit)
    return Settings.load(env={"BROKER_CONFIG_DIR": str(folder)})


FRA, DEU = _vkey("witness.fra/w1"), _vkey("witness.deu/w1")
TWO = f"""
[audit]
witness_quorum = 2
witness_timeout_ms = 1500

[[audit.witnesses]]
name = "witness.fra/w1"
url = "https://witness.fra.example:7380/"
vkey = "{FRA}"

[[audit.witnesses]]
name = "witness.deu/w1"
url = "http://127.0.0.1:7381"
vkey = "{DEU}"
"""


def test_two_witnesses_and_a_quorum_load(tmp_path: Path) -> None:
    settings = _load(tmp_path, TWO)
    assert [w.name for w in settings.witnesses] == ["witness.fra/w1", "witness.deu/w1"]
    assert settings.witnesses[0].endpoint == "https://witness.fra.example:7380/add-checkpoint"
    assert settings.witness_quorum == 2 and settings.witness_timeout_seconds == 1.5


def test_the_default_is_no_witness_and_quorum_zero(tmp_path: Path) -> None:
    settings = _load(tmp_path, "")
    assert settings.witnesses == () and settings.witness_quorum == 0


LOG_KEY = notes.vkey("witness.fra/w1", bytes(Ed25519PrivateKey.generate().public_key().public_bytes_raw()))


@pytest.mark.parametrize(
    ("change", "key", "problem"),
    [
        (("witness_quorum = 2", "witness_quorum = 3"), "audit.witness_quorum", "[0, 2]"),
        (("witness_quorum = 2", "witness_quorum = -1"), "audit.witness_quorum", "[0, 2]"),
        (
            (
                f'name = "witness.deu/w1"\nurl = "http://127.0.0.1:7381"\nvkey = "{DEU}"',
                TWO.split("[[")[1].split("\n", 1)[1].strip(),
            ),
            "audit.witnesses[1].name",
            "named twice",
        ),
        (('"http://127.0.0.1:7381"', '"ftp://127.0.0.1:7381"'), "audit.witnesses[1].url", "http"),
        ((f'vkey = "{DEU}"', f'vkey = "{FRA}"'), "audit.witnesses[1].vkey", "not the witness"),
        ((f'vkey = "{FRA}"', f'vkey = "{LOG_KEY}"'), "audit.witnesses[0].vkey", "type 0x04"),
        ((f'vkey = "{FRA}"', 'vkey = "witness.fra/w1+00+AA=="'), "audit.witnesses[0].vkey", "cosigner"),
        (('url = "http://127.0.0.1:7381"', 'url = "http://127.0.0.1:7381"\nnmae = "x"'), "nmae", "unknown"),
        (('url = "http://127.0.0.1:7381"', 'url = "http://127.0.0.1:7381"\ncert = "c.pem"'), "cert", "key"),
    ],
)
def test_mistakes_are_refused_naming_the_key(
    tmp_path: Path, change: tuple[str, str], key: str, problem: str
) -> None:
    old, new = change
    assert old in TWO
    with pytest.raises(ConfigError) as refused:
        _load(tmp_path, TWO.replace(old, new, 1))
    assert key in refused.value.key and problem in refused.value.problem
    assert refused.value.file.endswith("broker.toml")
