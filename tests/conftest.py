"""Shared fixtures: real nodes in temporary data directories, driven through the CLI."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from node.cli import run

PASSPHRASE = "test passphrase for accord"


@dataclass
class Result:
    code: int
    out: str
    err: str

    def json(self) -> object:
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
