"""Bilateral agreements signed by both parties (``agreements``).

Storage only: which agreement is in force, and the checks of each row against its signed
bytes and the log, are node/services/agreements.py and exchange/agreement.py.
"""

from __future__ import annotations

from typing import Any, Protocol

from node.store.dialect import Dialect
from node.store.tx import Row, Tx


class AgreementsRepo(Protocol):
    def exists(self, digest: str) -> bool: ...
    def add(self, db: Tx, row: dict[str, Any]) -> None: ...
    def rows(self, peer: str | None) -> list[Row]: ...
    def row(self, digest: str) -> Row | None: ...


class SqlAgreementsRepo:
    def __init__(self, sql: Dialect) -> None:
        self._sql = sql

    def exists(self, digest: str) -> bool:
        row = self._sql.execute("SELECT 1 FROM agreements WHERE digest = ?", (digest,)).fetchone()
        return row is not None

    def add(self, db: Tx, row: dict[str, Any]) -> None:
        self._sql.insert(db, "agreements", row)

    def rows(self, peer: str | None) -> list[Row]:
        """(digest, peer, id, version, not_before, not_after, stored_at, signed), by partner
        and newest end first."""
        sql = (
            "SELECT digest, peer, id, version, not_before, not_after, stored_at, signed "
            "FROM agreements"
        )
        args: tuple[Any, ...] = ()
        if peer is not None:
            sql += " WHERE peer = ?"
            args = (peer,)
        rows: list[Row] = self._sql.execute(sql + " ORDER BY peer, not_after DESC", args).fetchall()
        return rows

    def row(self, digest: str) -> Row | None:
        row: Row | None = self._sql.execute(
            "SELECT digest, peer, id, version, not_before, not_after, stored_at, signed "
            "FROM agreements WHERE digest = ?",
            (digest,),
        ).fetchone()
        return row
