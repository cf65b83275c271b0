"""PeerExchange, the node-to-node service (docs/DESIGN.md §8-§10).

Thin handlers: convert the request, call one function of the node, convert the answer.
Who is calling comes from :func:`node.transport.current_peer` (set by ``PeerGuard`` before
any handler runs); errors are raised as ``AccordError`` and mapped at the edge
(``node.errors_map``).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Collection
from datetime import datetime
from typing import Any, TypeAlias

from exchange.checkpoint import log_origin
from exchange.errors import InputError
from exchange.note import parse_verifier_key
from keys.keyring import witness_name
from node import clock
from node.home import Node
from node.rpc._pb.accord.v1 import card_pb2, envelope_pb2, log_pb2, peer_pb2, peer_pb2_grpc
from node.rpc.errors_map import unimplemented
from node.rpc.sync import FOLLOW_STREAM_SECONDS, OutboxSignal
from node.rpc.transport import current_peer
from node.rpc.wire import envelope_message, node_card_message, revocation_message
from node.services import outbox
from node.services.log import SignedCheckpoint
from node.services.witness import Witness, WitnessConflict

MAX_PROOF_HASHES = 128  # a consistency proof has at most about 2*log2(size) <= 128 hashes
Context: TypeAlias = Any  # grpc.aio.ServicerContext (grpc ships no type stubs)


HEARTBEAT_SECONDS = 15.0
STREAM_END_MARGIN = 10.0  # a Pull ends this long (at most 20 % of its deadline) before it
FOLLOW_SECONDS = FOLLOW_STREAM_SECONDS  # a followed Pull ends after this; the caller re-opens


class PeerExchangeService(peer_pb2_grpc.PeerExchangeServicer):
    """Serves this node's card and log, and witnesses its partners' logs.

    ``follow`` limits whose logs the witness cosigns (None: every trusted partner)."""

    def __init__(
        self,
        node: Node,
        *,
        follow: Collection[str] | None = None,
        now: Callable[[], datetime] = clock.now,
        signal: OutboxSignal | None = None,
        on_commit: Callable[[], None] | None = None,
    ) -> None:
        self._node = node
        self._now = now
        self._signal = signal
        self._on_commit = on_commit
        self._follow = None if follow is None else frozenset(follow)
        self._witness_for: tuple[bytes, Witness] | None = None

    @property
    def _witness(self) -> Witness:
        """Our witness, under the witness key of the keyring in use: a rotation while
        serving (ADR 0017) takes effect at the next AddCheckpoint."""
        signer = self._node.keyring().witness_signer()
        if self._witness_for is None or self._witness_for[0] != signer.public_key:
            witness = Witness(self._node.store, signer, witness_name(self._node.config.node))
            self._witness_for = (signer.public_key, witness)
        return self._witness_for[1]

    async def GetCard(
        self, request: card_pb2.GetCardRequest, context: Context
    ) -> card_pb2.GetCardResponse:
        signed = self._node.own_chain().signed
        known = request.known_version
        newer = signed[known:] if 0 < known < len(signed) else ()
        return card_pb2.GetCardResponse(
            card=node_card_message(signed[-1]),
            rotation_chain=[node_card_message(s) for s in newer],
            revocations=[revocation_message(r) for r in self._node.own_revocations()],
            key_revocations=[revocation_message(r) for r in self._node.own_key_revocations()],
        )

    async def GetCheckpoint(
        self, request: log_pb2.GetCheckpointRequest, context: Context
    ) -> log_pb2.GetCheckpointResponse:
        cp = self._latest()
        note = self._node.log.cosigned_note(cp)
        return log_pb2.GetCheckpointResponse(checkpoint=log_pb2.Checkpoint(note=note))

    async def GetInclusionProof(
        self, request: log_pb2.GetInclusionProofRequest, context: Context
    ) -> log_pb2.GetInclusionProofResponse:
        size, index = request.tree_size, request.leaf_index
        if not (0 < size <= self._latest().size and index < size):
            raise _bad_range("leaf index and tree size must lie within the latest checkpoint")
        hashes = self._node.log.inclusion_proof(index, size)
        return log_pb2.GetInclusionProofResponse(leaf_index=index, tree_size=size, hashes=hashes)

    async def GetConsistencyProof(
        self, request: log_pb2.GetConsistencyProofRequest, context: Context
    ) -> log_pb2.GetConsistencyProofResponse:
        old, new = request.old_size, request.new_size
        if not 0 < old <= new <= self._latest().size:
            raise _bad_range("sizes must satisfy 0 < old <= new <= the latest checkpoint")
        hashes = self._node.log.consistency_proof(old, new)
        return log_pb2.GetConsistencyProofResponse(old_size=old, new_size=new, hashes=hashes)

    async def AddCheckpoint(
        self, request: log_pb2.AddCheckpointRequest, context: Context
    ) -> log_pb2.AddCheckpointResponse:
        peer = current_peer()
        if self._follow is not None and peer.node not in self._follow:
            raise InputError(
                f"this witness does not follow {peer.node}", code="witness.not_followed"
            )
        if len(request.consistency_proof) > MAX_PROOF_HASHES:
            raise InputError(f"more than {MAX_PROOF_HASHES} proof hashes", code="limit.proof")
        # The state is the authenticated partner's: its own origin, its card's log key
        # (docs/THREATS.md P16); a card naming another node's log was refused when trusted.
        log_key = parse_verifier_key(peer.card.log_vkey)
        try:
            line = self._witness.add_checkpoint(
                partner=peer.node,
                origin=log_origin(peer.node),
                log_key=log_key,
                old_size=request.old_size,
                proof=list(request.consistency_proof),
                note=request.checkpoint.note,
                now=self._now(),
                revoked_log_keys=self._node.peer_revoked_keys(peer.node, "log"),
            )
        except WitnessConflict as conflict:
            held = log_pb2.CheckpointConflict(size=conflict.held_size)
            return log_pb2.AddCheckpointResponse(conflict=held)
        return log_pb2.AddCheckpointResponse(cosignature_lines=(line + "\n").encode("utf-8"))

    async def Pull(
        self, request: peer_pb2.PullRequest, context: Context
    ) -> AsyncIterator[envelope_pb2.EnvelopeBatch]:
        """Stream the caller's envelopes after ``after_seq`` in seq order; with ``follow``,
        stay open and send new ones as they are committed (an empty batch is a heartbeat)."""
        peer = current_peer().node
        after = request.after_seq
        # A followed stream is ended by this side after FOLLOW_SECONDS (the caller sets a
        # longer deadline and re-opens), and any stream ends a margin before the caller's
        # deadline: never cut by a deadline while a batch is in flight.
        deadline = context.time_remaining()
        margin = None if deadline is None else min(STREAM_END_MARGIN, deadline * 0.2)
        ends_at = asyncio.get_running_loop().time() + FOLLOW_SECONDS
        # A new revocation of one of our keys ends the stream: the caller re-opens with
        # GetCard first, so it learns the revocation within a heartbeat.
        revocations = self._node.own_revocation_count()
        # So does a new card version (a rotation, ADR 0017): the caller learns our new
        # keys, TLS CA included, before it uses the old ones any longer.
        card_version = self._node.own_chain().latest.version
        while True:
            remaining = context.time_remaining()
            if remaining is not None and margin is not None and remaining < margin:
                return
            if request.follow and asyncio.get_running_loop().time() >= ends_at:
                return
            if self._node.own_revocation_count() != revocations:
                return
            if self._node.own_chain().latest.version != card_version:
                return
            rows = outbox.pending_with_seq(self._node, peer, after, request.max_batch)
            if rows:
                after = rows[-1][0]
                yield envelope_pb2.EnvelopeBatch(
                    envelopes=[envelope_message(env) for _seq, env in rows],
                    caught_up=len(rows)
                    < min(request.max_batch or outbox.MAX_BATCH, outbox.MAX_BATCH),
                )
                continue
            yield envelope_pb2.EnvelopeBatch(caught_up=True)
            if not request.follow or self._signal is None:
                return
            remaining = context.time_remaining()
            wait = min(HEARTBEAT_SECONDS, max(0.0, ends_at - asyncio.get_running_loop().time()))
            if remaining is not None and margin is not None:
                wait = max(0.0, min(wait, remaining - margin))
            await self._signal.wait(peer, wait)

    async def Acknowledge(
        self, request: peer_pb2.AcknowledgeRequest, context: Context
    ) -> peer_pb2.AcknowledgeResponse:
        peer = current_peer().node
        _receipt, new = outbox.accept_receipt(
            self._node, peer, request.receipt.statement, request.receipt.signature, self._now()
        )
        if new and self._on_commit is not None:
            self._on_commit()
        _sent, acknowledged = outbox.backlog(self._node, peer)
        return peer_pb2.AcknowledgeResponse(acknowledged_seq=acknowledged, duplicate=not new)

    def _latest(self) -> SignedCheckpoint:
        cp = self._node.log.latest_checkpoint()
        if cp is None:
            raise InputError("no checkpoint signed yet", code="log.no_checkpoint")
        return cp


class WitnessService(PeerExchangeService):
    """``accord witness serve``: only AddCheckpoint and GetCheckpoint, for followed logs."""

    async def GetCard(
        self, request: card_pb2.GetCardRequest, context: Context
    ) -> card_pb2.GetCardResponse:
        raise unimplemented("GetCard on a witness")

    async def GetInclusionProof(
        self, request: log_pb2.GetInclusionProofRequest, context: Context
    ) -> log_pb2.GetInclusionProofResponse:
        raise unimplemented("GetInclusionProof on a witness")

    async def GetConsistencyProof(
        self, request: log_pb2.GetConsistencyProofRequest, context: Context
    ) -> log_pb2.GetConsistencyProofResponse:
        raise unimplemented("GetConsistencyProof on a witness")

    async def Pull(
        self, request: peer_pb2.PullRequest, context: Context
    ) -> AsyncIterator[envelope_pb2.EnvelopeBatch]:
        raise unimplemented("Pull on a witness")
        yield envelope_pb2.EnvelopeBatch()  # unreachable: makes Pull an async generator

    async def Acknowledge(
        self, request: peer_pb2.AcknowledgeRequest, context: Context
    ) -> peer_pb2.AcknowledgeResponse:
        raise unimplemented("Acknowledge on a witness")


def _bad_range(message: str) -> InputError:
    return InputError(message, code="log.bad_range")
