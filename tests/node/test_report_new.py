"""``accord report new`` without a terminal: answers come from stdin. The interview checks
each answer at once, writes a valid report with --out, and, when no node is running, says
so and offers to save the report instead of losing it. (The pseudo-terminal run against
live nodes is tests/integration/test_report_new.py.)"""

from __future__ import annotations

import io
import json
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from exchange.sop import check_report_document
from node.services.schemas import registry
from tests.conftest import Result

Accord = Callable[..., Result]

TRAVEL = [
    "green",  # tlp
    "Kidnapping risk on the N-25",  # title
    "pakistan",  # country: refused (pattern ^[A-Z]{2}$)
    "PK",
    "Balochistan, Sindh",  # regions[0]: one per line, commas kept
    "",
    "extreme",  # advisory_level: refused (enum)
    "3",  # by position? no: refused too (not a listed value)
    "do-not-travel",
    "kidnapping, smuggling",  # risks: 'smuggling' refused
    "kidnapping, terrorism",
    "tomorrow",  # valid_from: refused (format)
    "2026-12-01T00:00:00Z",
    "",  # valid_until skipped
    "Avoid road travel after dark.",
    "",  # movement_restrictions skipped
    "y",  # add contact
    "Duty officer",  # contact.name
    "",  # contact.role skipped
    "0092",  # contact.phone: refused (pattern)
    "+925112345678",
    "",  # contact.email skipped
    "n",  # no source
]


def _stdin(monkeypatch: pytest.MonkeyPatch, answers: list[str]) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("\n".join(answers) + "\n"))


