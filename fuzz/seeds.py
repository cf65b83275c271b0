"""Valid inputs for each fuzz target, signed by the harnesses' fixed test key, so the
fuzzer starts past the signature checks and mutates real structure."""

from __future__ import annotations

import json
from pathlib import Path

from nacl.signing import SigningKey

from exchange.canonical import b64
from exchange.checkpoint import Checkpoint, sign_checkpoint
from exchange.events import event_bytes
from exchange.merkle import MemoryTree
from exchange.purpose import Purpose, signed_message
from exchange.revocation import Revocation
from exchange.sdjwt import Retraction, seal, sign_retraction
from exchange.sop import check_report_document
from fuzz.harnesses import SEED, _registry

T = "2026-11-25T12:00:00Z"


class _Signer:
    def __init__(self) -> None:
        self._key = SigningKey(SEED)
        self.public_key = bytes(self._key.verify_key)

    def sign(self, message: bytes) -> bytes:
        return bytes(self._key.sign(message).signature)


REPORT = {
    "sop": "threat-alert@1",
    "tlp": "amber",
    "fields": {
        "title": "IED threat",
        "threat_type": "ied",
        "severity": "high",
        "region": "Sindh",
        "time_window": {"start": "2026-11-26T00:00:00Z", "end": "2026-11-30T00:00:00Z"},
        "source": {"kind": "humint", "reliability": "B", "credibility": 2},
    },
}


def seeds() -> dict[str, list[bytes]]:
    signer = _Signer()
    counter = iter(range(1, 10**6))
    valid = check_report_document(_registry(), json.dumps(REPORT).encode(), "json")
    sealed = seal(
        valid.report,
        signer=signer,
        kid="k",
        issuer="pk-moi",
        report_id="01a2137d-3a29-7952-a2dd-9288a3aa226e",
        issued_at=1764072000,
        version=1,
        supersedes=None,
        sop_digest=valid.sop_digest,
        random_bytes=lambda n: next(counter).to_bytes(n, "big"),
    )
    cp = Checkpoint("pk-moi.accord/log", 3, bytes(32))
    note = sign_checkpoint(cp, "pk-moi.accord/log", signer)
    event = event_bytes(
        "peer.added", 0, "2026-11-25T12:00:00Z", {"peer": "cn-mps", "card_version": 1}
    )
    tree = MemoryTree()
    tree.append(event)
    retraction = sign_retraction(
        Retraction(
            "pk-moi", sealed.report_id, 1, sealed.issuer_jwt_digest, "erroneous", 1764072000
        ),
        signer,
    )
    revocation = Revocation("pk-moi", signer.public_key, T, "compromised", T).to_bytes()
    revoked = revocation + b"\x00" + signer.sign(signed_message(Purpose.REVOCATION, revocation))
    header = json.dumps({"type": "bundle-header"}).encode()
    chain, full_bundle = _chain_and_bundle(signer)
    return {
        "sd_jwt": [sealed.full_presentation().encode(), sealed.present(["title"]).encode()],
        "note": [note],
        "checkpoint": [cp.text().encode()],
        "event": [event],
        "report": [json.dumps(REPORT).encode()],
        "policy": [
            (Path(__file__).resolve().parents[1] / "sop" / "policies" / "example.toml").read_bytes()
        ],
        "retraction": [retraction.statement + b"\x00" + retraction.signature],
        "revocation": [revoked],
        "card_chain": [chain],
        "bundle": [
            full_bundle,
            header
            + b"\n"
            + json.dumps({"i": 0, "event": b64(event), "h": b64(tree.subtree(0, 0))}).encode(),
        ],
        "envelope_header": [
            json.dumps(
                {
                    "type": "accord.envelope/v1",
                    "id": sealed.report_id,
                    "from": "pk-moi",
                    "to": "cn-mps",
                    "seq": 1,
                    "kind": "report",
                    "created_at": "2026-11-25T12:00:00Z",
                    "suite": "X25519/HKDF_SHA256/CHACHA20_POLY1305",
                    "kid": "ek",
                },
                separators=(",", ":"),
                sort_keys=True,
            ).encode()
        ],
    }


