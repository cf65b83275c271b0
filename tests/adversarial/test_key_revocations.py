"""Revoking a replaced log, witness or TLS CA key (docs/THREATS.md P06, ADR 0018).

A thief of the old host holds the old log and witness keys. Once the node has rotated
them and revoked the old ones, a checkpoint signed with the stolen log key is refused by
the partner's witness and reported by ``audit verify``; a cosignature made with the stolen
witness key is refused by the cosigner and reported by ``audit verify``. A statement not
signed by the node's identity key is refused with nothing stored, and the key in force
cannot be revoked ("rotate first"). Real nodes (``init_node``), real witness and audit.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import pytest

from exchange.audit import Anchor
from exchange.checkpoint import Checkpoint, sign_checkpoint
from exchange.cosignature import cosign_checkpoint
from exchange.errors import InputError, PeerDataError, TransportError
from exchange.key_revocation import KeyRevocationStatement, card_key, tls_ca_id
from exchange.note import parse_note_unverified, parse_verifier_key
from exchange.purpose import Purpose, signed_message
from exchange.revocation import SignedRevocation
from keys.keyring import generate_keyring, witness_name
from keys.signers import Ed25519Signer
from node.home import Node, init_node
from node.rpc._pb.accord.v1 import card_pb2
from node.rpc.cosigning import Cosigner
from node.rpc.transport import authenticate_peer, partner_ca_pems
from node.services.audit import export_bundle, verify_bundle_file
from node.services.witness import Witness
from tests.adversarial.hostile import HOSTILE, World, integrity_ok, log_events, pull, rows
from tests.conftest import snapshot

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
T = NOW + timedelta(hours=1)  # the old keys are revoked from here
LATER = NOW + timedelta(hours=2)


def _node(tmp: Path, name: str) -> Node:
    return init_node(
        tmp / name, node=name, name=name, endpoint="127.0.0.1:7441", passphrase=None, now=NOW
    )


def _learn(node: Node, other: Node, now: datetime) -> None:
    """``node`` learns ``other``'s newer card versions and key revocations, as GetCard."""
    known = node.trust_store().trusted_chain(other.config.node, now).latest.version
    newer = list(other.own_chain().signed[known:])
    if newer:
        node.refresh_peer_card(other.config.node, newer, now)
    node.apply_peer_key_revocations(other.config.node, other.own_key_revocations(), now)


def _pair(tmp: Path) -> tuple[Node, Node]:
    pk, cn = _node(tmp, "pk-moi"), _node(tmp, "cn-mps")
    for a, b in ((pk, cn), (cn, pk)):
        chain = b.own_chain()
        a.add_peer(chain.to_bytes(), fingerprint=chain.latest.fingerprint, tofu=False, now=NOW)
    return pk, cn


def _witness(node: Node) -> Witness:
    return Witness(node.store, node.keyring().witness_signer(), witness_name(node.config.node))


def _cosign(owner: Node, partner: Node, now: datetime) -> None:
    """``partner``'s witness cosigns ``owner``'s latest checkpoint, as Cosigner.cosign."""
    cp = owner.log.latest_checkpoint()
    assert cp is not None
    old = owner.cosigned_size(partner.config.node)
    line = _witness(partner).add_checkpoint(
        partner=owner.config.node,
        origin=owner.config.log_origin,
        log_key=parse_verifier_key(owner.own_chain().latest.log_vkey),
        old_size=old,
        proof=owner.log.consistency_proof(old, cp.size) if old else [],
        note=cp.note,
        now=now,
        revoked_log_keys=partner.peer_revoked_keys(owner.config.node, "log"),
    )
    with owner.store.transaction() as db:
        owner.log.add_cosignature(cp.size, partner.config.node, line, now)
        owner.record(db, "checkpoint.cosigned", now, peer=partner.config.node, size=cp.size)


def _anchors(*nodes: Node) -> list[Anchor]:
    return [Anchor(n.config.node, n.own_chain().latest.fingerprint) for n in nodes]


def _codes(node: Node, anchors: list[Anchor], tmp: Path) -> set[str]:
    out = tmp / f"{node.config.node}-{len(list(tmp.iterdir()))}.bundle"
    export_bundle(node, out, LATER)
    report = verify_bundle_file(out, anchors=anchors)
    return {f.code for f in report.findings}


