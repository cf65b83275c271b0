"""In-process pipelines: submit (and its cost as the store grows), log append, proofs on
big logs, audit of a big bundle. Each returns plain numbers for ``bench/run.py``."""

from __future__ import annotations

import random
import shutil
import sqlite3
import time
from datetime import UTC, datetime
from pathlib import Path

from bench.cluster import make_cluster, open_node, report_bytes
from exchange.audit import Anchor
from node.clock import now
from node.home import Node, init_node
from node.rpc.officer_service import validate
from node.services import outbox
from node.services.audit import export_bundle, verify_bundle_file
from node.services.log import ExchangeLog
from node.store import Store

BATCH = 256
T0 = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


def submit_batches(node: Node, documents: list[bytes]) -> float:
    """Validate and submit ``documents`` in batches of 256 (one commit each); seconds."""
    start = time.perf_counter()
    for i in range(0, len(documents), BATCH):
        outbox.submit(node, [validate(d) for d in documents[i : i + BATCH]], now())
    return time.perf_counter() - start


# The copies _prefill makes, per backend: the newest real report (or outbox row of one peer)
# repeated ``n`` times with new ids and consecutive seqs, in one statement each.
_COPY_REPORTS = {
    "sqlite": "WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < ?) "
    "INSERT INTO reports (report_id, version, sop, tlp, issuer_jwt_digest, "
    "issuer_key, sealed, fields, sealed_at, supersedes) "
    "SELECT printf('prefill-%010d', ? + i), r.version, r.sop, r.tlp, "
    "r.issuer_jwt_digest, r.issuer_key, r.sealed, r.fields, r.sealed_at, NULL "
    "FROM c, (SELECT * FROM reports ORDER BY rowid DESC LIMIT 1) r",
    "postgres": "INSERT INTO reports (report_id, version, sop, tlp, issuer_jwt_digest, "
    "issuer_key, sealed, fields, sealed_at, supersedes) "
    "SELECT 'prefill-' || lpad((%s + i)::text, 10, '0'), r.version, r.sop, r.tlp, "
    "r.issuer_jwt_digest, r.issuer_key, r.sealed, r.fields, r.sealed_at, NULL "
    "FROM generate_series(1, %s) AS c(i), "
    "(SELECT * FROM reports ORDER BY sealed_at DESC LIMIT 1) r",
}
_COPY_OUTBOX = {
    "sqlite": "WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < ?) "
    "INSERT INTO outbox (peer, seq, envelope_id, kind, report_id, version, "
    "header, ciphertext, signature, digest, created_at, state) "
    "SELECT o.peer, o.seq + i, printf('prefill-%s-%010d', o.peer, o.seq + i), "
    "o.kind, printf('prefill-%010d', ? + i), o.version, o.header, "
    "o.ciphertext, o.signature, o.digest, o.created_at, 'delivered' "
    "FROM c, (SELECT * FROM outbox WHERE peer = ? ORDER BY seq DESC LIMIT 1) o",
    "postgres": "INSERT INTO outbox (peer, seq, envelope_id, kind, report_id, version, "
    "header, ciphertext, signature, digest, created_at, state) "
    "SELECT o.peer, o.seq + i, 'prefill-' || o.peer || '-' || lpad((o.seq + i)::text, 10, '0'), "
    "o.kind, 'prefill-' || lpad((%s + i)::text, 10, '0'), o.version, o.header, "
    "o.ciphertext, o.signature, o.digest, o.created_at, 'delivered' "
    "FROM generate_series(1, %s) AS c(i), "
    "(SELECT * FROM outbox WHERE peer = %s ORDER BY seq DESC LIMIT 1) o",
}


def backend(node: Node) -> str:
    """``postgres`` for a node whose config names a database, else ``sqlite``."""
    return "sqlite" if node.config.database is None else "postgres"


