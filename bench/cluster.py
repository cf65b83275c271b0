"""Bench fixtures: nodes created through the real ``accord`` CLI (in process), partners
that trust each other, agreements signed by both, one release policy, and reports."""

from __future__ import annotations

import contextlib
import io
import json
import os
import random
import socket
from collections.abc import Sequence
from pathlib import Path

from exchange.sop import ValidReport, check_report_document
from node.cli import run
from node.home import Node
from node.services.schemas import registry

SENDER = "pk-moi"
PARTNERS = ("cn-mps", "gb-fco")

TERMS = """
id = "bench:{a}:{b}"
suite = "hybrid"
valid_days = 365
[send]
tlp_max = "amber"
[send.schema."threat-alert@1"]
labels = ["public", "operational", "tactical"]
[receive]
tlp_max = "amber"
[receive.schema."threat-alert@1"]
labels = ["public", "operational", "tactical"]
"""

POLICY_PEER = """
[peer.{peer}]
max_tlp = "amber"
[peer.{peer}.schema."threat-alert@1"]
release_labels = ["public", "operational"]
release = ["recommended_actions"]
withhold_labels = ["sensitive-source"]
transform = {{ location = "round:1", site = "pseudonym", summary = "drop" }}
[peer.{peer}.reciprocity]
labels = ["tactical"]
min_reports = 5
window_days = 30
"""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def accord(*args: str | Path) -> str:
    """Run one ``accord`` command in process; its stdout, or an error with its stderr."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = run([str(a) for a in args])
    if code != 0:
        raise RuntimeError(f"accord {' '.join(map(str, args))} -> {code}: {err.getvalue()}")
    return out.getvalue()


def make_node(root: Path, node: str, database: str | None = None) -> Path:
    """``accord init`` of ``node`` under ``root``; with ``database`` (a DSN) its state lives
    in that PostgreSQL database (``accord init --database``), else in ``node.db``."""
    data = root / node
    where = () if database is None else ("--database", database)
    accord(
        "--data",
        data,
        "init",
        "--node",
        node,
        "--name",
        f"Bench {node}",
        "--endpoint",
        f"127.0.0.1:{free_port()}",
        "--unencrypted-keys",
        *where,
    )
    return data


def introduce(root: Path, a: Path, b: Path) -> None:
    """Cards exchanged both ways (fingerprints checked), then an agreement both signed."""
    for src, dst in ((a, b), (b, a)):
        card = root / f"{src.name}.card"
        accord("--data", src, "card", "export", "--out", card, "--force")
        fp = json.loads(accord("--data", src, "card", "show", "--json"))["fingerprint"]
        accord("--data", dst, "peer", "add", card, "--fingerprint", fp)
    terms = root / f"terms-{a.name}-{b.name}.toml"
    terms.write_text(TERMS.format(a=a.name, b=b.name), "utf-8")
    file = root / f"agreement-{a.name}-{b.name}.json"
    accord("--data", a, "agreement", "propose", "--peer", b.name, "--terms", terms, "--out", file)
    accord("--data", b, "agreement", "sign", file, "--yes")
    accord("--data", a, "agreement", "sign", file, "--yes")


def apply_policy(root: Path, a: Path, peers: Sequence[str]) -> None:
    policy = root / f"policy-{a.name}.toml"
    policy.write_text("".join(POLICY_PEER.format(peer=p) for p in peers), "utf-8")
    accord("--data", a, "policy", "apply", policy)


def make_cluster(
    root: Path, partners: Sequence[str] = PARTNERS, database: str | None = None
) -> tuple[Path, list[Path]]:
    """``pk-moi`` with agreements and a policy for every partner; returns the data dirs.
    With ``database`` (a DSN of an empty PostgreSQL database) ``pk-moi`` lives there; the
    partners always live in SQLite."""
    os.environ.pop("ACCORD_HOME", None)
    root.mkdir(parents=True, exist_ok=True)
    sender = make_node(root, SENDER, database)
    others = [make_node(root, p) for p in partners]
    for other in others:
        introduce(root, sender, other)
    apply_policy(root, sender, partners)
    return sender, others


def open_node(data: Path) -> Node:
    return Node.open(data, lambda: "")


def report_doc(i: int, rng: random.Random) -> dict[str, object]:
    """A threat alert of about 1.5 KB, every field present, varied by ``i``."""
    words = " ".join(
        rng.choice(("convoy", "east", "gate", "market", "route", "vehicle")) for _ in range(12)
    )
    return {
        "sop": "threat-alert@1",
        "tlp": "amber",
        "fields": {
            "title": f"Bench alert {i}: {words}"[:120],
            "threat_type": "ied",
            "severity": ("low", "moderate", "high", "critical")[i % 4],
            "region": "Balochistan",
            "site": f"Compound {i % 97}",
            "location": {"lat": 25.0 + rng.random(), "lon": 62.0 + rng.random()},
            "time_window": {"start": "2026-11-26T00:00:00Z", "end": "2026-11-30T00:00:00Z"},
            "indicators": [f"indicator {i}-{k} {words}" for k in range(6)],
            "recommended_actions": [f"Action {k}: avoid the {words}" for k in range(4)],
            "source": {"kind": "humint", "reliability": "B", "credibility": 2},
        },
    }


def report_bytes(count: int, seed: int = 8) -> list[bytes]:
    rng = random.Random(seed)  # noqa: S311  bench data, no secrecy
    return [json.dumps(report_doc(i, rng)).encode() for i in range(count)]


def valid_reports(count: int, seed: int = 8) -> list[ValidReport]:
    reg = registry()
    return [check_report_document(reg, data, "json") for data in report_bytes(count, seed)]
