"""Revocation statements: one rule for what verifies, and a table of every way to bend it."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from datetime import UTC, datetime

import pytest

from exchange.card import SignedCard, VerifiedChain, extend_chain, sign_card
from exchange.errors import InputError, PeerDataError
from exchange.purpose import Purpose, signed_message
from exchange.revocation import (
    Revocation,
    SignedRevocation,
    parse_revocation_unverified,
    sign_revocation,
    verify_revocation,
)
from keys.keyring import Keyring, generate_keyring

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
T = "2026-11-20T00:00:00Z"


def _chain(ring: Keyring, identities: int) -> tuple[VerifiedChain, list[Keyring]]:
    """A chain of ``identities`` identity keys, plus one encryption rotation on the last
    (so one key spans two versions)."""
    rings = [ring]
    signed: list[SignedCard] = []
    for v in range(1, identities + 2):
        if 1 < v <= identities:
            rings.append(rings[-1].with_new_identity())
        current = rings[-1]
        card = current.card(
            name="Pakistan MoI", endpoint="127.0.0.1:7441", version=v, issued_at=NOW
        )
        prev = None if v == 1 else (rings[-2] if len(rings) >= v else current).identity_signer()
        if v > identities:  # the encryption-only rotation: same identity key signs twice
            prev = current.identity_signer()
        signed.append(sign_card(card, current.identity_signer(), prev))
    return extend_chain(None, signed), rings


@pytest.fixture(scope="module")
def setup() -> tuple[VerifiedChain, list[Keyring]]:
    ring = generate_keyring("pk-moi", "pk-moi.accord/log", "127.0.0.1", NOW)
    return _chain(ring, 3)


def _revocation(key: bytes, **changes: str) -> Revocation:
    fields = {
        "node": "pk-moi",
        "revoked_from": T,
        "reason": "compromised",
        "issued_at": "2026-11-25T12:00:00Z",
    }
    fields.update(changes)
    return Revocation(identity_key=key, **fields)


def _sign_raw(ring: Keyring, data: bytes, purpose: Purpose = Purpose.REVOCATION) -> bytes:
    return ring.identity_signer().sign(signed_message(purpose, data))


def test_identity_keys_in_chain(setup: tuple[VerifiedChain, list[Keyring]]) -> None:
    chain, rings = setup
    assert len(chain.cards) == 4 and len(rings) == 3
    assert chain.cards[-1].identity_key == chain.cards[-2].identity_key


@pytest.mark.parametrize("which", [0, 1, 2])
def test_current_key_revokes_any_key_of_its_chain(
    setup: tuple[VerifiedChain, list[Keyring]], which: int
) -> None:
    chain, rings = setup
    revocation = _revocation(rings[which].identity_signer().public_key)
    signed = sign_revocation(revocation, rings[-1].identity_signer(), chain)
    assert verify_revocation(signed, chain) == revocation
    assert parse_revocation_unverified(signed.statement).fingerprint == revocation.fingerprint


def test_a_key_may_revoke_itself(setup: tuple[VerifiedChain, list[Keyring]]) -> None:
    chain, rings = setup
    data = _revocation(rings[0].identity_signer().public_key).to_bytes()
    assert verify_revocation(SignedRevocation(data, _sign_raw(rings[0], data)), chain)


def test_only_the_current_key_signs_ours(setup: tuple[VerifiedChain, list[Keyring]]) -> None:
    chain, rings = setup
    with pytest.raises(InputError, match="current identity key"):
        sign_revocation(
            _revocation(rings[0].identity_signer().public_key), rings[0].identity_signer(), chain
        )
    with pytest.raises(InputError, match="reason"):
        sign_revocation(
            _revocation(rings[0].identity_signer().public_key, reason="bored"),
            rings[-1].identity_signer(),
            chain,
        )


def _doc_bytes(ring: Keyring, mutate: Callable[[dict[str, object]], None]) -> bytes:
    doc = json.loads(_revocation(ring.identity_signer().public_key).to_bytes())
    mutate(doc)
    from exchange.canonical import canonical_json

    return canonical_json(doc)


def _case_old_key_revokes_newer(rings: list[Keyring]) -> SignedRevocation:
    # A thief of an old key tries to revoke the node's current key.
    data = _revocation(rings[-1].identity_signer().public_key).to_bytes()
    return SignedRevocation(data, _sign_raw(rings[0], data))


def _case_other_node(rings: list[Keyring]) -> SignedRevocation:
    data = _revocation(rings[0].identity_signer().public_key, node="cn-mps").to_bytes()
    return SignedRevocation(data, _sign_raw(rings[-1], data))


def _case_unknown_key(rings: list[Keyring]) -> SignedRevocation:
    data = _revocation(bytes(32)).to_bytes()
    return SignedRevocation(data, _sign_raw(rings[-1], data))


def _case_card_purpose(rings: list[Keyring]) -> SignedRevocation:
    data = _revocation(rings[0].identity_signer().public_key).to_bytes()
    return SignedRevocation(data, _sign_raw(rings[-1], data, Purpose.CARD))


def _case_not_canonical(rings: list[Keyring]) -> SignedRevocation:
    data = _revocation(rings[0].identity_signer().public_key).to_bytes().replace(b",", b", ", 1)
    return SignedRevocation(data, _sign_raw(rings[-1], data))


def _case_extra_field(rings: list[Keyring]) -> SignedRevocation:
    data = _doc_bytes(rings[0], lambda d: d.update(scope="all"))
    return SignedRevocation(data, _sign_raw(rings[-1], data))


def _case_bad_reason(rings: list[Keyring]) -> SignedRevocation:
    data = _doc_bytes(rings[0], lambda d: d.update(reason="bored"))
    return SignedRevocation(data, _sign_raw(rings[-1], data))


def _case_bad_time(rings: list[Keyring]) -> SignedRevocation:
    data = _doc_bytes(rings[0], lambda d: d.update(revoked_from="yesterday"))
    return SignedRevocation(data, _sign_raw(rings[-1], data))


def _case_short_key(rings: list[Keyring]) -> SignedRevocation:
    data = _doc_bytes(rings[0], lambda d: d.update(identity_key=base64.b64encode(b"k").decode()))
    return SignedRevocation(data, _sign_raw(rings[-1], data))


def _case_wrong_type(rings: list[Keyring]) -> SignedRevocation:
    data = _doc_bytes(rings[0], lambda d: d.update(type="accord.node-card/v1"))
    return SignedRevocation(data, _sign_raw(rings[-1], data))


def _case_number_node(rings: list[Keyring]) -> SignedRevocation:
    data = _doc_bytes(rings[0], lambda d: d.update(node=7))
    return SignedRevocation(data, _sign_raw(rings[-1], data))


def _case_truncated_signature(rings: list[Keyring]) -> SignedRevocation:
    data = _revocation(rings[0].identity_signer().public_key).to_bytes()
    return SignedRevocation(data, _sign_raw(rings[-1], data)[:63])


def _case_flipped_byte(rings: list[Keyring]) -> SignedRevocation:
    data = _revocation(rings[0].identity_signer().public_key).to_bytes()
    signature = _sign_raw(rings[-1], data)
    return SignedRevocation(data.replace(b"2026-11-20", b"2026-11-21"), signature)


def _case_not_json(rings: list[Keyring]) -> SignedRevocation:
    return SignedRevocation(b"\xff" * 10, _sign_raw(rings[-1], b"\xff" * 10))


def _case_too_large(rings: list[Keyring]) -> SignedRevocation:
    data = b" " * 5000
    return SignedRevocation(data, _sign_raw(rings[-1], data))


ATTACKS: dict[str, Callable[[list[Keyring]], SignedRevocation]] = {
    "old key revokes a newer key": _case_old_key_revokes_newer,
    "names another node": _case_other_node,
    "key not in the chain": _case_unknown_key,
    "signature made for a card": _case_card_purpose,
    "bytes not canonical": _case_not_canonical,
    "unknown field": _case_extra_field,
    "unknown reason": _case_bad_reason,
    "revoked_from not a time": _case_bad_time,
    "key not 32 bytes": _case_short_key,
    "another document type": _case_wrong_type,
    "node id not a string": _case_number_node,
    "truncated signature": _case_truncated_signature,
    "statement edited after signing": _case_flipped_byte,
    "not JSON": _case_not_json,
    "larger than the limit": _case_too_large,
}


@pytest.mark.parametrize("attack", list(ATTACKS))
@pytest.mark.threat("P06")
def test_p06_bent_revocations_are_refused(
    setup: tuple[VerifiedChain, list[Keyring]], attack: str
) -> None:
    chain, rings = setup
    with pytest.raises(PeerDataError) as refused:
        verify_revocation(ATTACKS[attack](rings), chain)
    assert refused.value.code == "peer.revocation_invalid"
    assert refused.value.message
