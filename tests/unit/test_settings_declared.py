"""Each setting is declared once (broker/settings.OPTIONS): loading, unknown-key refusal, the
summary of `broker config check` and the table in docs/operations.md all come from it."""

from __future__ import annotations

from pathlib import Path

import pytest

from broker.errors import ConfigError
from broker.settings import KNOWN_KEYS, OPTIONS, Settings, reference_table

DOCS = Path(__file__).resolve().parents[2] / "docs" / "operations.md"


def test_the_documented_table_is_the_declared_one() -> None:
    text = DOCS.read_text()
    assert reference_table() in text, "docs/operations.md's table differs: paste settings.reference_table()"


def _load(tmp_path: Path, toml: str) -> Settings:
    (tmp_path / "broker.toml").write_text(toml)
    return Settings.load(env={"BROKER_CONFIG_DIR": str(tmp_path)})


def test_defaults_of_the_dataclass_are_the_declared_defaults(tmp_path: Path) -> None:
    loaded = _load(tmp_path, "")
    built = Settings(config_dir=tmp_path)
    assert loaded.effective() == built.effective()
    for option in OPTIONS:
        if option.field is not None and option.env is None:
            shown = built.effective()[option.key]
            assert shown == (list(option.default) if isinstance(option.default, tuple) else option.default)


@pytest.mark.parametrize(
    "option", [o for o in OPTIONS if o.kind in ("int", "float", "ms", "hours")], ids=lambda o: o.key
)
def test_every_number_is_bounded_as_declared(tmp_path: Path, option: object) -> None:
    from broker.settings import Option

    assert isinstance(option, Option)
    low = _load(tmp_path, f"[{option.table}]\n{option.name} = {option.low}\n")
    assert low.effective()[option.key] == option.low
    for bad in (option.low - 1, option.high + 1, '"5"', "true"):
        with pytest.raises(ConfigError) as refused:
            _load(tmp_path, f"[{option.table}]\n{option.name} = {bad}\n")
        assert option.key in str(refused.value)


def test_every_declared_key_is_known_and_nothing_else(tmp_path: Path) -> None:
    assert {f"{t}.{k}" for t, keys in KNOWN_KEYS.items() for k in keys} == {o.key for o in OPTIONS}
    with pytest.raises(ConfigError, match="did you mean max_body_bytes"):
        _load(tmp_path, "[server]\nmax_body_byte = 2048\n")


_WRONG = {"text": '""', "path": "3", "choice": '"neither"', "list": '["ok", ""]'}


@pytest.mark.parametrize(
    "option", [o for o in OPTIONS if o.field is not None and o.kind in _WRONG], ids=lambda o: o.key
)
def test_every_other_kind_refuses_what_it_cannot_hold(tmp_path: Path, option: object) -> None:
    from broker.settings import Option

    assert isinstance(option, Option)
    with pytest.raises(ConfigError) as refused:
        _load(tmp_path, f"[{option.table}]\n{option.name} = {_WRONG[option.kind]}\n")
    assert option.key in str(refused.value)
    good = {"text": '"x"', "path": '"x"', "choice": f'"{option.choices[-1] if option.choices else ""}"'}
    if option.kind in good:
        loaded = _load(tmp_path, f"[{option.table}]\n{option.name} = {good[option.kind]}\n")
        assert str(loaded.effective()[option.key]) == good[option.kind].strip('"')
