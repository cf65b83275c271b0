"""Opening a pulled batch's envelopes in parallel, in worker processes (issue 19, ADR 0027).

``open_envelope`` (verify, decrypt, verify the release and the SD-JWT, check the schema)
is most of the cost of receiving and is independent per envelope until the seq check, so
a pool of worker processes opens every envelope of a batch at once with
``exchange.receiver.open_ahead``; ``inbox.apply_batch`` then applies them in seq order in
one transaction, using each result only where the receiver's rules say it is the one it
would have computed itself (see ``Receiver.receive``). Nothing here writes anything.

A worker gets, per task, the batch's ``OpenContext`` (public material: the partner's
verified card chain, the revocations, the agreement, the time), a chunk of envelopes, and a
``keys.keyring.BatchDecrypter`` holding the private keys of the epochs that batch names and
no other. A worker that dies (or any failure of the pool) is logged, the pool is replaced,
and the batch is opened in the serving process instead: nothing was applied yet, so
nothing is applied twice or lost.

Workers are started with ``forkserver`` (never ``fork``: the serving process runs gRPC's
threads); the fork server preloads this module, so a new worker starts with the schema
registry loaded. ``ACCORD_RECEIVE_WORKERS`` sets the number of workers (0: open every
envelope in the serving process); the default is one per core but one from 3 cores on, none
on 1 or 2 cores (``default_workers``).
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing.reduction import ForkingPickler
from types import MappingProxyType
from typing import Any

import structlog

from exchange.envelope import Envelope, parse_header_unverified
from exchange.errors import InputError, PeerDataError
from exchange.receiver import OpenContext, Opened, open_ahead
from keys.keyring import BatchDecrypter
from node.services.schemas import registry

log = structlog.get_logger("accord.sync")

# Below this many envelopes a batch is opened in the serving process: a followed stream's
# one-envelope batch would wait longer for the pipes than for the work.
PARALLEL_FROM = 8
# How often a worker checks that the serving process still runs.
WATCH_SECONDS = 1.0
# Envelopes per task: small enough that both workers stay busy to the end of a batch.
CHUNK = 32


@dataclass(frozen=True)
class OpenedBatch:
    """``open_ahead``'s results for a batch, one per envelope in order, with the context
    and the decrypter they were computed with (``apply_batch`` uses them only if both are
    still what it would use itself)."""

    context: OpenContext
    decrypter: BatchDecrypter
    results: tuple[Opened | None, ...]


def batch_kids(envelopes: Sequence[Envelope], max_header_bytes: int) -> list[str]:
    """The encryption key ids a batch's headers name (unreadable headers name none)."""
    kids: list[str] = []
    for env in envelopes:
        try:
            kid = parse_header_unverified(env.header, max_bytes=max_header_bytes).kid
        except PeerDataError:
            continue
        if kid not in kids:
            kids.append(kid)
    return kids


def open_chunk(
    context: OpenContext, decrypter: BatchDecrypter, envelopes: Sequence[Envelope]
) -> list[Opened | None]:
    """What a worker runs: ``open_ahead`` for each envelope of one chunk."""
    reg = registry()
    return [open_ahead(context, env, decrypter_for=decrypter, registry=reg) for env in envelopes]


