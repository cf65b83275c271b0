"""A hostile partner naming another node's log (docs/THREATS.md P16, H06; ADR 0012).

The finding: partner de-bka named its log ``cn-mps.accord/log``; pk-moi's witness keyed its
state by that name, cosigned a fake size-1,000,000 checkpoint "for cn-mps", and refused
cn-mps's real checkpoints afterwards as a rollback. Now a card may only name its own log
and witness (``card.origin_mismatch`` at ``peer add`` and on GetCard), and the witness
keys what it holds by (authenticated partner, origin, log key)."""

from __future__ import annotations

import asyncio
import dataclasses
import sqlite3
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest

from exchange.card import SignedCard, chain_bytes, sign_card
from exchange.checkpoint import Checkpoint, sign_checkpoint
from exchange.errors import PeerDataError
from exchange.note import parse_verifier_key, verifier_key
from keys.keyring import witness_name
from node.home import Node
from node.rpc._pb.accord.v1 import log_pb2, peer_pb2_grpc
from node.rpc.errors_map import read_error_detail
from node.rpc.server import NodeServer, ServeOptions
from node.rpc.transport import channel_options, client_credentials
from node.services.witness import Witness
from node.store import Store
from tests.adversarial.hostile import (
    HOSTILE,
    THIRD,
    VICTIM,
    World,
    make_node,
    pull,
    rows,
    trust,
)
from tests.conftest import Result, snapshot
from tests.integration.conftest import free_port

Accord = Callable[..., Result]
FAKE_SIZE = 1_000_000


def _card_naming(node: Node, *, log: str | None = None, witness: str | None = None) -> SignedCard:
    """``node``'s own version-1 card, signed by its own identity key, whose log (or
    witness) key carries another name: what a hostile partner would hand over."""
    ring = node.keyring()
    card = node.own_chain().latest
    if log is not None:
        card = dataclasses.replace(
            card, log_vkey=verifier_key(log, ring.log_signer().public_key).encode()
        )
    if witness is not None:
        key = parse_verifier_key(card.witness_vkey)
        card = dataclasses.replace(
            card, witness_vkey=verifier_key(witness, key.public_key, key.sig_type).encode()
        )
    return sign_card(card, ring.identity_signer(), None)


def _witness_rows(node: Node) -> list[tuple[Any, ...]]:
    return rows(node, "SELECT partner, origin, log_key, size, root, note FROM witness_state")


# -- P16 at peer add ----------------------------------------------------------------------------


@pytest.mark.threat("P16", "H06")
@pytest.mark.parametrize("what", ["log", "witness"])
def test_p16_card_naming_another_nodes_log_is_refused_at_peer_add(
    make_node: Callable[..., Path], accord: Accord, tmp_path: Path, what: str
) -> None:
    pk = make_node("pk-moi", free_port())
    de_dir = make_node(THIRD, free_port())
    de = Node.open(de_dir, lambda: "test passphrase for accord")
    try:
        forged = (
            _card_naming(de, log=f"{VICTIM}.accord/log")
            if what == "log"
            else _card_naming(de, witness=witness_name(VICTIM))
        )
        fingerprint = de.own_chain().latest.fingerprint
    finally:
        de.close()
    card = tmp_path / "de-bka.card"
    card.write_bytes(chain_bytes([forged]))
    before = snapshot(pk)
    r = accord("--data", pk, "peer", "add", card, "--fingerprint", fingerprint)
    assert r.code == PeerDataError.exit_code, r.err
    assert "code: card.origin_mismatch" in r.err
    assert snapshot(pk) == before


# -- P16 on GetCard -----------------------------------------------------------------------------


@pytest.mark.threat("P16")
def test_p16_rotation_to_a_card_naming_another_log_is_refused_on_getcard(world: World) -> None:
    hostile, victim = world.hostile, world.victim
    ring = hostile.keyring()
    v1 = hostile.own_chain().latest
    v2 = dataclasses.replace(
        v1,
        version=2,
        issued_at=(world.now - timedelta(minutes=1)).strftime("%Y-%m-%dT%H:%M:%SZ"),
        log_vkey=verifier_key(f"{THIRD}.accord/log", ring.log_signer().public_key).encode(),
    )
    rotation = [sign_card(v2, ring.identity_signer(), ring.identity_signer())]
    before = snapshot(victim.data_dir)
    pulled = pull(world, rotation=rotation)
    assert pulled.code == "card.origin_mismatch", pulled.error
    assert snapshot(victim.data_dir) == before  # trust store, log, witness state unchanged
    chain = victim.trust_store().trusted_chain(HOSTILE, world.now)
    assert chain.latest.version == 1 and chain.latest.log_vkey == v1.log_vkey