def _card_chain(signer: _Signer, node: str) -> tuple[bytes, str]:
    """A one-card chain of ``node`` under the fixed key, and its fingerprint."""
    from datetime import UTC, datetime

    from exchange.card import SUITE_X25519, Card, EncryptionKey, chain_bytes, sign_card
    from exchange.note import verifier_key
    from keys.tls import generate_tls

    tls = generate_tls(node, "127.0.0.1", datetime(2026, 1, 1, tzinfo=UTC))
    card = Card(
        node=node,
        name=node,
        endpoint="127.0.0.1:7441",
        identity_key=signer.public_key,
        log_vkey=verifier_key(f"{node}.accord/log", signer.public_key).encode(),
        witness_vkey=verifier_key(f"{node}.accord/witness", signer.public_key, 0x04).encode(),
        encryption_keys=(EncryptionKey("ek", SUITE_X25519, signer.public_key, T),),
        tls_ca_pem=tls.ca_cert_pem.decode("ascii"),
        version=1,
        issued_at="2026-01-01T00:00:00Z",
    )
    return chain_bytes([sign_card(card, signer, None)]), card.fingerprint


def _chain_and_bundle(signer: _Signer) -> tuple[bytes, bytes]:
    """pk-moi's one-card chain under the fixed key, and a bundle that verifies under the
    harness's anchors (fuzz.harnesses.BUNDLE_ANCHORS, the same key for pk-moi and its
    partner cn-mps): three entries (node.created, peer.added cn-mps, checkpoint.cosigned),
    a checkpoint at 2 cosigned by cn-mps's witness and one at 3, so the bundle fuzzer
    gets past the header and anchors to the cosignatures, the due rule and the entries."""
    from exchange.audit import BUNDLE_TYPE
    from exchange.cosignature import cosign_checkpoint
    from exchange.merkle import leaf_hash

    chain, fp = _card_chain(signer, "pk-moi")
    cn_chain, cn_fp = _card_chain(signer, "cn-mps")
    events = [
        event_bytes("node.created", 0, T, {"node": "pk-moi", "fingerprint": fp}),
        event_bytes("peer.added", 1, T, {"peer": "cn-mps", "fingerprint": cn_fp}),
        event_bytes("checkpoint.cosigned", 2, T, {"peer": "cn-mps", "size": 2}),
    ]
    tree = MemoryTree()
    checkpoints = []
    for size, event in enumerate(events, start=1):
        tree.append(event)
        if size < 2:
            continue
        cp = Checkpoint("pk-moi.accord/log", size, tree.root())
        note = sign_checkpoint(cp, "pk-moi.accord/log", signer)
        if size == 2:
            cosig = cosign_checkpoint(cp.text(), "cn-mps.accord/witness", signer, 1764072000)
            note += (cosig.line + "\n").encode()
        checkpoints.append({"checkpoint": note.decode("utf-8"), "stored_root": b64(tree.root())})
    header = {
        "type": BUNDLE_TYPE,
        "node": "pk-moi",
        "origin": "pk-moi.accord/log",
        "cards": b64(chain),
        "peers": {"cn-mps": b64(cn_chain)},
        "size": len(events),
        "checkpoints": len(checkpoints),
        "exported_at": T,
    }
    lines = [
        json.dumps(header, sort_keys=True),
        *(json.dumps(c) for c in checkpoints),
        *(
            json.dumps({"i": i, "event": b64(e), "h": b64(leaf_hash(e))})
            for i, e in enumerate(events)
        ),
    ]
    return chain, "\n".join(lines).encode() + b"\n"


def write(root: Path) -> dict[str, Path]:
    dirs = {}
    for name, inputs in seeds().items():
        d = root / name
        d.mkdir(parents=True, exist_ok=True)
        for i, data in enumerate(inputs):
            (d / f"seed-{i}").write_bytes(data)
        dirs[name] = d
    return dirs
