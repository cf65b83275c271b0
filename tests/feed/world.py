"""Two in-process nodes for the STIX and feed tests: pk-moi sends threat alerts to cn-mps
under terms that let every TLP flow (so the feed's own RED and AMBER+STRICT rules are what
is tested) and onward rules for cn-mps's domestic agencies."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from node.home import Node
from node.services import outbox
from node.services.inbox import apply_batch, list_inbox
from tests.builders import ALERT, valid_report
from tests.conftest import Result, exchange_cards

Accord = Callable[..., Result]

TERMS = """
id = "pk-moi:cn-mps:feed"
suite = "hybrid"
valid_days = 365

[send]
tlp_max = "red"
[send.schema."threat-alert@1"]
labels = ["operational", "public", "tactical"]
[send.onward]
green = ["cert", "counter-terrorism", "police"]
amber = ["counter-terrorism"]
[send.onward.schema."threat-alert@1"]
green = ["cert", "counter-terrorism", "police"]
amber = ["cert", "counter-terrorism"]
"amber+strict" = ["counter-terrorism"]

[receive]
tlp_max = "amber"
[receive.schema."threat-alert@1"]
labels = ["operational", "public"]
"""

POLICY = """
[peer.cn-mps]
max_tlp = "red"
[peer.cn-mps.schema."threat-alert@1"]
release_labels = ["operational", "public", "tactical"]
withhold_labels = ["sensitive-source"]
transform = { location = "round:1" }
"""


def alert(tlp: str = "amber", **fields: Any) -> dict[str, Any]:
    report: dict[str, Any] = json.loads(json.dumps(ALERT))
    report["tlp"] = tlp
    report["fields"].update(fields)
    return report


RICH = alert(
    indicators=["203.0.113.7", "evil-c2.example", "white pickup near the east gate"],
    summary="Convoy route threatened",
)


def make_pair(
    make_node: Callable[..., Path], accord: Accord, tmp_path: Path, *, onward: bool = True
) -> tuple[Path, Path]:
    pk, cn = make_node("pk-moi", 7441), make_node("cn-mps", 7442)
    exchange_cards(accord, pk, cn, tmp_path)
    terms = tmp_path / "terms.toml"
    terms.write_text(TERMS if onward else _without_onward(), "utf-8")
    file = tmp_path / "agreement.json"
    r = accord(
        "--data", pk, "agreement", "propose", "--peer", "cn-mps", "--terms", terms, "--out", file
    )
    assert r.code == 0, r.err
    for side in (cn, pk):
        r = accord("--data", side, "agreement", "sign", file, "--yes")
        assert r.code == 0, r.err
    policy = tmp_path / "policy.toml"
    policy.write_text(POLICY, "utf-8")
    r = accord("--data", pk, "policy", "apply", policy)
    assert r.code == 0, r.err
    return pk, cn


def _without_onward() -> str:
    out, skip = [], False
    for line in TERMS.splitlines():
        if line.startswith("["):
            skip = "onward" in line
        if not skip:
            out.append(line)
    return "\n".join(out)


def deliver(pk: Node, cn: Node, now: datetime) -> int:
    """Move every pending envelope from pk-moi into cn-mps's inbox; returns how many."""
    from node.services.inbox import cursor

    envelopes = outbox.pending(pk, "cn-mps", cursor(cn, "pk-moi"), 256)
    out = apply_batch(cn, "pk-moi", envelopes, now)
    assert out.stopped is None and not out.rejected, out
    return out.applied


def send(pk: Node, cn: Node, reports: list[dict[str, Any]], now: datetime) -> list[str]:
    """Submit ``reports`` at pk-moi and deliver them; returns their report ids."""
    results = outbox.submit(pk, [valid_report(r) for r in reports], now)
    deliver(pk, cn, now)
    return [r.report_id for r in results]


def now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def newest(cn: Node, report_id: str) -> str:
    return next(i.envelope_id for i in list_inbox(cn) if i.report_id == report_id)
