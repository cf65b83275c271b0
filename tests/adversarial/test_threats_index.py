"""Every case of the threat catalog (docs/THREATS.md) is attacked by at least one test.

Tests say which cases they attack with ``@pytest.mark.threat("P07")``; the markers are read
from pytest's own collection (the session's, or a ``--collect-only`` run of the whole suite
when only part of it was collected), so a test that is renamed, deleted or no longer
collected stops counting. Cases whose tests do not exist yet are listed in ``NOT_YET`` with
the capability that will bring them; the list may only shrink: a case listed there that has
a test fails too.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import COLLECTED_FILES, THREAT_MARKS

ROOT = Path(__file__).resolve().parents[2]
CATALOG = ROOT / "docs/THREATS.md"
CASE = re.compile(r"^\| ([A-Z]\d\d) \|", re.MULTILINE)

# Cases of the catalog that no test attacks yet, each with what will attack it. Shrinks only.
NOT_YET: dict[str, str] = {}


def catalog_cases() -> list[str]:
    return CASE.findall(CATALOG.read_text("utf-8"))


def _whole_suite_marks(tmp: Path) -> dict[str, list[str]]:
    out = tmp / "threats.json"
    done = subprocess.run(
        [
            *(sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider"),
            *(f"--threat-map={out}", str(ROOT / "tests")),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    marks: dict[str, list[str]] = json.loads(out.read_text("utf-8"))
    return marks


@pytest.fixture(scope="module")
def marks(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, list[str]]:
    config = request.config
    everything = {str(p) for p in (ROOT / "tests").rglob("test_*.py")}
    if everything <= config.stash.get(COLLECTED_FILES, set()):
        return config.stash[THREAT_MARKS]
    return _whole_suite_marks(tmp_path_factory.mktemp("threat-map"))


def test_the_catalog_lists_each_case_once() -> None:
    cases = catalog_cases()
    assert len(cases) >= 60, f"{CATALOG} lists only {len(cases)} cases"
    assert len(set(cases)) == len(cases), sorted(c for c in cases if cases.count(c) > 1)
    assert set(NOT_YET) <= set(cases), sorted(set(NOT_YET) - set(cases))


def test_every_case_has_a_marked_test(marks: dict[str, list[str]]) -> None:
    missing = [c for c in catalog_cases() if c not in NOT_YET and not marks.get(c)]
    assert not missing, f"threat cases with no @pytest.mark.threat test: {missing}"


def test_not_yet_lists_only_cases_without_tests(marks: dict[str, list[str]]) -> None:
    tested = sorted(c for c in NOT_YET if marks.get(c))
    assert not tested, f"these cases have tests now; remove them from NOT_YET: {tested}"


def test_every_marker_names_a_catalog_case(marks: dict[str, list[str]]) -> None:
    unknown = {c: tests[:3] for c, tests in marks.items() if c not in set(catalog_cases())}
    assert not unknown, f"markers naming no case of docs/THREATS.md: {unknown}"
