"""Sealed reports at rest: each sealed once under the author's node identity, stored with
the full SD-JWT (every disclosure) encrypted under the storage key, and logged as
``report.sealed`` with digests and field names only."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import datetime

from exchange.errors import InputError
from exchange.sdjwt import PresentationLimits, SealedReport, reopen_sealed, seal
from exchange.sop import ValidReport
from exchange.times import format_time
from node.home import Node
from node.ids import resolve_prefix, uuid7
from node.services import warning
from node.store import Tx


@dataclass(frozen=True)
class StoredReport:
    report_id: str
    version: int
    sop: str
    tlp: str
    issuer_jwt_digest: str
    fields: tuple[str, ...]
    sealed_at: str


REPLY_SOP = warning.REPLY_SOP


def _aad(report_id: str, version: int) -> bytes:
    return f"accord/v1/report-at-rest\n{report_id}\n{version}".encode("ascii")


def seal_report(
    node: Node,
    db: Tx,
    valid: ValidReport,
    now: datetime,
    *,
    report_id: str | None = None,
    version: int = 1,
    supersedes: str | None = None,
) -> SealedReport:
    """Seal and store one validated report inside the caller's transaction."""
    ring = node.keyring()
    signer = ring.identity_signer()
    card = node.own_chain().latest
    report_id = report_id or uuid7()
    sealed = seal(
        valid.report,
        signer=signer,
        kid=card.fingerprint,
        issuer=node.config.node,
        report_id=report_id,
        issued_at=int(now.timestamp()),
        version=version,
        supersedes=supersedes,
        sop_digest=valid.sop_digest,
        random_bytes=os.urandom,
    )
    blob = ring.storage_cipher().encrypt(
        sealed.full_presentation().encode("ascii"), _aad(report_id, version)
    )
    fields = sorted(valid.report.fields)
    answered = valid.report.fields.get("in_reply_to") if valid.report.sop == REPLY_SOP else None
    if isinstance(answered, str):  # a reply names a partner's report we received
        warning.on_reply_sealed(node, db, report_id, version, answered, now)
    node.store.reports.add(
        db,
        (
            report_id,
            version,
            valid.report.sop,
            valid.report.tlp,
            sealed.issuer_jwt_digest,
            signer.public_key,
            blob,
            json.dumps(fields),
            format_time(now),
            supersedes,
        ),
    )
    node.record(
        db,
        "report.sealed",
        now,
        report_id=report_id,
        version=version,
        sop=valid.report.sop,
        sop_digest=valid.sop_digest,
        tlp=valid.report.tlp,
        issuer_jwt_digest=sealed.issuer_jwt_digest,
        fields=fields,
        supersedes=supersedes,
        **({"in_reply_to": answered} if isinstance(answered, str) else {}),
    )
    return sealed


def load_sealed(node: Node, report_id: str, version: int | None = None) -> SealedReport:
    """Decrypt and re-verify a stored original (the latest version unless one is named)."""
    row = node.store.reports.sealed(report_id, version)
    if row is None:
        raise InputError(f"no report {report_id}", code="report.unknown")
    stored_version, issuer_key, blob = row
    plaintext = node.keyring().storage_cipher().decrypt(blob, _aad(report_id, stored_version))
    return reopen_sealed(plaintext.decode("ascii"), issuer_key, limits=PresentationLimits())


def list_reports(node: Node, limit: int = 100) -> list[StoredReport]:
    rows = node.store.reports.newest(limit)
    return [
        StoredReport(r[0], int(r[1]), r[2], r[3], r[4], tuple(json.loads(r[5])), r[6]) for r in rows
    ]


def resolve_report_id(node: Node, given: str) -> str:
    """One of our reports' full id from the id or a unique prefix of it."""

    def candidates(low: str, high: str) -> list[str]:
        return node.store.reports.ids_between(low, high)

    return resolve_prefix(candidates, given, "report")
