"""Finding the PostgreSQL server binaries, and what the fixture does without them: a skip
that names the package, and under ``CI=true`` a failure (a skip there would pass CI on a
machine that never ran the PostgreSQL tests)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests import postgres
from tests.postgres import MISSING, find_server_bin, require_server_bin


def _fake_server(root: Path, major: int) -> Path:
    """A ``<root>/<major>/bin`` with an initdb that reports ``major`` and a pg_ctl."""
    bindir = root / str(major) / "bin"
    bindir.mkdir(parents=True)
    initdb = bindir / "initdb"
    initdb.write_text(f"#!/bin/sh\necho 'initdb (PostgreSQL) {major}.3'\n", "utf-8")
    initdb.chmod(0o755)
    (bindir / "pg_ctl").write_text("#!/bin/sh\n", "utf-8")
    (bindir / "pg_ctl").chmod(0o755)
    return bindir


def test_nothing_found_is_none(tmp_path: Path) -> None:
    assert find_server_bin(path="", roots=(tmp_path, tmp_path / "absent")) is None


def test_the_highest_version_15_or_newer_wins(tmp_path: Path) -> None:
    _fake_server(tmp_path, 14)
    assert find_server_bin(path="", roots=(tmp_path,)) is None  # too old
    sixteen = _fake_server(tmp_path, 16)
    _fake_server(tmp_path, 15)
    assert find_server_bin(path="", roots=(tmp_path,)) == sixteen


def test_path_comes_first(tmp_path: Path) -> None:
    on_path = _fake_server(tmp_path / "path", 15)
    _fake_server(tmp_path / "lib", 17)
    assert find_server_bin(path=str(on_path), roots=(tmp_path / "lib",)) == on_path
    too_old = _fake_server(tmp_path / "old", 13)
    assert find_server_bin(path=str(too_old), roots=(tmp_path / "lib",)) == (
        tmp_path / "lib" / "17" / "bin"
    )


def test_missing_binaries_skip_naming_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(postgres, "find_server_bin", lambda: None)
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception) as skipped:
        require_server_bin()
    assert str(skipped.value) == MISSING
    assert "postgresql package" in MISSING


def test_missing_binaries_under_ci_fail(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(postgres, "find_server_bin", lambda: None)
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception) as failed:
        require_server_bin()
    assert MISSING in str(failed.value)


def test_found_binaries_are_returned(tmp_path: Path) -> None:
    assert require_server_bin(lambda: tmp_path, env={"CI": "true"}) == tmp_path