# -- H06 / P16: witness state per authenticated partner -----------------------------------------


def _trusting_witness(tmp_path: Path, now: datetime) -> tuple[Node, Node, Node]:
    """pk-moi witnesses the logs of cn-mps and de-bka (both trusted both ways)."""
    pk, cn, de = (make_node(tmp_path, n, now) for n in ("pk-moi", VICTIM, THIRD))
    for a, b in ((pk, cn), (cn, pk), (pk, de), (de, pk)):
        trust(a, b, now)
    return pk, cn, de


@pytest.mark.threat("H06", "P16")
def test_h06_a_partner_cannot_write_the_witness_state_of_another_log(tmp_path: Path) -> None:
    """de-bka, a trusted partner, asks pk-moi's real witness (over mutual TLS) to cosign a
    size-1,000,000 checkpoint of cn-mps's log, signed by its own log key under cn-mps's
    log name. Refused; cn-mps's real checkpoints are still cosigned afterwards."""
    now = datetime.now().astimezone().replace(microsecond=0)
    pk, cn, de = _trusting_witness(tmp_path, now)
    cn_origin = f"{VICTIM}.accord/log"

    async def add(caller: Node, old_size: int, note: bytes, proof: list[bytes]) -> Any:
        card = pk.own_chain().latest
        async with grpc.aio.secure_channel(
            card.endpoint, client_credentials(caller, card), options=channel_options()
        ) as channel:
            stub = peer_pb2_grpc.PeerExchangeStub(channel)
            request = log_pb2.AddCheckpointRequest(
                old_size=old_size, consistency_proof=proof, checkpoint=log_pb2.Checkpoint(note=note)
            )
            return await stub.AddCheckpoint(request, timeout=10)

    async def scenario() -> None:
        server = NodeServer(pk, ServeOptions(cosign=False))
        await server.start()
        try:
            # cn-mps's real checkpoint is cosigned: the witness now holds it for cn-mps.
            first = cn.log.latest_checkpoint()
            assert first is not None
            answer = await add(cn, 0, first.note, [])
            assert answer.WhichOneof("result") == "cosignature_lines"
            held = _witness_rows(pk)
            assert [(p, o, s) for p, o, _k, s, _r, _n in held] == [(VICTIM, cn_origin, first.size)]

            # de-bka forges "cn-mps.accord/log" at size 1,000,000 with its own log key.
            fake = sign_checkpoint(
                Checkpoint(cn_origin, FAKE_SIZE, b"\x42" * 32),
                cn_origin,
                de.keyring().log_signer(),
            )
            evidence = rows(pk, "SELECT * FROM witness_evidence")
            for old_size in (0, first.size):
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await add(de, old_size, fake, [])
                assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value
                assert read_error_detail(err.value) is not None
            assert _witness_rows(pk) == held  # unchanged: no state for anyone moved
            assert rows(pk, "SELECT * FROM witness_evidence") == evidence

            # cn-mps's next real checkpoint is still cosigned, not refused as a rollback.
            with cn.store.transaction() as db:
                cn.record(db, "policy.changed", now, policy_digest="sha256:" + "0" * 64)
            second = cn.checkpoint(now)
            proof = cn.log.consistency_proof(first.size, second.size)
            answer = await add(cn, first.size, second.note, proof)
            assert answer.WhichOneof("result") == "cosignature_lines"
        finally:
            await server.stop(grace=1)

    asyncio.run(scenario())
    assert [(p, o, s) for p, o, _k, s, _r, _n in _witness_rows(pk)] == [
        (VICTIM, cn_origin, cn.log.size())
    ]
    for n in (pk, cn, de):
        n.close()


