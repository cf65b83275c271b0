"""A hostile partner for the adversarial suite (docs/THREATS.md P, N, L).

``pk-moi`` is a real node (``node.home.init_node``: real identity, log, witness, TLS and
encryption keys), trusted by the victim ``cn-mps`` through the real trust store, with an
agreement both signed and the example release policy. It misbehaves in exactly one way
per test:

- :class:`Forge` builds envelopes with the real ``exchange.envelope.seal_envelope`` and
  pk-moi's own keys (so only the property under test is wrong), or mutates bytes and
  re-signs them with pk-moi's identity key (a partner signing what it chose to send);
- :class:`HostilePeer` is a ``grpc.aio`` PeerExchange server on pk-moi's card endpoint
  with real mutual TLS (its node certificate, and only the victim's CA accepted), whose
  Pull serves whatever the test scripted (replays, reorderings, jumps, forgeries), or
  holds the stream idle, or trickles heartbeats; it records every Pull and receipt.

The victim pulls with the real ``node.sync.Puller.pull_once`` over a real channel.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import grpc

from exchange.canonical import canonical_json, sha256
from exchange.card import Card, EncryptionKey, SignedCard
from exchange.envelope import Envelope, ReportRelease, seal_envelope
from exchange.errors import AccordError
from exchange.purpose import Purpose, signed_message
from exchange.sdjwt import SealedReport, seal
from exchange.sop import ValidReport, check_report_document
from keys.keyring import witness_name
from keys.signers import HpkeEncryptor
from node.home import Node, init_node
from node.ids import uuid7
from node.rpc._pb.accord.v1 import card_pb2, envelope_pb2, log_pb2, peer_pb2, peer_pb2_grpc
from node.rpc.sync import Puller, PullState
from node.rpc.transport import PartnerChannels
from node.rpc.wire import envelope_message, node_card_message, revocation_message
from node.services import outbox
from node.services.agreements import current_agreement, propose_agreement, sign_and_store
from node.services.inbox import cursor
from node.services.policy import active_policy, apply_policy, decide_for
from node.services.reports import load_sealed
from node.services.schemas import registry
from node.services.witness import Witness
from tests.builders import ALERT, sqlite_store
from tests.conftest import POLICY, TERMS
from tests.integration.conftest import free_port

HOSTILE = "pk-moi"
VICTIM = "cn-mps"
THIRD = "de-bka"
ENCRYPTOR = HpkeEncryptor()
# Tables an authentic, in-sequence but refused envelope may touch (docs/DESIGN.md §8: the
# cursor passes it only with a recorded decision): the inbound row, the cursor, the
# receipt, and the log (leaf, subtrees, checkpoint) holding ``envelope.rejected``.
REJECTION_TABLES = frozenset(
    {"inbound", "cursors", "receipts", "log_leaves", "log_subtrees", "log_checkpoints"}
)
LOG_TABLES = frozenset({"log_leaves", "log_subtrees", "log_checkpoints"})


# ---- the world: a victim and the partner that misbehaves -----------------------------------


def make_node(tmp: Path, name: str, now: datetime) -> Node:
    return init_node(
        tmp / name,
        node=name,
        name=f"Agency {name}",
        endpoint=f"127.0.0.1:{free_port()}",
        passphrase=None,
        now=now,
    )


def trust(node: Node, other: Node, now: datetime) -> None:
    chain = other.own_chain()
    node.add_peer(chain.to_bytes(), fingerprint=chain.latest.fingerprint, tofu=False, now=now)


def agree(proposer: Node, other: Node, now: datetime) -> None:
    """An agreement signed by both, from the shipped example terms (proposer sends)."""
    terms = TERMS.read_text("utf-8").replace("pk-moi:cn-mps", f"{proposer.config.node}:x")
    offer = propose_agreement(proposer, other.config.node, terms, now)
    countersigned, _ = sign_and_store(other, offer.to_bytes(), now)
    _, verified = sign_and_store(proposer, countersigned.to_bytes(), now)
    assert verified is not None


@dataclass
class World:
    hostile: Node  # pk-moi: the partner that misbehaves
    victim: Node  # cn-mps: the node under test
    tmp: Path
    now: datetime

    @property
    def victim_card(self) -> Card:
        return self.victim.own_chain().latest

    @property
    def hostile_card(self) -> Card:
        return self.hostile.own_chain().latest

    def close(self) -> None:
        self.hostile.close()
        self.victim.close()


def make_world(tmp: Path, created: datetime) -> World:
    hostile, victim = make_node(tmp, HOSTILE, created), make_node(tmp, VICTIM, created)
    trust(hostile, victim, created)
    trust(victim, hostile, created)
    agree(hostile, victim, created)
    policy = POLICY.read_text("utf-8")
    apply_policy(hostile, policy, created)
    return World(hostile, victim, tmp, created + timedelta(hours=1))


def valid(report: dict[str, Any] = ALERT, **fields: Any) -> ValidReport:
    doc = json.loads(json.dumps(report))
    doc["fields"].update(fields)
    return check_report_document(registry(), json.dumps(doc).encode(), "json")


# ---- building what a hostile partner sends ----------------------------------------------------


class Forge:
    """Envelopes pk-moi builds with its own keys, for the victim (or anyone)."""

    def __init__(self, world: World) -> None:
        self.w = world
        self.node = world.hostile

    @property
    def signer(self) -> Any:
        return self.node.keyring().identity_signer()

    def submit(self, *reports: ValidReport) -> list[Envelope]:
        """Honest: the real outbox (seal, decide, envelope); returns the new envelopes."""
        before = outbox.backlog(self.node, VICTIM)[0]
        outbox.submit(self.node, list(reports) or [valid()], self.w.now)
        return outbox.pending(self.node, VICTIM, before, 256)

    def amend(self, report_id: str, report: ValidReport) -> list[Envelope]:
        before = outbox.backlog(self.node, VICTIM)[0]
        outbox.amend(self.node, report_id, report, self.w.now)
        return outbox.pending(self.node, VICTIM, before, 256)

    def report_ids(self) -> list[str]:
        rows = self.node.store.conn.execute(
            "SELECT DISTINCT report_id FROM reports ORDER BY sealed_at, report_id"
        ).fetchall()
        return [str(r[0]) for r in rows]

    def sealed(self, report_id: str, version: int | None = None) -> SealedReport:
        return load_sealed(self.node, report_id, version)

    def seal_report(self, report: ValidReport, *, report_id: str | None = None) -> SealedReport:
        """A report sealed with pk-moi's identity key, not stored anywhere."""
        return seal(
            report.report,
            signer=self.signer,
            kid=self.w.hostile_card.fingerprint,
            issuer=HOSTILE,
            report_id=report_id or uuid7(),
            issued_at=int(self.w.now.timestamp()),
            version=1,
            supersedes=None,
            sop_digest=report.sop_digest,
            random_bytes=os.urandom,
        )

    def content(
        self,
        sealed: SealedReport,
        report: ValidReport | None = None,
        *,
        released: Iterable[str] | None = None,
    ) -> ReportRelease:
        """What pk-moi's policy would release of ``sealed`` (or exactly ``released``)."""
        now = self.w.now
        agreement = current_agreement(self.node, VICTIM, now)
        assert agreement is not None
        policy = active_policy(self.node, now)
        assert policy is not None
        if released is not None:
            return ReportRelease(sealed, tuple(released), (), agreement.digest, policy.digest)
        decision = decide_for(self.node, (report or valid()).report, VICTIM, now, policy)
        return ReportRelease.from_decision(sealed, decision)

    def recipient_key(self, suite: str | None = None) -> EncryptionKey:
        card = self.w.victim_card
        keys = [k for k in card.encryption_keys if suite is None or k.suite == suite]
        return keys[-1]

    def seal(
        self,
        content: ReportRelease,
        *,
        seq: int,
        recipient: str = VICTIM,
        envelope_id: str | None = None,
    ) -> Envelope:
        key = self.recipient_key()
        return seal_envelope(
            content,
            envelope_id=envelope_id or uuid7(),
            sender=HOSTILE,
            recipient=recipient,
            seq=seq,
            recipient_key=key,
            suite=key.suite,
            now=self.w.now,
            signer=self.signer,
            encryptor=ENCRYPTOR,
        )

    def resign(
        self,
        env: Envelope,
        *,
        header: Callable[[dict[str, Any]], None] | None = None,
        header_bytes: bytes | None = None,
        signer: Any = None,
        purpose: Purpose = Purpose.ENVELOPE,
    ) -> Envelope:
        """``env`` with an edited header, signed again (by pk-moi unless ``signer``)."""
        if header_bytes is None:
            doc = json.loads(env.header)
            if header is not None:
                header(doc)
            header_bytes = canonical_json(doc)
        signer = signer or self.signer
        message = signed_message(purpose, sha256(header_bytes) + sha256(env.ciphertext))
        return Envelope(header_bytes, env.ciphertext, signer.sign(message))


