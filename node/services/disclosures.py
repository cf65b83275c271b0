"""``accord audit disclosures``: every release of fields, from a verified log, with the
labels, legal basis and digests it was made under.

Two kinds of event disclose fields: ``release.decided`` (to a partner: the released and
transformed field names, the policy's legal basis for each, the policy and agreement
digests) and ``feed.served`` (to a domestic consumer of the TAXII feed: per envelope served,
its SOP and disclosed field names; the basis is the agreement's onward rules for the
consumer's class). Labels come from the event where it records them, else from the shipped
SOP schemas.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from exchange.events import Event
from node.services.schemas import registry


@dataclass(frozen=True)
class Disclosure:
    index: int
    at: str
    recipient: str  # a partner node id, or a feed consumer's name
    recipient_kind: str  # "partner" or "consumer"
    subject: str  # "report <id> v<n>" or "envelope <id>"
    schema: str
    fields: tuple[str, ...]
    labels: Mapping[str, str]
    legal_basis: Mapping[str, str]
    policy_digest: str | None
    agreement_digest: str | None

    def to_json(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "at": self.at,
            "recipient": self.recipient,
            "recipient_kind": self.recipient_kind,
            "subject": self.subject,
            "schema": self.schema,
            "fields": list(self.fields),
            "labels": dict(self.labels),
            "legal_basis": dict(self.legal_basis),
            "policy_digest": self.policy_digest,
            "agreement_digest": self.agreement_digest,
        }


def _schema_labels(schema: str) -> dict[str, str]:
    reg = registry()
    return dict(reg.labels(schema)) if schema in reg else {}


def _mapping(value: object) -> dict[str, str]:
    return {str(k): str(v) for k, v in value.items()} if isinstance(value, dict) else {}


def disclosures(
    events: Iterable[Event], *, label: str | None = None, since: str | None = None
) -> list[Disclosure]:
    """Every disclosure in ``events`` (in log order), only of fields with ``label`` when
    given, at or after ``since`` (RFC 3339, compared as text: both are UTC ``Z`` times)."""
    out: list[Disclosure] = []
    for e in events:
        if since is not None and e.at < since:
            continue
        a = e.attrs
        found: list[Disclosure] = []
        if e.kind == "release.decided" and a.get("releases_anything"):
            schema = str(a.get("schema", ""))
            names = [*a.get("released", []), *_mapping(a.get("transformed"))]
            labels = _mapping(a.get("labels")) or _schema_labels(schema)
            found.append(
                Disclosure(
                    e.index,
                    e.at,
                    str(a.get("peer")),
                    "partner",
                    f"report {a.get('report_id')} v{a.get('version')}",
                    schema,
                    tuple(sorted(str(n) for n in names)),
                    {n: labels.get(n, "?") for n in names},
                    _mapping(a.get("legal_basis")),
                    a.get("policy_digest"),
                    a.get("agreement_digest"),
                )
            )
        elif e.kind == "feed.served":
            fields = _mapping(a.get("fields"))
            basis = (
                f"onward rules for {a.get('recipient_class')} in agreement "
                f"{a.get('agreement_digest')}"
            )
            for envelope, schema in sorted(_mapping(a.get("envelopes")).items()):
                names = [n for n in fields.get(envelope, "").split(",") if n]
                labels = _schema_labels(schema)
                found.append(
                    Disclosure(
                        e.index,
                        e.at,
                        str(a.get("consumer")),
                        "consumer",
                        f"envelope {envelope} (from {a.get('collection')})",
                        schema,
                        tuple(sorted(names)),
                        {n: labels.get(n, "?") for n in names},
                        dict.fromkeys(names, basis),
                        None,
                        a.get("agreement_digest"),
                    )
                )
        for d in found:
            if label is not None:
                keep = tuple(f for f in d.fields if d.labels.get(f) == label)
                if not keep:
                    continue
                d = Disclosure(
                    d.index,
                    d.at,
                    d.recipient,
                    d.recipient_kind,
                    d.subject,
                    d.schema,
                    keep,
                    {f: d.labels[f] for f in keep},
                    {f: v for f, v in d.legal_basis.items() if f in keep},
                    d.policy_digest,
                    d.agreement_digest,
                )
            out.append(d)
    return out
