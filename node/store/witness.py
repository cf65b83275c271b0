"""What this node holds as a witness of its partners' logs: ``witness_state`` (the largest
checkpoint cosigned per partner, origin and log key) and ``witness_evidence``.

Storage only: which checkpoint may be cosigned (consistency, origin, revoked keys) is
node/services/witness.py and exchange/merkle.py.
"""

from __future__ import annotations

from typing import Any, Protocol

from node.store.dialect import Dialect


class WitnessRepo(Protocol):
    def held(self, partner: str, origin: str, log_key: str) -> tuple[int, bytes, bytes] | None: ...
    def largest(self, partner: str, origin: str) -> tuple[int, bytes, bytes] | None: ...
    def hold(
        self,
        partner: str,
        origin: str,
        log_key: str,
        size: int,
        root: bytes,
        note: bytes,
        at: str,
    ) -> None: ...
    def grown_at(self, partner: str, origin: str) -> str | None: ...
    def add_evidence(
        self,
        origin: str,
        partner: str,
        held_size: int,
        held_note: bytes,
        offered_note: bytes,
        reason: str,
        at: str,
    ) -> None: ...
    def evidence(self, origin: str) -> list[tuple[bytes, bytes, str]]: ...


class SqlWitnessRepo:
    """Writes run in the open transaction of the Store's connection."""

    def __init__(self, sql: Dialect) -> None:
        self._sql = sql

    def held(self, partner: str, origin: str, log_key: str) -> tuple[int, bytes, bytes] | None:
        """(size, root, note) held for that partner, origin and log key."""
        row = self._sql.execute(
            "SELECT size, root, note FROM witness_state WHERE partner = ? AND origin = ? "
            "AND log_key = ?",
            (partner, origin, log_key),
        ).fetchone()
        return None if row is None else (int(row[0]), bytes(row[1]), bytes(row[2]))

    def largest(self, partner: str, origin: str) -> tuple[int, bytes, bytes] | None:
        """(size, root, note) of the largest checkpoint held for the origin, any log key."""
        row = self._sql.execute(
            "SELECT size, root, note FROM witness_state WHERE partner = ? AND origin = ? "
            "ORDER BY size DESC LIMIT 1",
            (partner, origin),
        ).fetchone()
        return None if row is None else (int(row[0]), bytes(row[1]), bytes(row[2]))

    def hold(
        self,
        partner: str,
        origin: str,
        log_key: str,
        size: int,
        root: bytes,
        note: bytes,
        at: str,
    ) -> None:
        """Hold this checkpoint; ``grown_at`` moves only when the size grew."""
        self._sql.execute(
            "INSERT INTO witness_state (partner, origin, log_key, size, root, note, "
            "updated_at, grown_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT(partner, origin, log_key) DO UPDATE SET "
            "size = excluded.size, root = excluded.root, note = excluded.note, "
            "updated_at = excluded.updated_at, grown_at = CASE WHEN excluded.size > "
            "witness_state.size THEN excluded.grown_at ELSE witness_state.grown_at END",
            (partner, origin, log_key, size, root, note, at, at),
        )

    def grown_at(self, partner: str, origin: str) -> str | None:
        row = self._sql.execute(
            "SELECT max(grown_at) FROM witness_state WHERE partner = ? AND origin = ?",
            (partner, origin),
        ).fetchone()
        return None if row is None or row[0] is None else str(row[0])

    def add_evidence(
        self,
        origin: str,
        partner: str,
        held_size: int,
        held_note: bytes,
        offered_note: bytes,
        reason: str,
        at: str,
    ) -> None:
        row: dict[str, Any] = {"origin": origin, "partner": partner, "held_size": held_size}
        row |= {"held_note": held_note, "offered_note": offered_note, "reason": reason, "at": at}
        self._sql.insert(None, "witness_evidence", row, number="id")

    def evidence(self, origin: str) -> list[tuple[bytes, bytes, str]]:
        rows = self._sql.execute(
            "SELECT held_note, offered_note, reason FROM witness_evidence "
            "WHERE origin = ? ORDER BY id",
            (origin,),
        ).fetchall()
        return [(bytes(a), bytes(b), str(c)) for a, b, c in rows]