def test_new_with_out_asks_again_and_writes_a_valid_report(
    accord: Accord, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    out = tmp_path / "advisory.json"
    # At the review the officer changes answer 2 (the title), tries a number out of range,
    # then keeps the rest.
    review = ["2", "Kidnapping risk on the N-25 and N-40", "99", ""]
    _stdin(monkeypatch, [*TRAVEL, *review])
    r = accord(
        "--data", tmp_path / "none", "report", "new", "--schema", "travel-advisory@1", "--out", out
    )
    assert r.code == 0, r.out + r.err
    assert "country: must match the pattern ^[A-Z]{2}$ (rule 'pattern')" in r.out
    assert "advisory_level: must be one of" in r.out and "(rule 'enum')" in r.out
    assert "risks[1]: must be one of" in r.out
    assert "valid_from: must be a valid RFC 3339" in r.out
    assert "contact.phone: must match the pattern" in r.out
    assert "pakistan" not in r.out.split("country:", 2)[2]  # a refused value is not echoed
    assert "nothing was sent" in r.out
    data = out.read_bytes()
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    valid = check_report_document(registry(), data, "json")
    fields = json.loads(data)["fields"]
    assert valid.report.tlp == "green"
    assert "Review your answers" in r.out and "choose a number from 1 to" in r.out
    assert fields["title"] == "Kidnapping risk on the N-25 and N-40"  # changed at the review
    assert fields["regions"] == ["Balochistan, Sindh"]
    assert fields["risks"] == ["kidnapping", "terrorism"]
    assert fields["contact"] == {"name": "Duty officer", "phone": "+925112345678"}
    assert "valid_until" not in fields and "source" not in fields


def test_new_refuses_an_existing_out_before_asking(accord: Accord, tmp_path: Path) -> None:
    out = tmp_path / "x.json"
    out.write_text("{}")
    r = accord("report", "new", "--schema", "threat-alert@1", "--out", out)
    assert r.code == 2 and "exists" in r.err
    assert out.read_text() == "{}"


def test_new_unknown_schema_names_the_next_step(accord: Accord) -> None:
    r = accord("report", "new", "--schema", "nope@1", "--out", "x.json")
    assert r.code == 2 and "accord schema list" in r.err


INCIDENT = [
    "",  # tlp: default amber
    "Gunmen fired on a staff bus",
    "armed-attack",
    "2026-05-14T06:40:00+05:00",
    "Sindh",
    "",  # site
    "n",  # location
    "contained",
    "y",  # casualties
    "0",
    "-1",  # injured: refused (minimum)
    "2",
    "",  # missing
    "y",  # affected_persons: one entry
    "A. Engineer",
    "cn",  # nationality: refused (pattern)
    "CN",
    "engineer",
    "injured",
    "n",  # no more entries
    "",  # narrative
    "",  # suspected_perpetrators
    "",  # response_actions
    "n",  # source
]


def test_node_down_offers_to_save(
    accord: Accord, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    saved = tmp_path / "incident.json"
    _stdin(monkeypatch, [*INCIDENT, "", "y", str(saved)])  # "": nothing to change
    r = accord("--data", tmp_path / "none", "report", "new", "--schema", "incident-report@1")
    assert r.code == 8, r.out + r.err  # transport: the node is not running
    assert "no node is serving" in r.err
    assert "affected_persons[0].nationality: must match the pattern" in r.out
    assert "casualties.injured: must be >= 0 (rule 'minimum')" in r.out
    fields = json.loads(saved.read_text())["fields"]
    assert fields["casualties"] == {"killed": 0, "injured": 2}
    assert fields["affected_persons"] == [
        {"name": "A. Engineer", "nationality": "CN", "role": "engineer", "condition": "injured"}
    ]
    assert "report submit" in r.out


def test_new_asks_again_when_an_answer_breaks_a_cross_field_rule(
    accord: Accord, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """valid_until before valid_from is refused at the answer (docs/adr/0020); a review
    change that breaks the rule is caught before the report is written, and asked again."""
    out = tmp_path / "advisory.json"
    answers = [
        "green", "Kidnapping risk", "PK", "Sindh", "", "do-not-travel", "kidnapping",
        "2026-12-10T00:00:00Z",  # valid_from
        "2026-12-01T00:00:00Z",  # valid_until: before valid_from, refused
        "2026-12-20T00:00:00Z",
        "Avoid road travel.", "", "n", "n",
        # review: move valid_from (answer 7) after valid_until; refused before writing
        "7", "2026-12-25T00:00:00Z", "",
        # asked to review again: put it back
        "7", "2026-12-11T00:00:00Z", "",
    ]  # fmt: skip
    _stdin(monkeypatch, answers)
    r = accord(
        "--data", tmp_path / "none", "report", "new", "--schema", "travel-advisory@1", "--out", out
    )
    assert r.code == 0, r.out + r.err
    refusal = "valid_until: must not be earlier than fields.valid_from (rule 'not_earlier')"
    assert r.out.count(refusal) == 1
    assert "fields.valid_until: must not be earlier than fields.valid_from" in r.out
    fields = json.loads(out.read_bytes())["fields"]
    assert (fields["valid_from"], fields["valid_until"]) == (
        "2026-12-11T00:00:00Z",
        "2026-12-20T00:00:00Z",
    )


def test_new_response_report(
    accord: Accord, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    out = tmp_path / "response.json"
    answers = [
        "amber",
        "not-an-id",  # in_reply_to: refused (pattern)
        "01890a5d-ac96-774b-bcce-b302099a8057",
        "measures-taken",
        "Convoy moves suspended",
        "Road moves suspended", "Escort requested", "",  # measures_taken
        "2026-12-02T08:00:00Z",
        "y", "Duty liaison officer", "", "", "",  # point_of_contact
        "",  # summary
        "",  # review: nothing to change
    ]  # fmt: skip
    _stdin(monkeypatch, answers)
    r = accord("--data", tmp_path / "none", "report", "new", "--schema", "response@1", "--out", out)
    assert r.code == 0, r.out + r.err
    assert "in_reply_to: must match the pattern" in r.out
    fields = check_report_document(registry(), out.read_bytes(), "json").report.fields
    assert fields == {
        "in_reply_to": "01890a5d-ac96-774b-bcce-b302099a8057",
        "status": "measures-taken",
        "title": "Convoy moves suspended",
        "measures_taken": ["Road moves suspended", "Escort requested"],
        "next_update_due": "2026-12-02T08:00:00Z",
        "point_of_contact": {"name": "Duty liaison officer"},
    }