# ---- the hostile gRPC server -----------------------------------------------------------------


@dataclass
class Script:
    """What the hostile Pull does; tests set it before the victim pulls."""

    batches: list[list[Envelope]] = field(default_factory=list)
    hold: bool = False  # hold the stream open, sending nothing (N05)
    trickle: bool = False  # a heartbeat now and then, forever (N05)
    cut_after: int | None = None  # end the stream abruptly after this many batches (N04)
    raw_batches: list[envelope_pb2.EnvelopeBatch] = field(default_factory=list)
    freeze_witness: bool = False  # AddCheckpoint answers a conflict, forever (P03)
    revocations: list[card_pb2.Revocation] | None = None  # GetCard serves these (P06)
    rotation: list[SignedCard] | None = None  # GetCard serves these newer versions (P16)
    key_revocations: list[card_pb2.Revocation] | None = None  # log/witness/TLS (ADR 0018)


class HostilePeer(peer_pb2_grpc.PeerExchangeServicer):
    def __init__(self, node: Node) -> None:
        self.node = node
        self.script = Script()
        self.pulls: list[peer_pb2.PullRequest] = []
        self.receipts: list[tuple[bytes, bytes]] = []
        self.checkpoints: list[log_pb2.AddCheckpointRequest] = []
        self._witness = Witness(
            node.store, node.keyring().witness_signer(), witness_name(node.config.node)
        )

    async def GetCard(self, request: Any, context: Any) -> card_pb2.GetCardResponse:
        revocations = self.script.revocations
        if revocations is None:
            revocations = [revocation_message(r) for r in self.node.own_revocations()]
        key_revocations = self.script.key_revocations
        if key_revocations is None:
            key_revocations = [revocation_message(r) for r in self.node.own_key_revocations()]
        rotation = self.script.rotation or []
        latest = rotation[-1] if rotation else self.node.own_chain().signed[-1]
        return card_pb2.GetCardResponse(
            card=node_card_message(latest),
            rotation_chain=[node_card_message(s) for s in rotation],
            revocations=revocations,
            key_revocations=key_revocations,
        )

    async def Pull(
        self, request: peer_pb2.PullRequest, context: Any
    ) -> AsyncIterator[envelope_pb2.EnvelopeBatch]:
        self.pulls.append(request)
        s = self.script
        if s.hold:
            await asyncio.sleep(3600)
        while s.trickle:
            yield envelope_pb2.EnvelopeBatch(caught_up=True)
            await asyncio.sleep(0.05)
        for raw in s.raw_batches:
            yield raw
        for index, batch in enumerate(s.batches):
            if s.cut_after is not None and index >= s.cut_after:
                await context.abort(grpc.StatusCode.UNAVAILABLE, "connection lost")
            yield envelope_pb2.EnvelopeBatch(envelopes=[envelope_message(e) for e in batch])
        yield envelope_pb2.EnvelopeBatch(caught_up=True)

    async def Acknowledge(
        self, request: peer_pb2.AcknowledgeRequest, context: Any
    ) -> peer_pb2.AcknowledgeResponse:
        self.receipts.append((request.receipt.statement, request.receipt.signature))
        return peer_pb2.AcknowledgeResponse()

    async def AddCheckpoint(
        self, request: log_pb2.AddCheckpointRequest, context: Any
    ) -> log_pb2.AddCheckpointResponse:
        """pk-moi really witnesses the victim's log, until the script freezes it."""
        self.checkpoints.append(request)
        if self.script.freeze_witness:
            held = self._witness.held_for(VICTIM)
            return log_pb2.AddCheckpointResponse(
                conflict=log_pb2.CheckpointConflict(size=0 if held is None else held.size)
            )
        from exchange.note import parse_verifier_key

        victim = self.node.trust_store().trusted_chain(VICTIM, datetime.now().astimezone())
        key = parse_verifier_key(victim.latest.log_vkey)
        line = self._witness.add_checkpoint(
            partner=VICTIM,
            origin=key.name,
            log_key=key,
            old_size=request.old_size,
            proof=list(request.consistency_proof),
            note=request.checkpoint.note,
            now=datetime.now().astimezone(),
        )
        return log_pb2.AddCheckpointResponse(cosignature_lines=(line + "\n").encode())


