"""Checks on how valka was built and packaged, run in both the compiled and the pure pass."""

from __future__ import annotations

import filecmp
import importlib.resources
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import valka
import valka.core.ids
import valka.core.status
from valka._build import compiled
from valka.cli.version import version_line

REPO = Path(__file__).resolve().parents[2]
STUBS = REPO / "valka" / "v1"


def _generated(directory: Path) -> set[str]:
    return {p.name for p in directory.glob("*_pb2*.py*")}


def test_committed_stubs_match_the_proto_files(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(REPO / "tools" / "gen_proto.py"), "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    fresh = tmp_path / "valka" / "v1"
    names = _generated(fresh)
    assert names, "tools/gen_proto.py generated nothing"
    assert names == _generated(STUBS), "valka/v1 stubs are stale: run `make proto`"
    _, mismatch, errors = filecmp.cmpfiles(fresh, STUBS, sorted(names), shallow=False)
    assert not mismatch and not errors, f"stale stubs {mismatch + errors}: run `make proto`"


def test_version_matches_pyproject() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert valka.__version__ == project["version"]


def test_build_is_the_expected_one() -> None:
    expected = os.environ.get("VALKA_EXPECT_COMPILED")
    if expected is None:
        pytest.skip("VALKA_EXPECT_COMPILED is not set (make test sets it)")
    assert expected in ("0", "1"), f"VALKA_EXPECT_COMPILED must be 0 or 1, not {expected!r}"
    assert compiled() is (expected == "1"), (
        f"expected a {'compiled' if expected == '1' else 'pure'} build, "
        f"loaded valka.core.status from {valka.core.status.__file__}"
    )


def test_compiled_core_modules_agree() -> None:
    for module in (valka.core.status, valka.core.ids):
        path = module.__file__ or ""
        assert path.endswith((".so", ".pyd")) is compiled(), path


def test_version_line() -> None:
    line = version_line()
    assert re.fullmatch(r"valka \S+ \(compiled core: (yes|no), python 3\.\d+\.\d+\)", line)
    assert f"valka {valka.__version__} " in line
    assert ("compiled core: yes" in line) is compiled()


def test_installed_package_carries_migrations_and_typing() -> None:
    package = Path(valka.__file__).resolve().parent
    if package == REPO / "valka":
        pytest.skip("valka runs from the source tree; nothing was installed")
    shipped = {
        entry.name: entry.read_text()
        for entry in importlib.resources.files("valka.schema").iterdir()
        if entry.name.endswith(".sql")
    }
    source = {p.name: p.read_text() for p in (REPO / "schema").glob("*.sql")}
    assert shipped == source, "installed valka/schema differs from schema/: reinstall"
    assert (package / "py.typed").is_file()
    assert _generated(package / "v1") == _generated(STUBS)
