"""The warning loop's rows (ADR 0022): ``deadlines`` in both directions, ``replies``,
``acks_sent`` (sealed at rest) and ``inbox_read``.

Storage only: which rule applies, when a step is overdue and what an acknowledgement says
are rules of node/services/warning.py and exchange/.
"""

from __future__ import annotations

from typing import Any, Protocol

from node.store.dialect import Dialect
from node.store.tx import Row, Tx

# The columns of a deadline row, in this order (node/services/warning.py reads them by position).
DEADLINE_SQL = (
    "SELECT direction, peer, envelope_id, seq, report_id, version, acknowledge_s, respond_s, "
    "started_at, acked_at, replied_at, ack_overdue_at, respond_overdue_at FROM deadlines"
)

_MARK_OVERDUE = {
    "acknowledge": "UPDATE deadlines SET ack_overdue_at = ? WHERE direction = ? AND peer = ? "
    "AND envelope_id = ? AND ack_overdue_at IS NULL",
    "respond": "UPDATE deadlines SET respond_overdue_at = ? WHERE direction = ? AND peer = ? "
    "AND envelope_id = ? AND respond_overdue_at IS NULL",
}


_WHICH = {
    "unreported": "((acked_at IS NULL AND ack_overdue_at IS NULL) OR (respond_s IS NOT NULL "
    "AND replied_at IS NULL AND respond_overdue_at IS NULL))",
    "unfinished": "(acked_at IS NULL OR (respond_s IS NOT NULL AND replied_at IS NULL))",
}


class LoopRepo(Protocol):
    def add_deadline(
        self,
        db: Tx,
        direction: str,
        peer: str,
        envelope_id: str,
        seq: int,
        report_id: str,
        version: int,
        acknowledge_s: int,
        respond_s: int | None,
        started_at: str,
    ) -> None: ...
    def deadlines(
        self,
        direction: str | None,
        peer: str | None,
        envelope_id: str | None,
        report_id: str | None,
        which: str | None = None,
    ) -> list[Row]: ...
    def add_ack_received(self, db: Tx, digest: str, peer: str, envelope_id: str) -> None: ...
    def ack_received(self, digest: str, peer: str) -> bool: ...
    def deadline_acked(
        self, db: Tx, direction: str, peer: str, envelope_id: str, acked_at: str
    ) -> None: ...
    def deadline_replied(
        self, db: Tx, direction: str, peer: str, report_id: str, replied_at: str
    ) -> None: ...
    def deadlines_started(self, db: Tx, peer: str, first: int, last: int, at: str) -> None: ...
    def mark_overdue(
        self, db: Tx, step: str, at: str, direction: str, peer: str, envelope_id: str
    ) -> bool: ...
    def add_reply(
        self,
        db: Tx,
        direction: str,
        peer: str,
        report_id: str,
        version: int,
        envelope_id: str,
        in_reply_to: str,
        at: str,
    ) -> None: ...
    def replies(self, in_reply_to: str) -> list[Row]: ...
    def add_ack_sent(self, db: Tx, values: Row) -> None: ...
    def acks_sent(self, item_envelope_id: str | None) -> list[Row]: ...
    def mark_read(self, db: Tx, envelope_id: str, at: str) -> None: ...
    def read_ids(self) -> set[str]: ...


