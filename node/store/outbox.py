"""The sending side's rows: ``outbox`` envelopes and their delivery state, and the receipts
partners sent back (``receipts`` with direction ``received``).

Storage only: what to send, and which receipt to accept, are rules of node/services/outbox.py and
exchange/receipt.py.
"""

from __future__ import annotations

from typing import Any, Protocol

from node.store.dialect import Dialect
from node.store.tx import Row, Tx


class OutboxRepo(Protocol):
    def max_seq(self, peer: str) -> int | None: ...
    def max_seq_in_state(self, peer: str, state: str) -> int | None: ...
    def add(self, db: Tx, values: Row) -> None: ...
    def after(self, peer: str, after_seq: int, limit: int) -> list[Row]: ...
    def digests(self, peer: str, first: int, last: int) -> list[str]: ...
    def peers_sent(self, report_id: str) -> set[str]: ...
    def pending_count(self, peer: str, first: int, last: int) -> int: ...
    def mark_delivered(self, db: Tx, peer: str, first: int, last: int) -> None: ...
    def mark_rejected(self, db: Tx, peer: str, seq: int, code: str) -> None: ...
    def receipt_received(self, peer: str, digest: str) -> bool: ...
    def add_receipt(self, db: Tx, row: dict[str, Any]) -> None: ...
    def pending_created_between(self, start: str, end: str) -> int: ...
    def last_receipt_received_at(self, peer: str) -> str | None: ...
    def report_states(self, report_id: str, version: int) -> dict[tuple[str, int], str]: ...
    def first_release_time(
        self, peer: str, report_id: str, version: int, jwt_digest: str
    ) -> str | None: ...


class SqlOutboxRepo:
    def __init__(self, sql: Dialect) -> None:
        self._sql = sql

    def max_seq(self, peer: str) -> int | None:
        row = self._sql.execute("SELECT max(seq) FROM outbox WHERE peer = ?", (peer,)).fetchone()
        return None if row[0] is None else int(row[0])

    def max_seq_in_state(self, peer: str, state: str) -> int | None:
        row = self._sql.execute(
            "SELECT max(seq) FROM outbox WHERE peer = ? AND state = ?", (peer, state)
        ).fetchone()
        return None if row[0] is None else int(row[0])

    def add(self, db: Tx, values: Row) -> None:
        self._sql.run(
            db,
            "INSERT INTO outbox (peer, seq, envelope_id, kind, report_id, version, header, "
            "ciphertext, signature, digest, created_at, state) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'pending')",
            values,
        )

    def after(self, peer: str, after_seq: int, limit: int) -> list[Row]:
        """(seq, header, ciphertext, signature) after ``after_seq``, in seq order."""
        rows: list[Row] = self._sql.execute(
            "SELECT seq, header, ciphertext, signature FROM outbox "
            "WHERE peer = ? AND seq > ? ORDER BY seq LIMIT ?",
            (peer, after_seq, limit),
        ).fetchall()
        return rows

    def digests(self, peer: str, first: int, last: int) -> list[str]:
        rows = self._sql.execute(
            "SELECT digest FROM outbox WHERE peer = ? AND seq BETWEEN ? AND ? ORDER BY seq",
            (peer, first, last),
        ).fetchall()
        return [str(r[0]) for r in rows]

    def peers_sent(self, report_id: str) -> set[str]:
        return {
            r[0]
            for r in self._sql.execute(
                "SELECT DISTINCT peer FROM outbox WHERE report_id = ? AND kind = 'report'",
                (report_id,),
            )
        }

    def pending_count(self, peer: str, first: int, last: int) -> int:
        pending = self._sql.execute(
            "SELECT count(*) FROM outbox WHERE peer = ? AND seq BETWEEN ? AND ? "
            "AND state = 'pending'",
            (peer, first, last),
        ).fetchone()
        return int(pending[0])

    def mark_delivered(self, db: Tx, peer: str, first: int, last: int) -> None:
        self._sql.run(
            db,
            "UPDATE outbox SET state = 'delivered' "
            "WHERE peer = ? AND seq BETWEEN ? AND ? AND state = 'pending'",
            (peer, first, last),
        )

    def mark_rejected(self, db: Tx, peer: str, seq: int, code: str) -> None:
        self._sql.run(
            db,
            "UPDATE outbox SET state = 'rejected', code = ? WHERE peer = ? AND seq = ?",
            (code, peer, seq),
        )

    def receipt_received(self, peer: str, digest: str) -> bool:
        seen = self._sql.execute(
            "SELECT 1 FROM receipts WHERE peer = ? AND direction = 'received' AND digest = ?",
            (peer, digest),
        ).fetchone()
        return seen is not None

    def add_receipt(self, db: Tx, row: dict[str, Any]) -> None:
        self._sql.insert(db, "receipts", row)

    def first_release_time(
        self, peer: str, report_id: str, version: int, jwt_digest: str
    ) -> str | None:
        """When that version of our report (by its issuer JWT digest) was first queued."""
        row = self._sql.execute(
            "SELECT o.created_at FROM outbox o JOIN reports r ON r.report_id = o.report_id "
            "AND r.version = o.version WHERE o.peer = ? AND o.report_id = ? AND o.version = ? "
            "AND o.kind = 'report' AND r.issuer_jwt_digest = ? ORDER BY o.seq LIMIT 1",
            (peer, report_id, version, jwt_digest),
        ).fetchone()
        return None if row is None else str(row[0])

    def pending_created_between(self, start: str, end: str) -> int:
        """Envelopes no partner acknowledged yet, queued in [start, end)."""
        row = self._sql.execute(
            "SELECT count(*) FROM outbox WHERE state = 'pending' AND created_at >= ?"
            " AND created_at < ?",
            (start, end),
        ).fetchone()
        return int(row[0])

    def last_receipt_received_at(self, peer: str) -> str | None:
        at = self._sql.execute(
            "SELECT max(at) FROM receipts WHERE peer = ? AND direction = 'received'", (peer,)
        ).fetchone()[0]
        return None if at is None else str(at)

    def report_states(self, report_id: str, version: int) -> dict[tuple[str, int], str]:
        """(partner, seq) -> delivery state of each envelope of that report version."""
        return {
            (str(peer), int(seq)): str(state)
            for peer, seq, state in self._sql.execute(
                "SELECT peer, seq, state FROM outbox WHERE report_id = ? AND version = ? "
                "AND kind = 'report'",
                (report_id, version),
            )
        }
