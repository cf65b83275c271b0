"""Onward rules written in the terms file: proposed, signed by both, shown by
``agreement show``, and refused at propose with the field named when a TLP or class is bad."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from tests.conftest import Result, exchange_cards
from tests.feed.world import TERMS, make_pair

Accord = Callable[..., Result]


def test_onward_rules_are_signed_and_shown(
    make_node: Callable[..., Path], accord: Accord, tmp_path: Path
) -> None:
    _pk, cn = make_pair(make_node, accord, tmp_path)
    shown = accord("--data", cn, "agreement", "show", "--peer", "pk-moi", "--json").json()
    [to_cn] = [d for d in shown["ceiling"] if d["to"] == "cn-mps"]
    assert to_cn["onward"]["default"]["amber"] == ["counter-terrorism"]
    assert to_cn["onward"]["schemas"]["threat-alert@1"]["amber"] == ["cert", "counter-terrorism"]
    [to_pk] = [d for d in shown["ceiling"] if d["to"] == "pk-moi"]
    assert "onward" not in to_pk
    table = accord("--data", cn, "agreement", "show", "--peer", "pk-moi").out
    assert "Onward" in table and "counter-terrorism" in table


def test_bad_onward_terms_are_refused_with_the_field_named(
    make_node: Callable[..., Path], accord: Accord, tmp_path: Path
) -> None:
    pk, cn = make_node("pk-moi", 7441), make_node("cn-mps", 7442)
    exchange_cards(accord, pk, cn, tmp_path)
    for bad, named in (
        ('amber = ["counter-terrorism"]', 'amber = ["counter-terorism"]'),
        ('amber = ["counter-terrorism"]', 'red = ["any"]'),
        ('amber = ["counter-terrorism"]', 'purple = ["any"]'),
    ):
        terms = tmp_path / "bad.toml"
        terms.write_text(TERMS.replace(bad, named, 1), "utf-8")
        out = tmp_path / "a.json"
        r = accord(
            "--data", pk, "agreement", "propose", "--peer", "cn-mps", "--terms", terms, "--out", out
        )
        assert r.code == 2, r.err
        assert "send.onward." + named.split(" ")[0] in r.err
        assert not out.exists()
