"""The key schedule and whole-identity rotation on real nodes, without serving
(docs/adr/0017-unattended-keys-and-whole-identity-rotation.md)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from exchange.checkpoint import Checkpoint, sign_checkpoint
from exchange.errors import InputError
from exchange.events import parse_event_unverified
from exchange.times import parse_time
from keys.keyring import EPOCH, RENEW_BEFORE
from keys.signers import Ed25519Signer
from node.home import KEY_KINDS, Node
from node.services.keywatch import (
    AGREEMENT,
    OUR_ENCRYPTION_KEY,
    THEIR_ENCRYPTION_KEY,
    KeyWatch,
    expiry_warnings,
)
from tests.conftest import Result

Accord = Callable[..., Result]


def _created(node: Node) -> datetime:
    return parse_time(node.own_chain().cards[0].issued_at, field="issued_at")


def test_status_warnings_name_what_ends_per_partner(pair: tuple[Node, Node]) -> None:
    pk, _cn = pair
    start = _created(pk)
    assert expiry_warnings(pk, start + timedelta(days=1)) == []
    soon = start + timedelta(days=20)
    warnings = expiry_warnings(pk, soon)
    assert {(w.peer, w.subject, w.expired) for w in warnings} == {
        ("cn-mps", OUR_ENCRYPTION_KEY, False),
        ("cn-mps", THEIR_ENCRYPTION_KEY, False),
    }
    assert {w.days_left(soon) for w in warnings} <= {9, 10}  # nodes created moments apart
    late = start + timedelta(days=31)
    assert all(w.expired and w.days_left(late) == 0 for w in expiry_warnings(pk, late))
    # The agreement (365 days) only inside a wider window.
    wide = {w.subject for w in expiry_warnings(pk, start + timedelta(days=1), days=400)}
    assert wide == {OUR_ENCRYPTION_KEY, THEIR_ENCRYPTION_KEY, AGREEMENT}


def test_epochs_renew_at_half_life_and_old_keys_are_destroyed(pair: tuple[Node, Node]) -> None:
    pk, _cn = pair
    start = _created(pk)
    first = pk.keyring().encryption[0].kid
    not_due = start + (EPOCH - RENEW_BEFORE) - timedelta(minutes=1)
    assert pk.renew_encryption_epochs(not_due) is None
    version = pk.own_chain().latest.version
    due = start + (EPOCH - RENEW_BEFORE) + timedelta(minutes=1)
    chain = pk.renew_encryption_epochs(due)
    assert chain is not None and chain.latest.version == version + 1
    assert len(chain.latest.encryption_keys) == 2
    assert pk.renew_encryption_epochs(due) is None  # the new key is not due yet
    # No warning about our own key on a node that renews: half an epoch > 14 days.
    assert [w for w in expiry_warnings(pk, due) if w.subject == OUR_ENCRYPTION_KEY] == []
    later = start + timedelta(days=40)  # the first key ended 10 days ago: past retention
    assert pk.renew_encryption_epochs(later) is not None
    assert pk.keyring().decrypter(first) is None
    events = [parse_event_unverified(d) for _i, d in pk.log.leaves(0, pk.log.size())]
    rotated = [e.attrs for e in events if e.kind == "key.rotated"]
    assert [(a["key"], a["trigger"]) for a in rotated] == [("encryption", "schedule")] * 2


def test_key_watch_logs_each_warning_once(pair: tuple[Node, Node]) -> None:
    pk, _cn = pair
    at = _created(pk) + timedelta(days=1)
    watch = KeyWatch(pk, now=lambda: at, warn_days=400)
    warned = watch.check()  # the serve log line itself: tests/integration/test_key_rotation.py
    assert {w.subject for w in warned} == {OUR_ENCRYPTION_KEY, THEIR_ENCRYPTION_KEY, AGREEMENT}
    assert len(warned) == 3
    assert watch.check() == []


def test_rotate_every_kind_offline_and_audit_follows_the_log_key(
    pair: tuple[Node, Node], accord: Accord, tmp_path: Path
) -> None:
    pk, _cn = pair
    anchor = f"pk-moi={pk.own_chain().latest.fingerprint}"
    old_card, old_ring = pk.own_chain().latest, pk.keyring()
    r = accord("--data", pk.data_dir, "keys", "rotate", "--all", "--json")
    assert r.code == 0, r.err
    assert r.json()["rotated"] == list(KEY_KINDS)
    reopened = Node.open(pk.data_dir, pk.passphrase)
    try:
        new_card = reopened.own_chain().latest
        assert new_card.log_vkey != old_card.log_vkey
        assert new_card.tls_ca_pem != old_card.tls_ca_pem
        assert new_card.witness_vkey != old_card.witness_vkey
        ring = reopened.keyring()
        assert ring.tls.cross_pem and ring.tls_server_material()[0].count(b"BEGIN") == 2
        reopened.check_log()  # the newest checkpoint is signed by the new log key
        out = tmp_path / "pk.bundle"
        assert accord("--data", pk.data_dir, "audit", "export", "--out", out).code == 0
        verified = accord("audit", "verify", out, "--fingerprint", anchor, "--json")
        assert verified.code == 0, verified.out

        # A checkpoint signed after the rotation with the replaced log key (a thief of the
        # old host) is named by the audit: not the key in force at that size.
        size = reopened.log.size()
        root = reopened.log.root(size)
        origin = reopened.config.log_origin
        note = sign_checkpoint(
            Checkpoint(origin, size + 0, root), origin, Ed25519Signer(old_ring.log_seed)
        )
        with reopened.store.transaction():
            reopened.store.conn.execute("DELETE FROM log_checkpoints WHERE size = ?", (size,))
            reopened.store.conn.execute(
                "INSERT INTO log_checkpoints (size, root, note, signed_at) VALUES (?, ?, ?, ?)",
                (size, root, note, new_card.issued_at),
            )
    finally:
        reopened.close()
    out = tmp_path / "forged.bundle"
    assert accord("--data", pk.data_dir, "audit", "export", "--out", out).code == 0
    refused = accord("audit", "verify", out, "--fingerprint", anchor, "--json")
    assert refused.code != 0
    codes = {f["code"] for f in refused.json()["findings"]}
    assert "checkpoint.log_key_era" in codes


def test_rotate_refuses_an_unknown_kind(pair: tuple[Node, Node]) -> None:
    pk, _cn = pair
    with pytest.raises(InputError) as e:
        pk.rotate_keys(_created(pk), ["tls", "storage"])
    assert e.value.code == "input.key_kind"


def test_node_certificate_is_renewed_a_month_before_it_ends(pair: tuple[Node, Node]) -> None:
    pk, _cn = pair
    start = _created(pk)
    before, card = pk.keyring(), pk.own_chain().latest
    assert not pk.renew_tls_certificate(start + timedelta(days=300))
    at = before.certificate_not_after() - timedelta(days=29)
    assert pk.renew_tls_certificate(at)
    after = pk.keyring()
    assert after.certificate_not_after() > before.certificate_not_after()
    assert after.tls.ca_cert_pem == before.tls.ca_cert_pem  # same CA: the card is unchanged
    assert after.tls.cert_pem != before.tls.cert_pem
    assert pk.own_chain().latest == card
    assert not pk.renew_tls_certificate(at)
    pk.check_log()


def test_a_rotation_that_crashed_before_the_rename_is_finished_at_next_open(
    pair: tuple[Node, Node], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The card of a log + encryption rotation is committed, the new key file not yet
    renamed into place (a crash): the next open takes the pending file, not the old keys
    that the card no longer names."""
    import os

    pk, _cn = pair
    at = _created(pk) + timedelta(hours=1)
    version = pk.own_chain().latest.version
    keyfile = pk.data_dir / "keys" / "secrets.key"
    rename = os.replace

    def crash(src: str | Path, dst: str | Path) -> None:
        if Path(dst) == keyfile:
            raise OSError("crashed before the rename")
        rename(src, dst)

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="crashed before the rename"):
        pk.rotate_keys(at, ["encryption", "log"])
    monkeypatch.undo()
    reopened = Node.open(pk.data_dir, pk.passphrase)
    try:
        card = reopened.own_chain().latest
        assert card.version == version + 1  # the card was committed
        ring = reopened.keyring()
        assert {k.kid for k in ring.encryption_keys()} == {k.kid for k in card.encryption_keys}
        assert card.log_vkey.endswith(
            reopened.keyring()
            .card(name=card.name, endpoint=card.endpoint, version=1, issued_at=at)
            .log_vkey.rsplit("+", 1)[1]
        )
        assert not (pk.data_dir / "keys" / "secrets.key.new").exists()
        reopened.checkpoint(at)  # the old key's checkpoint, then one under the new key
        reopened.check_log()
    finally:
        reopened.close()
