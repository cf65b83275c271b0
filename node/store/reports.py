"""This node's sealed reports (``reports``), the idempotent submissions that produced them
(``submissions``) and each release decision's log entry (``releases``).

Storage only: sealing, release decisions and retraction rules are node/services/reports.py,
node/services/outbox.py and exchange/.
"""

from __future__ import annotations

from typing import Protocol

from node.store.dialect import Dialect
from node.store.tx import Row, Tx


class ReportsRepo(Protocol):
    def add(self, db: Tx, values: Row) -> None: ...
    def exists(self, report_id: str) -> bool: ...
    def sealed(self, report_id: str, version: int | None) -> tuple[int, bytes, bytes] | None: ...
    def latest(self, report_id: str) -> tuple[int, str, str | None] | None: ...
    def newest(self, limit: int) -> list[Row]: ...
    def ids_between(self, low: str, high: str) -> list[str]: ...
    def retracted_ids(self) -> set[str]: ...
    def set_retracted(self, db: Tx, report_id: str, at: str) -> None: ...
    def issuer_key(self, report_id: str, version: int) -> bytes: ...
    def latest_issuer_key(self, report_id: str | None) -> bytes: ...
    def key_and_times(self, report_id: str, version: int) -> tuple[bytes, str, str | None]: ...
    def versions(self, report_id: str) -> list[int]: ...
    def sop_tlp(self, report_id: str, version: int) -> tuple[str, str] | None: ...
    def add_submission(
        self, db: Tx, idempotency_key: str, report_id: str, version: int, at: str
    ) -> None: ...
    def submission(self, idempotency_key: str) -> tuple[str, int] | None: ...
    def add_release(
        self, db: Tx, report_id: str, version: int, peer: str, log_index: int
    ) -> None: ...
    def release_events(self, report_id: str, version: int) -> list[bytes]: ...


class SqlReportsRepo:
    def __init__(self, sql: Dialect) -> None:
        self._sql = sql

    def add(self, db: Tx, values: Row) -> None:
        self._sql.run(
            db,
            "INSERT INTO reports (report_id, version, sop, tlp, issuer_jwt_digest, issuer_key, "
            "sealed, fields, sealed_at, supersedes) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            values,
        )

    def exists(self, report_id: str) -> bool:
        return (
            self._sql.execute("SELECT 1 FROM reports WHERE report_id = ?", (report_id,)).fetchone()
            is not None
        )

    def sealed(self, report_id: str, version: int | None) -> tuple[int, bytes, bytes] | None:
        """(version, issuer_key, sealed) of the named version, or of the latest."""
        sql = "SELECT version, issuer_key, sealed FROM reports WHERE report_id = ?"
        args: tuple[object, ...] = (report_id,)
        if version is not None:
            sql += " AND version = ?"
            args = (report_id, version)
        row = self._sql.execute(sql + " ORDER BY version DESC LIMIT 1", args).fetchone()
        return None if row is None else (int(row[0]), bytes(row[1]), bytes(row[2]))

    def latest(self, report_id: str) -> tuple[int, str, str | None] | None:
        """(version, issuer_jwt_digest, retracted_at) of the latest version."""
        row = self._sql.execute(
            "SELECT version, issuer_jwt_digest, retracted_at FROM reports WHERE report_id = ? "
            "ORDER BY version DESC LIMIT 1",
            (report_id,),
        ).fetchone()
        return (
            None
            if row is None
            else (int(row[0]), str(row[1]), None if row[2] is None else str(row[2]))
        )

    def newest(self, limit: int) -> list[Row]:
        """(report_id, version, sop, tlp, issuer_jwt_digest, fields, sealed_at), newest first."""
        rows: list[Row] = self._sql.execute(
            "SELECT report_id, version, sop, tlp, issuer_jwt_digest, fields, sealed_at "
            "FROM reports ORDER BY sealed_at DESC, report_id LIMIT ?",
            (limit,),
        ).fetchall()
        return rows

    def ids_between(self, low: str, high: str) -> list[str]:
        rows = self._sql.execute(
            "SELECT DISTINCT report_id FROM reports WHERE report_id >= ? AND report_id < ? "
            "ORDER BY report_id LIMIT 2",
            (low, high),
        ).fetchall()
        return [str(r[0]) for r in rows]

    def retracted_ids(self) -> set[str]:
        return {
            r[0]
            for r in self._sql.execute(
                "SELECT report_id FROM reports WHERE retracted_at IS NOT NULL"
            )
        }

    def set_retracted(self, db: Tx, report_id: str, at: str) -> None:
        self._sql.run(
            db, "UPDATE reports SET retracted_at = ? WHERE report_id = ?", (at, report_id)
        )

    def issuer_key(self, report_id: str, version: int) -> bytes:
        return bytes(
            self._sql.execute(
                "SELECT issuer_key FROM reports WHERE report_id = ? AND version = ?",
                (report_id, version),
            ).fetchone()[0]
        )

    def latest_issuer_key(self, report_id: str | None) -> bytes:
        return bytes(
            self._sql.execute(
                "SELECT issuer_key FROM reports WHERE report_id = ? ORDER BY version DESC",
                (report_id,),
            ).fetchone()[0]
        )

    def key_and_times(self, report_id: str, version: int) -> tuple[bytes, str, str | None]:
        """(issuer_key, sealed_at, retracted_at) of one version."""
        key = self._sql.execute(
            "SELECT issuer_key, sealed_at, retracted_at FROM reports "
            "WHERE report_id = ? AND version = ?",
            (report_id, version),
        ).fetchone()
        return bytes(key[0]), key[1], key[2]

    def versions(self, report_id: str) -> list[int]:
        return [
            int(r[0])
            for r in self._sql.execute(
                "SELECT version FROM reports WHERE report_id = ? ORDER BY version",
                (report_id,),
            )
        ]

    def sop_tlp(self, report_id: str, version: int) -> tuple[str, str] | None:
        row = self._sql.execute(
            "SELECT sop, tlp FROM reports WHERE report_id = ? AND version = ?",
            (report_id, version),
        ).fetchone()
        return None if row is None else (str(row[0]), str(row[1]))

    def add_submission(
        self, db: Tx, idempotency_key: str, report_id: str, version: int, at: str
    ) -> None:
        self._sql.run(
            db,
            "INSERT INTO submissions (idempotency_key, report_id, version, at) VALUES (?, ?, ?, ?)",
            (idempotency_key, report_id, version, at),
        )

    def submission(self, idempotency_key: str) -> tuple[str, int] | None:
        row = self._sql.execute(
            "SELECT report_id, version FROM submissions WHERE idempotency_key = ?",
            (idempotency_key,),
        ).fetchone()
        return None if row is None else (str(row[0]), int(row[1]))

    def add_release(self, db: Tx, report_id: str, version: int, peer: str, log_index: int) -> None:
        self._sql.run(
            db,
            "INSERT INTO releases (report_id, version, peer, log_index) VALUES (?, ?, ?, ?)",
            (report_id, version, peer, log_index),
        )

    def release_events(self, report_id: str, version: int) -> list[bytes]:
        """The log events of one version's release decisions, by partner."""
        rows = self._sql.execute(
            "SELECT l.event FROM releases r JOIN log_leaves l ON l.idx = r.log_index "
            "WHERE r.report_id = ? AND r.version = ? ORDER BY r.peer",
            (report_id, version),
        ).fetchall()
        return [bytes(data) for (data,) in rows]