@pytest.mark.threat("H06", "P16")
def test_h06_witness_refuses_an_origin_that_is_not_the_partners_own(tmp_path: Path) -> None:
    now = datetime.now().astimezone().replace(microsecond=0)
    pk, cn, de = _trusting_witness(tmp_path, now)
    witness = Witness(pk.store, pk.keyring().witness_signer(), witness_name("pk-moi"))
    origin = f"{VICTIM}.accord/log"
    key = verifier_key(origin, de.keyring().log_signer().public_key)
    fake = sign_checkpoint(
        Checkpoint(origin, FAKE_SIZE, b"\x42" * 32), origin, de.keyring().log_signer()
    )
    before = snapshot(pk.data_dir)
    with pytest.raises(PeerDataError) as err:
        witness.add_checkpoint(
            partner=THIRD, origin=origin, log_key=key, old_size=0, proof=[], note=fake, now=now
        )
    assert err.value.code == "card.origin_mismatch"
    assert snapshot(pk.data_dir) == before
    assert witness.held_for(VICTIM) is None and witness.held_for(THIRD) is None
    for n in (pk, cn, de):
        n.close()


@pytest.mark.threat("P16", "H06")
def test_p16_migration_drops_witness_state_written_under_a_borrowed_origin(
    tmp_path: Path,
) -> None:
    """A witness poisoned before the upgrade: its cn-mps row holds de-bka's fake checkpoint.
    Migration 15 keeps the genuine de-bka row (keyed to de-bka and its log key), moves the
    poisoned one to the evidence, and cn-mps's real checkpoint is cosigned again."""
    now = datetime.now().astimezone().replace(microsecond=0)
    pk, cn, de = _trusting_witness(tmp_path, now)
    cn_origin, de_origin = f"{VICTIM}.accord/log", f"{THIRD}.accord/log"
    fake = sign_checkpoint(
        Checkpoint(cn_origin, FAKE_SIZE, b"\x42" * 32), cn_origin, de.keyring().log_signer()
    )
    real_de = de.log.latest_checkpoint()
    assert real_de is not None
    data = pk.data_dir
    pk.close()
    conn = sqlite3.connect(data / "node.db")
    with conn:  # the schema and content before migration 15
        conn.execute("DELETE FROM _migrations WHERE version >= 15")
        conn.execute("DROP INDEX log_leaves_by_kind")  # migration 16, replayed too
        conn.execute("DROP INDEX evidence_by_seq")  # migration 17, replayed too
        conn.execute("DROP INDEX evidence_by_time")
        conn.execute("DROP TABLE evidence_suppressed")
        conn.execute("ALTER TABLE evidence DROP COLUMN repeats")
        conn.execute("DROP TABLE own_key_revocations")  # migration 18, replayed too
        conn.execute("DROP TABLE peer_key_revocations")
        conn.execute("DROP TABLE witness_state")
        conn.execute("ALTER TABLE witness_evidence DROP COLUMN partner")
        conn.execute(
            "CREATE TABLE witness_state (origin TEXT PRIMARY KEY, size INTEGER NOT NULL,"
            " root BLOB NOT NULL, note BLOB NOT NULL, updated_at TEXT NOT NULL, grown_at TEXT)"
        )
        for origin, size, root, note in (
            (cn_origin, FAKE_SIZE, b"\x42" * 32, fake),
            (de_origin, real_de.size, real_de.root, real_de.note),
        ):
            conn.execute(
                "INSERT INTO witness_state VALUES (?, ?, ?, ?, '2026-01-01T00:00:00Z', NULL)",
                (origin, size, root, note),
            )
    conn.close()

    store = Store.open(data)
    try:
        held = [
            tuple(r)
            for r in store.conn.execute("SELECT partner, origin, log_key, size FROM witness_state")
        ]
        assert held == [(THIRD, de_origin, de.own_chain().latest.log_vkey, real_de.size)]
        [(origin, size, note, reason)] = store.conn.execute(
            "SELECT origin, held_size, held_note, reason FROM witness_evidence"
        ).fetchall()
        assert (origin, size, bytes(note)) == (cn_origin, FAKE_SIZE, fake)
        assert "migration 15" in reason
        witness = Witness(store, pk.keyring().witness_signer(), witness_name("pk-moi"))
        first = cn.log.latest_checkpoint()
        assert first is not None
        witness.add_checkpoint(
            partner=VICTIM,
            origin=cn_origin,
            log_key=parse_verifier_key(cn.own_chain().latest.log_vkey),
            old_size=0,
            proof=[],
            note=first.note,
            now=now,
        )
        assert witness.held_for(VICTIM) is not None
        assert witness.held_for(VICTIM).size == first.size  # type: ignore[union-attr]
    finally:
        store.close()
        cn.close()
        de.close()
