"""The node's own state: ``meta`` (key/value settings), ``own_cards`` (its card chain) and
the signed revocations of its own keys (``own_revocations``, ``own_key_revocations``).

Storage only: what a card or revocation must say is exchange/, when one is made is
node/home.py.
"""

from __future__ import annotations

from typing import Any, Protocol

from node.store.dialect import Dialect
from node.store.tx import Tx


class MetaRepo(Protocol):
    def get(self, key: str) -> str | None: ...
    def set(self, db: Tx, key: str, value: str) -> None: ...
    def own_cards(self) -> list[bytes]: ...
    def add_own_card(self, db: Tx, version: int, signed: bytes) -> None: ...
    def own_revocations(self) -> list[tuple[bytes, bytes]]: ...
    def own_revocation(self, identity_key: bytes) -> bytes | None: ...
    def add_own_revocation(self, db: Tx, row: dict[str, Any]) -> None: ...
    def own_key_revocations(self) -> list[tuple[bytes, bytes]]: ...
    def own_key_revocation(self, kind: str, key: str) -> bytes | None: ...
    def add_own_key_revocation(self, db: Tx, row: dict[str, Any]) -> None: ...
    def own_revocation_count(self) -> int: ...


class SqlMetaRepo:
    def __init__(self, sql: Dialect) -> None:
        self._sql = sql

    # -- meta ---------------------------------------------------------------------------------
    def get(self, key: str) -> str | None:
        row = self._sql.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set(self, db: Tx, key: str, value: str) -> None:
        self._sql.upsert(db, "meta", {"key": key, "value": value}, "key")

    # -- our own card chain -------------------------------------------------------------------
    def own_cards(self) -> list[bytes]:
        rows = self._sql.execute("SELECT signed FROM own_cards ORDER BY version").fetchall()
        return [bytes(r[0]) for r in rows]

    def add_own_card(self, db: Tx, version: int, signed: bytes) -> None:
        self._sql.insert(db, "own_cards", {"version": version, "signed": signed})

    # -- revocations of our own keys ----------------------------------------------------------
    def own_revocations(self) -> list[tuple[bytes, bytes]]:
        """(statement, signature) of our identity keys' revocations, oldest first."""
        rows = self._sql.execute(
            "SELECT statement, signature FROM own_revocations ORDER BY log_index"
        ).fetchall()
        return [(bytes(st), bytes(sig)) for st, sig in rows]

    def own_revocation(self, identity_key: bytes) -> bytes | None:
        row = self._sql.execute(
            "SELECT statement FROM own_revocations WHERE identity_key = ?", (identity_key,)
        ).fetchone()
        return None if row is None else bytes(row[0])

    def add_own_revocation(self, db: Tx, row: dict[str, Any]) -> None:
        self._sql.insert(db, "own_revocations", row)

    def own_key_revocations(self) -> list[tuple[bytes, bytes]]:
        """(statement, signature) of our other keys' revocations (ADR 0018), oldest first."""
        rows = self._sql.execute(
            "SELECT statement, signature FROM own_key_revocations ORDER BY log_index"
        ).fetchall()
        return [(bytes(st), bytes(sig)) for st, sig in rows]

    def own_key_revocation(self, kind: str, key: str) -> bytes | None:
        row = self._sql.execute(
            "SELECT statement FROM own_key_revocations WHERE kind = ? AND key = ?",
            (kind, key),
        ).fetchone()
        return None if row is None else bytes(row[0])

    def add_own_key_revocation(self, db: Tx, row: dict[str, Any]) -> None:
        self._sql.insert(db, "own_key_revocations", row)

    def own_revocation_count(self) -> int:
        row = self._sql.execute(
            "SELECT (SELECT count(*) FROM own_revocations)"
            " + (SELECT count(*) FROM own_key_revocations)"
        ).fetchone()
        return int(row[0])
