"""Builders shared by tests: one report used across the suite, checked like an officer's.

Tests import from here (or use conftest fixtures), never from another ``test_*`` module.
"""

from __future__ import annotations

import json
from typing import Any

from exchange.sop import ValidReport, check_report_document
from node.schemas import registry

# A string in every withheld field of ALERT: if it shows up where the partner or a log
# can see it, a withheld value leaked.
MARKER = "QWX-marker-5521"
ALERT: dict[str, Any] = {
    "sop": "threat-alert@1",
    "tlp": "amber",
    "fields": {
        "title": f"IED threat {MARKER}",
        "threat_type": "ied",
        "severity": "high",
        "region": "Balochistan",
        "site": f"Convoy yard {MARKER}",
        "location": {"lat": 25.1264, "lon": 62.3225},
        "time_window": {"start": "2026-11-26T00:00:00Z", "end": "2026-11-30T00:00:00Z"},
        "indicators": [f"white pickup {MARKER}"],
        "recommended_actions": ["Avoid the east gate"],
        "source": {"kind": "humint", "reliability": "B", "credibility": 2},
    },
}


def valid_report(report: dict[str, Any] = ALERT) -> ValidReport:
    """``report`` validated against the shipped SOP schemas, as ``report submit`` does."""
    return check_report_document(registry(), json.dumps(report).encode(), "json")
