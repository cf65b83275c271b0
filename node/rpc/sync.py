"""Machine-to-machine sync: the receiving loop per partner, and the signal that wakes
followed Pull streams when new envelopes are committed (docs/DESIGN.md §8).

All database work runs on the event loop's thread: the node has one writer connection.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import datetime

import grpc
import structlog

from exchange.envelope import Envelope
from exchange.errors import AccordError
from node import clock
from node.home import Node
from node.logsetup import failure_level
from node.rpc._pb.accord.v1 import card_pb2, envelope_pb2, peer_pb2, peer_pb2_grpc
from node.rpc.cosigning import Backoff
from node.rpc.errors_map import read_error_detail
from node.rpc.transport import PartnerChannels
from node.rpc.wire import (
    envelope_from_message,
    signed_card_from_message,
    signed_revocation_from_message,
)
from node.services.inbox import (
    BatchOutcome,
    apply_batch,
    cursor,
    open_inputs,
    receipts_acknowledged,
    unacknowledged_receipts,
)
from node.services.opening import PARALLEL_FROM, OpenedBatch, OpenPool, shared_pool

log = structlog.get_logger("accord.sync")

# The serving side ends a followed Pull after FOLLOW_STREAM_SECONDS and the caller re-opens
# it; the caller's deadline is a minute longer, a safety net that never cuts a live stream.
# ACCORD_PULL_STREAM_SECONDS overrides (the soak test re-opens streams often, under load).
FOLLOW_STREAM_SECONDS = float(os.environ.get("ACCORD_PULL_STREAM_SECONDS", "300"))
STREAM_DEADLINE = FOLLOW_STREAM_SECONDS + 60.0
CALL_DEADLINE = 10.0


# Two Pull heartbeats (node/rpc/peer_service.py HEARTBEAT_SECONDS): a partner whose stream
# waited for news this recently is following our outbox.
FOLLOW_WINDOW_SECONDS = 30.0


class OutboxSignal:
    """Wakes Pull streams following a partner when its outbox grows, and knows which
    partners follow (a followed stream waits here between batches, at least once per
    heartbeat): what ``report submit`` tells the officer as "delivering now" or "queued"."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._events: dict[str, asyncio.Event] = {}
        self._clock = clock
        self._waiting: dict[str, int] = {}
        self._seen: dict[str, float] = {}

    def is_following(self, peer: str, within: float = FOLLOW_WINDOW_SECONDS) -> bool:
        """A Pull stream of ``peer`` is waiting now, or waited within ``within`` seconds."""
        if self._waiting.get(peer, 0) > 0:
            return True
        seen = self._seen.get(peer)
        return seen is not None and self._clock() - seen <= within

    def _event(self, peer: str) -> asyncio.Event:
        return self._events.setdefault(peer, asyncio.Event())

    def notify(self, peers: list[str] | None = None) -> None:
        for peer in self._events if peers is None else peers:
            self._event(peer).set()

    async def wait(self, peer: str, timeout: float) -> None:
        event = self._event(peer)
        self._waiting[peer] = self._waiting.get(peer, 0) + 1
        try:
            await asyncio.wait_for(event.wait(), timeout)
        except TimeoutError:
            return
        finally:
            event.clear()
            self._waiting[peer] -= 1
            self._seen[peer] = self._clock()


# Batches read off a Pull stream ahead of the one being applied (each <= 1 MiB).
LOOKAHEAD = 2


@dataclass
class _Arrived:
    envelopes: list[Envelope]
    now: datetime
    opening: asyncio.Task[OpenedBatch | None] | None


@dataclass
class PullState:
    connected: bool = False
    last_sync: datetime | None = None
    last_error_code: str = ""
    applied: int = 0
    rejected: int = 0


async def _acknowledge(
    stub: peer_pb2_grpc.PeerExchangeStub, statement: bytes, signature: bytes
) -> None:
    """Acknowledge one receipt. ``peer.receipt.redundant`` means the partner already holds
    a receipt confirming that range (ADR 0016): for us it is delivered, not a failure."""
    try:
        await stub.Acknowledge(
            peer_pb2.AcknowledgeRequest(
                receipt=envelope_pb2.BatchReceipt(statement=statement, signature=signature)
            ),
            timeout=CALL_DEADLINE,
        )
    except grpc.aio.AioRpcError as e:
        detail = read_error_detail(e)
        if detail is None or detail.code != "peer.receipt.redundant":
            raise