@pytest.mark.threat("P06")
def test_p06_checkpoint_by_a_stolen_revoked_log_key_is_refused_and_reported(
    tmp_path: Path,
) -> None:
    pk, cn = _pair(tmp_path)
    old_ring = pk.keyring()
    old_vkey = pk.own_chain().latest.log_vkey
    pk.rotate_keys(NOW, ["log"])
    statement, new = pk.revoke_own_other_key("log", old_vkey, T, "compromised", NOW)
    assert new and statement.key == old_vkey and statement.kind == "log"
    [event] = [e for e in log_events(pk) if e["kind"] == "key.revoked"]
    assert event["key"] == "log" and event["key_id"] == old_vkey
    _learn(cn, pk, NOW)
    assert cn.peer_revoked_keys("pk-moi", "log") == {old_vkey: T}
    [learned] = [e for e in log_events(cn) if e["kind"] == "peer.key_revoked"]
    assert learned["peer"] == "pk-moi" and learned["key"] == "log"
    _cosign(pk, cn, NOW)  # the honest log under the new key is cosigned
    held = rows(cn, "SELECT partner, origin, log_key, size, root, note FROM witness_state")

    # The thief signs a checkpoint extending the log with the stolen old log key.
    origin = pk.config.log_origin
    size = pk.log.size()
    forged = sign_checkpoint(
        Checkpoint(origin, size, pk.log.root(size)), origin, Ed25519Signer(old_ring.log_seed)
    )
    with pytest.raises(PeerDataError) as e:
        _witness(cn).add_checkpoint(
            partner="pk-moi",
            origin=origin,
            log_key=parse_verifier_key(pk.own_chain().latest.log_vkey),
            old_size=size,
            proof=[],
            note=forged,
            now=LATER,
            revoked_log_keys=cn.peer_revoked_keys("pk-moi", "log"),
        )
    assert e.value.code == "witness.revoked_log_key"
    assert rows(cn, "SELECT partner, origin, log_key, size, root, note FROM witness_state") == held
    assert rows(cn, "SELECT count(*) FROM witness_evidence") == [(0,)]

    # The thief's checkpoint in the bundle (an insider replaced the stored one):
    assert _codes(pk, _anchors(pk, cn), tmp_path) == set()
    with pk.store.transaction():
        pk.store.conn.execute("DELETE FROM log_checkpoints WHERE size = ?", (size,))
        pk.store.conn.execute(
            "INSERT INTO log_checkpoints (size, root, note, signed_at) VALUES (?, ?, ?, ?)",
            (size, pk.log.root(size), forged, "2026-11-25T14:00:00Z"),
        )
    assert "checkpoint.revoked_log_key" in _codes(pk, _anchors(pk, cn), tmp_path)


@pytest.mark.threat("P06")
def test_p06_cosignature_by_a_stolen_revoked_witness_key_is_refused_and_reported(
    tmp_path: Path,
) -> None:
    pk, cn = _pair(tmp_path)
    old_ring = cn.keyring()
    old_vkey = cn.own_chain().latest.witness_vkey
    with pk.store.transaction() as db:
        pk.log.append(db, [("policy.changed", NOW, {"policy_digest": "sha256:" + "0" * 64})])
    pk.checkpoint(NOW)
    _cosign(pk, cn, NOW)  # honest, before the revocation time: stays good
    cn.rotate_keys(NOW, ["witness"])
    cn.revoke_own_other_key("witness", old_vkey.split("+")[1], T, "compromised", NOW)
    _learn(pk, cn, NOW)
    assert pk.peer_revoked_keys("cn-mps", "witness") == {old_vkey: T}
    assert _codes(pk, _anchors(pk, cn), tmp_path) == set()

    # The thief cosigns pk's next checkpoint with the stolen witness key, after T.
    with pk.store.transaction() as db:
        pk.log.append(db, [("policy.changed", LATER, {"policy_digest": "sha256:" + "1" * 64})])
    cp = pk.checkpoint(LATER)
    text = parse_note_unverified(cp.note).text
    line = cosign_checkpoint(
        text, witness_name("cn-mps"), Ed25519Signer(old_ring.witness_seed), int(LATER.timestamp())
    ).line
    cosigner = Cosigner(pk, cast(Any, None))
    partner = pk.trust_store().trusted_chain("cn-mps", LATER).latest
    before = rows(pk, "SELECT count(*) FROM log_cosignatures")
    with pytest.raises(PeerDataError) as e:
        cosigner._verified_lines(partner, cp, (line + "\n").encode())
    assert e.value.code == "peer.revoked_witness_key"
    assert rows(pk, "SELECT count(*) FROM log_cosignatures") == before

    # Stored anyway (an insider, or a cosigner older than this change): audit names it.
    with pk.store.transaction():
        pk.log.add_cosignature(cp.size, "cn-mps", line, LATER)
    assert "checkpoint.revoked_witness_key" in _codes(pk, _anchors(pk, cn), tmp_path)