def _prefill(node: Node, target: int, chunk: int = 50_000) -> None:
    """Grow the store to ``target`` reports quickly: report and outbox rows copied from the
    newest real ones in SQL (new ids, consecutive seqs; the same copy on SQLite and on
    PostgreSQL), and real log events (three per report, as submit writes) through
    ExchangeLog.append, so the Merkle tree stays valid. On PostgreSQL then ``ANALYZE``."""
    conn = node.store.conn
    which = backend(node)
    have = count(node, "reports")
    peers = [r[0] for r in conn.execute("SELECT DISTINCT peer FROM outbox").fetchall()]
    log = node.log
    while have < target:
        n = min(chunk, target - have)
        with node.store.transaction() as db:
            if which == "sqlite":
                conn.execute(_COPY_REPORTS[which], (n, have))
            else:
                conn.execute(_COPY_REPORTS[which], (have, n))
            for peer in peers:
                if which == "sqlite":
                    conn.execute(_COPY_OUTBOX[which], (n, have, peer))
                else:
                    conn.execute(_COPY_OUTBOX[which], (have, n, peer))
            events = []
            for i in range(n):
                rid = f"prefill-{have + i + 1:010d}"
                events.append(("report.sealed", T0, {"report_id": rid, "version": 1}))
                for peer in peers:
                    events.append(
                        ("release.decided", T0, {"report_id": rid, "peer": peer, "seq": i})
                    )
            log.append(db, events)
        have += n
    node.checkpoint(now())
    if which == "postgres":
        # What autovacuum does within a minute of such growth. Without it submit at 20,000
        # stored ran at a quarter of the rate after it (docs/PERFORMANCE.md: a plan kept
        # from the small table is the suspect).
        conn.execute("ANALYZE")


def count(node: Node, table: str) -> int:
    """Rows of ``table`` (``reports``, ``outbox``) in the node's store, either backend."""
    row = node.store.conn.execute(f"SELECT count(*) FROM {table}").fetchone()  # noqa: S608
    assert row is not None
    return int(row[0])


def submit_flat(
    root: Path, sizes: list[int], sample: int, database: str | None = None
) -> list[dict[str, float]]:
    """Submit throughput (2 partners) measured at each stored-report count in ``sizes``;
    with ``database`` (a PostgreSQL DSN) the sender's store is that database."""
    sender, _ = make_cluster(root / "submit", database=database)
    node = open_node(sender)
    documents = report_bytes(sample, seed=1)
    out = []
    try:
        submit_batches(node, documents[:BATCH])  # warm caches, first real rows to copy
        for size in sizes:
            _prefill(node, size)
            spent = submit_batches(node, documents)
            stored = count(node, "reports")
            out.append({"stored": size, "after": stored, "reports_per_s": sample / spent})
        out[-1]["db_bytes"] = db_size(sender / "node.db") if database is None else pg_db_size(node)
    finally:
        node.close()
        shutil.rmtree(root / "submit", ignore_errors=True)  # ~17 GB at a million reports
    return out


def log_append(root: Path, entries: int) -> float:
    """Entries per second through Node.record's path: staged events, one append and one
    commit per batch of 1,000, on a log that already holds ``entries`` events."""
    node = init_node(
        root / "log-append",
        node="bench-log",
        name="log",
        endpoint="127.0.0.1:1",
        passphrase=None,
        now=T0,
    )
    log = node.log
    try:
        digest = "sha256:" + "ab" * 32
        start = time.perf_counter()
        for i in range(0, entries, 1000):
            with node.store.transaction():
                for k in range(1000):
                    log.stage("policy.changed", T0, {"policy_digest": digest, "n": i + k})
        return entries / (time.perf_counter() - start)
    finally:
        node.close()