class SqlLoopRepo:
    def __init__(self, sql: Dialect) -> None:
        self._sql = sql

    # -- deadlines ----------------------------------------------------------------------------
    def add_deadline(
        self,
        db: Tx,
        direction: str,
        peer: str,
        envelope_id: str,
        seq: int,
        report_id: str,
        version: int,
        acknowledge_s: int,
        respond_s: int | None,
        started_at: str,
    ) -> None:
        """Once per (direction, partner, envelope): a second insert changes nothing."""
        values = (peer, envelope_id, seq, report_id, version, acknowledge_s, respond_s, started_at)
        if direction == "in":
            self._sql.run(
                db,
                "INSERT OR IGNORE INTO deadlines (direction, peer, envelope_id, seq, report_id, "
                "version, acknowledge_s, respond_s, started_at) "
                "VALUES ('in', ?, ?, ?, ?, ?, ?, ?, ?)",
                values,
            )
        else:
            self._sql.run(
                db,
                "INSERT OR IGNORE INTO deadlines (direction, peer, envelope_id, seq, report_id, "
                "version, acknowledge_s, respond_s, started_at) "
                "VALUES ('out', ?, ?, ?, ?, ?, ?, ?, ?)",
                values,
            )

    def deadlines(
        self,
        direction: str | None,
        peer: str | None,
        envelope_id: str | None,
        report_id: str | None,
        which: str | None = None,
    ) -> list[Row]:
        """Deadline rows (``DEADLINE_SQL`` columns) matching every filter given, by start.
        ``which="unreported"``: a step neither done nor reported overdue yet (what the
        overdue check reads); ``"unfinished"``: a step not done (what status counts). Both
        leave years of finished history unread."""
        where, args = [], []
        if which is not None:
            where.append(_WHICH[which])
        if direction is not None:
            where.append("direction = ?")
            args.append(direction)
        for column, value in (
            ("peer", peer),
            ("envelope_id", envelope_id),
            ("report_id", report_id),
        ):
            if value is not None:
                where.append(f"{column} = ?")
                args.append(value)
        sql = DEADLINE_SQL + (" WHERE " + " AND ".join(where) if where else "")
        rows: list[Row] = self._sql.execute(sql + " ORDER BY started_at", args).fetchall()
        return rows

    def add_ack_received(self, db: Tx, digest: str, peer: str, envelope_id: str) -> None:
        self._sql.run(
            db,
            "INSERT INTO acks_received (digest, peer, envelope_id) VALUES (?, ?, ?)",
            (digest, peer, envelope_id),
        )

    def ack_received(self, digest: str, peer: str) -> bool:
        row = self._sql.execute(
            "SELECT 1 FROM acks_received WHERE digest = ? AND peer = ?", (digest, peer)
        ).fetchone()
        return row is not None

    def deadline_acked(
        self, db: Tx, direction: str, peer: str, envelope_id: str, acked_at: str
    ) -> None:
        if direction == "in":
            self._sql.run(
                db,
                "UPDATE deadlines SET acked_at = ? WHERE direction = 'in' AND peer = ? "
                "AND envelope_id = ? AND acked_at IS NULL",
                (acked_at, peer, envelope_id),
            )
        else:
            self._sql.run(
                db,
                "UPDATE deadlines SET acked_at = ? WHERE direction = 'out' AND peer = ? "
                "AND envelope_id = ? AND acked_at IS NULL",
                (acked_at, peer, envelope_id),
            )

    def deadline_replied(
        self, db: Tx, direction: str, peer: str, report_id: str, replied_at: str
    ) -> None:
        if direction == "in":
            self._sql.run(
                db,
                "UPDATE deadlines SET replied_at = ? WHERE direction = 'in' AND peer = ? "
                "AND report_id = ? AND replied_at IS NULL",
                (replied_at, peer, report_id),
            )
        else:
            self._sql.run(
                db,
                "UPDATE deadlines SET replied_at = ? WHERE direction = 'out' AND peer = ? "
                "AND report_id = ? AND replied_at IS NULL",
                (replied_at, peer, report_id),
            )

    def deadlines_started(self, db: Tx, peer: str, first: int, last: int, at: str) -> None:
        """Outgoing deadlines of seqs first..last start at ``at`` unless they started later."""
        self._sql.run(
            db,
            "UPDATE deadlines SET started_at = CASE WHEN started_at > ? THEN started_at ELSE ? END "
            "WHERE direction = 'out' AND peer = ? AND seq BETWEEN ? AND ?",
            (at, at, peer, first, last),
        )

    def mark_overdue(
        self, db: Tx, step: str, at: str, direction: str, peer: str, envelope_id: str
    ) -> bool:
        """Record that ``step`` went overdue; False when it was recorded before."""
        changed = self._sql.run(
            db, _MARK_OVERDUE[step], (at, direction, peer, envelope_id)
        ).rowcount
        return bool(changed)

    # -- replies ------------------------------------------------------------------------------
    def add_reply(
        self,
        db: Tx,
        direction: str,
        peer: str,
        report_id: str,
        version: int,
        envelope_id: str,
        in_reply_to: str,
        at: str,
    ) -> None:
        values = (peer, report_id, version, envelope_id, in_reply_to, at)
        if direction == "in":
            self._sql.run(
                db,
                "INSERT OR IGNORE INTO replies (direction, peer, report_id, version, envelope_id, "
                "in_reply_to, at) VALUES ('in', ?, ?, ?, ?, ?, ?)",
                values,
            )
        else:
            self._sql.run(
                db,
                "INSERT OR IGNORE INTO replies (direction, peer, report_id, version, envelope_id, "
                "in_reply_to, at) VALUES ('out', ?, ?, ?, ?, ?, ?)",
                values,
            )

    def replies(self, in_reply_to: str) -> list[Row]:
        """(direction, peer, report_id, version, envelope_id, at) of the replies, by time."""
        rows: list[Row] = self._sql.execute(
            "SELECT direction, peer, report_id, version, envelope_id, at FROM replies "
            "WHERE in_reply_to = ? ORDER BY at",
            (in_reply_to,),
        ).fetchall()
        return rows

    # -- acknowledgements sent ----------------------------------------------------------------
    def add_ack_sent(self, db: Tx, values: Row) -> None:
        self._sql.run(
            db,
            "INSERT INTO acks_sent (ack_envelope_id, peer, seq, item_envelope_id, report_id, "
            "version, status, acked_at, sealed) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            values,
        )

    def acks_sent(self, item_envelope_id: str | None) -> list[Row]:
        """(ack_envelope_id, peer, item_envelope_id, status, acked_at, sealed), by time."""
        sql = (
            "SELECT ack_envelope_id, peer, item_envelope_id, status, acked_at, sealed "
            "FROM acks_sent"
        )
        args: tuple[Any, ...] = ()
        if item_envelope_id is not None:
            sql += " WHERE item_envelope_id = ?"
            args = (item_envelope_id,)
        rows: list[Row] = self._sql.execute(
            sql + " ORDER BY acked_at, ack_envelope_id", args
        ).fetchall()
        return rows

    # -- read marks ---------------------------------------------------------------------------
    def mark_read(self, db: Tx, envelope_id: str, at: str) -> None:
        self._sql.run(
            db,
            "INSERT OR IGNORE INTO inbox_read (envelope_id, at) VALUES (?, ?)",
            (envelope_id, at),
        )

    def read_ids(self) -> set[str]:
        return {str(r[0]) for r in self._sql.execute("SELECT envelope_id FROM inbox_read")}
