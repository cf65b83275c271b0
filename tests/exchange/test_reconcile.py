"""reconcile on events a node signed itself: wrong attribute types give findings, never a
crash of the auditor's tool."""

from __future__ import annotations

from exchange.audit import reconcile
from exchange.events import event_bytes, parse_event_unverified

AT = "2026-11-25T12:00:00Z"


def _event(kind: str, index: int, **attrs: object):  # type: ignore[no-untyped-def]
    return parse_event_unverified(event_bytes(kind, index, AT, attrs))


def test_matching_release_receipt_and_arrival() -> None:
    a = [
        _event("release.decided", 0, peer="cn-mps", envelope_id="e1", seq=1),
        _event("receipt.received", 1, peer="cn-mps", first_seq=1, last_seq=1),
    ]
    b = [_event("envelope.received", 0, peer="pk-moi", envelope_id="e1", seq=1)]
    report = reconcile("pk-moi", a, "cn-mps", b)
    assert report.ok and report.matched == 1


def test_attributes_of_the_wrong_type_are_findings_not_crashes() -> None:
    a = [
        _event("release.decided", 0, peer="cn-mps", envelope_id="e1", seq="1"),
        _event("receipt.received", 1, peer="cn-mps", first_seq="x", last_seq=[1]),
    ]
    b = [_event("envelope.received", 0, peer="pk-moi", envelope_id="e1", seq=1)]
    report = reconcile("pk-moi", a, "cn-mps", b)
    assert not report.ok
    assert {f.code for f in report.findings} == {"reconcile.no_receipt"}
