"""The wheel (issue 11): the alembic environment ships as the top-level `migrations` package beside
`broker`, and `broker db upgrade` run from an installed wheel, in another directory, finds it
there rather than in this checkout."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tomllib
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import CONFIG, ROOT

SOURCES = ("pyproject.toml", "README.md", "LICENSE", "broker", "migrations")
REVISIONS = sorted(p.name for p in (ROOT / "migrations" / "versions").glob("*.py"))
WHERE = """
import broker, migrations
from broker.storage import db
print(broker.__file__)
print(migrations.__file__)
print(db.alembic_config().get_main_option("script_location"))
"""


def _run(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, (args, done.stdout, done.stderr)
    return done


@dataclass(frozen=True)
class Built:
    wheel: Path
    output: str  # what pip -v printed while building it


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    """The wheel, built once for this module's tests from a copy of the sources, so the checkout
    gets no build/ or egg-info litter."""
    tmp_path = tmp_path_factory.mktemp("wheel")
    source = tmp_path / "source"
    source.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, source / name, ignore=ignore)
        else:
            shutil.copy2(ROOT / name, source / name)
    out = tmp_path / "wheel"
    done = _run("-m", "pip", "wheel", "--no-deps", "-v", "-w", str(out), str(source), cwd=source)
    (wheel,) = out.glob("*.whl")
    return Built(wheel, done.stdout + done.stderr)


def test_db_upgrade_runs_from_an_installed_wheel(built: Built, tmp_path: Path) -> None:
    wheel = built.wheel
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"migrations/__init__.py", "migrations/env.py", "migrations/script.py.mako"} <= names
    assert {f"migrations/versions/{name}" for name in REVISIONS} <= names
    assert not any(name.startswith("broker/migrations/") for name in names)

    site = tmp_path / "site"
    _run("-m", "pip", "install", "--quiet", "--no-deps", "--target", str(site), str(wheel), cwd=tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    database = tmp_path / "data" / "broker.db"
    env = {
        **os.environ,
        "PYTHONPATH": str(site),  # ahead of the checkout's editable install
        "BROKER_CONFIG_DIR": str(CONFIG),
        "BROKER_DATABASE_URL": f"sqlite+aiosqlite:///{database}",
        "BROKER_KEYRING": str(tmp_path / "keys" / "keyring.json"),
    }
    where = _run("-c", WHERE, cwd=elsewhere, env=env).stdout.split()
    assert len(where) == 3 and all(Path(path).is_relative_to(site) for path in where), where

    done = _run("-m", "broker", "db", "upgrade", "--json", cwd=elsewhere, env=env)
    assert json.loads(done.stdout) == {"migrated": True, "alliances_seeded": 6}
    with sqlite3.connect(database) as connection:
        (version,) = connection.execute("SELECT version_num FROM alembic_version").fetchone()
    assert REVISIONS[-1].startswith(f"{version}_"), (version, REVISIONS)


def test_the_image_copies_every_package_the_wheel_ships() -> None:
    """The Dockerfile installs the project from the copied folders: a package missing there would
    be missing from the image."""
    setup = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    # Top-level folders: a subpackage (migrations.versions) comes with its parent's folder.
    packages = sorted({p.rstrip("*").split(".")[0] for p in setup["packages"]["find"]["include"]})
    assert "migrations" in packages and "migrations" in setup["package-data"]
    dockerfile = (ROOT / "Dockerfile").read_text()
    for package in packages:
        assert f"COPY {package} ./{package}\n" in dockerfile, package
    assert "COPY pyproject.toml README.md LICENSE ./" in dockerfile  # license-files needs it


def test_building_prints_no_setuptools_warning(built: Built) -> None:
    output = built.output
    assert "BuildBackendWarning" not in output and "SetuptoolsDeprecationWarning" not in output, output
    assert any(name.endswith("licenses/LICENSE") for name in zipfile.ZipFile(built.wheel).namelist())
