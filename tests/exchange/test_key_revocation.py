"""Revocation statements for log, witness and TLS CA keys (ADR 0018): one rule for what
verifies, and the ways to bend it."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime

import pytest

from exchange.card import VerifiedChain, extend_chain, sign_card
from exchange.errors import InputError, PeerDataError
from exchange.key_revocation import (
    KeyRevocationStatement,
    card_key,
    matches,
    parse_key_revocation_unverified,
    sign_key_revocation,
    verify_all,
    verify_key_revocation,
)
from exchange.purpose import Purpose, signed_message
from exchange.revocation import SignedRevocation
from keys.keyring import Keyring, generate_keyring

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
T = "2026-11-20T00:00:00Z"
Setup = tuple[VerifiedChain, list[Keyring]]


def _chain() -> tuple[VerifiedChain, list[Keyring]]:
    """v1: first keys; v2: new log, witness and TLS CA; v3: new identity key."""
    r1 = generate_keyring("pk-moi", "pk-moi.accord/log", "127.0.0.1", NOW)
    r2 = r1.with_new_log_key().with_new_witness_key().with_new_tls("127.0.0.1", NOW)
    r3 = r2.with_new_identity()
    signed = []
    for v, (ring, prev) in enumerate([(r1, None), (r2, r1), (r3, r2)], start=1):
        card = ring.card(name="Pakistan MoI", endpoint="127.0.0.1:7441", version=v, issued_at=NOW)
        signed.append(
            sign_card(
                card, ring.identity_signer(), None if prev is None else prev.identity_signer()
            )
        )
    return extend_chain(None, signed), [r1, r2, r3]


@pytest.fixture(scope="module")
def setup() -> Setup:
    return _chain()


def _statement(
    chain: VerifiedChain, kind: str, version: int = 1, **changes: str
) -> KeyRevocationStatement:
    fields = {
        "node": "pk-moi",
        "kind": kind,
        "key": card_key(chain.cards[version - 1], kind),
        "revoked_from": T,
        "reason": "compromised",
        "issued_at": "2026-11-25T12:00:00Z",
    }
    fields.update(changes)
    return KeyRevocationStatement(**fields)


@pytest.mark.parametrize("kind", ["log", "witness", "tls"])
def test_a_replaced_key_of_each_kind_revokes_and_verifies(setup: Setup, kind: str) -> None:
    chain, rings = setup
    signed = sign_key_revocation(_statement(chain, kind), rings[2].identity_signer(), chain)
    got = verify_key_revocation(signed, chain)
    assert got.kind == kind and got.key == card_key(chain.cards[0], kind)
    doc = json.loads(signed.statement)
    assert doc["type"] == "accord.key_revocation/v1" and set(doc) == {
        "type",
        "node",
        "kind",
        "key",
        "revoked_from",
        "reason",
        "issued_at",
    }


@pytest.mark.threat("P06")
@pytest.mark.parametrize("kind", ["log", "witness", "tls"])
def test_p06_revoking_the_current_key_is_refused_rotate_first(setup: Setup, kind: str) -> None:
    chain, rings = setup
    with pytest.raises(InputError) as e:
        sign_key_revocation(_statement(chain, kind, 3), rings[2].identity_signer(), chain)
    assert e.value.code == "input.current_key"
    assert "Rotate first" in str(e.value.next_step)


@pytest.mark.threat("P06")
def test_p06_a_forged_key_revocation_is_refused(setup: Setup) -> None:
    chain, rings = setup
    stranger = generate_keyring("pk-moi", "pk-moi.accord/log", "127.0.0.1", NOW)
    data = _statement(chain, "log").to_bytes()
    forged = SignedRevocation(
        data, stranger.identity_signer().sign(signed_message(Purpose.KEY_REVOCATION, data))
    )
    with pytest.raises(PeerDataError) as e:
        verify_key_revocation(forged, chain)
    assert e.value.code == "peer.key_revocation_invalid"
    # an identity-revocation signature over the same bytes is another purpose
    replayed = SignedRevocation(
        data, rings[2].identity_signer().sign(signed_message(Purpose.REVOCATION, data))
    )
    with pytest.raises(PeerDataError):
        verify_key_revocation(replayed, chain)
    good = sign_key_revocation(_statement(chain, "witness"), rings[2].identity_signer(), chain)
    with pytest.raises(PeerDataError):  # one bad statement: none is used
        verify_all([good, forged], chain)


def test_statements_are_strict(setup: Setup) -> None:
    chain, rings = setup
    for bad in (
        {"kind": "identity"},
        {"node": "ir-mfa"},
        {"key": "pk-moi.accord/log+00000000+AQ=="},
        {"reason": "bored"},
        {"revoked_from": "yesterday"},
    ):
        statement = replace(_statement(chain, "log"), **bad)
        data = statement.to_bytes()
        signed = SignedRevocation(
            data, rings[2].identity_signer().sign(signed_message(Purpose.KEY_REVOCATION, data))
        )
        with pytest.raises(PeerDataError):
            verify_key_revocation(signed, chain)
    with pytest.raises(PeerDataError):
        parse_key_revocation_unverified(b'{"type":"accord.revocation/v1"}')


def test_operators_name_keys_by_label_or_key_id(setup: Setup) -> None:
    chain, _rings = setup
    log = card_key(chain.cards[0], "log")
    name, kid, _ = log.split("+", 2)
    assert matches(log, kid) and matches(log, f"{name}+{kid}") and not matches(log, "ab")
    tls = card_key(chain.cards[0], "tls")
    assert matches(tls, tls[len("sha256:") :]) and not matches(tls, "")
