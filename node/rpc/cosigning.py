"""Getting this node's checkpoints cosigned by its partners (docs/DESIGN.md §9, tlog-witness).

For each trusted partner the :class:`Cosigner` sends our latest signed checkpoint with
``old_size`` = the largest of our checkpoints that partner cosigned before (0 at first)
and the consistency proof from there. On a conflict it retries once from the size the
partner's witness holds. Returned cosignature lines are verified with the witness key in
the partner's card before they are stored, together with a ``checkpoint.cosigned`` log
event, in one transaction. Failures back off exponentially with jitter, per partner;
every call has a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime

import grpc
import structlog

from exchange.card import Card
from exchange.cosignature import verify_cosignature
from exchange.errors import AccordError, PeerDataError, TransportError
from exchange.note import parse_note_unverified, parse_verifier_key
from node import clock
from node.home import Node
from node.rpc._pb.accord.v1 import log_pb2, peer_pb2_grpc
from node.rpc.errors_map import read_error_detail
from node.rpc.transport import PartnerChannels
from node.services.log import SignedCheckpoint

MAX_LINES_BYTES = 4096
log = structlog.get_logger("accord.cosigning")


@dataclass
class PartnerWitnessState:
    """What the cosigner knows about one partner (in memory; shown by Status)."""

    failures: int = 0
    retry_at: float = 0.0  # event-loop time
    last_contact: datetime | None = None
    last_error_code: str = ""


@dataclass(frozen=True)
class Backoff:
    base: float = 0.2
    cap: float = 60.0

    def delay(self, failures: int, rng: random.Random) -> float:
        """Exponential in the number of failures, with full jitter between half and all."""
        ceiling = min(self.cap, self.base * float(2 ** min(failures, 30)))
        return ceiling * (0.5 + rng.random() / 2)


class Cosigner:
    def __init__(
        self,
        node: Node,
        channels: PartnerChannels,
        *,
        now: Callable[[], datetime] = clock.now,
        deadline: float = 10.0,
        poll_seconds: float = 2.0,
        backoff: Backoff | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self._node = node
        self._channels = channels
        self._now = now
        self._deadline = deadline
        self._poll = poll_seconds
        self._backoff = backoff or Backoff()
        self._rng = rng or random.Random()  # noqa: S311  jitter needs no secrecy
        self._wake = asyncio.Event()
        self._state: dict[str, PartnerWitnessState] = {}

    @property
    def state(self) -> Mapping[str, PartnerWitnessState]:
        return self._state

    def poke(self) -> None:
        """A checkpoint was just signed: run a round now instead of at the next poll."""
        self._wake.set()

    async def run(self) -> None:
        """Rounds until cancelled: after each poke, and every ``poll_seconds``."""
        while True:
            await self.round()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self._next_wait())
            self._wake.clear()

    def _next_wait(self) -> float:
        """Until the next poll, or sooner when a partner's backoff ends before it."""
        now = asyncio.get_running_loop().time()
        retries = [s.retry_at - now for s in self._state.values() if s.retry_at > now]
        return max(0.05, min([self._poll, *retries]))

    async def round(self) -> None:
        cp = self._node.log.latest_checkpoint()
        if cp is None:
            return
        loop_time = asyncio.get_running_loop().time()
        trust = self._node.trust_store()
        for record in trust.list():
            try:
                partner = trust.trusted_chain(record.node, self._now()).latest
            except AccordError:
                continue
            state = self._state.setdefault(partner.node, PartnerWitnessState())
            if loop_time < state.retry_at or self._node.cosigned_size(partner.node) >= cp.size:
                continue
            try:
                await self.cosign(partner, cp)
            except (AccordError, grpc.aio.AioRpcError) as e:
                self._failed(partner.node, state, e)
            else:
                state.failures, state.retry_at, state.last_error_code = 0, 0.0, ""
                state.last_contact = self._now()

    def _failed(self, peer: str, state: PartnerWitnessState, error: Exception) -> None:
        state.failures += 1
        delay = self._backoff.delay(state.failures, self._rng)
        state.retry_at = asyncio.get_running_loop().time() + delay
        state.last_error_code = _error_code(error)
        log.warning(
            "checkpoint.cosign_failed",
            peer=peer,
            code=state.last_error_code,
            attempt=state.failures,
            delay_ms=int(delay * 1000),
        )

    async def cosign(self, partner: Card, cp: SignedCheckpoint) -> int:
        """Ask ``partner`` to cosign ``cp``; store and return the number of lines kept."""
        old = min(self._node.cosigned_size(partner.node), cp.size)
        answer = await self._add_checkpoint(partner, old, cp)
        if answer.WhichOneof("result") == "conflict":
            held = answer.conflict.size
            if held > cp.size:
                raise PeerDataError(
                    f"{partner.node}'s witness holds size {held} of our log, larger than "
                    f"our latest checkpoint {cp.size}",
                    code="witness.ahead",
                    next_step="Our log may have been rolled back (docs/THREATS.md I04); "
                    "compare with the partner before signing anything.",
                )
            answer = await self._add_checkpoint(partner, held, cp)
            if answer.WhichOneof("result") != "cosignature_lines":
                raise PeerDataError("witness conflict twice in a row", code="witness.conflict")
        lines = self._verified_lines(partner, cp, answer.cosignature_lines)
        now = self._now()
        with self._node.store.transaction() as db:
            for line in lines:
                self._node.log.add_cosignature(cp.size, partner.node, line, now)
            self._node.record(db, "checkpoint.cosigned", now, peer=partner.node, size=cp.size)
        log.info("checkpoint.cosigned", peer=partner.node, size=cp.size)
        return len(lines)

    async def _add_checkpoint(
        self, partner: Card, old_size: int, cp: SignedCheckpoint
    ) -> log_pb2.AddCheckpointResponse:
        proof = self._node.log.consistency_proof(old_size, cp.size) if old_size > 0 else []
        stub = peer_pb2_grpc.PeerExchangeStub(await self._channels.get(partner))
        request = log_pb2.AddCheckpointRequest(
            old_size=old_size, consistency_proof=proof, checkpoint=log_pb2.Checkpoint(note=cp.note)
        )
        answer: log_pb2.AddCheckpointResponse = await stub.AddCheckpoint(
            request, timeout=self._deadline
        )
        return answer

    def _verified_lines(self, partner: Card, cp: SignedCheckpoint, data: bytes) -> list[str]:
        """Every returned line must be a valid cosignature by the partner's witness key."""
        if not data or len(data) > MAX_LINES_BYTES:
            raise PeerDataError("cosignature lines are empty or too long", code="peer.cosignature")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise PeerDataError("cosignature lines are not UTF-8", code="peer.cosignature") from e
        if not text.endswith("\n"):
            raise PeerDataError(
                "cosignature lines must end with a newline", code="peer.cosignature"
            )
        witness = parse_verifier_key(partner.witness_vkey)
        checkpoint_text = parse_note_unverified(cp.note).text
        lines = text[:-1].split("\n")
        revoked = self._node.peer_revoked_keys(partner.node, "witness")
        for line in lines:
            _refuse_revoked_witness(checkpoint_text, line, revoked, partner.node)
            verify_cosignature(checkpoint_text, line, witness)
        return lines


def _refuse_revoked_witness(
    checkpoint_text: str, line: str, revoked: Mapping[str, datetime], peer: str
) -> None:
    """A cosignature by a witness key ``peer`` revoked (ADR 0018), timestamped at or after
    its revocation time, is refused before anything is stored."""
    for vkey, revoked_from in revoked.items():
        try:
            cosig = verify_cosignature(checkpoint_text, line, parse_verifier_key(vkey))
        except AccordError:
            continue
        if cosig.timestamp >= int(revoked_from.timestamp()):
            raise PeerDataError(
                f"{peer} cosigned with a witness key it revoked from {revoked_from.isoformat()}",
                code="peer.revoked_witness_key",
                next_step="Nothing was stored. Tell the partner: its old witness key is in "
                "someone else's hands.",
            )


def _error_code(error: Exception) -> str:
    if isinstance(error, grpc.aio.AioRpcError):
        detail = read_error_detail(error)
        return detail.code if detail is not None else f"grpc.{error.code().name.lower()}"
    if isinstance(error, AccordError):
        return error.code
    return TransportError.code
