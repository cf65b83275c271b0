"""The partners' trust store rows (``peers``, ``peer_revocations``): the
``keys.truststore.PeerRecords`` of the node."""

from __future__ import annotations

from typing import Any

from exchange.revocation import SignedRevocation
from keys.truststore import KeyRevocation, PeerRecord
from node.store.sqlite import Store


class SqlitePeerRecords:
    """``keys.truststore.PeerRecords`` over the ``peers`` table. Call inside a transaction."""

    SELECT = (
        "SELECT node, chain, fingerprint, card_version, status, revoked_from, tofu, added_at,"
        " updated_at, log_index FROM peers"
    )

    def __init__(self, store: Store) -> None:
        self._store = store

    def get(self, node: str) -> PeerRecord | None:
        row = self._store.conn.execute(self.SELECT + " WHERE node = ?", (node,)).fetchone()
        return None if row is None else self._record(row)

    def put(self, record: PeerRecord) -> None:
        self._store.db.table("peers").upsert(
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
            pk="node",
        )

    def delete(self, node: str) -> None:
        self._store.conn.execute("DELETE FROM peers WHERE node = ?", (node,))

    def all(self) -> list[PeerRecord]:
        rows = self._store.conn.execute(self.SELECT + " ORDER BY node").fetchall()
        return [self._record(r) for r in rows]

    def key_revocations(self, node: str) -> list[KeyRevocation]:
        rows = self._store.conn.execute(
            "SELECT identity_key, revoked_from, statement, signature FROM peer_revocations"
            " WHERE peer = ? ORDER BY revoked_from",
            (node,),
        ).fetchall()
        return [
            KeyRevocation(bytes(k), str(t), SignedRevocation(bytes(st), bytes(sig)))
            for k, t, st, sig in rows
        ]

    def put_key_revocation(self, node: str, revocation: KeyRevocation) -> None:
        self._store.conn.execute(
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
