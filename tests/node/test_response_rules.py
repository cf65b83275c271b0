"""Response rules in signed agreements and cross-field report rules, at a real node and its
CLI (docs/adr/0020): terms -> signed agreement -> 'agreement show'; a reversed time window
refused by 'report validate' and by the Officer API's submit, with nothing stored."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from exchange.agreement import (
    ResponseRule,
    parse_agreement_unverified,
    parse_response,
    parse_signed_agreement_unverified,
    propose,
    sign_agreement,
)
from exchange.sop import ReportInvalid
from node.home import Node
from node.services.agreements import current_agreement, terms_to_agreement
from tests.builders import ALERT
from tests.conftest import PASSPHRASE, TERMS, Result, exchange_cards, snapshot

Accord = Callable[..., Result]
TA = "threat-alert@1"
RULES = """
[response."threat-alert@1".critical]
acknowledge = "PT15M"
respond = "PT24H"
[response."threat-alert@1".high]
acknowledge = "PT1H"
"""


def _terms(tmp_path: Path, extra: str, name: str = "terms.toml") -> Path:
    path = tmp_path / name
    path.write_text(TERMS.read_text("utf-8") + extra, "utf-8")
    return path


@pytest.fixture
def partners(make_node: Callable[..., Path], accord: Accord, tmp_path: Path) -> tuple[Path, Path]:
    pk, cn = make_node("pk-moi", 7441), make_node("cn-mps", 7442)
    exchange_cards(accord, pk, cn, tmp_path)
    return pk, cn


def _propose(accord: Accord, pk: Path, terms: Path, out: Path) -> Result:
    return accord(
        "--data", pk, "agreement", "propose", "--peer", "cn-mps", "--terms", terms, "--out", out
    )


def test_rules_are_signed_in_force_and_shown(
    partners: tuple[Path, Path], accord: Accord, tmp_path: Path
) -> None:
    pk, cn = partners
    file = tmp_path / "agreement.json"
    r = _propose(accord, pk, _terms(tmp_path, RULES), file)
    assert r.code == 0, r.err
    assert "Response" in r.out and "PT15M" in r.out and "P1D" in r.out and "PT1H" in r.out
    # critical is listed after high: the schema's severity order, not the alphabet
    assert r.out.index("high") < r.out.index("critical")
    shown = accord("--data", cn, "agreement", "show", "--file", file, "--json").json()
    assert shown["response"] == {
        TA: {
            "critical": {"acknowledge": "PT15M", "respond": "P1D"},
            "high": {"acknowledge": "PT1H"},
        }
    }
    for side in (cn, pk):
        assert accord("--data", side, "agreement", "sign", file, "--yes").code == 0
    human = accord("--data", cn, "agreement", "show", "--peer", "pk-moi")
    assert human.code == 0 and "acknowledge within" in human.out and "PT15M" in human.out
    as_json = accord("--data", pk, "agreement", "show", "--peer", "cn-mps", "--json").json()
    assert as_json["response"] == shown["response"]
    for data, me, peer in ((pk, "pk-moi", "cn-mps"), (cn, "cn-mps", "pk-moi")):
        node = Node.open(data, lambda: PASSPHRASE)
        try:
            agreement = current_agreement(node, peer, datetime.now(UTC))
            assert agreement is not None, me
            assert agreement.response_rule(TA, "critical") == ResponseRule(
                timedelta(minutes=15), timedelta(days=1)
            )
            assert agreement.response_rule(TA, "low") is None
        finally:
            node.close()


def test_example_terms_without_rules_make_no_response_key(
    partners: tuple[Path, Path], accord: Accord, tmp_path: Path
) -> None:
    pk, _cn = partners
    file = tmp_path / "agreement.json"
    r = _propose(accord, pk, TERMS, file)
    assert r.code == 0, r.err
    assert "Response: no deadlines" in r.out
    signed = parse_signed_agreement_unverified(file.read_bytes())
    assert b"response" not in signed.agreement_bytes
    assert parse_agreement_unverified(signed.agreement_bytes).response == {}


@pytest.mark.parametrize(
    ("extra", "says"),
    [
        (
            '[response."threat-alert@1".extreme]\nacknowledge = "PT1H"\n',
            "response.threat-alert@1.extreme: not a severity",
        ),
        (
            '[response."response@1".high]\nacknowledge = "PT1H"\n',
            "response@1 is not one of the agreement's schemas",
        ),
        (
            '[response."travel-advisory@1".high]\nacknowledge = "PT1H"\n',
            "travel-advisory@1: the schema has no severity field",
        ),
        (
            '[response."threat-alert@1".high]\nacknowledge = "PT2H"\nrespond = "PT1H"\n',
            "respond must not be sooner than acknowledge",
        ),
        ('[response."threat-alert@1".high]\nacknowledge = "P1M"\n', "years and months"),
        (
            '[response."threat-alert@1".high]\nacknowledge = "PT1H"\nescalate = "PT2H"\n',
            "unknown key 'escalate'",
        ),
        ('[response."threat-alert@1".high]\nrespond = "PT1H"\n', "acknowledge is missing"),
    ],
    ids=[
        "unknown-severity",
        "schema-not-pinned",
        "schema-without-severity",
        "respond-first",
        "months",
        "unknown-key",
        "no-ack",
    ],
)
def test_bad_rules_in_terms_are_refused_and_nothing_is_written(
    partners: tuple[Path, Path], accord: Accord, tmp_path: Path, extra: str, says: str
) -> None:
    pk, _cn = partners
    before = snapshot(pk)
    out = tmp_path / "agreement.json"
    r = _propose(accord, pk, _terms(tmp_path, extra), out)
    assert r.code != 0
    assert says in r.err, r.err
    assert "terms" in r.err  # the next step points at the terms file
    assert not out.exists()
    assert snapshot(pk) == before


def test_countersigner_refuses_a_severity_its_schema_lacks(
    partners: tuple[Path, Path], accord: Accord, tmp_path: Path
) -> None:
    """A proposer that skipped the severity check (another implementation) cannot make the
    partner sign rules keyed by a severity the agreed schema does not define."""
    pk, cn = partners
    node = Node.open(pk, lambda: PASSPHRASE)
    try:
        now = datetime.now(UTC)
        base = terms_to_agreement(node, "cn-mps", TERMS.read_text("utf-8"), now)
        bad = propose(
            agreement_id=base.id,
            parties=base.parties,
            schemas=base.schemas,
            ceiling=base.ceiling,
            suite=base.suite,
            not_before=now,
            not_after=now + timedelta(days=30),
            response=parse_response({TA: {"extreme": {"acknowledge": "PT1H"}}}, "response"),
        )
        signed = sign_agreement(bad, "pk-moi", node.keyring().identity_signer())
    finally:
        node.close()
    file = tmp_path / "agreement.json"
    file.write_bytes(signed.to_bytes())
    before = snapshot(cn)
    r = accord("--data", cn, "agreement", "sign", file, "--yes")
    assert r.code != 0 and "extreme: not a severity" in r.err, r.err
    assert snapshot(cn) == before
    assert file.read_bytes() == signed.to_bytes()


def _reversed(tmp_path: Path) -> Path:
    report = json.loads(json.dumps(ALERT))
    report["fields"]["time_window"] = {
        "start": "2026-11-30T00:00:00Z",
        "end": "2026-11-30T04:59:59+05:00",  # one second before the start
    }
    path = tmp_path / "reversed.json"
    path.write_text(json.dumps(report), "utf-8")
    return path


def test_report_validate_refuses_a_reversed_time_window(
    make_node: Callable[..., Path], accord: Accord, tmp_path: Path
) -> None:
    data = make_node("pk-moi")
    before = snapshot(data)
    r = accord("--data", data, "report", "validate", _reversed(tmp_path), "--json")
    assert r.code == 2, (r.out, r.err)
    assert r.json()["problems"] == [
        {
            "path": "fields.time_window.end",
            "rule": "not_earlier",
            "type": "string",
            "detail": "must not be earlier than fields.time_window.start",
        }
    ]
    human = accord("--data", data, "report", "validate", _reversed(tmp_path))
    assert human.code == 2 and "fields.time_window.end" in human.out
    assert "2026-11-30" not in human.out + human.err + r.out
    assert snapshot(data) == before


def test_submit_refuses_a_reversed_time_window_and_stores_nothing(
    pair: tuple[Node, Node], tmp_path: Path
) -> None:
    from node.rpc._pb.accord.v1 import officer_pb2
    from node.rpc.officer_service import ExchangeOfficerService

    pk, _cn = pair
    before = snapshot(pk.data_dir)
    service = ExchangeOfficerService(pk, None)
    request = officer_pb2.SubmitRequest(report=_reversed(tmp_path).read_bytes())
    with pytest.raises(ReportInvalid) as info:
        asyncio.run(service.Submit(request, None))
    assert [(p.path, p.rule) for p in info.value.problems] == [
        ("fields.time_window.end", "not_earlier")
    ]
    assert snapshot(pk.data_dir) == before
