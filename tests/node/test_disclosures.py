"""node/services/disclosures.py: which fields went where, under which legal basis, from log events."""

from __future__ import annotations

from exchange.events import Event, event_bytes, parse_event_unverified
from node.services.disclosures import disclosures

AT = "2026-11-26T10:00:00Z"


def _event(kind: str, index: int, at: str, **attrs: object) -> Event:
    return parse_event_unverified(event_bytes(kind, index, at, attrs))


def test_a_personal_release_lists_its_legal_basis() -> None:
    events = [
        _event(
            "release.decided",
            0,
            AT,
            peer="cn-mps",
            schema="incident-report@1",
            tlp="amber",
            report_id="r1",
            version=1,
            released=["affected_persons", "region"],
            transformed={},
            withheld={"narrative": "not-in-policy"},
            policy_digest="sha256:" + "a" * 64,
            agreement_digest="sha256:" + "b" * 64,
            releases_anything=True,
            labels={"affected_persons": "personal", "region": "public"},
            legal_basis={"affected_persons": "MoU 2025 art. 4"},
        ),
        _event(
            "release.decided",
            1,
            "2026-11-27T10:00:00Z",
            peer="cn-mps",
            schema="incident-report@1",
            tlp="amber",
            report_id="r2",
            version=1,
            released=["region"],
            transformed={},
            withheld={},
            policy_digest="sha256:" + "a" * 64,
            agreement_digest=None,
            releases_anything=True,
        ),
    ]
    [personal] = disclosures(events, label="personal")
    assert personal.recipient == "cn-mps" and personal.fields == ("affected_persons",)
    assert personal.legal_basis == {"affected_persons": "MoU 2025 art. 4"}
    assert personal.policy_digest == "sha256:" + "a" * 64
    # An event from before labels were logged takes them from the shipped schema.
    assert [d.subject for d in disclosures(events, label="public")] == [
        "report r1 v1",
        "report r2 v1",
    ]
    assert [d.index for d in disclosures(events, since="2026-11-27T00:00:00Z")] == [1]
