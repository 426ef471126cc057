"""Nations come from ISO 3166-1 (pycountry); alliance ids, node ids and caveats are matched whole."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pycountry
import pytest

from broker.config_files import load_alliances
from broker.domain import nations
from broker.domain.labels import CAVEAT, DEFAULT_POLICY, parse_label
from broker.domain.nations import ALLIANCE_ID, NATIONS, is_nation
from broker.errors import ConfigError, InvalidInput
from broker.services.wire.requests import NODE_ID

CONFIG = Path(__file__).resolve().parents[2] / "config"


def test_ukraine_is_a_nation() -> None:
    assert is_nation("UKR")
    assert "UKR" in NATIONS


def test_nations_are_exactly_iso_3166_alpha_3() -> None:
    assert isinstance(NATIONS, frozenset)
    assert {c.alpha_3 for c in pycountry.countries} == NATIONS
    assert not is_nation("usa")
    assert not is_nation("NATO")
    assert not is_nation("USA\n")


def test_every_configured_member_is_a_nation() -> None:
    seeds = load_alliances(CONFIG / "alliances.toml")
    assert seeds
    for seed in seeds:
        assert not is_nation(seed.alliance.id)
        for member in seed.members:
            assert is_nation(member.nation), (seed.alliance.id, member.nation)


@pytest.mark.parametrize("value", ["NATO", "FVEY", "AU", "NORDEFCO", "EU_27", "A-1"])
def test_check_alliance_id_accepts(value: str) -> None:
    assert nations.check_alliance_id(value) == value


@pytest.mark.parametrize("value", ["UKR", "RUS", "USA", "GBR", "ESH"])
def test_check_alliance_id_refuses_nation_codes(value: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        nations.check_alliance_id(value)
    assert caught.value.code == "alliance_id_is_nation"
    assert caught.value.status == 422
    assert value in caught.value.message


@pytest.mark.parametrize("value", ["FVEY\n", "NATO\n", "nato", "N", "", " NATO", "NATO!", "A" * 33, 7, None])
def test_check_alliance_id_refuses_malformed(value: Any) -> None:
    with pytest.raises(InvalidInput) as caught:
        nations.check_alliance_id(value)
    assert caught.value.code == "invalid_alliance"


def test_patterns_refuse_a_trailing_newline() -> None:
    assert ALLIANCE_ID.fullmatch("FVEY") and not ALLIANCE_ID.fullmatch("FVEY\n")
    assert CAVEAT.fullmatch("CT-OPS") and not CAVEAT.fullmatch("CT-OPS\n")
    assert NODE_ID.fullmatch("usa-1") and not NODE_ID.fullmatch("usa-1\n")


def test_label_refuses_caveat_with_trailing_newline() -> None:
    raw = {"classification": "SECRET", "releasable_to": ["USA"], "caveats": ["CT-OPS\n"]}
    with pytest.raises(InvalidInput) as caught:
        parse_label(raw, policy=DEFAULT_POLICY, known_alliances=["NATO"])
    assert caught.value.code == "invalid_label"


def test_stored_label_refuses_alliance_with_trailing_newline() -> None:
    raw = {"classification": "SECRET", "releasable_to": ["FVEY\n"], "caveats": []}
    with pytest.raises(InvalidInput) as caught:
        parse_label(raw, policy=DEFAULT_POLICY, known_alliances=None)
    assert caught.value.code == "unknown_releasability"


def _alliances_toml(tmp_path: Path, key: str) -> Path:
    path = tmp_path / "alliances.toml"
    path.write_text(
        f'[alliances.{key}]\nname = "x"\nmembers = [{{ nation = "RUS", joined = 2020-01-01 }}]\n',
        encoding="utf-8",
    )
    return path


def test_config_refuses_alliance_named_like_a_nation(tmp_path: Path) -> None:
    path = _alliances_toml(tmp_path, "UKR")
    with pytest.raises(ConfigError) as caught:
        load_alliances(path)
    assert caught.value.file == str(path)
    assert caught.value.key == "alliances.UKR"
    assert "nation" in caught.value.problem


def test_config_refuses_alliance_id_with_trailing_newline(tmp_path: Path) -> None:
    path = _alliances_toml(tmp_path, '"FVEY\\n"')
    with pytest.raises(ConfigError) as caught:
        load_alliances(path)
    assert caught.value.key == "alliances.FVEY\n"
