"""docs/THREATS.md P15, P17 and L06 against real nodes (ADR 0016): the key era cannot be
back-dated, report state is kept per issuer, and floods of equivocations and receipts grow
the database and the log by a stated bound."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import pytest

from exchange.envelope import Envelope, seal_envelope
from exchange.errors import PeerDataError
from exchange.purpose import Purpose, signed_message
from exchange.receipt import make_receipt
from exchange.sdjwt import SealedReport, seal
from keys.signers import Ed25519Signer
from node.home import Node
from node.ids import uuid7
from node.services import outbox
from node.services.inbox import ALARM_BUDGET, apply_batch, cursor, list_inbox
from node.services.policy import apply_policy
from tests.adversarial.hostile import (
    ENCRYPTOR,
    HOSTILE,
    THIRD,
    VICTIM,
    Forge,
    World,
    agree,
    log_kinds,
    make_node,
    rows,
    trust,
    valid,
)
from tests.builders import ALERT
from tests.conftest import POLICY, snapshot

pytestmark = pytest.mark.timeout(300)


def _sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def _applied(w: World, peer: str, envelopes: list[Envelope], at: datetime) -> None:
    out = apply_batch(w.victim, peer, envelopes, at)
    assert out.stopped is None and out.applied == len(envelopes), out


def _sealed_by(forge: Forge, signer: Ed25519Signer, kid: str, at: datetime) -> SealedReport:
    """A report sealed by ``signer`` with an ``iat`` of ``at`` (back-dated at will)."""
    report = valid()
    return seal(
        report.report,
        signer=signer,
        kid=kid,
        issuer=HOSTILE,
        report_id=uuid7(),
        issued_at=int(at.timestamp()),
        version=1,
        supersedes=None,
        sop_digest=report.sop_digest,
        random_bytes=os.urandom,
    )


def _envelope(
    forge: Forge, sealed: SealedReport, *, seq: int, signer: Ed25519Signer, at: datetime
) -> Envelope:
    """An envelope signed by ``signer`` claiming ``created_at`` = ``at``."""
    key = forge.recipient_key()
    return seal_envelope(
        forge.content(sealed),
        envelope_id=uuid7(),
        sender=HOSTILE,
        recipient=VICTIM,
        seq=seq,
        recipient_key=key,
        suite=key.suite,
        now=at,
        signer=signer,
        encryptor=ENCRYPTOR,
    )


def _rotated_and_revoked(w: World) -> tuple[Ed25519Signer, str, datetime]:
    """pk-moi sends seq 1, rotates at t0+20 s and revokes its old key from t0+10 s
    (compromised); cn-mps applied seq 1 and learns both (as from GetCard) an hour later.
    Returns the stolen old signer, its fingerprint and the time cn-mps receives at."""
    pk, cn, t0 = w.hostile, w.victim, w.now
    _applied(w, HOSTILE, Forge(w).submit(), t0)
    stolen, old_fp = pk.keyring().identity_signer(), pk.own_chain().latest.fingerprint
    chain = pk.rotate_identity(t0 + timedelta(seconds=20))
    pk.revoke_own_key(old_fp, t0 + timedelta(seconds=10), "compromised", t0 + timedelta(minutes=1))
    later = t0 + timedelta(hours=1)
    assert cn.refresh_peer_card(HOSTILE, list(chain.signed), later)
    assert len(cn.apply_peer_revocations(HOSTILE, pk.own_revocations(), later)) == 1
    return stolen, old_fp, later


# ---- P15 back-dated revocation -------------------------------------------------------------------


@pytest.mark.threat("P15")
def test_p15_back_dated_envelope_under_a_revoked_key_is_refused(world: World) -> None:
    """The thief of pk-moi's revoked key seals a report and an envelope with it, both
    claiming t0+5 s (before the revocation time and the rotation). Choosing the key era by
    that ``created_at`` accepted it; a revoked key now signs no new seq at all."""
    stolen, old_fp, later = _rotated_and_revoked(world)
    forge = Forge(world)
    back = world.now + timedelta(seconds=5)
    forged = _envelope(
        forge, _sealed_by(forge, stolen, old_fp, back), seq=2, signer=stolen, at=back
    )
    before = snapshot(world.victim.data_dir)
    out = apply_batch(world.victim, HOSTILE, [forged], later)
    assert out.applied == 0 and out.stopped is not None and out.stopped.code == "peer.revoked"
    assert snapshot(world.victim.data_dir) == before
    assert cursor(world.victim, HOSTILE) == 1
    assert rows(world.victim, "SELECT count(*) FROM inbox") == [(1,)]


@pytest.mark.threat("P15")
def test_p15_sdjwt_sealed_by_a_revoked_key_is_refused(world: World) -> None:
    """The same thief gets its back-dated SD-JWT into an envelope signed by the current
    key: issuer keys exclude revoked keys, so the item is a recorded rejection, never an
    inbox row."""
    stolen, old_fp, later = _rotated_and_revoked(world)
    forge = Forge(world)
    back = world.now + timedelta(seconds=5)
    sealed = _sealed_by(forge, stolen, old_fp, back)
    carrier = _envelope(forge, sealed, seq=2, signer=forge.signer, at=later)
    out = apply_batch(world.victim, HOSTILE, [carrier], later)
    assert out.applied == 0 and out.stopped is None
    [rejection] = out.rejected
    assert (rejection.seq, rejection.code) == (2, "peer.bad_signature")  # the SD-JWT
    assert rows(world.victim, "SELECT count(*) FROM inbox") == [(1,)]
    assert rows(world.victim, "SELECT status FROM inbound WHERE seq = 2") == [("rejected",)]


@pytest.mark.threat("P15")
def test_p15_superseded_key_after_the_handover_is_refused(world: World) -> None:
    """Without a revocation, the backlog sealed under the old key still arrives; once an
    envelope signed by the new key was applied, the old key (back-dated or not) signs no
    later seq, in this batch or the next."""
    pk, cn, t0 = world.hostile, world.victim, world.now
    forge = Forge(world)
    old = pk.keyring().identity_signer()
    old_fp = pk.own_chain().latest.fingerprint
    backlog = forge.submit()  # seq 1, old key
    chain = pk.rotate_identity(t0 + timedelta(seconds=1))
    outbox.submit(pk, [valid()], t0 + timedelta(seconds=2))
    handed_over = outbox.pending(pk, VICTIM, 1, 256)  # seq 2, new key
    later = t0 + timedelta(minutes=5)
    assert cn.refresh_peer_card(HOSTILE, list(chain.signed), later)
    _applied(world, HOSTILE, backlog + handed_over, later)
    back = t0 - timedelta(minutes=1)
    stale = _envelope(forge, _sealed_by(forge, old, old_fp, back), seq=3, signer=old, at=back)
    before = snapshot(cn.data_dir)
    out = apply_batch(cn, HOSTILE, [stale], later)
    assert out.stopped is not None and out.stopped.code == "peer.key_superseded"
    assert snapshot(cn.data_dir) == before and cursor(cn, HOSTILE) == 2


# ---- P17 report-id squat ------------------------------------------------------------------------


@pytest.fixture
def third(world: World) -> Iterator[Node]:
    de = make_node(world.tmp, THIRD, world.now - timedelta(hours=1))
    past = world.now - timedelta(minutes=30)
    trust(de, world.victim, past)
    trust(world.victim, de, past)
    agree(de, world.victim, past)
    apply_policy(de, POLICY.read_text("utf-8"), past)
    yield de
    de.close()


@pytest.mark.threat("P17")
def test_p17_squatted_report_id_does_not_block_the_honest_issuer(world: World, third: Node) -> None:
    """de-bka's report id reaches pk-moi, which sends a report under that id first. The
    honest report, its amendment and its retraction still apply; pk-moi's stays its own."""
    now = world.now
    [first] = outbox.submit(third, [valid()], now)
    forge = Forge(world)
    squat = forge.seal(forge.content(forge.seal_report(valid(), report_id=first.report_id)), seq=1)
    _applied(world, HOSTILE, [squat], now)
    changed: dict[str, Any] = {**ALERT, "fields": {**ALERT["fields"], "severity": "critical"}}
    outbox.amend(third, first.report_id, valid(changed), now + timedelta(seconds=1))
    outbox.retract(third, first.report_id, "erroneous", now + timedelta(seconds=2))
    honest = outbox.pending(third, VICTIM, 0, 256)
    assert len(honest) == 3
    _applied(world, THIRD, honest, now + timedelta(seconds=3))
    items = {(i.issuer, i.version): i for i in list_inbox(world.victim)}
    assert set(items) == {(HOSTILE, 1), (THIRD, 1), (THIRD, 2)}
    assert {i.report_id for i in items.values()} == {first.report_id}
    assert items[(THIRD, 1)].retracted and items[(THIRD, 2)].retracted
    assert not items[(HOSTILE, 1)].retracted
    assert rows(world.victim, "SELECT count(*) FROM inbound WHERE status = 'rejected'") == [(0,)]