def _started(pid: int) -> str | None:
    """When process ``pid`` started (field 22 of /proc/<pid>/stat), None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[19].decode()
    except (OSError, IndexError):
        return None


def _watch(server: int, started: str | None) -> None:
    while True:
        time.sleep(WATCH_SECONDS)
        if _started(server) != started:  # gone (or its pid reused by another process)
            os._exit(0)


def _worker_start(server: int, started: str | None) -> None:
    """A worker's initializer: load the schema registry, and leave when the serving
    process is gone. A worker's parent is the fork server, and the pool's pipes never
    close while a worker holds them, so without this a SIGKILLed node would leave its
    workers (and through them the fork server) behind."""
    registry()
    threading.Thread(target=_watch, args=(server, started), daemon=True).start()


def _warm() -> None:
    registry()


def _mapping_proxy(wrapped: dict[Any, Any]) -> MappingProxyType[Any, Any]:
    return MappingProxyType(wrapped)


def _reduce_mapping_proxy(
    proxy: MappingProxyType[Any, Any],
) -> tuple[Callable[[dict[Any, Any]], MappingProxyType[Any, Any]], tuple[dict[Any, Any]]]:
    return _mapping_proxy, (dict(proxy),)


# The agreement's read-only mappings travel to the workers as the dicts they wrap (in
# multiprocessing's pickler only; nothing else in the node pickles).
ForkingPickler.register(MappingProxyType, _reduce_mapping_proxy)


def default_workers(cores: int) -> int:
    """Workers for a machine of ``cores``: one per core but the serving process's from 3
    cores on, none on 1 or 2. On the 2-core bench machine with both nodes on it
    (docs/PERFORMANCE.md) two workers raised sync by about a quarter at a 10,000 backlog
    but lowered it at 2,000-3,000 (their start-up and ~1.5x CPU per envelope), and in
    half the runs the follow latency after the backlog rose above 50 ms; a 2-core receiver
    that takes large backlogs can set ``ACCORD_RECEIVE_WORKERS=2``."""
    return cores - 1 if cores >= 3 else 0


def configured_workers() -> int:
    """``ACCORD_RECEIVE_WORKERS``, else ``default_workers`` of the cores this process may
    use."""
    forced = os.environ.get("ACCORD_RECEIVE_WORKERS")
    if forced is not None:
        try:
            return max(0, int(forced))
        except ValueError:
            raise InputError(
                "ACCORD_RECEIVE_WORKERS must be a whole number", code="config.invalid"
            ) from None
    return default_workers(len(os.sched_getaffinity(0)))


class OpenPool:
    """Worker processes that open envelopes ahead (see the module docstring)."""

    def __init__(self, workers: int, start_method: str = "forkserver") -> None:
        self.workers = workers
        self._start_method = start_method
        self._executor: ProcessPoolExecutor | None = None
        self._lock = threading.Lock()  # start() may run in a thread beside the event loop

    def _pool(self) -> ProcessPoolExecutor:
        with self._lock:
            return self._make()

    def _make(self) -> ProcessPoolExecutor:
        if self._executor is None:
            context = multiprocessing.get_context(self._start_method)
            if self._start_method == "forkserver":
                context.set_forkserver_preload([__name__])
            me = os.getpid()
            self._executor = ProcessPoolExecutor(
                self.workers,
                mp_context=context,
                initializer=_worker_start,
                initargs=(me, _started(me)),
            )
        return self._executor

    def worker_pids(self) -> list[int]:
        """The live workers' process ids (for tests that kill one)."""
        executor = self._executor
        processes = getattr(executor, "_processes", None) or {}
        return [int(pid) for pid in processes]

    def start(self) -> None:
        """Start the workers now rather than on the first large batch."""
        pool = self._pool()
        for _ in range(self.workers):
            pool.submit(_warm)

    async def open(
        self, context: OpenContext, decrypter: BatchDecrypter, envelopes: Sequence[Envelope]
    ) -> OpenedBatch | None:
        """Open ``envelopes`` in the workers; None when the batch is too small for that
        or the pool failed (a dead worker): the caller then opens them itself."""
        if self.workers < 1 or len(envelopes) < PARALLEL_FROM:
            return None
        try:
            pool = self._pool()
            step = max(1, min(CHUNK, -(-len(envelopes) // self.workers)))
            futures: list[Future[list[Opened | None]]] = [
                pool.submit(open_chunk, context, decrypter, list(envelopes[i : i + step]))
                for i in range(0, len(envelopes), step)
            ]
            chunks = await asyncio.gather(*(asyncio.wrap_future(f) for f in futures))
        except asyncio.CancelledError:
            raise
        except Exception as e:  # BrokenProcessPool (a worker died), pickling, OSError
            log.error("sync.open_pool_failed", error=type(e).__name__)
            self._replace()
            return None
        results = tuple(r for chunk in chunks for r in chunk)
        if len(results) != len(envelopes):
            return None
        return OpenedBatch(context, decrypter, results)

    def _replace(self) -> None:
        with self._lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)

    def close(self) -> None:
        with self._lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)


_shared: OpenPool | None = None


def shared_pool() -> OpenPool:
    """The process's one pool (``configured_workers`` workers, started on first use):
    every Puller of a process shares it."""
    global _shared
    if _shared is None:
        _shared = OpenPool(configured_workers())
    return _shared


__all__ = [
    "CHUNK",
    "PARALLEL_FROM",
    "OpenPool",
    "OpenedBatch",
    "batch_kids",
    "configured_workers",
    "default_workers",
    "open_chunk",
    "shared_pool",
]
