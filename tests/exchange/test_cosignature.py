"""tlog-checkpoint and tlog-cosignature/v1: third-party vectors and strict parsing."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
from nacl.signing import SigningKey

from exchange.checkpoint import (
    Checkpoint,
    log_origin,
    open_checkpoint,
    parse_checkpoint_unverified,
    sign_checkpoint,
)
from exchange.cosignature import (
    Cosignature,
    cosign_checkpoint,
    cosigned_message,
    parse_cosignature_unverified,
    verify_cosignature,
    verify_cosignatures,
)
from exchange.errors import InputError, PeerDataError
from exchange.merkle import MemoryTree, consistency_proof, verify_consistency
from exchange.note import (
    SIG_COSIGNATURE_V1,
    SIG_ED25519,
    key_id,
    parse_note_unverified,
    parse_signature_line_unverified,
    parse_verifier_key,
    verifier_key,
)

VECTORS = Path(__file__).resolve().parents[1] / "vectors"
COSIG = json.loads((VECTORS / "cosignature.json").read_text(encoding="utf-8"))
NOTES = json.loads((VECTORS / "signed_note.json").read_text(encoding="utf-8"))
VECTOR = COSIG["valid"][0]
CHECKPOINT_TEXT: str = VECTOR["checkpoint_text"]
WITNESS_NAME: str = VECTOR["witness_name"]
GOOD_LINE: str = VECTOR["cosignature_line"]


class SeedSigner:
    """Test-only Signer over a raw Ed25519 seed (production signers live in keys/)."""

    def __init__(self, seed: bytes) -> None:
        self._key = SigningKey(seed)

    @property
    def public_key(self) -> bytes:
        return bytes(self._key.verify_key)

    def sign(self, message: bytes) -> bytes:
        return self._key.sign(message).signature


WITNESS_SIGNER = SeedSigner(bytes.fromhex(VECTOR["ed25519_seed_hex"]))
WITNESS = verifier_key(WITNESS_NAME, WITNESS_SIGNER.public_key, SIG_COSIGNATURE_V1)
LOG_SIGNER = SeedSigner(b"\x42" * 32)
OTHER_WITNESS_SIGNER = SeedSigner(b"\x07" * 32)


# ---------------------------------------------------------------------------- cosignature vector


def test_cosigning_reproduces_the_sigsum_vector() -> None:
    assert cosigned_message(CHECKPOINT_TEXT, 1234) == VECTOR["signed_message"].encode()
    cosig = cosign_checkpoint(CHECKPOINT_TEXT, WITNESS_NAME, WITNESS_SIGNER, VECTOR["timestamp"])
    assert cosig.line == GOOD_LINE
    assert WITNESS.key_id == key_id(WITNESS_NAME, 0x04, WITNESS_SIGNER.public_key)
    assert WITNESS.key_id.hex() == "cacf2e50"


def test_the_sigsum_vector_verifies() -> None:
    verified = verify_cosignature(CHECKPOINT_TEXT, GOOD_LINE, WITNESS)
    assert (verified.timestamp, verified.checkpoint_text) == (1234, CHECKPOINT_TEXT)
    assert verified.witness == WITNESS


def _timestamp_plus_one(line: str) -> str:
    sig = parse_cosignature_unverified(parse_signature_line_unverified(line))
    return Cosignature(sig.name, sig.key_id, sig.timestamp + 1, sig.signature).line


NEGATIVE = [
    (case.get("line") or _timestamp_plus_one(GOOD_LINE), case["why"])
    for case in VECTOR["negative_lines"]
]


@pytest.mark.parametrize(
    ("line", "why"),
    NEGATIVE,
    ids=["other-key-id", "other-name", "blob-78-bytes", "timestamp-plus-one"],
)
def test_negative_cosignature_lines_are_rejected(line: str, why: str) -> None:
    with pytest.raises(PeerDataError, match=r"witness|76"):
        verify_cosignature(CHECKPOINT_TEXT, line, WITNESS)


def test_negative_lines_in_a_note_are_ignored_or_reject_as_documented() -> None:
    dummy_note = NOTES["format_only"][2]["signed_note"]  # example.org/log, dummy signature
    assert dummy_note.startswith(CHECKPOINT_TEXT + "\n")
    other_id, other_name, long_blob, _ = (line for line, _ in NEGATIVE)
    ignored = (dummy_note + other_id + "\n" + other_name + "\n" + GOOD_LINE + "\n").encode()
    (verified,) = verify_cosignatures(ignored, [WITNESS])
    assert verified.timestamp == 1234
    # Policy (module docstring): a known witness's malformed blob rejects, unlike sigsum-go.
    with pytest.raises(PeerDataError, match="76"):
        verify_cosignatures((dummy_note + long_blob + "\n").encode(), [WITNESS])
    with pytest.raises(PeerDataError, match="no cosignature"):
        verify_cosignatures((dummy_note + other_name + "\n").encode(), [WITNESS])


def test_a_bad_line_from_a_known_witness_rejects_even_beside_a_good_one() -> None:
    dummy_note = NOTES["format_only"][2]["signed_note"]
    bad = NEGATIVE[3][0]
    with pytest.raises(PeerDataError, match="does not verify"):
        verify_cosignatures((dummy_note + GOOD_LINE + "\n" + bad + "\n").encode(), [WITNESS])


# ---------------------------------------------------------------------------- format-only vectors


def test_spec_example_cosignature_framing() -> None:
    vector = COSIG["format_only"][0]
    parsed = parse_note_unverified(vector["cosigned_checkpoint"].encode())
    cosig = parse_cosignature_unverified(parsed.signatures[1])
    expected = vector["witness_line_expected"]
    assert (cosig.key_id.hex(), cosig.timestamp) == (expected["key_id_hex"], expected["timestamp"])
    assert 4 + 8 + len(cosig.signature) == expected["blob_len"]
    assert cosig.line == parsed.signatures[1].line
    message = cosigned_message(parsed.text, cosig.timestamp)
    assert message == vector["signed_message_example"].encode()


def test_transparency_dev_timestamp_framing() -> None:
    vector = COSIG["format_only"][1]
    sig = parse_signature_line_unverified("— any.example/w " + vector["signature_b64"])
    assert parse_cosignature_unverified(sig).timestamp == vector["expected_timestamp"]


def test_real_type_04_witness_key_parses() -> None:
    vkey = COSIG["format_only"][2]["vkey"]
    key = parse_verifier_key(vkey)
    assert key.sig_type == SIG_COSIGNATURE_V1
    assert key.key_id == key_id(key.name, SIG_COSIGNATURE_V1, key.public_key)
    assert key.encode() == vkey


def test_witness_protocol_example_carries_a_parseable_checkpoint() -> None:
    body = COSIG["witness_protocol_example"]["add_checkpoint_request_body"]
    lines = [line.removeprefix("    ") for line in body.split("\n")]
    text = "\n".join(lines)
    head, note = text.split("\n\n", 1)
    old_line, *proof_b64 = head.split("\n")
    assert old_line == "old 20852014"
    assert all(len(base64.b64decode(p, validate=True)) == 32 for p in proof_b64)
    parsed = parse_note_unverified(note.encode())
    checkpoint = parse_checkpoint_unverified(parsed.text)
    assert (checkpoint.origin, checkpoint.size) == ("example.com/behind-the-sofa", 20852163)


# ---------------------------------------------------------------------------- cosigning rules


@pytest.mark.parametrize("timestamp", [-1, 2**63, True], ids=["negative", "2**63", "bool"])
def test_cosign_refuses_timestamps_out_of_range(timestamp: int) -> None:
    with pytest.raises(InputError, match="timestamp"):
        cosign_checkpoint(CHECKPOINT_TEXT, WITNESS_NAME, WITNESS_SIGNER, timestamp)


def test_cosign_accepts_the_largest_timestamp() -> None:
    cosig = cosign_checkpoint(CHECKPOINT_TEXT, WITNESS_NAME, WITNESS_SIGNER, 2**63 - 1)
    assert verify_cosignature(CHECKPOINT_TEXT, cosig.line, WITNESS).timestamp == 2**63 - 1


def test_a_timestamp_beyond_2_63_is_rejected_when_parsed() -> None:
    sig = parse_signature_line_unverified(GOOD_LINE)
    big = (2**63).to_bytes(8, "big") + sig.signature[8:]
    forged = type(sig)(sig.name, sig.key_id, big)
    with pytest.raises(PeerDataError, match="timestamp"):
        parse_cosignature_unverified(forged)


def test_cosign_refuses_text_that_is_not_a_checkpoint() -> None:
    with pytest.raises(PeerDataError, match="checkpoint"):
        cosign_checkpoint("hello\n", WITNESS_NAME, WITNESS_SIGNER, 1)


def test_cosignature_verifiers_refuse_a_plain_note_key() -> None:
    note_key = verifier_key(WITNESS_NAME, WITNESS_SIGNER.public_key, SIG_ED25519)
    with pytest.raises(InputError, match="signature type 0x04"):
        verify_cosignature(CHECKPOINT_TEXT, GOOD_LINE, note_key)
    with pytest.raises(InputError, match="no verifier keys"):
        verify_cosignatures(b"", [])


def test_a_cosignature_does_not_verify_over_another_checkpoint() -> None:
    other = CHECKPOINT_TEXT.replace("\n10\n", "\n11\n")
    with pytest.raises(PeerDataError, match="does not verify"):
        verify_cosignature(other, GOOD_LINE, WITNESS)


# ---------------------------------------------------------------------------- checkpoints


def test_sum_golang_org_checkpoint_opens_with_a_key_name_unlike_its_origin() -> None:
    vector = NOTES["valid"][3]
    verified = open_checkpoint(
        vector["signed_note"].encode(),
        [parse_verifier_key(vector["vkey"])],
        origin=vector["expected"]["origin"],
    )
    assert verified.checkpoint.size == vector["expected"]["tree_size"]
    assert verified.checkpoint.text() == verified.text == vector["note_text"]
    with pytest.raises(PeerDataError, match="origin"):
        open_checkpoint(
            vector["signed_note"].encode(),
            [parse_verifier_key(vector["vkey"])],
            origin="sum.golang.org",
        )


def test_sigsum_checkpoint_opens() -> None:
    vector = NOTES["valid"][4]
    signer = SeedSigner(bytes.fromhex(vector["ed25519_seed_hex"]))
    name = vector["expected"]["verified_by"][0]
    verified = open_checkpoint(
        vector["signed_note"].encode(), [verifier_key(name, signer.public_key)], origin=name
    )
    assert verified.checkpoint.size == 10
    assert verified.checkpoint.root_hash == bytes([0x1C, 0x0E, 0x47]) + bytes(29)


ROOT_B64 = "HA5HAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (f"o\n10\n{ROOT_B64}", "end with a newline"),
        (f"o\n10\n{ROOT_B64}\n\n", "non-empty"),
        ("o\n10\n", "origin, size and root"),
        (f"\n10\n{ROOT_B64}\n", "origin"),
        (f"o\n010\n{ROOT_B64}\n", "leading 0"),
        (f"o\n+10\n{ROOT_B64}\n", "decimal"),
        (f"o\n1 0\n{ROOT_B64}\n", "decimal"),
        (f"o\n{2**64}\n{ROOT_B64}\n", "2\\*\\*64-1"),
        (f"o\n\u0661\u0660\n{ROOT_B64}\n", "decimal"),
        ("o\n10\nHA5HAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA==\n", "32 bytes"),
        ("o\n10\nHA5HAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAB=\n", "canonical"),
        (f"o\n10\n{ROOT_B64.replace('=', '')}\n", "32 bytes"),
        (f"o\n10\n{ROOT_B64}\next\n\n", "extension"),
        (f"o\n10\n{ROOT_B64}\nbad\x01ext\n", "control"),
    ],
    ids=[
        "no-final-newline",
        "empty-extension-at-end",
        "two-lines",
        "empty-origin",
        "leading-zero",
        "plus-sign",
        "space-in-size",
        "size-2**64",
        "arabic-digits",
        "31-byte-root",
        "non-canonical-root",
        "unpadded-root",
        "empty-extension",
        "control-char",
    ],
)
def test_checkpoint_parsing_is_strict(text: str, message: str) -> None:
    with pytest.raises(PeerDataError, match=message):
        parse_checkpoint_unverified(text)


@pytest.mark.parametrize(
    "text",
    [
        f"o\n0\n{ROOT_B64}\n",
        f"go.sum database tree\n{2**64 - 1}\n{ROOT_B64}\n",
        f"example.com/log\n10\n{ROOT_B64}\nextension one\nextension two\n",
    ],
    ids=["size-zero", "max-size-and-spaces-in-origin", "extensions"],
)
def test_checkpoint_parse_and_format_round_trip(text: str) -> None:
    assert parse_checkpoint_unverified(text).text() == text


@pytest.mark.parametrize(
    "kwargs",
    [
        {"origin": ""},
        {"origin": "a\nb"},
        {"size": -1},
        {"size": 2**64},
        {"root_hash": b"\x00" * 31},
        {"extensions": ("",)},
        {"extensions": ["list"]},
    ],
    ids=[
        "empty-origin",
        "newline-origin",
        "negative",
        "too-big",
        "short-root",
        "empty-ext",
        "list-ext",
    ],
)
def test_checkpoint_construction_is_checked(kwargs: dict[str, Any]) -> None:
    fields: dict[str, Any] = {"origin": "o", "size": 1, "root_hash": bytes(32)} | kwargs
    with pytest.raises(InputError, match="checkpoint"):
        Checkpoint(**fields)


def test_log_origin_is_node_id_dot_accord_slash_log() -> None:
    assert log_origin("pk-moi") == "pk-moi.accord/log"
    with pytest.raises(InputError, match="node id"):
        log_origin("Not A Node")


# ---------------------------------------------------------------------------- end to end


def test_log_signs_witness_checks_consistency_and_cosigns_auditor_verifies() -> None:
    origin = log_origin("pk-moi")
    log_key = verifier_key(origin, LOG_SIGNER.public_key)
    witness_key = verifier_key("cn-mps.accord/witness", OTHER_WITNESS_SIGNER.public_key, 0x04)
    tree = MemoryTree()
    tree.extend([b"event %d" % i for i in range(5)])
    old = Checkpoint(origin, tree.size, tree.root())
    tree.extend([b"event %d" % i for i in range(5, 13)])
    new_note = sign_checkpoint(Checkpoint(origin, tree.size, tree.root()), origin, LOG_SIGNER)

    # The witness opens the log's note, checks consistency, then cosigns the exact text.
    seen = open_checkpoint(new_note, [log_key], origin=origin)
    proof = consistency_proof(old.size, seen.checkpoint.size, tree)
    verify_consistency(
        old.size, seen.checkpoint.size, old.root_hash, seen.checkpoint.root_hash, proof
    )
    cosig = cosign_checkpoint(seen.text, witness_key.name, OTHER_WITNESS_SIGNER, 1_700_000_000)
    cosigned = new_note + cosig.line.encode() + b"\n"

    # The auditor checks the log signature and the cosignature, each with its own key.
    again = open_checkpoint(cosigned, [log_key], origin=origin)
    assert [s.name for s in again.note.unverified_signatures] == ["cn-mps.accord/witness"]
    (verified,) = verify_cosignatures(cosigned, [witness_key, WITNESS])
    assert (verified.witness, verified.timestamp) == (witness_key, 1_700_000_000)
    assert verified.checkpoint_text == seen.text
