"""Card chains: every way to forge or bend a chain is refused and stores nothing."""

from __future__ import annotations

import base64
import json
import secrets
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest

from exchange.card import (
    MAX_CHAIN_LENGTH,
    SignedCard,
    chain_bytes,
    fingerprint,
    normalise_fingerprint,
    sign_card,
    verify_chain_bytes,
)
from exchange.errors import AccordError, InputError, KeyringError, PeerDataError
from exchange.purpose import Purpose, signed_message
from exchange.revocation import Revocation, SignedRevocation
from exchange.times import format_time
from keys.keyring import Keyring, generate_keyring
from keys.signers import Ed25519Signer
from keys.truststore import KeyRevocation, PeerRecord, TrustStore

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


class MemoryRecords:
    def __init__(self) -> None:
        self.rows: dict[str, PeerRecord] = {}
        self.revocations: dict[str, list[KeyRevocation]] = {}

    def get(self, node: str) -> PeerRecord | None:
        return self.rows.get(node)

    def put(self, record: PeerRecord) -> None:
        self.rows[record.node] = record

    def delete(self, node: str) -> None:
        del self.rows[node]

    def all(self) -> list[PeerRecord]:
        return list(self.rows.values())

    def key_revocations(self, node: str) -> list[KeyRevocation]:
        return list(self.revocations.get(node, []))

    def put_key_revocation(self, node: str, revocation: KeyRevocation) -> None:
        self.revocations.setdefault(node, []).append(revocation)


@pytest.fixture(scope="module")
def keyring() -> Keyring:
    return generate_keyring("pk-moi", "pk-moi.accord/log", "127.0.0.1", NOW)


def build_chain(keyring: Keyring, versions: int) -> tuple[list[SignedCard], list[Keyring]]:
    signed: list[SignedCard] = []
    rings = [keyring]
    for v in range(1, versions + 1):
        ring = rings[-1] if v == 1 else rings[-1].with_new_identity()
        if v > 1:
            rings.append(ring)
        card = ring.card(name="Pakistan MoI", endpoint="127.0.0.1:7441", version=v, issued_at=NOW)
        prev = None if v == 1 else rings[-2].identity_signer()
        signed.append(sign_card(card, ring.identity_signer(), prev))
    return signed, rings


def test_chain_round_trip_and_fingerprint(keyring: Keyring) -> None:
    signed, rings = build_chain(keyring, 3)
    chain = verify_chain_bytes(chain_bytes(signed))
    assert [c.version for c in chain.cards] == [1, 2, 3]
    assert chain.latest.identity_key == rings[-1].identity_signer().public_key
    fp = chain.latest.fingerprint
    assert len(fp.replace("-", "")) == 24 and fp.count("-") == 5
    assert normalise_fingerprint(fp.lower().replace("-", " ")) == fp
    assert fingerprint(rings[0].identity_signer().public_key) != fp


def _flip_byte(signed: list[SignedCard]) -> bytes:
    data = bytearray(signed[0].card_bytes)
    i = data.index(b'"name":"') + 8
    data[i] ^= 0x01
    return chain_bytes([SignedCard(bytes(data), signed[0].signature, None)])


def _skip_version(signed: list[SignedCard]) -> bytes:
    return chain_bytes([signed[0], signed[2]])


def _rotation_signed_by_new_key_only(signed: list[SignedCard], rings: list[Keyring]) -> bytes:
    card2 = signed[1]
    new = rings[1].identity_signer()
    from exchange.purpose import Purpose, signed_message

    forged = SignedCard(
        card2.card_bytes, card2.signature, new.sign(signed_message(Purpose.CARD, card2.card_bytes))
    )
    return chain_bytes([signed[0], forged])


def _rotation_without_previous(signed: list[SignedCard]) -> bytes:
    return chain_bytes([signed[0], SignedCard(signed[1].card_bytes, signed[1].signature, None)])


def _starts_at_v2(signed: list[SignedCard]) -> bytes:
    return chain_bytes(signed[1:])