class Puller:
    """For each trusted partner with an agreement: Pull(after=cursor, follow), apply each
    batch in one transaction, Acknowledge with the signed receipt. Reconnects with
    exponential backoff and jitter; every call has a deadline."""

    def __init__(
        self,
        node: Node,
        channels: PartnerChannels,
        *,
        now: Callable[[], datetime] = clock.now,
        on_applied: Callable[[], None] | None = None,
        on_outcome: Callable[[str, BatchOutcome], None] | None = None,
        backoff: Backoff | None = None,
        rng: random.Random | None = None,
        max_batch: int = 256,
        opener: OpenPool | None = None,
    ) -> None:
        self._node = node
        self._channels = channels
        self._now = now
        self._on_applied = on_applied
        self._on_outcome = on_outcome  # after each committed batch (escalation, watchers)
        self._backoff = backoff or Backoff()
        self._rng = rng or random.Random()  # noqa: S311  jitter needs no secrecy
        self._max_batch = max_batch
        self._opener = opener if opener is not None else shared_pool()
        self.state: dict[str, PullState] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}

    def partners(self) -> list[str]:
        from node.services.agreements import current_agreement

        now = self._now()
        out = []
        for record in self._node.trust_store().list():
            if (
                record.revoked_from is None
                and current_agreement(self._node, record.node, now) is not None
            ):
                out.append(record.node)
        return out

    async def run(self, refresh_seconds: float = 5.0) -> None:
        """Keep one pull task per partner that has an agreement in force."""
        if self._opener.workers > 0:  # start the workers now, not inside the first batch
            await asyncio.to_thread(self._opener.start)
        try:
            while True:
                try:
                    wanted = set(self.partners())
                except AccordError as e:
                    getattr(log, failure_level(e))("sync.partners_failed", code=e.code)
                    wanted = set(self._tasks)
                for peer in wanted - set(self._tasks):
                    self._tasks[peer] = asyncio.create_task(self._loop(peer))
                for peer in set(self._tasks) - wanted:
                    self._tasks.pop(peer).cancel()
                await asyncio.sleep(refresh_seconds)
        finally:
            for task in self._tasks.values():
                task.cancel()
            await asyncio.gather(*self._tasks.values(), return_exceptions=True)
            self._tasks.clear()

    async def _loop(self, peer: str) -> None:
        state = self.state.setdefault(peer, PullState())
        failures = 0
        while True:
            try:
                await self.pull_once(peer, follow=True)
                failures = 0
            except asyncio.CancelledError:
                raise
            except grpc.aio.AioRpcError as e:
                detail = read_error_detail(e)
                state.last_error_code = (
                    detail.code if detail and detail.code else e.code().name.lower()
                )
                failures += 1
            except AccordError as e:
                state.last_error_code = e.code
                failures += 1
            except Exception as e:  # keep syncing other partners; log the type only
                log.error("sync.failed", peer=peer, error=type(e).__name__)
                state.last_error_code = "internal"
                failures += 1
            if state.connected:  # the stream worked before it broke: start the backoff over
                failures = min(failures, 1)
            state.connected = False
            delay = self._backoff.delay(failures, self._rng) if failures else self._backoff.base
            log.info("sync.reconnect", peer=peer, attempt=failures, delay_ms=int(delay * 1000))
            await asyncio.sleep(delay)

    async def refresh_card(
        self, stub: peer_pb2_grpc.PeerExchangeStub, peer: str, known: int
    ) -> None:
        """Learn a partner's key rotations and revocations: newer card versions it serves
        are accepted only as continuations of the trusted chain, signed by the key they
        replace; a revocation only when signed by the revoked key or a later one."""
        answer = await stub.GetCard(
            card_pb2.GetCardRequest(known_version=known), timeout=CALL_DEADLINE
        )
        newer = [signed_card_from_message(m) for m in answer.rotation_chain]
        if newer and self._node.refresh_peer_card(peer, newer, self._now()):
            log.info("peer.card_updated", peer=peer)
        statements = [signed_revocation_from_message(m) for m in answer.revocations]
        for revocation in self._node.apply_peer_revocations(peer, statements, self._now()):
            log.warning(
                "peer.key_revoked",
                peer=peer,
                fingerprint=revocation.fingerprint,
                revoked_from=revocation.revoked_from,
                reason=revocation.reason,
            )
        others = [signed_revocation_from_message(m) for m in answer.key_revocations]
        for statement in self._node.apply_peer_key_revocations(peer, others, self._now()):
            log.warning(
                "peer.key_revoked",
                peer=peer,
                key=statement.kind,
                key_id=statement.key,
                revoked_from=statement.revoked_from,
                reason=statement.reason,
            )

    async def resend_receipts(self, stub: peer_pb2_grpc.PeerExchangeStub, peer: str) -> None:
        """Deliver the receipts that a crash or a failed Acknowledge left unconfirmed
        (oldest first) before pulling more; the first failure ends the attempt."""
        confirmed = 0
        try:
            for last_seq, receipt in unacknowledged_receipts(self._node, peer):
                await _acknowledge(stub, receipt.statement, receipt.signature)
                confirmed = last_seq
                log.info("sync.receipt_resent", peer=peer, last_seq=last_seq)
        finally:
            receipts_acknowledged(self._node, peer, confirmed)

    async def pull_once(self, peer: str, *, follow: bool) -> int:
        """One Pull stream: apply every batch it brings; returns the envelopes applied."""
        state = self.state.setdefault(peer, PullState())
        card = self._node.trust_store().trusted_chain(peer, self._now()).latest
        stub = peer_pb2_grpc.PeerExchangeStub(await self._channels.get(card))
        await self.refresh_card(stub, peer, card.version)
        await self.resend_receipts(stub, peer)
        after = cursor(self._node, peer)
        call = stub.Pull(
            peer_pb2.PullRequest(after_seq=after, max_batch=self._max_batch, follow=follow),
            timeout=STREAM_DEADLINE if follow else CALL_DEADLINE * 6,
        )
        applied = 0
        # Batches are read off the stream and sent to the workers to open as they arrive
        # (a few ahead), and applied here in order: while one batch is applied the next
        # is being verified and decrypted.
        arrived: asyncio.Queue[_Arrived | BaseException | None] = asyncio.Queue(LOOKAHEAD)
        reader = asyncio.create_task(self._read(peer, call, arrived))
        try:
            while (item := await arrived.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                state.connected = True
                if not item.envelopes:  # caught up (or a heartbeat): the sync is healthy
                    state.last_sync = self._now()
                    state.last_error_code = ""
                    continue
                ahead = await item.opening if item.opening is not None else None
                outcome = apply_batch(self._node, peer, item.envelopes, item.now, ahead=ahead)
                if outcome.items and self._on_outcome is not None:
                    try:  # committed: nothing the callback does may undo or stop the sync
                        self._on_outcome(peer, outcome)
                    except Exception as e:
                        log.error("sync.on_outcome_failed", peer=peer, error=type(e).__name__)
                applied += outcome.applied
                state.applied += outcome.applied
                state.rejected += len(outcome.rejected)
                if outcome.receipt is not None:
                    await _acknowledge(stub, outcome.receipt.statement, outcome.receipt.signature)
                    # The receipt ends at the cursor: the partner holds every receipt so far.
                    receipts_acknowledged(self._node, peer, cursor(self._node, peer))
                if outcome.applied and self._on_applied is not None:
                    self._on_applied()
                if outcome.stopped is not None:
                    state.last_error_code = outcome.stopped.code
                    log.warning("sync.batch_stopped", peer=peer, code=outcome.stopped.code)
                    raise outcome.stopped
                state.last_sync = self._now()
                state.last_error_code = ""
        except grpc.aio.AioRpcError as e:
            if e.code() == grpc.StatusCode.DEADLINE_EXCEEDED and follow:
                return applied  # the periodic re-open of a followed stream
            raise
        finally:
            call.cancel()
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
            while not arrived.empty():
                left = arrived.get_nowait()
                if isinstance(left, _Arrived) and left.opening is not None:
                    left.opening.cancel()
        return applied

    async def _read(
        self,
        peer: str,
        call: AsyncIterator[envelope_pb2.EnvelopeBatch],
        arrived: asyncio.Queue[_Arrived | BaseException | None],
    ) -> None:
        """Read batches off the Pull stream and start opening each one in the workers;
        the stream's end (None) or its failure goes into the queue after them."""
        try:
            async for batch in call:
                envelopes = [envelope_from_message(m) for m in batch.envelopes]
                now = self._now()
                opening = (
                    asyncio.create_task(self._open_ahead(peer, envelopes, now))
                    if len(envelopes) >= PARALLEL_FROM and self._opener.workers > 0
                    else None
                )
                await arrived.put(_Arrived(envelopes, now, opening))
        except Exception as e:  # handed to pull_once, which raises it as before
            await arrived.put(e)
            return
        await arrived.put(None)

    async def _open_ahead(
        self, peer: str, envelopes: list[Envelope], now: datetime
    ) -> OpenedBatch | None:
        """The batch opened in the worker processes, or None (it is then opened while it
        is applied, as without workers)."""
        try:
            inputs = open_inputs(self._node, peer, envelopes, now)
        except AccordError as e:
            log.warning("sync.open_ahead_skipped", peer=peer, code=e.code)
            return None
        if inputs is None:
            return None
        return await self._opener.open(*inputs, envelopes)
