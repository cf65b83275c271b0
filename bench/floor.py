"""The floor: what the primitives every pipeline is made of cost on this machine, measured
in the same run as the pipelines so the ratios compare like with like."""

from __future__ import annotations

import hashlib
import os
import sqlite3
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from nacl.signing import SigningKey

from exchange.card import SUITE_HYBRID
from keys.signers import EncryptionKeyPair, HpkeEncryptor
from node.store import PAGE_SIZE

ROW_BYTES = 2048
INSERT_BATCH = 256
PLAINTEXT = 1800  # about one release plaintext (SD-JWT presentation + release statement)


def per_op(fn: Callable[[], object], seconds: float) -> float:
    """Seconds per call, best of three timed runs of about ``seconds / 3`` each."""
    n = 1
    while True:  # calibrate: enough calls for one run to take ~1/30 of the budget
        start = time.perf_counter()
        for _ in range(n):
            fn()
        spent = time.perf_counter() - start
        if spent > seconds / 30:
            break
        n *= 2
    calls = max(1, int(n * (seconds / 3) / spent))
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, (time.perf_counter() - start) / calls)
    return best


def sqlite_insert(seconds: float, rows: int) -> float:
    """Seconds per ~2 KB row inserted in batches of 256, one ``BEGIN IMMEDIATE`` ... ``COMMIT``
    per batch, under the node's settings (WAL, synchronous=FULL, 16 KiB pages)."""
    with tempfile.TemporaryDirectory(prefix="accord-floor-") as tmp:
        conn = sqlite3.connect(Path(tmp) / "floor.db", isolation_level=None)
        conn.execute(f"PRAGMA page_size = {PAGE_SIZE}")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("CREATE TABLE t (k TEXT NOT NULL, seq INTEGER PRIMARY KEY, body BLOB)")
        payloads = [os.urandom(ROW_BYTES) for _ in range(INSERT_BATCH)]
        seq = 0
        done = 0
        start = time.perf_counter()
        while done < rows and time.perf_counter() - start < seconds:
            batch = [(f"k{seq + i}", seq + i, payloads[i]) for i in range(INSERT_BATCH)]
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany("INSERT INTO t (k, seq, body) VALUES (?, ?, ?)", batch)
            conn.execute("COMMIT")
            seq += INSERT_BATCH
            done += INSERT_BATCH
        spent = time.perf_counter() - start
        conn.close()
    return spent / done


def pg_insert(dsn: str, seconds: float, rows: int) -> float:
    """Seconds per ~2 KB row inserted into PostgreSQL in batches of 256, one transaction
    per batch (``synchronous_commit = on``: each commit waits for its WAL flush), over the
    DSN's connection (the bench's Unix socket); the table is dropped afterwards."""
    import psycopg  # only when a PostgreSQL run was asked for

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SET synchronous_commit = on")
        conn.execute("DROP TABLE IF EXISTS floor_t")
        conn.execute("CREATE TABLE floor_t (k TEXT NOT NULL, seq BIGINT PRIMARY KEY, body BYTEA)")
        payloads = [os.urandom(ROW_BYTES) for _ in range(INSERT_BATCH)]
        seq = 0
        done = 0
        start = time.perf_counter()
        while done < rows and time.perf_counter() - start < seconds:
            batch = [(f"k{seq + i}", seq + i, payloads[i]) for i in range(INSERT_BATCH)]
            with conn.transaction(), conn.cursor() as cursor:
                cursor.executemany("INSERT INTO floor_t (k, seq, body) VALUES (%s, %s, %s)", batch)
            seq += INSERT_BATCH
            done += INSERT_BATCH
        spent = time.perf_counter() - start
        conn.execute("DROP TABLE floor_t")
    return spent / done


def measure(seconds: float) -> dict[str, float]:
    """Seconds per operation for each primitive of the floor."""
    key = SigningKey(os.urandom(32))
    verify_key = key.verify_key
    message = os.urandom(300)
    signed = key.sign(message)
    pair = EncryptionKeyPair("bench", SUITE_HYBRID, os.urandom(96), "2099-01-01T00:00:00Z")
    encryptor = HpkeEncryptor()
    plaintext = os.urandom(PLAINTEXT)
    info = b"accord/v1/envelope\n" + os.urandom(200)
    ciphertext = encryptor.encrypt(SUITE_HYBRID, pair.public, plaintext, info)
    two_kb = os.urandom(ROW_BYTES)
    return {
        "ed25519_sign": per_op(lambda: key.sign(message), seconds),
        "ed25519_verify": per_op(lambda: verify_key.verify(signed), seconds),
        "hpke_seal": per_op(
            lambda: encryptor.encrypt(SUITE_HYBRID, pair.public, plaintext, info), seconds
        ),
        "hpke_open": per_op(lambda: pair.decrypt(ciphertext, info), seconds),
        "sha256_2kb": per_op(lambda: hashlib.sha256(two_kb).digest(), seconds),
        "sqlite_insert_2kb": sqlite_insert(seconds * 2, rows=200_000),
    }