@pytest.mark.threat("P06")
def test_p06_forged_key_revocation_is_refused_with_nothing_stored(tmp_path: Path) -> None:
    pk, cn = _pair(tmp_path)
    old_vkey = pk.own_chain().latest.log_vkey
    pk.rotate_keys(NOW, ["log"])
    _learn(cn, pk, NOW)
    stranger = generate_keyring("pk-moi", "pk-moi.accord/log", "127.0.0.1", NOW)
    data = KeyRevocationStatement(
        "pk-moi", "log", old_vkey, "2026-11-25T13:00:00Z", "compromised", "2026-11-25T12:00:00Z"
    ).to_bytes()
    forged = SignedRevocation(
        data, stranger.identity_signer().sign(signed_message(Purpose.KEY_REVOCATION, data))
    )
    size = cn.log.size()
    with pytest.raises(PeerDataError) as e:
        cn.apply_peer_key_revocations("pk-moi", [forged], NOW)
    assert e.value.code == "peer.key_revocation_invalid"
    assert rows(cn, "SELECT count(*) FROM peer_key_revocations") == [(0,)]
    assert cn.log.size() == size and cn.peer_revoked_keys("pk-moi", "log") == {}
    # One good and one forged in the same answer: neither is stored.
    pk.revoke_own_other_key("log", old_vkey, T, "compromised", NOW)
    with pytest.raises(PeerDataError):
        cn.apply_peer_key_revocations("pk-moi", [*pk.own_key_revocations(), forged], NOW)
    assert rows(cn, "SELECT count(*) FROM peer_key_revocations") == [(0,)]
    assert cn.log.size() == size


@pytest.mark.threat("P06")
@pytest.mark.parametrize("kind", ["log", "witness", "tls"])
def test_p06_revoking_the_current_key_is_refused(tmp_path: Path, kind: str) -> None:
    pk = _node(tmp_path, "pk-moi")
    current = card_key(pk.own_chain().latest, kind)
    size = pk.log.size()
    with pytest.raises(InputError) as e:
        pk.revoke_own_other_key(kind, current, NOW, "compromised", NOW)
    assert e.value.code == "input.current_key" and "rotate" in str(e.value.next_step).lower()
    assert pk.own_key_revocations() == [] and pk.log.size() == size
    with pytest.raises(InputError) as unknown:
        pk.revoke_own_other_key(kind, "deadbeef", NOW, "compromised", NOW)
    assert unknown.value.code == "input.unknown_key"
    assert pk.own_key_revocations() == [] and pk.log.size() == size


def _auth(pem: bytes) -> dict[str, list[bytes]]:
    return {"transport_security_type": [b"ssl"], "x509_pem_cert": [pem]}