class HostileServer:
    """``async with HostileServer(world) as peer:`` serves pk-moi's card endpoint."""

    def __init__(self, node: Node, client_ca: bytes, options: list[tuple[str, Any]] | None = None):
        self.node = node
        # The stubs mark every RPC abstract; a hostile partner serves only those the attacks use.
        self.peer = HostilePeer(node)  # type: ignore[abstract]
        self._client_ca = client_ca
        self._options = options or []
        self._server: grpc.aio.Server | None = None

    async def __aenter__(self) -> HostilePeer:
        cert, key = self.node.keyring().tls_server_material()
        creds = grpc.ssl_server_credentials(
            [(key, cert)], root_certificates=self._client_ca, require_client_auth=True
        )
        self._server = grpc.aio.server(options=self._options)
        peer_pb2_grpc.add_PeerExchangeServicer_to_server(self.peer, self._server)
        endpoint = self.node.own_chain().latest.endpoint
        assert self._server.add_secure_port(endpoint, creds) != 0
        await self._server.start()
        return self.peer

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        await self._server.stop(grace=0)


def hostile_server(world: World) -> HostileServer:
    return HostileServer(world.hostile, world.victim_card.tls_ca_pem.encode("ascii"))


@dataclass
class Pulled:
    applied: int
    error: BaseException | None
    state: PullState
    peer: HostilePeer

    @property
    def code(self) -> str | None:
        err = self.error
        if isinstance(err, AccordError):
            return err.code
        if isinstance(err, grpc.aio.AioRpcError):
            return str(err.code().name)
        return None


