"""The receiving side's rows: ``inbound`` envelopes, ``inbox`` items, ``cursors``,
``receipts`` sent, ``evidence`` of equivocations and its suppressed counter.

Storage only: which rows to keep, what to check on them and when to refuse are rules of
node/services/inbox.py and exchange/receiver.py.
"""

from __future__ import annotations

from typing import Any, Protocol

from node.store.dialect import Dialect
from node.store.tx import Row, Tx

# The columns of an inbox item row, in this order (node/services/inbox.py reads them by position).
ITEM_SQL = (
    "SELECT i.peer, i.seq, i.envelope_id, i.kind, i.report_id, i.version, i.issuer, i.sop, i.tlp, "
    "i.fields, i.transformed, i.received_at, 0, i.issuer_jwt_digest, i.sealed FROM inbox i"
)
ITEM_JWT_DIGEST, ITEM_SEALED = 13, 14
# The columns ``add_item`` writes, in the order of its values.
ITEM_COLUMNS = (
    "peer", "seq", "envelope_id", "kind", "report_id", "version", "issuer", "sop", "tlp",
    "fields", "transformed", "issuer_jwt_digest", "sealed", "received_at",
)  # fmt: skip


class InboxRepo(Protocol):
    def cursor(self, peer: str) -> int | None: ...
    def acknowledged(self, peer: str) -> int | None: ...
    def set_cursor(self, db: Tx, peer: str, last_applied: int, updated_at: str) -> None: ...
    def set_acknowledged(self, db: Tx, peer: str, through: int) -> None: ...
    def inbound(self, peer: str, seq: int) -> tuple[bytes, bytes, bytes] | None: ...
    def add_inbound(
        self,
        db: Tx,
        peer: str,
        seq: int,
        header: bytes,
        ciphertext: bytes,
        signature: bytes,
        digest: str,
        status: str,
        code: str | None,
        received_at: str,
    ) -> None: ...
    def rejections(self, peer: str | None) -> list[tuple[str, int, str]]: ...
    def add_item(self, db: Tx, values: Row) -> None: ...
    def items_of_report_by(self, report_id: str, issuer: str) -> list[Row]: ...
    def items_not_report(self, peer: str) -> list[Row]: ...
    def items_not_report_of(self, peer: str, report_id: str) -> list[Row]: ...
    def acks(self, peer: str | None, report_id: str | None) -> list[Row]: ...
    def reports(self, peer: str | None, before: str | None, limit: int) -> list[Row]: ...
    def reports_received_after(self, peer: str, since: str, limit: int) -> list[Row]: ...
    def items_after(self, peer: str, after_seq: int, limit: int) -> list[Row]: ...
    def last_rowid(self) -> int: ...
    def rows_after(self, after: int, limit: int) -> list[Row]: ...
    def items_of_report(self, peer: str, report_id: str) -> list[Row]: ...
    def item(self, envelope_id: str) -> Row | None: ...
    def envelope_ids_between(self, low: str, high: str) -> list[str]: ...
    def add_receipt(self, db: Tx, row: dict[str, Any]) -> None: ...
    def sent_receipts_after(self, peer: str, after_first_seq: int) -> list[Row]: ...
    def last_sent_receipt(self, peer: str) -> tuple[bytes, bytes] | None: ...
    def equivocations_since(self, peer: str, since: str) -> int: ...
    def count_suppressed(self, db: Tx, peer: str, at: str) -> None: ...
    def first_equivocation(self, peer: str, seq: int) -> tuple[int, str] | None: ...
    def count_repeat(self, db: Tx, evidence_id: int) -> None: ...
    def add_evidence(self, db: Tx, row: dict[str, Any]) -> None: ...
    def jwt_digest(self, peer: str, envelope_id: str) -> str: ...
    def evidence_counts(self) -> list[tuple[str, int]]: ...
    def suppressed_counts(self) -> list[tuple[str, int]]: ...
    def first_report_peer(self, db: Tx, report_id: str) -> str | None: ...
    def sop_tlp(self, peer: str, envelope_id: str) -> tuple[str, str] | None: ...


