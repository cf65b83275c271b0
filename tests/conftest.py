"""Shared fixtures: real nodes in temporary data directories, driven through the CLI."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nacl.pwhash
import pytest

from keys import keyfile
from node.cli import run
from tests.postgres import pg_cluster  # noqa: F401  (the fixture, for every test package)

PASSPHRASE = "test passphrase for accord"

# What an operator's key files get (keys/keyfile.py); tests/keys/test_keyfile.py checks it.
PRODUCTION_KDF = (keyfile.OPSLIMIT, keyfile.MEMLIMIT)


@pytest.fixture(autouse=True, scope="session")
def _cheap_argon2id_for_test_key_files() -> Any:
    """Key files sealed in the test process use libsodium's minimum Argon2id cost.

    A key file records its KDF parameters and is opened with them, so every reader (this
    process, and the ``accord serve`` processes the integration tests start) derives the
    same key; only the cost changes. At the production cost the derivations were about
    two thirds of a node fixture's set-up (8 per pair of nodes, ~0.12 s each). Nodes made
    by a subprocess, the demo and the bench keep the production cost."""
    patch = pytest.MonkeyPatch()
    patch.setattr(keyfile, "OPSLIMIT", nacl.pwhash.argon2id.OPSLIMIT_MIN)
    patch.setattr(keyfile, "MEMLIMIT", nacl.pwhash.argon2id.MEMLIMIT_MIN)
    yield
    patch.undo()


# The threat cases of docs/THREATS.md that the collected tests are marked with
# (``@pytest.mark.threat("P07")``), and the test files collected: the index test
# (tests/adversarial/test_threats_index.py) reads both.
THREAT_MARKS = pytest.StashKey[dict[str, list[str]]]()
COLLECTED_FILES = pytest.StashKey[set[str]]()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--threat-map",
        metavar="FILE",
        help="After collection, write {case id: [test ids]} of the threat markers to FILE.",
    )


@pytest.hookimpl(tryfirst=True)  # before -m/-k deselect: a slow test still covers its case
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    marks: dict[str, list[str]] = {}
    for item in items:
        for mark in item.iter_markers("threat"):
            for case in mark.args:
                marks.setdefault(str(case), []).append(item.nodeid)
    config.stash[THREAT_MARKS] = marks
    config.stash[COLLECTED_FILES] = {str(item.path) for item in items}
    out = config.getoption("--threat-map")
    if out:
        Path(out).write_text(json.dumps(marks, sort_keys=True), "utf-8")


@dataclass
class Result:
    code: int
    out: str
    err: str

    def json(self) -> Any:  # the CLI's --json output: whatever shape the command prints
        return json.loads(self.out)


@pytest.fixture
def accord(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> Callable[..., Result]:
    """Run ``accord ARGS`` in-process; returns exit code and captured output."""
    monkeypatch.setenv("ACCORD_PASSPHRASE", PASSPHRASE)
    monkeypatch.delenv("ACCORD_HOME", raising=False)

    def invoke(*args: str | Path) -> Result:
        capsys.readouterr()
        code = run([str(a) for a in args])
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)

    return invoke


def snapshot(data_dir: Path) -> dict[str, str]:
    """Everything a node holds: each file's digest, and the database as logical SQL
    (so WAL vs main-file placement does not matter)."""
    state: dict[str, str] = {}
    if not data_dir.exists():
        return state
    for path in sorted(p for p in data_dir.rglob("*") if p.is_file()):
        rel = str(path.relative_to(data_dir))
        if rel.startswith("node.db"):
            continue
        state[rel] = hashlib.sha256(path.read_bytes()).hexdigest() + f" {path.stat().st_mode:o}"
    db = data_dir / "node.db"
    if db.exists():
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        try:
            state["node.db"] = "\n".join(conn.iterdump())
        finally:
            conn.close()
    return state


@pytest.fixture
def make_node(tmp_path: Path, accord: Callable[..., Result]) -> Callable[..., Path]:
    """Create a node with the CLI and return its data directory."""

    def make(node: str, port: int = 7441, *extra: str) -> Path:
        data = tmp_path / node
        r = accord(
            "--data",
            data,
            "init",
            "--node",
            node,
            "--name",
            f"Agency {node}",
            "--endpoint",
            f"127.0.0.1:{port}",
            *extra,
        )
        assert r.code == 0, r.err
        return data

    return make


ROOT = Path(__file__).resolve().parents[1]
TERMS = ROOT / "sop" / "agreements" / "example-terms.toml"
POLICY = ROOT / "sop" / "policies" / "example.toml"


def exchange_cards(accord: Callable[..., Result], a: Path, b: Path, tmp_path: Path) -> None:
    """Each node exports its card and the other adds it with the read-out fingerprint."""
    for src, dst in ((a, b), (b, a)):
        card = tmp_path / f"{src.name}.card"
        assert accord("--data", src, "card", "export", "--out", card, "--force").code == 0
        shown = accord("--data", src, "card", "show", "--json").json()
        assert isinstance(shown, dict)
        r = accord("--data", dst, "peer", "add", card, "--fingerprint", shown["fingerprint"])
        assert r.code == 0, r.err


def propose(accord: Callable[..., Result], pk: Path, tmp_path: Path) -> Path:
    """pk-moi proposes the example terms to cn-mps; returns the agreement file."""
    file = tmp_path / "agreement.json"
    r = accord(
        "--data", pk, "agreement", "propose", "--peer", "cn-mps", "--terms", TERMS, "--out", file
    )
    assert r.code == 0, r.err
    return file


def agree(
    accord: Callable[..., Result], pk: Path, cn: Path, tmp_path: Path, *, policy: bool = True
) -> Path:
    """Both sign the example agreement; pk-moi applies the example release policy."""
    file = propose(accord, pk, tmp_path)
    for side in (cn, pk):
        r = accord("--data", side, "agreement", "sign", file, "--yes")
        assert r.code == 0, r.err
    if policy:
        assert accord("--data", pk, "policy", "apply", POLICY).code == 0
    return file


def audit_anchors(accord: Callable[..., Result], *nodes: Path) -> list[str]:
    """``--fingerprint NODE=FP`` for each node, as 'accord card show' prints it: the
    anchors an auditor checked out of band, for 'accord audit verify' and 'reconcile'."""
    out: list[str] = []
    for data in nodes:
        shown = accord("--data", data, "card", "show", "--json").json()
        assert isinstance(shown, dict)
        out += ["--fingerprint", f"{shown['node']}={shown['fingerprint']}"]
    return out