@pytest.mark.threat("P06")
def test_p06_revoked_old_tls_ca_and_its_cross_certificate_are_not_accepted(
    tmp_path: Path,
) -> None:
    pk, cn = _pair(tmp_path)
    old_tls = pk.keyring().tls
    old_ca = pk.own_chain().latest.tls_ca_pem
    assert authenticate_peer(_auth(old_tls.cert_pem), cn, NOW).node == "pk-moi"
    pk.rotate_keys(NOW, ["tls"])
    new_tls = pk.keyring().tls
    pk.revoke_own_other_key("tls", tls_ca_id(old_ca), T, "compromised", NOW)
    _learn(cn, pk, NOW)
    assert cn.peer_revoked_keys("pk-moi", "tls") == {tls_ca_id(old_ca): T}
    roots = partner_ca_pems(cn, LATER)
    assert old_ca.encode() not in roots and new_tls.ca_cert_pem in roots
    # A stolen old node certificate, and the cross certificate the old CA issued, are
    # refused: neither is issued by the CA of the card cn holds.
    for stolen in (old_tls.cert_pem, new_tls.cross_pem):
        with pytest.raises(TransportError) as e:
            authenticate_peer(_auth(stolen), cn, LATER)
        assert e.value.code == "auth.bad_certificate"
    assert authenticate_peer(_auth(new_tls.cert_pem), cn, LATER).node == "pk-moi"


@pytest.mark.threat("P06")
def test_p06_a_partner_revoking_its_current_tls_ca_is_no_longer_accepted(
    tmp_path: Path,
) -> None:
    """Our issuer refuses to revoke the key in force; another implementation may not.
    A verified statement revoking the card's own CA takes it out of the roots."""
    pk, cn = _pair(tmp_path)
    ca = tls_ca_id(pk.own_chain().latest.tls_ca_pem)
    data = KeyRevocationStatement(
        "pk-moi", "tls", ca, "2026-11-25T13:00:00Z", "compromised", "2026-11-25T12:00:00Z"
    ).to_bytes()
    signed = SignedRevocation(
        data, pk.keyring().identity_signer().sign(signed_message(Purpose.KEY_REVOCATION, data))
    )
    assert len(cn.apply_peer_key_revocations("pk-moi", [signed], NOW)) == 1
    assert len(partner_ca_pems(cn, NOW)) == 1  # before the revocation time
    assert partner_ca_pems(cn, LATER) == []
    with pytest.raises(TransportError) as e:
        authenticate_peer(_auth(pk.keyring().tls.cert_pem), cn, LATER)
    assert e.value.code == "auth.revoked_tls_ca"


# -- over the wire: GetCard.key_revocations -------------------------------------------------


@pytest.mark.threat("P06")
def test_p06_partner_learns_a_key_revocation_over_get_card(world: World) -> None:
    pk = world.hostile
    old_vkey = pk.own_chain().latest.log_vkey
    pk.rotate_keys(world.now, ["log"])
    pk.revoke_own_other_key("log", old_vkey, world.now, "compromised", world.now)
    p = pull(world, rotation=list(pk.own_chain().signed[1:]))
    assert p.error is None, p.error
    assert world.victim.peer_revoked_keys(HOSTILE, "log") == {old_vkey: world.now}
    [event] = [e for e in log_events(world.victim) if e["kind"] == "peer.key_revoked"]
    assert event["key_id"] == old_vkey and event["key"] == "log"
    assert world.victim.trust_store().get(HOSTILE).status == "trusted"  # only that key
    integrity_ok(world.victim)


@pytest.mark.threat("P06")
def test_p06_forged_key_revocation_on_get_card_stores_nothing(world: World) -> None:
    pk = world.hostile
    old_vkey = pk.own_chain().latest.witness_vkey
    pk.rotate_keys(world.now, ["witness"])
    stranger = generate_keyring(HOSTILE, f"{HOSTILE}.accord/log", "127.0.0.1", NOW)
    data = KeyRevocationStatement(
        HOSTILE, "witness", old_vkey, "2026-11-25T13:00:00Z", "compromised",
        "2026-11-25T12:00:00Z",
    ).to_bytes()  # fmt: skip
    forged = card_pb2.Revocation(
        statement=data,
        signature=stranger.identity_signer().sign(signed_message(Purpose.KEY_REVOCATION, data)),
    )
    rotation = list(pk.own_chain().signed[1:])
    world.victim.refresh_peer_card(HOSTILE, rotation, world.now)  # knows the new card
    before = snapshot(world.victim.data_dir)
    p = pull(world, rotation=rotation, key_revocations=[forged])
    assert p.code == "peer.key_revocation_invalid", p.error
    assert p.peer.pulls == [] and p.applied == 0
    assert snapshot(world.victim.data_dir) == before
    assert rows(world.victim, "SELECT count(*) FROM peer_key_revocations") == [(0,)]