class SqlInboxRepo:
    def __init__(self, sql: Dialect) -> None:
        self._sql = sql

    # -- cursors ----------------------------------------------------------------------------
    def cursor(self, peer: str) -> int | None:
        row = self._sql.execute(
            "SELECT last_applied FROM cursors WHERE peer = ?", (peer,)
        ).fetchone()
        return None if row is None else int(row[0])

    def acknowledged(self, peer: str) -> int | None:
        row = self._sql.execute(
            "SELECT acknowledged FROM cursors WHERE peer = ?", (peer,)
        ).fetchone()
        return None if row is None else int(row[0])

    def set_cursor(self, db: Tx, peer: str, last_applied: int, updated_at: str) -> None:
        self._sql.upsert(
            db,
            "cursors",
            {"peer": peer, "last_applied": last_applied, "updated_at": updated_at},
            "peer",
        )

    def set_acknowledged(self, db: Tx, peer: str, through: int) -> None:
        self._sql.run(
            db,
            "UPDATE cursors SET acknowledged = ? WHERE peer = ? AND acknowledged < ?",
            (through, peer, through),
        )

    # -- inbound envelopes --------------------------------------------------------------------
    def inbound(self, peer: str, seq: int) -> tuple[bytes, bytes, bytes] | None:
        row = self._sql.execute(
            "SELECT header, ciphertext, signature FROM inbound WHERE peer = ? AND seq = ?",
            (peer, seq),
        ).fetchone()
        return None if row is None else (bytes(row[0]), bytes(row[1]), bytes(row[2]))

    def add_inbound(
        self,
        db: Tx,
        peer: str,
        seq: int,
        header: bytes,
        ciphertext: bytes,
        signature: bytes,
        digest: str,
        status: str,
        code: str | None,
        received_at: str,
    ) -> None:
        self._sql.run(
            db,
            "INSERT INTO inbound (peer, seq, header, ciphertext, signature, digest, status, code, "
            "received_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (peer, seq, header, ciphertext, signature, digest, status, code, received_at),
        )

    def rejections(self, peer: str | None) -> list[tuple[str, int, str]]:
        sql = "SELECT peer, seq, code FROM inbound WHERE status = 'rejected'"
        args: tuple[Any, ...] = ()
        if peer:
            sql += " AND peer = ?"
            args = (peer,)
        return [
            (r[0], int(r[1]), r[2]) for r in self._sql.execute(sql + " ORDER BY peer, seq", args)
        ]

    # -- inbox items --------------------------------------------------------------------------
    def add_item(self, db: Tx, values: Row) -> None:
        """One plain INSERT (sqlite-utils' insert ran ~4 statements per row); PostgreSQL
        fills the ``rowid`` SQLite gives the row."""
        row = dict(zip(ITEM_COLUMNS, values, strict=True))
        self._sql.insert(db, "inbox", row, number="rowid")

    def _rows(self, sql: str, args: Any) -> list[Row]:
        return self._sql.all(sql, args)

    def items_of_report_by(self, report_id: str, issuer: str) -> list[Row]:
        return self._rows(ITEM_SQL + " WHERE i.report_id = ? AND i.issuer = ?", (report_id, issuer))

    def items_not_report(self, peer: str) -> list[Row]:
        return self._rows(ITEM_SQL + " WHERE i.peer = ? AND i.kind != 'report'", (peer,))

    def items_not_report_of(self, peer: str, report_id: str) -> list[Row]:
        return self._rows(
            ITEM_SQL
            + " WHERE i.peer = ? AND i.report_id = ? AND i.kind != 'report' ORDER BY i.seq",
            (peer, report_id),
        )

    def acks(self, peer: str | None, report_id: str | None) -> list[Row]:
        sql, args = ITEM_SQL + " WHERE i.kind != 'report'", []
        if peer is not None:
            sql, args = sql + " AND i.peer = ?", [peer]
        if report_id is not None:
            sql, args = sql + " AND i.report_id = ?", [*args, report_id]
        return self._rows(sql + " ORDER BY i.peer, i.seq", args)

    def reports(self, peer: str | None, before: str | None, limit: int) -> list[Row]:
        where, args = ["i.kind = 'report'"], []
        if peer:
            where.append("i.peer = ?")
            args.append(peer)
        if before:
            where.append("i.envelope_id < ?")
            args.append(before)
        return self._rows(
            ITEM_SQL + " WHERE " + " AND ".join(where) + " ORDER BY i.envelope_id DESC LIMIT ?",
            (*args, limit),
        )

    def reports_received_after(self, peer: str, since: str, limit: int) -> list[Row]:
        return self._rows(
            ITEM_SQL + " WHERE i.peer = ? AND i.kind = 'report' AND i.received_at > ? "
            "ORDER BY i.received_at DESC LIMIT ?",
            (peer, since, limit),
        )

    def items_after(self, peer: str, after_seq: int, limit: int) -> list[Row]:
        return self._rows(
            ITEM_SQL + " WHERE i.peer = ? AND i.seq > ? ORDER BY i.seq LIMIT ?",
            (peer, after_seq, limit),
        )

    def last_rowid(self) -> int:
        return int(self._sql.execute("SELECT coalesce(max(rowid), 0) FROM inbox").fetchone()[0])

    def rows_after(self, after: int, limit: int) -> list[Row]:
        """Item rows after rowid ``after``, each with its rowid first."""
        return self._rows(
            "SELECT i.rowid, " + ITEM_SQL.removeprefix("SELECT ") + " WHERE i.rowid > ? "
            "ORDER BY i.rowid LIMIT ?",
            (after, limit),
        )

    def items_of_report(self, peer: str, report_id: str) -> list[Row]:
        return self._rows(
            ITEM_SQL + " WHERE i.peer = ? AND i.report_id = ? ORDER BY i.seq",
            (peer, report_id),
        )

    def item(self, envelope_id: str) -> Row | None:
        row = self._sql.execute(ITEM_SQL + " WHERE i.envelope_id = ?", (envelope_id,)).fetchone()
        return None if row is None else row

    def envelope_ids_between(self, low: str, high: str) -> list[str]:
        rows = self._sql.execute(
            "SELECT envelope_id FROM inbox WHERE envelope_id >= ? AND envelope_id < ? "
            "ORDER BY envelope_id LIMIT 2",
            (low, high),
        ).fetchall()
        return [str(r[0]) for r in rows]

    # -- receipts sent ------------------------------------------------------------------------
    def add_receipt(self, db: Tx, row: dict[str, Any]) -> None:
        self._sql.insert(db, "receipts", row)

    def sent_receipts_after(self, peer: str, after_first_seq: int) -> list[Row]:
        """(last_seq, statement, signature) of the receipts sent ``peer`` past a first seq."""
        return self._rows(
            "SELECT last_seq, statement, signature FROM receipts "
            "WHERE peer = ? AND direction = 'sent' AND first_seq > ? ORDER BY first_seq",
            (peer, after_first_seq),
        )

    def last_sent_receipt(self, peer: str) -> tuple[bytes, bytes] | None:
        row = self._sql.execute(
            "SELECT statement, signature FROM receipts WHERE peer = ? AND direction = 'sent' "
            "ORDER BY last_seq DESC LIMIT 1",
            (peer,),
        ).fetchone()
        return None if row is None else (bytes(row[0]), bytes(row[1]))

    # -- evidence -----------------------------------------------------------------------------
    def equivocations_since(self, peer: str, since: str) -> int:
        row = self._sql.execute(
            "SELECT count(*) FROM evidence WHERE peer = ? AND kind = 'equivocation' AND at > ?",
            (peer, since),
        ).fetchone()
        return int(row[0])

    def count_suppressed(self, db: Tx, peer: str, at: str) -> None:
        self._sql.run(
            db,
            "INSERT INTO evidence_suppressed (peer, count, last_at) VALUES (?, 1, ?) "
            "ON CONFLICT (peer) DO UPDATE SET count = evidence_suppressed.count + 1, "
            "last_at = excluded.last_at",
            (peer, at),
        )

    def first_equivocation(self, peer: str, seq: int) -> tuple[int, str] | None:
        kept = self._sql.execute(
            "SELECT id, incoming_digest FROM evidence WHERE peer = ? AND kind = 'equivocation' "
            "AND seq = ? ORDER BY id LIMIT 1",
            (peer, seq),
        ).fetchone()
        return None if kept is None else (int(kept[0]), str(kept[1]))

    def count_repeat(self, db: Tx, evidence_id: int) -> None:
        self._sql.run(db, "UPDATE evidence SET repeats = repeats + 1 WHERE id = ?", (evidence_id,))

    def add_evidence(self, db: Tx, row: dict[str, Any]) -> None:
        self._sql.insert(db, "evidence", row, number="id")

    # -- single columns other modules need ------------------------------------------------------
    def jwt_digest(self, peer: str, envelope_id: str) -> str:
        row = self._sql.execute(
            "SELECT issuer_jwt_digest FROM inbox WHERE peer = ? AND envelope_id = ?",
            (peer, envelope_id),
        ).fetchone()
        return str(row[0])

    def first_report_peer(self, db: Tx, report_id: str) -> str | None:
        """The partner whose report ``report_id`` arrived first, read in ``db``."""
        row = self._sql.run(
            db,
            "SELECT peer FROM inbox WHERE report_id = ? AND kind = 'report' ORDER BY seq LIMIT 1",
            (report_id,),
        ).fetchone()
        return None if row is None else str(row[0])

    def sop_tlp(self, peer: str, envelope_id: str) -> tuple[str, str] | None:
        row = self._sql.execute(
            "SELECT sop, tlp FROM inbox WHERE peer = ? AND envelope_id = ?",
            (peer, envelope_id),
        ).fetchone()
        return None if row is None else (str(row[0]), str(row[1]))

    # -- counts for Status ----------------------------------------------------------------------
    def evidence_counts(self) -> list[tuple[str, int]]:
        """Per partner: equivocations kept as evidence, each with its repeats (P07)."""
        return [
            (str(peer), int(count))
            for peer, count in self._sql.execute(
                "SELECT peer, count(*) + sum(repeats) FROM evidence GROUP BY peer"
            )
        ]

    def suppressed_counts(self) -> list[tuple[str, int]]:
        """Per partner: equivocations beyond the alarm budget (L06)."""
        return [
            (str(peer), int(count))
            for peer, count in self._sql.execute("SELECT peer, count FROM evidence_suppressed")
        ]