def _synthetic_tree(path: Path, size: int) -> Store:
    """Every perfect-subtree row of a log of ``size`` leaves (random hashes), written by
    SQLite itself; plus the last leaf row so ``size()`` answers. As the O(log n) test does."""
    path.mkdir(parents=True, exist_ok=True)
    store = Store.open(path, create=True)
    conn = store.conn
    level = 0
    while size >> level:
        with store.transaction():
            conn.execute(
                "WITH RECURSIVE c(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM c WHERE i < ?) "
                "INSERT INTO log_subtrees (level, idx, hash) SELECT ?, i, randomblob(32) FROM c",
                ((size >> level) - 1, level),
            )
        level += 1
    with store.transaction():
        conn.execute(
            "INSERT INTO log_leaves (idx, event, leaf_hash) VALUES (?, ?, ?)",
            (size - 1, b"{}", b"\x00" * 32),
        )
    return store


def proofs(root: Path, size: int, samples: int = 400) -> dict[str, float]:
    """Mean seconds per inclusion and per consistency proof (ExchangeLog, real SQLite
    reads), at random indexes of a log of ``size`` entries; plus the seconds to build it."""
    start = time.perf_counter()
    store = _synthetic_tree(root / f"tree-{size}", size)
    built = time.perf_counter() - start
    log = ExchangeLog(store, "bench.accord/log")
    rng = random.Random(size)  # noqa: S311  bench sampling
    try:
        indexes = [rng.randrange(size) for _ in range(samples)]
        start = time.perf_counter()
        for index in indexes:
            log.inclusion_proof(index, size)
        inclusion = (time.perf_counter() - start) / samples
        olds = [rng.randrange(1, size) for _ in range(samples)]
        start = time.perf_counter()
        for old in olds:
            log.consistency_proof(old, size)
        consistency = (time.perf_counter() - start) / samples
    finally:
        store.close()
    for extra in ("", "-wal", "-shm"):
        (root / f"tree-{size}" / f"node.db{extra}").unlink(missing_ok=True)
    return {"size": size, "inclusion_s": inclusion, "consistency_s": consistency, "build_s": built}


def audit(root: Path, entries: int) -> dict[str, float]:
    """Export a real node's log of ``entries`` events (checkpoints signed by its log key
    every 100,000) and time ``accord audit verify``'s function on it."""
    node = init_node(
        root / "audit",
        node="bench-audit",
        name="audit",
        endpoint="127.0.0.1:1",
        passphrase=None,
        now=T0,
    )
    try:
        log = node.log
        digest = "sha256:" + "cd" * 32
        size = log.size()
        while size < entries:
            n = min(10_000, entries - size)
            with node.store.transaction() as db:
                log.append(
                    db,
                    [
                        (
                            "release.decided",
                            T0,
                            {"peer": "cn-mps", "seq": size + k, "envelope_digest": digest},
                        )
                        for k in range(n)
                    ],
                )
            size += n
            if size % 100_000 < n or size >= entries:
                node.checkpoint(T0)
        bundle = root / "audit.bundle"
        export_bundle(node, bundle, T0)
        anchors = [Anchor(node.config.node, node.own_chain().latest.fingerprint)]
    finally:
        node.close()
    start = time.perf_counter()
    report = verify_bundle_file(bundle, anchors)
    spent = time.perf_counter() - start
    if report.findings or report.entries != entries:
        raise RuntimeError(f"audit bench: the bundle did not verify: {report.findings[:3]}")
    bundle.unlink()
    return {"entries": entries, "seconds": spent, "checkpoints": report.checkpoints}


def pg_db_size(node: Node) -> int:
    """Bytes of the node's PostgreSQL database (tables, indexes, TOAST), as the server
    counts them."""
    row = node.store.conn.execute("SELECT pg_database_size(current_database())").fetchone()
    assert row is not None
    return int(row[0])


def db_size(path: Path) -> int:
    conn = sqlite3.connect(path)
    try:
        pages, size = (
            conn.execute("PRAGMA page_count").fetchone()[0],
            conn.execute("PRAGMA page_size").fetchone()[0],
        )
        return int(pages) * int(size)
    finally:
        conn.close()
