"""Every case of THREATS.md has at least one test named after it, so the mapping can't rot:
for each id (P01, N05, ...) some function under tests/ is named ``test_<id>_...``."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
THREATS = ROOT.parent / "shared" / "THREATS.md"
CASE = re.compile(r"^- ([PNIHCLB]\d\d) ", re.MULTILINE)
TEST = re.compile(r"^\s*(?:async\s+)?def (test_[a-z0-9_]+)\(", re.MULTILINE)


def case_ids() -> list[str]:
    return CASE.findall(THREATS.read_text("utf-8"))


def defined_test_names() -> set[str]:
    names: set[str] = set()
    for path in (ROOT / "tests").rglob("test_*.py"):
        names.update(TEST.findall(path.read_text("utf-8")))
    return names


def test_every_threats_case_has_a_test_named_after_it() -> None:
    ids = case_ids()
    assert len(ids) >= 40 and len(set(ids)) == len(ids), ids
    names = defined_test_names()
    missing = [i for i in ids if not any(n.startswith(f"test_{i.lower()}_") for n in names)]
    assert not missing, f"THREATS.md cases without a test_<id>_ function: {missing}"
