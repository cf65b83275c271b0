"""Anchored audit (ADR 0011, docs/THREATS.md I06, I09, H02): every key ``audit verify`` uses
chains to a fingerprint or card the auditor checked out of band; entries no signed
checkpoint covers, and cosignatures an anchored partner should have given, are findings.

The nodes are real (``init_node``: real keys, log, trust store, witness). A partner's
cosignature is obtained the way ``node.cosigning.Cosigner.cosign`` does it: the partner's
real ``Witness`` checks the consistency proof and cosigns; the log owner verifies the
line and stores it with a ``checkpoint.cosigned`` event in one transaction.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from exchange.audit import Anchor, AuditReport, card_anchor, fingerprint_anchor
from exchange.card import SignedCard, chain_bytes, verify_chain_bytes
from exchange.cosignature import verify_cosignature
from exchange.errors import InputError
from exchange.note import parse_note_unverified, parse_verifier_key
from exchange.purpose import Purpose, signed_message
from keys.keyring import witness_name
from node.home import Node, init_node
from node.services.audit import export_bundle, verify_bundle_file
from node.services.witness import Witness
from tests.conftest import Result

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
Accord = Callable[..., Result]


def _node(tmp_path: Path, name: str, folder: str | None = None) -> Node:
    return init_node(
        tmp_path / (folder or name),
        node=name,
        name=name,
        endpoint="127.0.0.1:7441",
        passphrase=None,
        now=NOW,
    )


def _trust(node: Node, other: Node) -> None:
    chain = other.own_chain()
    node.add_peer(chain.to_bytes(), fingerprint=chain.latest.fingerprint, tofu=False, now=NOW)


def _append(node: Node, count: int) -> int:
    """``count`` events in one batch and its checkpoint; returns the checkpoint's size."""
    with node.store.transaction() as db:
        node.log.append(
            db,
            [("policy.changed", NOW, {"policy_digest": f"sha256:{i:064x}"}) for i in range(count)],
        )
    return node.checkpoint(NOW).size


def _cosign(owner: Node, partner: Node) -> int:
    """``partner``'s witness cosigns ``owner``'s latest checkpoint, as Cosigner.cosign."""
    cp = owner.log.latest_checkpoint()
    assert cp is not None
    witness = Witness(
        partner.store, partner.keyring().witness_signer(), witness_name(partner.config.node)
    )
    old = owner.cosigned_size(partner.config.node)
    proof = owner.log.consistency_proof(old, cp.size) if old else []
    log_key = parse_verifier_key(owner.own_chain().latest.log_vkey)
    line = witness.add_checkpoint(
        partner=owner.config.node,  # the caller, as mTLS authenticated it
        origin=owner.config.log_origin,
        log_key=log_key,
        old_size=old,
        proof=proof,
        note=cp.note,
        now=NOW,
    )
    wkey = parse_verifier_key(partner.own_chain().latest.witness_vkey)
    verify_cosignature(parse_note_unverified(cp.note).text, line, wkey)
    with owner.store.transaction() as db:
        owner.log.add_cosignature(cp.size, partner.config.node, line, NOW)
        owner.record(db, "checkpoint.cosigned", NOW, peer=partner.config.node, size=cp.size)
    return cp.size