# ---- L06 bounded under abuse --------------------------------------------------------------------

FLOOD = 1000
BLOB = 16 * 1024  # each equivocation carries a 16 KiB signed random ciphertext
# The stated bound (ADR 0016): a flood of distinct equivocations for one applied seq adds one
# evidence row (the first, whole: about 4/3 of its size as base64) and one log leaf; the
# rest only move that row's counter. Receipts for a confirmed range add nothing.
DB_BOUND = 2 * BLOB + 64 * 1024


def _db_bytes(node: Node) -> int:
    [(pages,)] = rows(node, "PRAGMA page_count")
    [(size,)] = rows(node, "PRAGMA page_size")
    return int(pages) * int(size)


def _equivocations(forge: Forge, env: Envelope, count: int) -> list[Envelope]:
    out = []
    for _ in range(count):
        ciphertext = os.urandom(BLOB)
        message = signed_message(Purpose.ENVELOPE, _sha256(env.header) + _sha256(ciphertext))
        out.append(Envelope(env.header, ciphertext, forge.signer.sign(message)))
    return out


@pytest.mark.threat("L06")
@pytest.mark.threat("P07")
def test_l06_flood_of_equivocations_and_receipts_stays_bounded(world: World) -> None:
    forge = Forge(world)
    pk, cn, now = world.hostile, world.victim, world.now
    [e1] = forge.submit()
    out = apply_batch(cn, HOSTILE, [e1], now)
    assert out.receipt is not None
    _r, new = outbox.accept_receipt(pk, VICTIM, out.receipt.statement, out.receipt.signature, now)
    assert new
    # 1,000 distinct, properly signed equivocations for seq 1.
    size, leaves = _db_bytes(cn), cn.log.size()
    flood = _equivocations(forge, e1, FLOOD)
    for i in range(0, FLOOD, 250):
        got = apply_batch(cn, HOSTILE, flood[i : i + 250], now)
        assert got.applied == 0 and got.stopped is None
    assert cursor(cn, HOSTILE) == 1
    [(seq, repeats, incoming)] = rows(
        cn, "SELECT seq, repeats, length(incoming) FROM evidence WHERE peer = ?", HOSTILE
    )
    assert (seq, repeats) == (1, FLOOD - 1) and incoming < 2 * BLOB  # the first, kept whole
    assert cn.log.size() == leaves + 1  # one alarm (P07), then only the counter
    assert log_kinds(cn, leaves) == ["envelope.rejected"]
    assert _db_bytes(cn) - size <= DB_BOUND
    # The very first equivocation again changes nothing at all.
    before = snapshot(cn.data_dir)
    apply_batch(cn, HOSTILE, flood[:1], now)
    assert snapshot(cn.data_dir) == before
    # 1,000 receipts for range 1..1, each with another received_at, all properly signed.
    size, leaves, before = _db_bytes(pk), pk.log.size(), snapshot(pk.data_dir)
    digest = rows(pk, "SELECT digest FROM outbox WHERE peer = ? AND seq = 1", VICTIM)[0][0]
    signer = cn.keyring().identity_signer()
    for i in range(FLOOD):
        receipt = make_receipt(
            sender=VICTIM,
            recipient=HOSTILE,
            first_seq=1,
            last_seq=1,
            envelope_digests=[str(digest)],
            rejections=[],
            received_at=now + timedelta(seconds=i + 1),
            signer=signer,
        )
        with pytest.raises(PeerDataError) as err:
            outbox.accept_receipt(pk, VICTIM, receipt.statement, receipt.signature, now)
        assert err.value.code == "peer.receipt.redundant"
    assert pk.log.size() == leaves and _db_bytes(pk) == size
    assert snapshot(pk.data_dir) == before
    assert rows(pk, "SELECT count(*) FROM receipts WHERE direction = 'received'") == [(1,)]


@pytest.mark.threat("L06")
def test_l06_equivocation_alarms_are_rate_limited_per_partner(world: World) -> None:
    """One alarm and one kept envelope per seq, and at most ALARM_BUDGET per partner in any
    hour; the rest are counted (shown in status), with no row and no leaf."""
    forge = Forge(world)
    cn, now = world.victim, world.now
    count = ALARM_BUDGET + 3
    applied = forge.submit(*[valid() for _ in range(count)])
    _applied(world, HOSTILE, applied, now)
    leaves = cn.log.size()
    twins = [_equivocations(forge, env, 1)[0] for env in applied]
    apply_batch(cn, HOSTILE, twins, now)
    assert rows(cn, "SELECT count(*) FROM evidence") == [(ALARM_BUDGET,)]
    assert rows(cn, "SELECT peer, count FROM evidence_suppressed") == [(HOSTILE, 3)]
    assert cn.log.size() == leaves + ALARM_BUDGET
    # An hour later the budget is there again.
    more = _equivocations(forge, applied[-1], 1)
    apply_batch(cn, HOSTILE, more, now + timedelta(hours=1, seconds=1))
    assert rows(cn, "SELECT count(*) FROM evidence") == [(ALARM_BUDGET + 1,)]