def _other_purpose(signed: list[SignedCard], rings: list[Keyring]) -> bytes:
    # A valid signature over the same bytes but for another purpose must not pass.
    from exchange.purpose import Purpose, signed_message

    s = rings[0].identity_signer().sign(signed_message(Purpose.AGREEMENT, signed[0].card_bytes))
    return chain_bytes([SignedCard(signed[0].card_bytes, s, None)])


def _not_canonical(signed: list[SignedCard], rings: list[Keyring]) -> bytes:
    doc = json.loads(signed[0].card_bytes)
    data = json.dumps(doc, indent=1).encode()
    from exchange.purpose import Purpose, signed_message

    s = rings[0].identity_signer().sign(signed_message(Purpose.CARD, data))
    return chain_bytes([SignedCard(data, s, None)])


def _extra_field(signed: list[SignedCard], rings: list[Keyring]) -> bytes:
    from exchange.canonical import canonical_json
    from exchange.purpose import Purpose, signed_message

    doc = json.loads(signed[0].card_bytes)
    doc["admin"] = True
    data = canonical_json(doc)
    s = rings[0].identity_signer().sign(signed_message(Purpose.CARD, data))
    return chain_bytes([SignedCard(data, s, None)])


def _garbage(signed: list[SignedCard]) -> bytes:
    return (
        b'{"type":"accord.card-chain/v1","cards":'
        b'[{"card":"!!","signature":"","previous_signature":null}]}'
    )


def _card_not_a_string(signed: list[SignedCard]) -> bytes:
    return (
        b'{"type":"accord.card-chain/v1","cards":'
        b'[{"card":5,"signature":null,"previous_signature":null}]}'
    )


ATTACKS: list[tuple[str, Callable[..., bytes], str]] = [
    ("card_field_not_a_string", _card_not_a_string, "base64"),
    ("one_changed_byte", _flip_byte, "signature"),
    ("chain_skips_a_version", _skip_version, "skips"),
    ("rotation_signed_only_by_new_key", _rotation_signed_by_new_key_only, "v1 identity key"),
    (
        "rotation_without_previous_signature",
        _rotation_without_previous,
        "not signed by the identity key",
    ),
    ("chain_starts_at_version_2", _starts_at_v2, "starts at version 2"),
    ("signature_for_another_purpose", _other_purpose, "signature"),
    ("non_canonical_card_bytes", _not_canonical, "canonical"),
    ("unknown_card_field", _extra_field, "unknown"),
    ("garbage", _garbage, "base64"),
]


@pytest.mark.parametrize(("name", "attack", "message"), ATTACKS, ids=[a[0] for a in ATTACKS])
@pytest.mark.threat("P06")
def test_p06_forged_chain_is_refused_and_store_unchanged(
    keyring: Keyring, name: str, attack: Callable[..., bytes], message: str
) -> None:
    signed, rings = build_chain(keyring, 3)
    import inspect

    data = (
        attack(signed, rings) if len(inspect.signature(attack).parameters) == 2 else attack(signed)
    )
    records = MemoryRecords()
    store = TrustStore(records, own_node="cn-mps")
    with pytest.raises(PeerDataError) as err:
        store.add(data, fingerprint=None, tofu=True, now=NOW)
    assert message in err.value.message
    assert records.rows == {}


