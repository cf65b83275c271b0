"""The TAXII feed's state in the node database (migration 19): consumers, the STIX objects
of received items in the order the feed added them, and how far each partner's inbox has
been indexed. Every SQL statement of the feed is here; node/services/feed.py holds the rules.

SQL text is built only from fixed fragments and ``?`` placeholders (hence the S608
exemptions); every value is bound. Pages are keyset queries on ``feed_page (peer,
date_added, id)``: a page starts where the last one ended and reads forward along the
index, never counting or skipping rows.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from node.store.tx import Tx

if TYPE_CHECKING:
    from node.store.postgres import PgStore
    from node.store.sqlite import Store


@dataclass(frozen=True)
class Consumer:
    name: str
    recipient_class: str
    collections: tuple[str, ...]  # partner node ids; empty: every partner
    own_organisation: bool
    cert_fingerprint: str
    basic_hash: str | None
    created_at: str
    revoked_at: str | None


@dataclass(frozen=True)
class FeedRow:
    id: int
    peer: str
    stix_id: str
    type: str
    version: str
    date_added: str
    tlp: str
    sop: str
    envelope_id: str
    fields: tuple[str, ...]  # the item's disclosed field names ('' rows: none)
    blob: bytes


@dataclass(frozen=True)
class Visibility:
    """Which rows a consumer may see: ``pairs`` of (tlp, sop) allowed. Shared rows have
    sop = '': a TLP marking definition (tlp = its level) is visible when some SOP at that
    level is; an origin identity (tlp = '') when anything is."""

    pairs: frozenset[tuple[str, str]]
    agreement_digest: str | None = None  # the agreement whose onward rules allowed them

    def sql(self, alias: str) -> tuple[str, list[Any]]:
        if not self.pairs:
            return "FALSE", []
        keys = sorted(f"{tlp}|{sop}" for tlp, sop in self.pairs)
        levels = sorted({tlp for tlp, _sop in self.pairs} | {""})
        a = alias
        return (
            f"(({a}.sop = '' AND {a}.tlp IN ({', '.join('?' * len(levels))})) OR "
            f"({a}.tlp || '|' || {a}.sop) IN ({', '.join('?' * len(keys))}))",
            [*levels, *keys],
        )


_COLUMNS = "f.id, f.peer, f.stix_id, f.type, f.version, f.date_added, f.tlp, f.sop, " + (
    "f.envelope_id, f.fields, f.object"
)


def _row(r: Sequence[Any]) -> FeedRow:
    return FeedRow(
        int(r[0]),
        r[1],
        r[2],
        r[3],
        r[4],
        r[5],
        r[6],
        r[7],
        r[8],
        tuple(json.loads(r[9])),
        bytes(r[10]),
    )


class FeedRepo(Protocol):
    """The feed's storage, as node/services/feed.py uses it (``FeedStore`` on either backend)."""

    def add_consumer(self, db: Tx, c: Consumer) -> None: ...
    def consumer(self, name: str) -> Consumer | None: ...
    def consumer_by_certificate(self, fingerprint: str) -> Consumer | None: ...
    def consumers(self) -> list[Consumer]: ...
    def revoke_consumer(self, db: Tx, name: str, at: str) -> None: ...
    def indexed_seq(self, peer: str) -> int: ...
    def set_indexed_seq(self, db: Tx, peer: str, seq: int) -> None: ...
    def peers_with_items(self) -> list[str]: ...
    def last_date_added(self) -> str | None: ...
    def has_object(self, peer: str, stix_id: str, version: str) -> bool: ...
    def add_object(
        self,
        db: Tx,
        *,
        peer: str,
        stix_id: str,
        type: str,
        version: str,
        date_added: str,
        tlp: str,
        sop: str,
        envelope_id: str,
        fields: Sequence[str],
        blob: bytes,
    ) -> None: ...
    def page(
        self,
        peer: str,
        visible: Visibility,
        *,
        after: tuple[str, int] | None,
        added_after: str | None,
        ids: Sequence[str] = (),
        types: Sequence[str] = (),
        versions: Sequence[str] = ("last",),
        limit: int,
    ) -> list[FeedRow]: ...
    def versions(self, peer: str, stix_id: str, visible: Visibility) -> list[FeedRow]: ...


