"""Retention: the periods in policy.toml, the pure expiry rule on Policy, and the pure walk that
decides which stored reports a pass erases."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from broker.config_files import load_policy
from broker.domain.labels import DEFAULT_POLICY, Policy
from broker.errors import ConfigError
from broker.services import metrics
from broker.services.retention import ACTOR, REASON, Step, plan
from broker.settings import Settings
from broker.storage.retention import StoredAge
from tests.conftest import CONFIG

LEVELS = DEFAULT_POLICY.levels
T0 = datetime(2026, 1, 1, tzinfo=UTC)
DAY = timedelta(days=1)
POLICY = Policy(
    id="ALLIANCE-BROKER", levels=LEVELS, retention=(("RESTRICTED", 30 * DAY), ("SECRET", 365 * DAY))
)


# -- Policy: the rule ------------------------------------------------------------------------
def test_levels_without_a_period_are_kept_forever() -> None:
    assert POLICY.retention_of("SECRET") == 365 * DAY
    for level in ("UNCLASSIFIED", "CONFIDENTIAL", "TOP_SECRET", "NO_SUCH_LEVEL"):
        assert POLICY.retention_of(level) is None
        assert POLICY.expires_at(level, T0) is None
        assert not POLICY.is_expired(level, T0, datetime.max.replace(tzinfo=UTC))
    assert DEFAULT_POLICY.retention == ()


def test_a_report_expires_exactly_at_created_plus_its_period() -> None:
    assert POLICY.expires_at("RESTRICTED", T0) == T0 + 30 * DAY
    assert not POLICY.is_expired("RESTRICTED", T0, T0 + 30 * DAY - timedelta(microseconds=1))
    assert POLICY.is_expired("RESTRICTED", T0, T0 + 30 * DAY)
    assert not POLICY.is_expired("SECRET", T0, T0 + 30 * DAY)
    assert POLICY.is_expired("SECRET", T0, T0 + 365 * DAY)


def test_an_expiry_past_the_end_of_the_calendar_is_never() -> None:
    late = datetime.max.replace(tzinfo=UTC) - DAY
    assert POLICY.expires_at("SECRET", late) is None
    assert not POLICY.is_expired("SECRET", late, datetime.max.replace(tzinfo=UTC))


@pytest.mark.parametrize(
    ("retention", "problem"),
    [
        ((("SECRETS", DAY),), "not a level"),
        ((("SECRET", DAY), ("SECRET", 2 * DAY)), "twice"),
        ((("SECRET", timedelta(0)),), "positive"),
        ((("SECRET", -DAY),), "positive"),
    ],
)
def test_policy_refuses_bad_retention(retention: tuple[tuple[str, timedelta], ...], problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        Policy(id="p", levels=LEVELS, retention=retention)


# Hypothesis takes naive bounds and attaches the zone itself.
EARLIEST, LATEST = T0.replace(year=1970, tzinfo=None), T0.replace(year=9000, tzinfo=None)
moments = st.datetimes(min_value=EARLIEST, max_value=LATEST, timezones=st.just(UTC))
periods = st.timedeltas(min_value=timedelta(microseconds=1), max_value=timedelta(days=36_500))


@given(level=st.sampled_from(LEVELS), period=periods, created=moments, now=moments)
def test_is_expired_means_the_period_has_passed(
    level: str, period: timedelta, created: datetime, now: datetime
) -> None:
    policy = Policy(id="p", levels=LEVELS, retention=((level, period),))
    assert policy.is_expired(level, created, now) == (now - created >= period)
    for other in LEVELS:
        if other != level:
            assert not policy.is_expired(other, created, now)


@given(period=periods, created=moments, now=moments, later=st.timedeltas(min_value=timedelta(0)))
def test_once_expired_always_expired(
    period: timedelta, created: datetime, now: datetime, later: timedelta
) -> None:
    policy = Policy(id="p", levels=LEVELS, retention=(("SECRET", period),))
    try:
        then = now + later
    except OverflowError:
        return
    if policy.is_expired("SECRET", created, now):
        assert policy.is_expired("SECRET", created, then)


# -- policy.toml -----------------------------------------------------------------------------
def _policy_file(tmp_path: Path, retention: str) -> Path:
    path = tmp_path / "policy.toml"
    path.write_text(f'levels = ["UNCLASSIFIED", "RESTRICTED", "SECRET"]\n{retention}')
    return path


def test_retention_is_read_in_whole_days(tmp_path: Path) -> None:
    policy = load_policy(_policy_file(tmp_path, "[retention]\nRESTRICTED = 30\nSECRET = 365\n"))
    assert policy.retention == (("RESTRICTED", 30 * DAY), ("SECRET", 365 * DAY))
    assert load_policy(_policy_file(tmp_path, "")).retention == ()
    assert load_policy(_policy_file(tmp_path, "[retention]\n")).retention == ()


def test_the_shipped_policy_keeps_everything() -> None:
    assert load_policy(CONFIG / "policy.toml").retention == ()


@pytest.mark.parametrize(
    ("retention", "key", "problem"),
    [
        (
            "[retention]\nSECRETS = 30\n",
            "retention.SECRETS",
            "not a level of this policy (did you mean SECRET?)",
        ),
        ("[retention]\nTOP_SECRET = 30\n", "retention.TOP_SECRET", "not a level"),
        ("[retention]\nSECRET = 0\n", "retention.SECRET", "whole number of days in [1, 36500]"),
        ("[retention]\nSECRET = -5\n", "retention.SECRET", "whole number of days"),
        ("[retention]\nSECRET = 1.5\n", "retention.SECRET", "whole number of days"),
        ("[retention]\nSECRET = 'P30D'\n", "retention.SECRET", "whole number of days"),
        ("[retention]\nSECRET = true\n", "retention.SECRET", "whole number of days"),
        ("[retention]\nSECRET = 36501\n", "retention.SECRET", "whole number of days"),
        ("retention = 30\n", "retention", "must be a table"),
        ("[retenion]\nSECRET = 30\n", "retenion", "unknown key (did you mean retention?)"),
    ],
)
def test_bad_retention_names_file_key_and_problem(
    tmp_path: Path, retention: str, key: str, problem: str
) -> None:
    path = _policy_file(tmp_path, retention)
    with pytest.raises(ConfigError) as info:
        load_policy(path)
    assert (info.value.file, info.value.key) == (str(path), key)
    assert problem in info.value.problem


def test_settings_carry_retention_and_its_interval(tmp_path: Path) -> None:
    folder = tmp_path / "config"
    shutil.copytree(CONFIG, folder)
    (folder / "policy.toml").write_text('levels = ["LOW", "HIGH"]\n[retention]\nLOW = 7\n')
    (folder / "broker.toml").write_text("[server]\nretention_interval_seconds = 5\n")
    settings = Settings.load(env={"BROKER_CONFIG_DIR": str(folder)})
    assert settings.policy.retention == (("LOW", 7 * DAY),)
    assert (settings.retention_interval_seconds, settings.retention_batch_size) == (5.0, 500)
    (folder / "broker.toml").write_text("[server]\nretention_interval_seconds = 0\n")
    with pytest.raises(ConfigError) as info:
        Settings.load(env={"BROKER_CONFIG_DIR": str(folder)})
    assert info.value.key == "server.retention_interval_seconds"


# -- the walk --------------------------------------------------------------------------------
def row(seq: int, classification: str | None, age_days: float, *, erased: bool = False) -> StoredAge:
    return StoredAge(
        seq=seq,
        id=f"r{seq}",
        classification=classification,
        created_at=NOW - timedelta(days=age_days),
        erased=erased,
    )


NOW = T0 + 1000 * DAY


def test_plan_erases_expired_reports_of_the_level_and_stops_at_the_first_too_young() -> None:
    rows = [
        row(1, "RESTRICTED", 400),
        row(2, "SECRET", 400),  # another level: passed, not erased by the RESTRICTED walk
        row(3, "RESTRICTED", 300, erased=True),  # already erased
        row(4, "UNCLASSIFIED", 100),
        row(5, "RESTRICTED", 31),
        row(6, "RESTRICTED", 29),  # too young: the walk stops here
        row(7, "RESTRICTED", 40),  # (not reached: reports are created in sequence order)
    ]
    step = plan(POLICY, "RESTRICTED", rows, after=0, now=NOW, full=True)
    assert step == Step(erase=(rows[0], rows[4]), after=5, done=True)
    secret = plan(POLICY, "SECRET", rows, after=0, now=NOW, full=True)
    assert secret == Step(erase=(rows[1],), after=2, done=True)


def test_plan_of_a_full_slice_goes_on_and_of_a_short_one_is_done() -> None:
    rows = [row(10, "RESTRICTED", 50), row(11, None, 50)]
    assert plan(POLICY, "RESTRICTED", rows, after=9, now=NOW, full=True) == Step((rows[0],), 11, False)
    assert plan(POLICY, "RESTRICTED", rows, after=9, now=NOW, full=False) == Step((rows[0],), 11, True)
    assert plan(POLICY, "RESTRICTED", [], after=9, now=NOW, full=False) == Step((), 9, True)


def test_plan_for_a_level_without_a_period_erases_nothing() -> None:
    rows = [row(1, "UNCLASSIFIED", 5000)]
    assert plan(POLICY, "UNCLASSIFIED", rows, after=0, now=NOW, full=True) == Step((), 0, True)


stored = st.lists(
    st.tuples(st.sampled_from([*LEVELS, None]), st.integers(0, 800), st.booleans()), max_size=40
)


@given(rows=stored, batch=st.integers(1, 8), level=st.sampled_from(LEVELS))
def test_a_walk_in_slices_erases_exactly_the_expired_unerased_reports_of_its_level(
    rows: list[tuple[str | None, int, bool]], batch: int, level: str
) -> None:
    # Reports in sequence order are created in time order: ages decrease.
    ages = sorted((age for _, age, _ in rows), reverse=True)
    store = [row(i + 1, c, a, erased=e) for i, ((c, _, e), a) in enumerate(zip(rows, ages, strict=True))]
    erased: list[StoredAge] = []
    after, done, rounds = 0, False, 0
    while not done:
        rounds += 1
        assert rounds <= len(store) + 1
        chunk = [r for r in store if r.seq > after][:batch]
        step = plan(POLICY, level, chunk, after=after, now=NOW, full=len(chunk) == batch)
        assert step.after >= after
        erased.extend(step.erase)
        after, done = step.after, step.done
    expected = [
        r
        for r in store
        if r.classification == level and not r.erased and POLICY.is_expired(level, r.created_at, NOW)
    ]
    assert erased == expected
    # Everything the walk passed is settled: a later walk from ``after`` never needs what lies behind.
    assert all(POLICY.is_expired(level, r.created_at, NOW) for r in store if r.seq <= after)


def test_retention_erasures_have_stable_codes_and_their_own_metric_cause() -> None:
    assert (ACTOR, REASON) == ("retention", "retention_expired")
    assert metrics.erase_cause(REASON) == "retention"
    assert metrics.erase_cause("erased") == "manual"
