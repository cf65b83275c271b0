"""The partners' trust store rows (``peers``, ``peer_revocations``): the
``keys.truststore.PeerRecords`` of the node."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from exchange.revocation import SignedRevocation
from keys.truststore import KeyRevocation, PeerRecord
from node.store.dialect import Dialect
from node.store.tx import Tx

if TYPE_CHECKING:
    from node.store.postgres import PgStore
    from node.store.sqlite import Store


class SqlPeerRecords:
    """``keys.truststore.PeerRecords`` over the ``peers`` table of either backend's store.
    Call inside a transaction."""

    SELECT = (
        "SELECT node, chain, fingerprint, card_version, status, revoked_from, tofu, added_at,"
        " updated_at, log_index FROM peers"
    )

    def __init__(self, store: Store | PgStore) -> None:
        self._sql = store.sql

    def get(self, node: str) -> PeerRecord | None:
        row = self._sql.execute(self.SELECT + " WHERE node = ?", (node,)).fetchone()
        return None if row is None else self._record(row)

    def put(self, record: PeerRecord) -> None:
        self._sql.upsert(
            None,
            "peers",
            {
                "node": record.node,
                "chain": record.chain,
                "fingerprint": record.fingerprint,
                "card_version": record.card_version,
                "status": record.status,
                "revoked_from": record.revoked_from,
                "tofu": int(record.tofu),
                "added_at": record.added_at,
                "updated_at": record.updated_at,
                "log_index": record.log_index,
            },
            "node",
        )

    def delete(self, node: str) -> None:
        self._sql.execute("DELETE FROM peers WHERE node = ?", (node,))

    def all(self) -> list[PeerRecord]:
        rows = self._sql.execute(self.SELECT + " ORDER BY node").fetchall()
        return [self._record(r) for r in rows]

    def key_revocations(self, node: str) -> list[KeyRevocation]:
        rows = self._sql.execute(
            "SELECT identity_key, revoked_from, statement, signature FROM peer_revocations"
            " WHERE peer = ? ORDER BY revoked_from",
            (node,),
        ).fetchall()
        return [
            KeyRevocation(bytes(k), str(t), SignedRevocation(bytes(st), bytes(sig)))
            for k, t, st, sig in rows
        ]

    def put_key_revocation(self, node: str, revocation: KeyRevocation) -> None:
        self._sql.execute(
            "INSERT INTO peer_revocations (peer, identity_key, revoked_from, statement, signature)"
            " VALUES (?, ?, ?, ?, ?)",
            (
                node,
                revocation.identity_key,
                revocation.revoked_from,
                revocation.signed.statement,
                revocation.signed.signature,
            ),
        )

    @staticmethod
    def _record(row: tuple[Any, ...]) -> PeerRecord:
        node, chain, fp, version, status, revoked_from, tofu, added, updated, log_index = row
        return PeerRecord(
            node=str(node),
            chain=bytes(chain),
            fingerprint=str(fp),
            card_version=int(version),
            status=str(status),
            revoked_from=None if revoked_from is None else str(revoked_from),
            tofu=bool(tofu),
            added_at=str(added),
            updated_at=str(updated),
            log_index=None if log_index is None else int(log_index),
        )


# The names node.store and the contract suite import: one class on both backends.
SqlitePeerRecords = PgPeerRecords = SqlPeerRecords


class PeersRepo(Protocol):
    """What the node keeps about partners beyond ``keys.truststore.PeerRecords``: each row's
    log binding, and the revocations of partners' replaced log/witness/TLS keys."""

    def bind_log_index(self, peer: str, log_index: int) -> None: ...
    def key_revocation_known(self, peer: str, kind: str, key: str) -> bool: ...
    def add_key_revocation(self, db: Tx, row: dict[str, Any]) -> None: ...
    def key_revocation_statements(self, peer: str) -> list[tuple[bytes, bytes]]: ...


class SqlPeersRepo:
    def __init__(self, sql: Dialect) -> None:
        self._sql = sql

    def bind_log_index(self, peer: str, log_index: int) -> None:
        """In the open transaction: the partner's row is the one entry ``log_index`` logged."""
        self._sql.execute("UPDATE peers SET log_index = ? WHERE node = ?", (log_index, peer))

    def key_revocation_known(self, peer: str, kind: str, key: str) -> bool:
        known = self._sql.execute(
            "SELECT 1 FROM peer_key_revocations WHERE peer = ? AND kind = ? AND key = ?",
            (peer, kind, key),
        ).fetchone()
        return known is not None

    def add_key_revocation(self, db: Tx, row: dict[str, Any]) -> None:
        self._sql.insert(db, "peer_key_revocations", row)

    def key_revocation_statements(self, peer: str) -> list[tuple[bytes, bytes]]:
        rows = self._sql.execute(
            "SELECT statement, signature FROM peer_key_revocations WHERE peer = ?"
            " ORDER BY log_index",
            (peer,),
        ).fetchall()
        return [(bytes(st), bytes(sig)) for st, sig in rows]
