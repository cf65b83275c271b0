"""Audit bundles: export from a node's database, read back for offline verification."""

from __future__ import annotations

import io
import json
import multiprocessing
import os
import threading
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from datetime import datetime
from itertools import islice
from pathlib import Path

import structlog

from exchange.audit import (
    BUNDLE_TYPE,
    Anchor,
    AuditReport,
    ScannedLines,
    audit_bundle,
    scan_lines,
)
from exchange.canonical import b64
from exchange.errors import AccordError, InputError
from exchange.events import Event
from exchange.times import format_time
from node.files import private_file
from node.home import Node

log_event = structlog.get_logger("accord.audit")

EXPORT_BATCH = 5000


def export_bundle(
    node: Node,
    out: Path,
    now: datetime,
    progress: Callable[[int, int], None] | None = None,
    *,
    unsigned_ok: bool = False,
    force: bool = False,
) -> tuple[int, int]:
    """Write the log, its checkpoints (with cosignatures) and the public keys needed to
    verify them. Signs a checkpoint over everything committed first and exports exactly
    the entries it covers, so no exported entry lacks a signature (entries a running node
    appends meanwhile go to the next export).

    When that checkpoint cannot be signed (wrong passphrase, a log shorter than one this
    node published, an entry it did not write: docs/THREATS.md I04, I07, I09) the export fails
    with that error and writes nothing. ``unsigned_ok`` (forensics, tests) exports the
    database as it is instead, so that ``audit verify`` names what is wrong."""
    covered: int | None = None
    try:
        covered = node.checkpoint(now).size
    except AccordError as e:
        if not unsigned_ok:
            raise
        log_event.warning("audit.export_unsigned_tail", code=e.code)
    log = node.log
    with node.store.read_snapshot():  # appends made meanwhile are not half-exported
        size = log.size() if covered is None else min(covered, log.size())
        checkpoints = [c for c in log.checkpoints() if c.size <= size]
        peers = {r.node: b64(r.chain) for r in node.trust_store().list()}
        # Signed revocations of replaced log/witness/TLS keys (ADR 0018): ours and those
        # partners served, for the verifier to check against the anchored chains.
        revocations = {
            holder: [{"statement": b64(st), "signature": b64(sig)} for st, sig in statements]
            for holder, statements in [
                (
                    node.config.node,
                    [(r.statement, r.signature) for r in node.own_key_revocations()],
                ),
                *((r, node.peer_key_revocation_statements(r)) for r in peers),
            ]
            if statements
        }
        header = {
            "type": BUNDLE_TYPE,
            "node": node.config.node,
            "origin": node.config.log_origin,
            "cards": b64(node.own_chain().to_bytes()),
            "peers": peers,
            "size": size,
            "checkpoints": len(checkpoints),
            "exported_at": format_time(now),
        }
        if revocations:  # absent when empty: the header stays what older verifiers read
            header["revocations"] = revocations
        # 0600, never through a link, never over a file without force (docs/THREATS.md B07)
        with private_file(out, force=force) as raw:
            f = io.TextIOWrapper(raw, "utf-8")
            f.write(json.dumps(header, sort_keys=True) + "\n")
            for cp in checkpoints:
                note = log.cosigned_note(cp).decode("utf-8")
                stored = log.root(cp.size)
                f.write(json.dumps({"checkpoint": note, "stored_root": b64(stored)}) + "\n")
            rows = node.store.log.export_rows(size)
            for done, (idx, event, leaf) in enumerate(rows, start=1):
                # Rows are exported as they are stored, even if an insider changed their type.
                f.write(f'{{"i":{idx},"event":"{b64(_raw(event))}","h":"{b64(_raw(leaf))}"}}\n')
                if progress is not None and done % EXPORT_BATCH == 0:
                    progress(done, size)
            f.flush()
            f.detach()  # private_file closes (and syncs) the binary file itself
        if progress is not None:
            progress(size, size)
    return size, len(checkpoints)


def _raw(value: object) -> bytes:
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, bytes | memoryview):
        return bytes(value)
    return str(value).encode("utf-8")


def read_lines(path: Path) -> Iterator[bytes]:
    if not path.is_file():
        raise InputError(
            f"bundle {path} does not exist",
            next_step="Give the path of a file written by 'accord audit export'.",
        )
    with path.open("rb") as f:
        yield from f


def verify_bundle_file(
    path: Path,
    anchors: Sequence[Anchor],
    since: Path | None = None,
    progress: Callable[[int], None] | None = None,
    on_event: Callable[[Event], None] | None = None,
) -> AuditReport:
    since_point = None
    if since is not None:
        from exchange.checkpoint import parse_checkpoint_unverified
        from exchange.note import parse_note_unverified

        cp = parse_checkpoint_unverified(parse_note_unverified(since.read_bytes()).text)
        since_point = (cp.size, cp.root_hash)
    workers = audit_workers(path) if on_event is None else 1
    scanner = None if workers < 2 else ParallelScanner(workers)
    return audit_bundle(
        read_lines(path),
        anchors=anchors,
        since=since_point,
        progress=progress,
        on_event=on_event,
        scanner=scanner,
    )


PARALLEL_FROM_BYTES = 16 * 1024 * 1024  # ~45,000 entries: below, processes cost more
PARALLEL_CHUNK = 16384  # lines per task (~5.5 MB)
MAX_WORKERS = 4


def audit_workers(path: Path) -> int:
    """Processes to scan a bundle's entries with: one per core (up to 4) for a large
    bundle, else 1. ACCORD_AUDIT_WORKERS overrides (1 = in this process)."""
    forced = os.environ.get("ACCORD_AUDIT_WORKERS")
    if forced is not None:
        try:
            return max(1, int(forced))
        except ValueError:
            raise InputError(
                "ACCORD_AUDIT_WORKERS must be a whole number", code="config.invalid"
            ) from None
    if not path.is_file() or path.stat().st_size < PARALLEL_FROM_BYTES:
        return 1
    return max(1, min(MAX_WORKERS, len(os.sched_getaffinity(0))))


class ParallelScanner:
    """An ``exchange.audit.Scanner`` that checks entry lines in worker processes, a few
    chunks ahead of the fold (bounded memory), and hands the results back in order.
    Scanning a line needs nothing but the line, so the outcome is the in-process one."""

    def __init__(self, workers: int, start_method: str | None = None) -> None:
        self.workers = workers
        self.start_method = start_method

    def __call__(self, lines: Iterator[bytes], keep_events: bool) -> Iterator[ScannedLines]:
        # fork starts a worker at once with everything loaded, but is unsafe in a process
        # with threads; there, spawn (the program's main module must then be import-safe,
        # as every Accord entry point is). 'accord audit verify' has one thread.
        method = self.start_method or ("fork" if threading.active_count() == 1 else "spawn")
        context = multiprocessing.get_context(method)
        with ProcessPoolExecutor(self.workers, mp_context=context) as pool:
            ahead: deque[Future[ScannedLines]] = deque()
            while True:
                while len(ahead) < 2 * self.workers:
                    chunk = list(islice(lines, PARALLEL_CHUNK))
                    if not chunk:
                        break
                    ahead.append(pool.submit(scan_lines, chunk, keep_events))
                if not ahead:
                    return
                yield ahead.popleft().result()