class Pair:
    """pk-moi and cn-mps trusting each other; pk-moi's log cosigned twice by cn-mps, then
    one more batch (its checkpoint not cosigned yet, as after the nodes stopped)."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp = tmp_path
        self.pk, self.cn = _node(tmp_path, "pk-moi"), _node(tmp_path, "cn-mps")
        _trust(self.pk, self.cn)
        _trust(self.cn, self.pk)
        self.peer_added = self._index_of("peer.added")
        self.sizes = [_append(self.pk, 3)]
        self.cosigned = [_cosign(self.pk, self.cn)]
        self.sizes.append(_append(self.pk, 2))
        self.cosigned.append(_cosign(self.pk, self.cn))
        self.sizes.append(_append(self.pk, 2))

    def _index_of(self, kind: str) -> int:
        for i, data in self.pk.log.leaves(0, 1000):
            if json.loads(data)["kind"] == kind:
                return int(i)
        raise AssertionError(kind)

    def fp(self, node: Node) -> str:
        return node.own_chain().latest.fingerprint

    def anchors(self, *nodes: Node) -> list[Anchor]:
        return [Anchor(n.config.node, self.fp(n)) for n in (nodes or (self.pk, self.cn))]

    def export(
        self, node: Node | None = None, name: str = "pk.bundle", *, unsigned_ok: bool = False
    ) -> Path:
        out = self.tmp / name
        export_bundle(node or self.pk, out, NOW, unsigned_ok=unsigned_ok)
        return out

    def checkpoint_sizes(self) -> list[int]:
        return [c.size for c in self.pk.log.checkpoints()]


def _findings(report: AuditReport) -> list[tuple[int | None, str]]:
    return [(f.index, f.code) for f in report.findings]


def _edit_header(bundle: Path, **changes: object) -> None:
    lines = bundle.read_text().split("\n")
    header = json.loads(lines[0])
    header.update(changes)
    lines[0] = json.dumps(header, sort_keys=True)
    bundle.write_text("\n".join(lines))


@pytest.fixture
def pair(tmp_path: Path) -> Pair:
    return Pair(tmp_path)


# ---- I06: the keys must chain to the auditor's anchors -------------------------------------


@pytest.mark.threat("I06")
def test_i06_genuine_bundle_passes_and_reports_its_anchors(pair: Pair) -> None:
    report = verify_bundle_file(pair.export(), pair.anchors())
    assert _findings(report) == []
    assert report.anchors == [
        {
            "node": "pk-moi",
            "fingerprint": pair.fp(pair.pk),
            "source": "fingerprint",
            "card_version": 1,
            "used_for": "log keys",
        },
        {
            "node": "cn-mps",
            "fingerprint": pair.fp(pair.cn),
            "source": "fingerprint",
            "card_version": 1,
            "used_for": "witness keys",
        },
    ]
    coverage = report.partners["cn-mps"]
    assert coverage.largest_cosigned == pair.cosigned[-1] == coverage.recorded_cosigned
    assert coverage.cosigned_checkpoints == 2 == report.cosigned_checkpoints
    assert coverage.peer_since == pair.peer_added
    assert report.largest_checkpoint == report.entries == pair.pk.log.size()


@pytest.mark.threat("I06")
def test_i06_rogue_bundle_with_fresh_keys_named_pk_moi_fails(pair: Pair) -> None:
    rogue = _node(pair.tmp, "pk-moi", folder="rogue")
    _append(rogue, 4)
    bundle = pair.export(rogue, "rogue.bundle")
    # On its own keys it is a perfect bundle; the anchor is what exposes it.
    report = verify_bundle_file(bundle, [fingerprint_anchor(f"pk-moi={pair.fp(pair.pk)}")])
    assert _findings(report) == [(None, "audit.unanchored")]
    assert pair.fp(pair.pk) in report.findings[0].message
    assert report.anchors[0]["used_for"] == "none"
    # Anchoring the partner too changes nothing: the rogue log never added it.
    both = verify_bundle_file(bundle, pair.anchors())
    assert _findings(both) == [(None, "audit.unanchored")]
    assert both.anchors[1]["used_for"] == "none (not a partner of this log)"
    assert both.partners == {}


@pytest.mark.threat("I06")
def test_i06_the_log_node_must_be_anchored(pair: Pair) -> None:
    report = verify_bundle_file(pair.export(), pair.anchors(pair.cn))
    assert _findings(report) == [(None, "audit.unanchored")]
    assert "no anchor for pk-moi" in report.findings[0].message


@pytest.mark.threat("I06")
def test_i06_an_unanchored_partner_is_listed_not_trusted(pair: Pair) -> None:
    report = verify_bundle_file(pair.export(), pair.anchors(pair.pk))
    assert _findings(report) == []
    assert report.partners == {} and report.cosigned_checkpoints == 0
    assert report.unanchored_peers == ["cn-mps"]


@pytest.mark.threat("I06")
def test_i06_emptied_peers_with_the_partner_anchored_is_a_finding(pair: Pair) -> None:
    bundle = pair.export()
    _edit_header(bundle, peers={})
    report = verify_bundle_file(bundle, pair.anchors())
    due = [s for s in pair.checkpoint_sizes() if pair.peer_added < s <= pair.cosigned[-1]]
    assert due == [pair.peer_added + 1, pair.cosigned[0], pair.cosigned[1]]
    assert _findings(report) == [
        (pair.peer_added, "audit.peer_missing"),
        *[(None, "audit.not_cosigned")] * len(due),
    ]
    assert [f.message.split(":")[0] for f in report.findings[1:]] == [
        f"checkpoint {s}" for s in due
    ]
    assert report.partners["cn-mps"].largest_cosigned == 0


@pytest.mark.threat("I06")
def test_i06_partner_card_swapped_in_the_bundle_is_unanchored(pair: Pair) -> None:
    impostor = _node(pair.tmp, "cn-mps", folder="impostor")
    bundle = pair.export()
    _edit_header(
        bundle, peers={"cn-mps": base64.b64encode(impostor.own_chain().to_bytes()).decode()}
    )
    report = verify_bundle_file(bundle, pair.anchors())
    assert _findings(report) == [
        (None, "audit.unanchored"),
        (None, "audit.not_cosigned"),
        (None, "audit.not_cosigned"),
        (None, "audit.not_cosigned"),
    ]
    assert report.findings[0].message.startswith("cn-mps:")


@pytest.mark.threat("I06", "H02")
def test_i06_a_cosignature_missing_where_due_is_a_finding(pair: Pair) -> None:
    """An insider deletes cn-mps's last cosignature (the log still records it): the
    auditor sees a log the partner witnessed only up to the first cosigned size."""
    pair.pk.store.conn.execute("DELETE FROM log_cosignatures WHERE size = ?", (pair.cosigned[1],))
    report = verify_bundle_file(pair.export(), pair.anchors())
    assert _findings(report) == [(None, "audit.not_cosigned")]
    assert report.findings[0].message.startswith(f"checkpoint {pair.cosigned[1]}: cn-mps")
    assert report.partners["cn-mps"].largest_cosigned == pair.cosigned[0]
    assert report.partners["cn-mps"].due_upto == pair.cosigned[1]


@pytest.mark.threat("I06")
def test_i06_checkpoints_after_the_last_answer_are_not_due(pair: Pair) -> None:
    """The newest checkpoint (and the one export signs) came after cn-mps's last round;
    once cn-mps answers two more rounds, every earlier one is due."""
    bundle = pair.export()
    report = verify_bundle_file(bundle, pair.anchors())
    assert report.ok and pair.sizes[-1] > report.partners["cn-mps"].largest_cosigned
    # Two answers recorded after the checkpoint of size s, both for stale sizes (a
    # node that keeps re-sending an old checkpoint): s was due.
    with pair.pk.store.transaction() as db:
        for _ in range(2):
            pair.pk.record(db, "checkpoint.cosigned", NOW, peer="cn-mps", size=pair.cosigned[1])
    report = verify_bundle_file(pair.export(name="b2.bundle"), pair.anchors())
    assert _findings(report) == [(None, "audit.not_cosigned")]
    assert report.findings[0].message.startswith(f"checkpoint {pair.sizes[-1]}: cn-mps")


@pytest.mark.threat("I06")
def test_i06_no_anchor_refuses_with_exit_2(pair: Pair, accord: Accord) -> None:
    bundle = pair.export()
    r = accord("audit", "verify", bundle)
    assert r.code == 2
    assert "no trust anchor" in r.err
    for hint in ("accord peer list", "accord card show", "agreement"):
        assert hint in " ".join(r.err.split()), r.err
    assert accord("audit", "reconcile", bundle, bundle).code == 2
    with pytest.raises(InputError) as err:
        verify_bundle_file(bundle, [])
    assert err.value.code == "audit.no_anchor"


def test_i06_malformed_or_conflicting_anchors_are_usage_errors(pair: Pair, accord: Accord) -> None:
    bundle = pair.export()
    fp = pair.fp(pair.pk)
    assert accord("audit", "verify", bundle, "--fingerprint", fp).code == 2
    assert accord("audit", "verify", bundle, "--fingerprint", "pk-moi=AAAA").code == 2
    two = ("--fingerprint", f"pk-moi={fp}", "--fingerprint", f"pk-moi={pair.fp(pair.cn)}")
    r = accord("audit", "verify", bundle, *two)
    assert r.code == 2 and "two different anchors" in r.err


@pytest.mark.threat("I06")
def test_i06_cli_verify_with_fingerprints(pair: Pair, accord: Accord) -> None:
    bundle = pair.export()
    args = (
        "--fingerprint",
        f"pk-moi={pair.fp(pair.pk)}",
        "--fingerprint",
        f"cn-mps={pair.fp(pair.cn)}",
    )
    r = accord("audit", "verify", bundle, *args, "--json")
    assert r.code == 0, r.out
    report = r.json()
    assert isinstance(report, dict)
    assert [a["node"] for a in report["anchors"]] == ["pk-moi", "cn-mps"]
    assert report["partners"]["cn-mps"]["largest_cosigned"] == pair.cosigned[-1]
    text = accord("audit", "verify", bundle, *args)
    assert text.code == 0 and "largest cosigned" in text.out and pair.fp(pair.cn) in text.out
    rogue = _node(pair.tmp, "pk-moi", folder="rogue")
    forged = pair.export(rogue, "rogue.bundle")
    r = accord("audit", "verify", forged, *args, "--json")
    assert r.code == 3
    assert [f["code"] for f in r.json()["findings"]] == ["audit.unanchored"]


@pytest.mark.threat("I06")
def test_i06_versions_prepended_before_the_anchored_card_are_not_trusted(pair: Pair) -> None:
    """After pk-moi rotates, a rogue prepends its own version 1 to pk-moi's real version 2
    (it signs v2's bytes as the "previous" key): the chain verifies and contains the
    anchored key, but only the anchored card's keys are used, so the rogue's checkpoints,
    signed by its own log key, do not verify."""
    pair.pk.rotate_identity(NOW)
    real_v2 = pair.pk.own_chain().signed[1]
    rogue = _node(pair.tmp, "pk-moi", folder="rogue")
    _append(rogue, 2)
    forged_v2 = SignedCard(
        real_v2.card_bytes,
        real_v2.signature,
        rogue.keyring().identity_signer().sign(signed_message(Purpose.CARD, real_v2.card_bytes)),
    )
    chain = chain_bytes([rogue.own_chain().signed[0], forged_v2])
    assert verify_chain_bytes(chain).latest.fingerprint == pair.fp(pair.pk)
    bundle = pair.export(rogue, "rogue.bundle")
    _edit_header(bundle, cards=base64.b64encode(chain).decode())
    report = verify_bundle_file(bundle, pair.anchors(pair.pk))
    entries = rogue.log.size()
    assert _findings(report) == [(None, "checkpoint.signature")] * len(rogue.log.checkpoints()) + [
        (i, "audit.unsigned_tail") for i in range(entries)
    ]
    assert report.anchors[0]["card_version"] == 2 and report.largest_checkpoint == 0


# ---- --card: pinning a card file -----------------------------------------------------------


def _card_file(node: Node, path: Path) -> Path:
    path.write_bytes(node.own_chain().to_bytes())
    return path


@pytest.mark.threat("I06")
def test_i06_card_files_pin_the_nodes(pair: Pair, accord: Accord) -> None:
    bundle = pair.export()
    pk_card = _card_file(pair.pk, pair.tmp / "pk.card")
    cn_card = _card_file(pair.cn, pair.tmp / "cn.card")
    r = accord("audit", "verify", bundle, "--card", pk_card, "--card", cn_card, "--json")
    assert r.code == 0, r.out
    assert [a["source"] for a in r.json()["anchors"]] == ["card", "card"]
    # A card and a fingerprint of the same key agree; a rogue card does not anchor pk-moi.
    r = accord(
        "audit", "verify", bundle, "--card", pk_card, "--fingerprint", f"pk-moi={pair.fp(pair.pk)}"
    )
    assert r.code == 0, r.out
    rogue = _node(pair.tmp, "pk-moi", folder="rogue")
    r = accord(
        "audit", "verify", bundle, "--card", _card_file(rogue, pair.tmp / "rogue.card"), "--json"
    )
    assert r.code == 3
    assert [f["code"] for f in r.json()["findings"]] == ["audit.unanchored"]
    # A card of a removed partner supplies its witness key when the bundle has none.
    _edit_header(bundle, peers={})
    report = verify_bundle_file(
        bundle, [card_anchor(pk_card.read_bytes()), card_anchor(cn_card.read_bytes())]
    )
    assert _findings(report) == []
    assert report.partners["cn-mps"].largest_cosigned == pair.cosigned[-1]


@pytest.mark.threat("I06")
def test_i06_rotated_identity_chains_to_an_anchor_inside_the_chain(pair: Pair) -> None:
    first = pair.fp(pair.pk)
    bundle_before = pair.export(name="before.bundle")
    pair.pk.rotate_identity(NOW)
    newer = pair.fp(pair.pk)
    assert newer != first
    after = pair.export(name="after.bundle")
    cn = Anchor("cn-mps", pair.fp(pair.cn))
    # The old key is a verified link of the chain; the new one is signed by it.
    assert _findings(verify_bundle_file(after, [Anchor("pk-moi", first), cn])) == []
    assert _findings(verify_bundle_file(after, [Anchor("pk-moi", newer), cn])) == []
    # A bundle from before the rotation does not contain the new key ...
    unanchored = verify_bundle_file(bundle_before, [Anchor("pk-moi", newer), cn])
    assert _findings(unanchored) == [(None, "audit.unanchored")]
    # ... but the newer card file extends its chain, so pinning the card anchors it.
    card = card_anchor(pair.pk.own_chain().to_bytes())
    assert _findings(verify_bundle_file(bundle_before, [card, cn])) == []


# ---- I09: no silent tail ---------------------------------------------------------------------


def _drop_last_checkpoint(bundle: Path) -> None:
    lines = bundle.read_text().split("\n")
    header = json.loads(lines[0])
    last = header["checkpoints"]  # line index of the last checkpoint line
    del lines[last]
    header["checkpoints"] -= 1
    lines[0] = json.dumps(header, sort_keys=True)
    bundle.write_text("\n".join(lines))


@pytest.mark.threat("I09")
def test_i09_entries_past_the_largest_checkpoint_are_each_reported(pair: Pair) -> None:
    bundle = pair.export()
    _drop_last_checkpoint(bundle)  # the checkpoint over the last batch is left out
    report = verify_bundle_file(bundle, pair.anchors())
    tail = list(range(pair.sizes[-2], pair.sizes[-1]))
    assert len(tail) == 3  # the checkpoint.cosigned event and the last batch of 2
    assert _findings(report) == [(i, "audit.unsigned_tail") for i in tail]
    assert report.largest_checkpoint == pair.sizes[-2]


@pytest.mark.threat("I09")
def test_i09_a_left_out_checkpoint_the_log_records_is_a_finding(pair: Pair) -> None:
    lines = pair.export().read_text().split("\n")
    header = json.loads(lines[0])
    sizes = [
        json.loads(lines[1 + n])["checkpoint"].split("\n")[1] for n in range(header["checkpoints"])
    ]
    dropped = sizes.index(str(pair.cosigned[0]))
    del lines[1 + dropped]
    header["checkpoints"] -= 1
    lines[0] = json.dumps(header, sort_keys=True)
    bundle = pair.tmp / "left-out.bundle"
    bundle.write_text("\n".join(lines))
    report = verify_bundle_file(bundle, pair.anchors())
    assert _findings(report) == [(pair.cosigned[0], "audit.checkpoint_missing")]


@pytest.mark.threat("I09")
def test_i09_a_bundle_shorter_than_its_header_is_a_finding(pair: Pair) -> None:
    bundle = pair.export()
    text = bundle.read_text()
    bundle.write_text(text[: text.rindex('{"i":')])  # the last entry line removed
    report = verify_bundle_file(bundle, pair.anchors())
    size = pair.sizes[-1]
    assert _findings(report) == [(size - 1, "bundle.size"), (None, "checkpoint.beyond_log")]


def _append_row(node: Node) -> int:
    with node.store.transaction() as db:
        node.log.append(db, [("policy.changed", NOW, {"policy_digest": "sha256:" + "e" * 64})])
    return node.log.size() - 1


@pytest.mark.threat("I09")
def test_i09_export_cuts_at_its_checkpoint_what_a_running_node_appends_meanwhile(
    pair: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    signed = pair.pk.checkpoint

    def sign_then_another_writer_appends(now: datetime):  # type: ignore[no-untyped-def]
        cp = signed(now)
        _append_row(pair.pk)
        return cp

    monkeypatch.setattr(pair.pk, "checkpoint", sign_then_another_writer_appends)
    report = verify_bundle_file(pair.export(), pair.anchors())
    assert _findings(report) == []
    assert report.entries == report.largest_checkpoint == pair.pk.log.size() - 1


@pytest.mark.threat("I09")
def test_i09_a_tail_the_node_cannot_sign_is_exported_and_reported(
    pair: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When signing fails at export (e.g. a row the node refuses to sign), the export fails
    and writes nothing; a forensic export of the rows as they are names every one that no
    checkpoint covers."""
    from exchange.errors import StoreError

    first, second = _append_row(pair.pk), _append_row(pair.pk)

    def refuse(now: datetime):  # type: ignore[no-untyped-def]
        raise StoreError("refusing to sign", code="log.inconsistent")

    monkeypatch.setattr(pair.pk, "checkpoint", refuse)
    with pytest.raises(StoreError):
        pair.export(name="refused.bundle")
    assert not (pair.tmp / "refused.bundle").exists()
    report = verify_bundle_file(pair.export(unsigned_ok=True), pair.anchors())
    assert _findings(report) == [(first, "audit.unsigned_tail"), (second, "audit.unsigned_tail")]
    assert first == pair.sizes[-1]


@pytest.mark.threat("I09")
def test_i09_many_unsigned_entries_end_in_one_range_finding(
    pair: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    from exchange import audit as exchange_audit

    monkeypatch.setattr(exchange_audit, "MAX_TAIL_FINDINGS", 2)
    bundle = pair.export()
    _drop_last_checkpoint(bundle)
    report = verify_bundle_file(bundle, pair.anchors())
    first = pair.sizes[-2]
    assert _findings(report) == [
        (first, "audit.unsigned_tail"),
        (first + 1, "audit.unsigned_tail"),
        (first + 2, "audit.unsigned_tail"),
    ]
    assert report.findings[2].message.startswith(f"entries {first + 2}..{first + 2} (1 more)")


# ---- H02: reconcile with anchors ---------------------------------------------------------------


@pytest.mark.threat("H02", "I06")
def test_h02_reconcile_applies_the_anchors_to_both_bundles(pair: Pair, accord: Accord) -> None:
    _cosign(pair.cn, pair.pk)
    pk_bundle, cn_bundle = pair.export(), pair.export(pair.cn, "cn.bundle")
    args = (
        "--fingerprint",
        f"pk-moi={pair.fp(pair.pk)}",
        "--fingerprint",
        f"cn-mps={pair.fp(pair.cn)}",
    )
    r = accord("audit", "reconcile", pk_bundle, cn_bundle, *args, "--json")
    assert r.code == 0, r.out
    assert r.json()["a"] == "pk-moi" and r.json()["b"] == "cn-mps"
    # The auditor is shown another pk-moi log (a rogue under the same name): refused.
    rogue = _node(pair.tmp, "pk-moi", folder="rogue")
    forged = pair.export(rogue, "rogue.bundle")
    r = accord("audit", "reconcile", forged, cn_bundle, *args)
    assert r.code == 2
    assert "audit.unanchored" in r.out and "did not verify" in r.err
    # cn-mps's bundle with pk-moi's card removed from it: its cosignatures are unchecked.
    _edit_header(cn_bundle, peers={})
    r = accord("audit", "reconcile", pk_bundle, cn_bundle, *args)
    assert r.code == 2 and "audit.peer_missing" in r.out