@pytest.mark.threat("P06")
def test_p06_endless_rotation_chain_is_refused(keyring: Keyring) -> None:
    signed, _ = build_chain(keyring, 2)
    # Repeat entries to exceed the limit without generating hundreds of keys.
    data = chain_bytes(signed * (MAX_CHAIN_LENGTH // 2 + 1))
    records = MemoryRecords()
    with pytest.raises(PeerDataError, match="exceeds the limit"):
        TrustStore(records, "cn-mps").add(data, fingerprint=None, tofu=True, now=NOW)
    assert records.rows == {}


def test_fingerprint_mismatch_is_refused(keyring: Keyring) -> None:
    signed, _ = build_chain(keyring, 1)
    records = MemoryRecords()
    other = fingerprint(secrets.token_bytes(32))
    with pytest.raises(KeyringError, match="fingerprint mismatch"):
        TrustStore(records, "cn-mps").add(
            chain_bytes(signed), fingerprint=other, tofu=False, now=NOW
        )
    assert records.rows == {}


def test_new_partner_needs_fingerprint_or_explicit_tofu(keyring: Keyring) -> None:
    signed, _ = build_chain(keyring, 1)
    records = MemoryRecords()
    with pytest.raises(InputError, match="fingerprint is required"):
        TrustStore(records, "cn-mps").add(
            chain_bytes(signed), fingerprint=None, tofu=False, now=NOW
        )
    assert records.rows == {}


def test_rotation_update_and_conflict(keyring: Keyring) -> None:
    signed, rings = build_chain(keyring, 2)
    records = MemoryRecords()
    store = TrustStore(records, "cn-mps")
    fp1 = fingerprint(rings[0].identity_signer().public_key)
    assert (
        store.add(chain_bytes(signed[:1]), fingerprint=fp1, tofu=False, now=NOW).outcome == "added"
    )
    assert (
        store.add(chain_bytes(signed[:1]), fingerprint=fp1, tofu=False, now=NOW).outcome
        == "unchanged"
    )
    # The rotation was signed by the trusted key: accepted without a new fingerprint.
    result = store.add(chain_bytes(signed), fingerprint=None, tofu=False, now=NOW)
    assert result.outcome == "updated"
    assert records.rows["pk-moi"].card_version == 2
    before = dict(records.rows)
    # An impostor's chain for the same node id (its own v1) conflicts and changes nothing.
    impostor = generate_keyring("pk-moi", "pk-moi.accord/log", "127.0.0.1", NOW)
    fake, _ = build_chain(impostor, 1)
    with pytest.raises(KeyringError, match="conflicts"):
        store.add(
            chain_bytes(fake),
            fingerprint=fingerprint(impostor.identity_signer().public_key),
            tofu=False,
            now=NOW,
        )
    assert records.rows == before


def test_revoked_key_is_refused_from_its_revocation_time(keyring: Keyring) -> None:
    signed, rings = build_chain(keyring, 1)
    records = MemoryRecords()
    store = TrustStore(records, "cn-mps")
    store.add(
        chain_bytes(signed),
        fingerprint=fingerprint(rings[0].identity_signer().public_key),
        tofu=False,
        now=NOW,
    )
    store.revoke("pk-moi", NOW + timedelta(hours=1), NOW)
    assert store.trusted_chain("pk-moi", NOW).latest.node == "pk-moi"
    with pytest.raises(PeerDataError, match="revoked"):
        store.trusted_chain("pk-moi", NOW + timedelta(hours=1))


def test_own_card_is_not_trusted(keyring: Keyring) -> None:
    signed, _ = build_chain(keyring, 1)
    records = MemoryRecords()
    with pytest.raises(InputError, match="own node"):
        TrustStore(records, "pk-moi").add(chain_bytes(signed), fingerprint=None, tofu=True, now=NOW)


def test_wrong_length_signature_is_a_clear_error(keyring: Keyring) -> None:
    signed, _ = build_chain(keyring, 1)
    short = SignedCard(signed[0].card_bytes, signed[0].signature[:10], None)
    with pytest.raises(AccordError, match="64"):
        verify_chain_bytes(chain_bytes([short]))


def test_signer_hides_its_seed() -> None:
    seed = secrets.token_bytes(32)
    signer = Ed25519Signer(seed)
    assert seed.hex() not in repr(signer)
    assert base64.b64encode(seed).decode() not in repr(signer)


def _trusting(signed: list[SignedCard], upto: int) -> tuple[MemoryRecords, TrustStore]:
    records = MemoryRecords()
    store = TrustStore(records, "cn-mps")
    store.add(chain_bytes(signed[:upto]), fingerprint=None, tofu=True, now=NOW)
    return records, store


def _statement(key: Keyring, signer: Keyring, revoked_from: datetime) -> SignedRevocation:
    revocation = Revocation(
        "pk-moi",
        key.identity_signer().public_key,
        format_time(revoked_from),
        "compromised",
        format_time(NOW),
    )
    data = revocation.to_bytes()
    return SignedRevocation(
        data, signer.identity_signer().sign(signed_message(Purpose.REVOCATION, data))
    )


@pytest.mark.threat("P06")
def test_p06_signed_revocation_of_the_current_key_revokes_the_partner(keyring: Keyring) -> None:
    signed, rings = build_chain(keyring, 2)
    records, store = _trusting(signed, 2)
    later = NOW + timedelta(hours=1)
    result = store.apply_revocation("pk-moi", _statement(rings[1], rings[1], later), NOW)
    assert result is not None and result[1].status == "revoked"
    assert store.trusted_chain("pk-moi", NOW).latest.version == 2  # before the time: trusted
    with pytest.raises(PeerDataError, match="revoked"):
        store.trusted_chain("pk-moi", later)
    # Known already: nothing new, nothing changed.
    rows = dict(records.rows)
    assert store.apply_revocation("pk-moi", _statement(rings[1], rings[1], later), NOW) is None
    assert records.rows == rows


@pytest.mark.threat("P06")
def test_p06_signed_revocation_of_an_old_key_is_kept_per_key(keyring: Keyring) -> None:
    signed, rings = build_chain(keyring, 2)
    records, store = _trusting(signed, 2)
    result = store.apply_revocation("pk-moi", _statement(rings[0], rings[1], NOW), NOW)
    assert result is not None and result[1].status == "trusted"
    assert records.rows["pk-moi"].revoked_from is None
    assert store.revoked_keys("pk-moi") == {rings[0].identity_signer().public_key: NOW}
    assert store.trusted_chain("pk-moi", NOW + timedelta(days=1)).latest.version == 2


@pytest.mark.threat("P06")
def test_p06_thief_of_an_old_key_cannot_revoke_the_new_one(keyring: Keyring) -> None:
    signed, rings = build_chain(keyring, 2)
    records, store = _trusting(signed, 2)
    rows = dict(records.rows)
    with pytest.raises(PeerDataError, match="later key"):
        store.apply_revocation("pk-moi", _statement(rings[1], rings[0], NOW), NOW)
    assert records.rows == rows and records.revocations == {}


@pytest.mark.threat("P06")
def test_p06_revoked_key_cannot_sign_a_rotation(keyring: Keyring) -> None:
    signed, rings = build_chain(keyring, 2)
    records, store = _trusting(signed, 1)
    store.apply_revocation("pk-moi", _statement(rings[0], rings[0], NOW), NOW)
    rows = dict(records.rows)
    with pytest.raises(PeerDataError, match="revoked"):
        store.update("pk-moi", signed[1:], NOW + timedelta(minutes=1))
    assert records.rows == rows


def test_card_whose_tls_ca_uses_an_unknown_curve_is_refused(keyring: Keyring) -> None:
    """Found by make fuzz: cryptography raised UnsupportedAlgorithm from the certificate's
    public key (curve OID 1.2.840.10045.3.33.7), which escaped as an internal error."""
    import base64 as b64mod

    from exchange.canonical import canonical_json
    from exchange.purpose import Purpose as P
    from exchange.purpose import signed_message as sm

    signed, rings = build_chain(keyring, 1)
    doc = json.loads(signed[0].card_bytes)
    body = "".join(doc["tls_ca"].strip().splitlines()[1:-1])
    der = b64mod.b64decode(body)
    p256 = bytes.fromhex("06082a8648ce3d030107")
    assert p256 in der
    bad = der.replace(p256, bytes.fromhex("06082a8648ce3d032107"))
    lines = [b64mod.b64encode(bad).decode()[i : i + 64] for i in range(0, 4 * len(bad), 64)]
    pem = "-----BEGIN CERTIFICATE-----\n" + "\n".join(x for x in lines if x)
    doc["tls_ca"] = pem + "\n-----END CERTIFICATE-----\n"
    data = canonical_json(doc)
    sig = rings[0].identity_signer().sign(sm(P.CARD, data))
    records = MemoryRecords()
    with pytest.raises(PeerDataError, match="tls_ca"):
        TrustStore(records, "cn-mps").add(
            chain_bytes([SignedCard(data, sig, None)]), fingerprint=None, tofu=True, now=NOW
        )
    assert records.rows == {}