class FeedStore:
    """The feed's repository over the node's ``Store`` or ``PgStore`` (its ``Dialect``
    spells each statement for the backend: no ``INDEXED BY`` and an explicit ``id`` on
    PostgreSQL). Writes take the caller's ``db`` (inside ``transaction()``); reads use
    the connection."""

    def __init__(self, store: Store | PgStore) -> None:
        self._store = store
        self._sql = store.sql

    # -- consumers ----------------------------------------------------------------------
    _CONSUMER = (
        "SELECT name, class, collections, own_organisation, cert_fingerprint, basic_hash, "
        "created_at, revoked_at FROM feed_consumers"
    )

    @staticmethod
    def _consumer(r: Sequence[Any]) -> Consumer:
        return Consumer(r[0], r[1], tuple(json.loads(r[2])), bool(r[3]), r[4], r[5], r[6], r[7])

    def add_consumer(self, db: Tx, c: Consumer) -> None:
        self._sql.run(
            db,
            "INSERT INTO feed_consumers (name, class, collections, own_organisation, "
            "cert_fingerprint, basic_hash, created_at, revoked_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, NULL)",
            (
                c.name,
                c.recipient_class,
                json.dumps(sorted(c.collections)),
                int(c.own_organisation),
                c.cert_fingerprint,
                c.basic_hash,
                c.created_at,
            ),
        )

    def consumer(self, name: str) -> Consumer | None:
        r = self._sql.execute(self._CONSUMER + " WHERE name = ?", (name,)).fetchone()
        return None if r is None else self._consumer(r)

    def consumer_by_certificate(self, fingerprint: str) -> Consumer | None:
        r = self._sql.execute(
            self._CONSUMER + " WHERE cert_fingerprint = ?", (fingerprint,)
        ).fetchone()
        return None if r is None else self._consumer(r)

    def consumers(self) -> list[Consumer]:
        return [self._consumer(r) for r in self._sql.execute(self._CONSUMER + " ORDER BY name")]

    def revoke_consumer(self, db: Tx, name: str, at: str) -> None:
        self._sql.run(
            db,
            "UPDATE feed_consumers SET revoked_at = ?, basic_hash = NULL "
            "WHERE name = ? AND revoked_at IS NULL",
            (at, name),
        )

    # -- indexing -----------------------------------------------------------------------
    def indexed_seq(self, peer: str) -> int:
        r = self._sql.execute(
            "SELECT last_seq FROM feed_indexed WHERE peer = ?", (peer,)
        ).fetchone()
        return 0 if r is None else int(r[0])

    def set_indexed_seq(self, db: Tx, peer: str, seq: int) -> None:
        self._sql.run(
            db,
            "INSERT INTO feed_indexed (peer, last_seq) VALUES (?, ?) "
            "ON CONFLICT (peer) DO UPDATE SET last_seq = excluded.last_seq",
            (peer, seq),
        )

    def peers_with_items(self) -> list[str]:
        """Partners this node trusts (each a collection)."""
        return [str(r[0]) for r in self._sql.execute("SELECT node FROM peers ORDER BY node")]

    def last_date_added(self) -> str | None:
        r = self._sql.execute("SELECT max(date_added) FROM feed_objects").fetchone()
        return None if r[0] is None else str(r[0])

    def has_object(self, peer: str, stix_id: str, version: str) -> bool:
        return (
            self._sql.execute(
                "SELECT 1 FROM feed_objects WHERE peer = ? AND stix_id = ? AND version = ?",
                (peer, stix_id, version),
            ).fetchone()
            is not None
        )

    def add_object(
        self,
        db: Tx,
        *,
        peer: str,
        stix_id: str,
        type: str,
        version: str,
        date_added: str,
        tlp: str,
        sop: str,
        envelope_id: str,
        fields: Sequence[str],
        blob: bytes,
    ) -> None:
        row: dict[str, Any] = {"peer": peer, "stix_id": stix_id, "type": type, "version": version}
        row |= {"date_added": date_added, "tlp": tlp, "sop": sop, "envelope_id": envelope_id}
        row |= {"fields": json.dumps(sorted(fields)), "object": blob}
        self._sql.insert(db, "feed_objects", row, number="id")

    # -- reading pages ------------------------------------------------------------------
    def page(
        self,
        peer: str,
        visible: Visibility,
        *,
        after: tuple[str, int] | None,
        added_after: str | None,
        ids: Sequence[str] = (),
        types: Sequence[str] = (),
        versions: Sequence[str] = ("last",),
        limit: int,
    ) -> list[FeedRow]:
        sql, args = self.page_sql(
            peer,
            visible,
            after=after,
            added_after=added_after,
            ids=ids,
            types=types,
            versions=versions,
            limit=limit,
        )
        return [_row(r) for r in self._sql.execute(sql, args)]

    def page_sql(
        self,
        peer: str,
        visible: Visibility,
        *,
        after: tuple[str, int] | None,
        added_after: str | None,
        ids: Sequence[str] = (),
        types: Sequence[str] = (),
        versions: Sequence[str] = ("last",),
        limit: int,
    ) -> tuple[str, list[Any]]:
        """The SQL of ``page`` (tests check its query plan).

        Up to ``limit`` visible rows of ``peer``'s collection in (date_added, id) order,
        after the keyset position ``after`` and strictly after ``added_after``.

        ``versions``: ``last``, ``first``, ``all`` or exact ``modified`` timestamps; last
        and first are among the versions this consumer may see."""
        seen, seen_args = visible.sql("f")
        where = ["f.peer = ?", seen]
        args: list[Any] = [peer, *seen_args]
        if after is not None:
            where.append("(f.date_added, f.id) > (?, ?)")
            args += [after[0], after[1]]
        if added_after is not None:
            where.append("f.date_added > ?")
            args.append(added_after)
        if ids:
            where.append(f"f.stix_id IN ({', '.join('?' * len(ids))})")
            args += list(ids)
        if types:
            where.append(f"f.type IN ({', '.join('?' * len(types))})")
            args += list(types)
        if "all" not in versions:
            alternatives: list[str] = []
            other, other_args = visible.sql("o")
            for mode, op in (("last", ">"), ("first", "<")):
                if mode in versions:
                    alternatives.append(
                        "NOT EXISTS (SELECT 1 FROM feed_objects o WHERE o.peer = f.peer AND "  # noqa: S608
                        f"o.stix_id = f.stix_id AND o.version {op} f.version AND {other})"
                    )
                    args += other_args
            exact = [v for v in versions if v not in ("last", "first")]
            if exact:
                alternatives.append(f"f.version IN ({', '.join('?' * len(exact))})")
                args += exact
            where.append("(" + " OR ".join(alternatives) + ")")
        sql = (
            f"SELECT {_COLUMNS} FROM feed_objects f INDEXED BY feed_page WHERE "  # noqa: S608
            + " AND ".join(where)
            + " ORDER BY f.date_added, f.id LIMIT ?"
        )
        return sql, [*args, limit]

    def versions(self, peer: str, stix_id: str, visible: Visibility) -> list[FeedRow]:
        """Every visible version of one object, oldest first."""
        seen, seen_args = visible.sql("f")
        rows = self._sql.execute(
            f"SELECT {_COLUMNS} FROM feed_objects f WHERE f.peer = ? AND f.stix_id = ? AND "  # noqa: S608
            f"{seen} ORDER BY f.version",
            (peer, stix_id, *seen_args),
        )
        return [_row(r) for r in rows]
