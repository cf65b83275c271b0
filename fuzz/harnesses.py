"""Fuzz targets: every parser and verifier that reads bytes from outside.

Each target takes arbitrary bytes and must either return or raise ``AccordError``; any
other exception (or a crash, or a hang) is a finding. The same targets run under atheris
(``make fuzz``, coverage-guided, bounded in time) and under hypothesis in the test suite
(``tests/test_fuzz_targets.py``), so a regression shows up in ``make test`` too.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from functools import cache

from nacl.signing import SigningKey

from exchange import merkle
from exchange.agreement import parse_signed_agreement_unverified, verify_agreement
from exchange.audit import Anchor, audit_bundle
from exchange.card import Card, EncryptionKey, VerifiedChain, fingerprint, verify_chain_bytes
from exchange.checkpoint import parse_checkpoint_unverified
from exchange.envelope import Envelope, open_envelope, parse_header_unverified
from exchange.events import parse_event_unverified
from exchange.note import open_note, parse_verifier_key, verifier_key
from exchange.policy import parse_policy
from exchange.receipt import verify_receipt
from exchange.revocation import SignedRevocation, verify_revocation
from exchange.sdjwt import PresentationLimits, verify_presentation, verify_retraction
from exchange.sop import SchemaRegistry, check_report_document

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
SEED = bytes(range(32))  # a fixed, public test key: seed inputs (fuzz/seeds.py) verify under it
KEY = bytes(SigningKey(SEED).verify_key)


@cache
def _registry() -> SchemaRegistry:
    from sop import load_shipped_rules, load_shipped_schemas

    return SchemaRegistry.from_documents(load_shipped_schemas(), load_shipped_rules())


@cache
def _labels() -> dict[str, dict[str, str]]:
    reg = _registry()
    return {n: reg.labels(n) for n in reg.names()}


def _text(data: bytes) -> str:
    return data.decode("utf-8", errors="surrogateescape")


@cache
def _card() -> Card:
    """A partner card whose identity key is the fixed test key."""
    return Card(
        node="pk-moi",
        name="x",
        endpoint="127.0.0.1:1",
        identity_key=KEY,
        log_vkey=verifier_key("pk-moi.accord/log", KEY).encode(),
        witness_vkey=verifier_key("pk-moi.accord/witness", KEY, 0x04).encode(),
        encryption_keys=(
            EncryptionKey(
                "ek", "X25519/HKDF_SHA256/CHACHA20_POLY1305", KEY, "2030-01-01T00:00:00Z"
            ),
        ),
        tls_ca_pem="",
        version=1,
        issued_at="2026-01-01T00:00:00Z",
    )


def envelope_header(data: bytes) -> None:
    parse_header_unverified(data)


def envelope(data: bytes) -> None:
    """Split the input into header / ciphertext / signature and open it against a fixed
    identity: everything must fail cleanly before or after the signature check."""
    parts = [*data.split(b"\x00", 2), b"", b""]
    open_envelope(
        Envelope(parts[0], parts[1], parts[2]),
        me="cn-mps",
        expected_sender="pk-moi",
        sender_card=_card(),
        last_applied_seq=0,
        decrypter_for=lambda _kid: None,
        agreement=None,  # type: ignore[arg-type]
        registry=_registry(),
        now=NOW,
    )


def card_chain(data: bytes) -> None:
    verify_chain_bytes(data)


def agreement(data: bytes) -> None:
    signed = parse_signed_agreement_unverified(data)
    verify_agreement(signed, {"pk-moi": KEY, "cn-mps": KEY}, NOW)


def policy(data: bytes) -> None:
    parse_policy(_text(data), _labels())


def note(data: bytes) -> None:
    open_note(data, [verifier_key("pk-moi.accord/log", KEY)])


def verifier(data: bytes) -> None:
    parse_verifier_key(_text(data))


def checkpoint(data: bytes) -> None:
    parse_checkpoint_unverified(_text(data))


def proofs(data: bytes) -> None:
    """Sizes, index and hashes from the input; both verifiers."""
    if len(data) < 12:
        return
    a, b, c = (int.from_bytes(data[i : i + 4], "big") for i in (0, 4, 8))
    rest = data[12:]
    hashes = [rest[i : i + 32] for i in range(0, len(rest), 32)]
    root = hashes[0] if hashes else b""
    merkle.verify_inclusion(root, a, b, hashes[1:], root)
    merkle.verify_consistency(a, b + c, root, root, hashes[1:])


def sd_jwt(data: bytes) -> None:
    verify_presentation(data, KEY, limits=PresentationLimits())


def retraction(data: bytes) -> None:
    statement, _, signature = data.partition(b"\x00")
    verify_retraction(statement, signature, KEY)


def receipt(data: bytes) -> None:
    statement, _, signature = data.partition(b"\x00")
    verify_receipt(
        statement,
        signature,
        signer_key=KEY,
        expected_from="cn-mps",
        expected_to="pk-moi",
        digests_for_range=lambda first, last: [],
    )


def revocation(data: bytes) -> None:
    statement, _, signature = data.partition(b"\x00")
    chain = VerifiedChain(cards=(_card(),), signed=())
    verify_revocation(SignedRevocation(statement, signature), chain)


def report(data: bytes) -> None:
    check_report_document(_registry(), data, "toml" if data[:1] == b"#" else "json")


def event(data: bytes) -> None:
    parse_event_unverified(data)


# The auditor's anchors for the bundle target: pk-moi's log and its partner cn-mps's
# witness, both under the fixed test key (fuzz/seeds.py builds the seed bundle with it),
# so mutated bundles get past the anchor check to the cosignatures, entries and tail.
BUNDLE_ANCHORS = (Anchor("pk-moi", fingerprint(KEY)), Anchor("cn-mps", fingerprint(KEY)))


def bundle(data: bytes) -> None:
    audit_bundle(data.splitlines(), anchors=BUNDLE_ANCHORS)


TARGETS: dict[str, Callable[[bytes], None]] = {
    "envelope_header": envelope_header,
    "envelope": envelope,
    "card_chain": card_chain,
    "agreement": agreement,
    "policy": policy,
    "note": note,
    "verifier_key": verifier,
    "checkpoint": checkpoint,
    "proofs": proofs,
    "sd_jwt": sd_jwt,
    "retraction": retraction,
    "receipt": receipt,
    "revocation": revocation,
    "report": report,
    "event": event,
    "bundle": bundle,
}