async def pull_once(victim: Node, now: datetime, peer: str = HOSTILE) -> tuple[int, Any, Any]:
    channels = PartnerChannels(victim)
    puller = Puller(victim, channels, now=lambda: now)
    try:
        await puller.pull_once(peer, follow=False)
        error = None
    except (AccordError, grpc.aio.AioRpcError) as e:
        error = e
    finally:
        await channels.close()
    state = puller.state[peer]
    return state.applied, error, state


def pull(
    world: World, *batches: list[Envelope], now: datetime | None = None, **script: Any
) -> Pulled:
    """The victim pulls once from pk-moi, which serves ``batches`` (and ``script``)."""

    async def scenario() -> Pulled:
        async with hostile_server(world) as peer:
            peer.script = Script(batches=list(batches), **script)
            applied, error, state = await pull_once(world.victim, now or world.now)
            return Pulled(applied, error, state, peer)

    return asyncio.run(scenario())


# ---- stored state ------------------------------------------------------------------------------


def rows(node: Node, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    return [tuple(r) for r in node.store.conn.execute(sql, args).fetchall()]


def log_kinds(node: Node, start: int = 0) -> list[str]:
    from exchange.events import parse_event_unverified

    return [parse_event_unverified(e).kind for _i, e in node.log.leaves(start, 1_000_000)]


def log_events(node: Node, start: int = 0) -> list[dict[str, Any]]:
    from exchange.events import parse_event_unverified

    out = []
    for _i, e in node.log.leaves(start, 1_000_000):
        event = parse_event_unverified(e)
        out.append({"kind": event.kind, **event.attrs})
    return out


def _by_table(state: dict[str, str]) -> dict[str, set[str]]:
    tables: dict[str, set[str]] = {}
    for line in state.get("node.db", "").splitlines():
        name = line.split('"')[1] if line.startswith('INSERT INTO "') else "__schema__"
        tables.setdefault(name, set()).add(line)
    for name, digest in state.items():
        if name != "node.db":
            tables.setdefault("file:" + name, set()).add(digest)
    return tables


def changed(before: dict[str, str], after: dict[str, str]) -> set[str]:
    """The tables (and ``file:`` entries) whose content differs between two snapshots."""
    a, b = _by_table(before), _by_table(after)
    return {name for name in set(a) | set(b) if a.get(name, set()) != b.get(name, set())}


def assert_only(before: dict[str, str], after: dict[str, str], allowed: Iterable[str]) -> None:
    """Only ``allowed`` tables changed (the highwater file follows a new checkpoint), and
    nothing anywhere was removed except the one cursor row an upsert replaces."""
    allowed = set(allowed) | {"file:log.highwater"}
    extra = changed(before, after) - allowed
    assert not extra, f"unexpected changes in {sorted(extra)}"
    a, b = _by_table(before), _by_table(after)
    for name in set(a) - {"cursors", "file:log.highwater"}:
        assert a[name] <= b.get(name, set()), f"rows removed from {name}"


def integrity_ok(node: Node) -> None:
    conn = sqlite3.connect(f"file:{sqlite_store(node).path}?mode=ro", uri=True)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        conn.close()


__all__ = [
    "HOSTILE",
    "LOG_TABLES",
    "REJECTION_TABLES",
    "THIRD",
    "VICTIM",
    "Forge",
    "HostilePeer",
    "HostileServer",
    "Pulled",
    "Script",
    "World",
    "agree",
    "assert_only",
    "changed",
    "cursor",
    "hostile_server",
    "log_events",
    "log_kinds",
    "make_node",
    "make_world",
    "pull",
    "pull_once",
    "rows",
    "trust",
    "valid",
]
