"""One contract, two backends: every repository Protocol of node/store, written through its
methods and read back on SQLite (node/store/sqlite.py) and on PostgreSQL
(node/store/postgres.py), with the same answers from both; a failed transaction leaves no
row on either; and both backends' migrations end with the same tables and columns
(docs/adr/0023; issue 16)."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from psycopg import sql

from exchange.revocation import SignedRevocation
from keys.truststore import KeyRevocation, PeerRecord, PeerRecords
from node.store import MIGRATIONS, SqlitePeerRecords, Store, Tx
from node.store.feed import Consumer, FeedRepo, FeedStore, Visibility
from node.store.postgres import (
    PG_MIGRATIONS,
    PG_ONLY_COLUMNS,
    PgFeedRepo,
    PgPeerRecords,
    PgStore,
)
from tests.postgres import ROLE, SUPERUSER, PgCluster

AnyStore = Store | PgStore
_names = itertools.count()


@pytest.fixture(scope="module")
def migrated(pg_cluster: PgCluster) -> str:
    """A database PgStore migrated once; each test gets a copy (CREATE DATABASE … TEMPLATE),
    which takes a fraction of the time twenty migrations do."""
    template = "contract_template"
    PgStore.open(pg_cluster.createdb(template)).close()
    return template


@pytest.fixture
def stores(tmp_path: Path, pg_cluster: PgCluster, migrated: str) -> Iterator[tuple[Store, PgStore]]:
    name = f"contract_{next(_names)}"
    with pg_cluster.connect(dbname="postgres", user=SUPERUSER) as conn:
        conn.execute(
            sql.SQL("CREATE DATABASE {} OWNER {} TEMPLATE {}").format(
                sql.Identifier(name), sql.Identifier(ROLE), sql.Identifier(migrated)
            )
        )
    lite = Store.open(tmp_path, create=True)
    pg = PgStore.open(pg_cluster.dsn_for(name))
    try:
        yield lite, pg
    finally:
        lite.close()
        pg.close()


def peer_records(store: AnyStore) -> PeerRecords:
    return SqlitePeerRecords(store) if isinstance(store, Store) else PgPeerRecords(store)


def feed(store: AnyStore) -> FeedRepo:
    return FeedStore(store) if isinstance(store, Store) else PgFeedRepo(store)


def tables(store: AnyStore) -> dict[str, list[str]]:
    """Each table's columns in order (PostgreSQL's explicit rowid columns left out)."""
    if isinstance(store, Store):
        names = [
            r[0]
            for r in store.conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name"
            )
        ]
        return {
            t: [c[1] for c in store.conn.execute("SELECT * FROM pragma_table_info(?)", (t,))]
            for t in names
        }
    rows = store.conn.execute(
        "SELECT table_name, column_name FROM information_schema.columns "
        "WHERE table_schema = 'public' ORDER BY table_name, ordinal_position"
    ).fetchall()
    out: dict[str, list[str]] = {}
    for table, column in rows:
        if (table, column) not in PG_ONLY_COLUMNS:
            out.setdefault(table, []).append(column)
    return dict(sorted(out.items()))


def row_counts(store: AnyStore) -> dict[str, int]:
    counts = {}
    for table in tables(store):
        if table != "_migrations":
            row = store.conn.execute(f"SELECT count(*) FROM {table}").fetchone()
            assert row is not None
            counts[table] = int(row[0])
    return counts


# -- one scenario per repository: writes in one transaction, then every read -------------------


def write_meta(store: AnyStore, db: Tx) -> None:
    store.meta.set(db, "node.id", "node-a.example")
    store.meta.set(db, "policy.digest", "old")
    store.meta.set(db, "policy.digest", "new")
    store.meta.add_own_card(db, 2, b"card two")
    store.meta.add_own_card(db, 1, b"card \x00one")
    for n in (2, 1):
        store.meta.add_own_revocation(
            db,
            {
                "identity_key": bytes([n]) * 32,
                "revoked_from": f"2026-0{n}-01T00:00:00Z",
                "statement": b"st%d" % n,
                "signature": b"sig%d" % n,
                "log_index": 10 - n,
            },
        )
    store.meta.add_own_key_revocation(
        db,
        {
            "kind": "log",
            "key": "k1",
            "revoked_from": "2026-01-01T00:00:00Z",
            "statement": b"kst",
            "signature": b"ksig",
            "log_index": 3,
        },
    )


def read_meta(store: AnyStore) -> list[Any]:
    m = store.meta
    return [
        m.get("node.id"),
        m.get("policy.digest"),
        m.get("absent"),
        m.own_cards(),
        m.own_revocations(),
        m.own_revocation(bytes([1]) * 32),
        m.own_revocation(b"none"),
        m.own_key_revocations(),
        m.own_key_revocation("log", "k1"),
        m.own_key_revocation("tls", "k1"),
        m.own_revocation_count(),
    ]


def _record(node: str, status: str, log_index: int | None = None) -> PeerRecord:
    return PeerRecord(
        node=node,
        chain=b"chain of " + node.encode(),
        fingerprint="fp-" + node,
        card_version=1,
        status=status,
        revoked_from=None,
        tofu=True,
        added_at="2026-01-01T00:00:00Z",
        updated_at="2026-01-02T00:00:00Z",
        log_index=log_index,
    )


def write_peers(store: AnyStore, db: Tx) -> None:
    records = peer_records(store)
    records.put(_record("node-b.example", "trusted"))
    records.put(_record("node-c.example", "trusted"))
    records.put(_record("node-b.example", "revoked", 4))
    records.put(_record("node-d.example", "trusted"))
    records.delete("node-d.example")
    records.put_key_revocation(
        "node-b.example",
        KeyRevocation(b"\x01" * 32, "2026-02-01T00:00:00Z", SignedRevocation(b"st", b"sig")),
    )
    store.peers.bind_log_index("node-c.example", 7)
    for index, key in ((9, "k2"), (8, "k1")):
        store.peers.add_key_revocation(
            db,
            {
                "peer": "node-b.example",
                "kind": "witness",
                "key": key,
                "revoked_from": "2026-03-01T00:00:00Z",
                "statement": b"st-" + key.encode(),
                "signature": b"sig",
                "log_index": index,
            },
        )


def read_peers(store: AnyStore) -> list[Any]:
    records = peer_records(store)
    return [
        records.get("node-b.example"),
        records.get("node-d.example"),
        records.all(),
        records.key_revocations("node-b.example"),
        store.peers.key_revocation_known("node-b.example", "witness", "k1"),
        store.peers.key_revocation_known("node-b.example", "log", "k1"),
        store.peers.key_revocation_statements("node-b.example"),
    ]


def write_agreements(store: AnyStore, db: Tx) -> None:
    for digest, peer, not_after in (
        ("d1", "node-b.example", "2026-06-01"),
        ("d2", "node-b.example", "2027-06-01"),
        ("d3", "node-c.example", "2026-09-01"),
    ):
        store.agreements.add(
            db,
            {
                "digest": digest,
                "peer": peer,
                "id": "agr-" + digest,
                "version": 1,
                "signed": b"signed " + digest.encode(),
                "not_before": "2026-01-01",
                "not_after": not_after,
                "stored_at": "2026-01-01T00:00:00Z",
            },
        )


def read_agreements(store: AnyStore) -> list[Any]:
    a = store.agreements
    return [a.exists("d1"), a.exists("d9"), a.rows(None), a.rows("node-c.example"), a.row("d2")]


def _report(report_id: str, version: int, at: str) -> tuple[Any, ...]:
    return (report_id, version, "sop", "amber", f"jwt-{report_id}-{version}", b"key%d" % version,
            b"sealed", '{"f": 1}', at, None if version == 1 else f"{report_id}/1")  # fmt: skip


def write_reports(store: AnyStore, db: Tx) -> None:
    store.reports.add(db, _report("r-1", 1, "2026-01-01T00:00:01Z"))
    store.reports.add(db, _report("r-1", 2, "2026-01-01T00:00:03Z"))
    store.reports.add(db, _report("r-2", 1, "2026-01-01T00:00:02Z"))
    store.reports.set_retracted(db, "r-2", "2026-01-02T00:00:00Z")
    store.reports.add_submission(db, "idem-1", "r-1", 2, "2026-01-01T00:00:03Z")
    store.log.add_leaves([(0, b'{"kind":"release"}', b"h0", b"t0")])
    store.reports.add_release(db, "r-1", 2, "node-b.example", 0)


def read_reports(store: AnyStore) -> list[Any]:
    r = store.reports
    return [
        r.exists("r-1"),
        r.exists("r-9"),
        r.sealed("r-1", None),
        r.sealed("r-1", 1),
        r.sealed("r-9", None),
        r.latest("r-1"),
        r.latest("r-2"),
        r.newest(2),
        r.ids_between("r-", "r-2"),
        r.retracted_ids(),
        r.issuer_key("r-1", 1),
        r.latest_issuer_key("r-1"),
        r.key_and_times("r-2", 1),
        r.versions("r-1"),
        r.sop_tlp("r-1", 2),
        r.sop_tlp("r-1", 3),
        r.submission("idem-1"),
        r.submission("idem-9"),
        r.release_events("r-1", 2),
    ]


def write_outbox(store: AnyStore, db: Tx) -> None:
    store.reports.add(db, _report("r-1", 1, "2026-01-01T00:00:01Z"))
    for seq in (1, 2, 3):
        store.outbox.add(
            db,
            ("node-b.example", seq, f"env-{seq}", "report" if seq < 3 else "ack", "r-1", 1,
             b"h%d" % seq, b"c%d" % seq, b"s%d" % seq, f"dig-{seq}", f"2026-01-01T00:00:0{seq}Z"),
        )  # fmt: skip
    store.outbox.mark_delivered(db, "node-b.example", 1, 1)
    store.outbox.mark_rejected(db, "node-b.example", 2, "policy.refused")
    store.outbox.add_receipt(
        db,
        {
            "peer": "node-b.example",
            "direction": "received",
            "first_seq": 1,
            "last_seq": 1,
            "statement": b"receipt",
            "signature": b"sig",
            "digest": "rdig",
            "at": "2026-01-01T00:01:00Z",
        },
    )


def read_outbox(store: AnyStore) -> list[Any]:
    o = store.outbox
    return [
        o.max_seq("node-b.example"),
        o.max_seq("node-z.example"),
        o.max_seq_in_state("node-b.example", "delivered"),
        o.max_seq_in_state("node-b.example", "gone"),
        o.after("node-b.example", 1, 10),
        o.digests("node-b.example", 1, 3),
        o.peers_sent("r-1"),
        o.pending_count("node-b.example", 1, 3),
        o.receipt_received("node-b.example", "rdig"),
        o.receipt_received("node-b.example", "other"),
        o.pending_created_between("2026-01-01T00:00:00Z", "2026-01-02T00:00:00Z"),
        o.last_receipt_received_at("node-b.example"),
        o.last_receipt_received_at("node-z.example"),
        o.report_states("r-1", 1),
        o.first_release_time("node-b.example", "r-1", 1, "jwt-r-1-1"),
        o.first_release_time("node-b.example", "r-1", 1, "jwt-other"),
    ]


def write_inbox(store: AnyStore, db: Tx) -> None:
    i = store.inbox
    i.set_cursor(db, "node-b.example", 3, "2026-01-01T00:00:00Z")
    i.set_acknowledged(db, "node-b.example", 2)
    i.set_cursor(db, "node-b.example", 4, "2026-01-01T00:00:01Z")  # keeps acknowledged
    i.set_acknowledged(db, "node-b.example", 1)  # never backwards
    i.add_inbound(db, "node-b.example", 1, b"h", b"c", b"s", "d1", "applied", None, "t1")
    i.add_inbound(db, "node-b.example", 2, b"h2", b"c2", b"s2", "d2", "rejected", "bad", "t2")
    for seq, kind, report in ((2, "report", "r-1"), (1, "report", "r-2"), (3, "ack", "r-1")):
        i.add_item(
            db,
            ("node-b.example", seq, f"env-{seq}", kind, report, 1, "node-b.example", "sop",
             "green", "{}", "{}", f"jwt-{seq}", b"sealed", f"2026-01-01T00:00:0{seq}Z"),
        )  # fmt: skip
    for first, last in ((1, 2), (3, 4)):
        i.add_receipt(
            db,
            {
                "peer": "node-b.example",
                "direction": "sent",
                "first_seq": first,
                "last_seq": last,
                "statement": b"st%d" % first,
                "signature": b"sig",
                "digest": f"rd{first}",
                "at": "2026-01-01T00:00:00Z",
            },
        )
    for seq in (5, 5, 6):
        kept = i.first_equivocation("node-b.example", seq)
        if kept is None:
            i.add_evidence(
                db,
                {
                    "peer": "node-b.example",
                    "kind": "equivocation",
                    "seq": seq,
                    "held_digest": "held",
                    "incoming_digest": f"in-{seq}",
                    "incoming": b"incoming",
                    "at": f"2026-01-01T00:00:0{seq}Z",
                },
            )
        else:
            i.count_repeat(db, kept[0])
    i.count_suppressed(db, "node-b.example", "2026-01-01T00:00:07Z")
    i.count_suppressed(db, "node-b.example", "2026-01-01T00:00:08Z")


def read_inbox(store: AnyStore) -> list[Any]:
    i, b = store.inbox, "node-b.example"
    return [
        i.cursor(b),
        i.cursor("node-z.example"),
        i.acknowledged(b),
        i.inbound(b, 2),
        i.inbound(b, 9),
        i.rejections(None),
        i.rejections(b),
        i.items_of_report_by("r-1", b),
        i.items_not_report(b),
        i.items_not_report_of(b, "r-1"),
        i.acks(None, None),
        i.acks(b, "r-1"),
        i.reports(None, None, 10),
        i.reports(b, "env-2", 10),
        i.reports_received_after(b, "2026-01-01T00:00:00Z", 10),
        i.items_after(b, 1, 10),
        i.last_rowid(),
        i.rows_after(1, 10),
        i.items_of_report(b, "r-1"),
        i.item("env-3"),
        i.item("env-9"),
        i.envelope_ids_between("env-", "env-3"),
        i.sent_receipts_after(b, 1),
        i.last_sent_receipt(b),
        i.equivocations_since(b, "2026-01-01T00:00:00Z"),
        i.first_equivocation(b, 5),
        i.jwt_digest(b, "env-1"),
        i.sop_tlp(b, "env-1"),
        i.sop_tlp(b, "env-9"),
        i.evidence_counts(),
        i.suppressed_counts(),
    ]


POLICY = b'{"kind":"policy.changed","policy_digest":"p1"}'


def write_log(store: AnyStore, db: Tx) -> None:
    log = store.log
    log.add_leaves(
        [
            (0, b'{"kind":"trust.added","node":"b"}', b"h0", b"t0"),
            (1, POLICY, b"h1", b"t1"),
            (2, b'{"kind":"report.sealed"}', b"h2", b"t2"),
        ]
    )
    log.add_subtrees([(0, 0, b"s00"), (0, 1, b"s01"), (1, 0, b"s10")])
    log.add_checkpoint(2, b"root2", b"note2", "2026-01-01T00:00:02Z")
    log.add_checkpoint(3, b"root3", b"note3", "2026-01-01T00:00:03Z")
    log.add_cosignature(3, "node-b.example", "line-b", "2026-01-01T00:00:04Z")
    log.add_cosignature(3, "node-b.example", "line-again", "2026-01-01T00:00:05Z")  # ignored
    log.add_cosignature(2, "node-c.example", "line-c", "2026-01-01T00:00:04Z")


def read_log(store: AnyStore) -> list[Any]:
    log = store.log
    reader = log.subtrees()
    kinds = [k[:8].ljust(8, b'"') for k in (b"policy.c", b"trust.ad")] + [b"-" * 8] * 4
    return [
        log.max_index(),
        log.event(1),
        log.event(9),
        log.event_and_tag(2),
        log.leaf_hash(0),
        log.events(1, 5),
        list(log.leaves_from(1)),
        log.events_of_kinds(kinds, 0, 3),
        log.events_of_kinds(kinds, 1, 2),
        reader.subtree(1, 0),
        reader.reads,
        log.subtrees_between(0, 0, 1),
        log.latest_checkpoint(),
        log.checkpoints(),
        log.checkpoint_at(2),
        log.checkpoint_at(9),
        log.cosignatures(3),
        log.cosigned_size("node-b.example"),
        log.cosigned_size("node-z.example"),
        list(log.export_rows(2)),
    ]


def write_loop(store: AnyStore, db: Tx) -> None:
    loop, b = store.loop, "node-b.example"
    for direction in ("in", "out", "in"):
        loop.add_deadline(db, direction, b, "env-1", 1, "r-1", 1, 3600, 7200,
                          "2026-01-01T00:00:00Z")  # fmt: skip
    loop.add_deadline(db, "out", b, "env-2", 2, "r-2", 1, 60, None, "2026-01-01T00:00:05Z")
    loop.add_ack_received(db, "ackdig", b, "env-1")
    loop.deadline_acked(db, "in", b, "env-1", "2026-01-01T00:10:00Z")
    loop.deadline_replied(db, "out", b, "r-1", "2026-01-01T00:20:00Z")
    loop.deadlines_started(db, b, 1, 2, "2026-01-01T00:00:03Z")
    store.meta.set(db, "first", str(loop.mark_overdue(db, "acknowledge", "t9", "out", b, "env-2")))
    store.meta.set(db, "again", str(loop.mark_overdue(db, "acknowledge", "t9", "out", b, "env-2")))
    for _ in range(2):
        loop.add_reply(db, "in", b, "r-1", 1, "reply-1", "env-1", "2026-01-01T00:30:00Z")
    loop.add_reply(db, "out", b, "r-1", 1, "reply-2", "env-1", "2026-01-01T00:31:00Z")
    loop.add_ack_sent(db, ("ack-1", b, 1, "env-1", "r-1", 1, "received", "2026-01-01T00:10:00Z",
                           b"sealed ack"))  # fmt: skip
    loop.mark_read(db, "env-1", "2026-01-01T01:00:00Z")
    loop.mark_read(db, "env-1", "2026-01-01T02:00:00Z")


def read_loop(store: AnyStore) -> list[Any]:
    loop, b = store.loop, "node-b.example"
    return [
        loop.deadlines(None, None, None, None),
        loop.deadlines("out", b, None, "r-1"),
        loop.deadlines(None, None, "env-2", None, which="unreported"),
        loop.deadlines(None, None, None, None, which="unfinished"),
        loop.ack_received("ackdig", b),
        loop.ack_received("ackdig", "node-z.example"),
        store.meta.get("first"),
        store.meta.get("again"),
        loop.replies("env-1"),
        loop.acks_sent(None),
        loop.acks_sent("env-9"),
        loop.read_ids(),
    ]


def write_witness(store: AnyStore, db: Tx) -> None:
    w, b, o = store.witness, "node-b.example", "node-b.example.accord/log"
    w.hold(b, o, "key1", 3, b"root3", b"note3", "2026-01-01T00:00:00Z")
    w.hold(b, o, "key1", 3, b"root3", b"note3", "2026-01-01T00:00:01Z")  # same size: grown_at stays
    w.hold(b, o, "key2", 5, b"root5", b"note5", "2026-01-01T00:00:02Z")
    w.add_evidence(o, b, 3, b"held", b"offered", "inconsistent", "2026-01-01T00:00:03Z")
    w.add_evidence(o, b, 5, b"held5", b"offered5", "rolled back", "2026-01-01T00:00:04Z")


def read_witness(store: AnyStore) -> list[Any]:
    w, b, o = store.witness, "node-b.example", "node-b.example.accord/log"
    return [
        w.held(b, o, "key1"),
        w.held(b, o, "key9"),
        w.largest(b, o),
        w.largest(b, "other"),
        w.grown_at(b, o),
        w.grown_at(b, "other"),
        w.evidence(o),
    ]


def write_feed(store: AnyStore, db: Tx) -> None:
    f = feed(store)
    for name, fp in (("soc", "fp1"), ("ir", "fp2")):
        f.add_consumer(db, Consumer(name, "internal", ("node-b.example",), name == "soc", fp,
                                    "hash", "2026-01-01T00:00:00Z", None))  # fmt: skip
    f.revoke_consumer(db, "ir", "2026-01-02T00:00:00Z")
    f.set_indexed_seq(db, "node-b.example", 3)
    f.set_indexed_seq(db, "node-b.example", 5)
    for stix, version, added, tlp in (
        ("indicator--1", "2026-01-01T00:00:00.000Z", "2026-01-01T00:00:01Z", "green"),
        ("indicator--1", "2026-01-02T00:00:00.000Z", "2026-01-01T00:00:02Z", "green"),
        ("indicator--2", "2026-01-01T00:00:00.000Z", "2026-01-01T00:00:03Z", "amber"),
        ("marking-definition--g", "2017-01-20T00:00:00.000Z", "2026-01-01T00:00:04Z", "green"),
    ):
        f.add_object(db, peer="node-b.example", stix_id=stix, type=stix.split("--")[0],
                     version=version, date_added=added, tlp=tlp,
                     sop="" if stix.startswith("marking") else "sop", envelope_id="env-1",
                     fields=["b", "a"], blob=b"object " + stix.encode())  # fmt: skip


def read_feed(store: AnyStore) -> list[Any]:
    f, b = feed(store), "node-b.example"
    green = Visibility(frozenset({("green", "sop")}))
    nothing = Visibility(frozenset())
    return [
        f.consumer("soc"),
        f.consumer("nobody"),
        f.consumer_by_certificate("fp2"),
        f.consumers(),
        f.indexed_seq(b),
        f.indexed_seq("node-z.example"),
        f.peers_with_items(),
        f.last_date_added(),
        f.has_object(b, "indicator--1", "2026-01-01T00:00:00.000Z"),
        f.has_object(b, "indicator--9", "2026-01-01T00:00:00.000Z"),
        f.page(b, green, after=None, added_after=None, limit=10),
        f.page(b, green, after=("2026-01-01T00:00:01Z", 1), added_after=None, limit=1),
        f.page(
            b, green, after=None, added_after="2026-01-01T00:00:01Z", versions=("all",), limit=10
        ),
        f.page(
            b,
            green,
            after=None,
            added_after=None,
            ids=["indicator--1"],
            types=["indicator"],
            versions=("first", "2026-01-02T00:00:00.000Z"),
            limit=10,
        ),
        f.page(b, nothing, after=None, added_after=None, limit=10),
        f.versions(b, "indicator--1", green),
        f.versions(b, "indicator--1", nothing),
    ]


Scenario = tuple[Callable[[AnyStore, Tx], None], Callable[[AnyStore], list[Any]]]
SCENARIOS: dict[str, Scenario] = {
    "meta": (write_meta, read_meta),
    "peers": (write_peers, read_peers),
    "agreements": (write_agreements, read_agreements),
    "reports": (write_reports, read_reports),
    "outbox": (write_outbox, read_outbox),
    "inbox": (write_inbox, read_inbox),
    "log": (write_log, read_log),
    "loop": (write_loop, read_loop),
    "witness": (write_witness, read_witness),
    "feed": (write_feed, read_feed),
}


class Boom(Exception):
    pass


@pytest.mark.parametrize("aggregate", sorted(SCENARIOS))
def test_both_backends_read_back_what_was_written_and_agree(
    aggregate: str, stores: tuple[Store, PgStore]
) -> None:
    write, read = SCENARIOS[aggregate]
    results = []
    for store in stores:
        with store.transaction() as db:
            write(store, db)
            inside = read(store)
        after = read(store)
        assert after == inside  # a read in the transaction saw its writes; the commit kept them
        results.append(after)
    lite, pg = results
    assert lite == pg
    assert any(value not in (None, [], set(), {}, 0, False) for value in lite)


@pytest.mark.parametrize("aggregate", sorted(SCENARIOS))
def test_a_failed_transaction_leaves_nothing_on_either_backend(
    aggregate: str, stores: tuple[Store, PgStore]
) -> None:
    write, read = SCENARIOS[aggregate]
    for store in stores:
        before = row_counts(store)
        with pytest.raises(Boom), store.transaction() as db:
            write(store, db)
            assert row_counts(store) != before
            raise Boom
        assert not store.in_transaction()
        assert row_counts(store) == before
        # Nothing stayed to collide with: the same writes commit afterwards.
        with store.transaction() as db:
            write(store, db)
        assert read(store)


def test_one_migration_list_yields_the_same_tables_and_columns(
    stores: tuple[Store, PgStore],
) -> None:
    lite, pg = stores
    assert sorted(PG_MIGRATIONS) == [version for version, _name, _apply in MIGRATIONS]
    assert lite.schema_version() == pg.schema_version() == MIGRATIONS[-1][0]
    assert tables(lite) == tables(pg)
    names = "SELECT version, name FROM _migrations ORDER BY version"
    assert lite.conn.execute(names).fetchall() == pg.conn.execute(names).fetchall()


def test_log_indexes_come_from_the_tree_size_not_a_sequence(
    stores: tuple[Store, PgStore],
) -> None:
    """No PostgreSQL column has a default drawn from a sequence (or is an identity)."""
    _lite, pg = stores
    drawn = pg.conn.execute(
        "SELECT table_name, column_name FROM information_schema.columns "
        "WHERE table_schema = 'public' AND (column_default LIKE 'nextval%' OR is_identity = 'YES')"
    ).fetchall()
    assert drawn == []
    sequences = pg.conn.execute("SELECT count(*) FROM pg_class WHERE relkind = 'S'").fetchone()
    assert sequences == (0,)


def test_reopening_a_migrated_postgres_database_runs_no_migration(
    stores: tuple[Store, PgStore], pg_cluster: PgCluster
) -> None:
    _lite, pg = stores
    with pg.transaction() as db:
        pg.meta.set(db, "node.id", "node-a.example")
    dsn = pg.conn.info.dsn
    again = PgStore.open(dsn)
    try:
        assert again.schema_version() == MIGRATIONS[-1][0]
        assert again.meta.get("node.id") == "node-a.example"
    finally:
        again.close()
