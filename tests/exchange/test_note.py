"""C2SP signed notes and verifier keys: third-party vectors and the spec's rules."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
from nacl.signing import SigningKey

from exchange.errors import InputError, PeerDataError
from exchange.note import (
    SIG_COSIGNATURE_V1,
    SIG_ED25519,
    NoteSignature,
    VerifierKey,
    key_id,
    open_note,
    parse_note_unverified,
    parse_signature_line_unverified,
    parse_verifier_key,
    sign_note,
    verifier_key,
)

VECTORS = Path(__file__).resolve().parents[1] / "vectors"
NOTES = json.loads((VECTORS / "signed_note.json").read_text(encoding="utf-8"))
VALID = NOTES["valid"]
PETER = VALID[1]
TWO = VALID[2]
PETER_VKEY = PETER["vkey"]
ENOCH_VKEY = TWO["vkeys"][1]
PETER_LINE = NOTES["peter_sig_line"]


class SeedSigner:
    """Test-only Signer over a raw Ed25519 seed (production signers live in keys/)."""

    def __init__(self, seed: bytes) -> None:
        self._key = SigningKey(seed)

    @property
    def public_key(self) -> bytes:
        return bytes(self._key.verify_key)

    def sign(self, message: bytes) -> bytes:
        return self._key.sign(message).signature


def go_skey_seed(skey: str) -> bytes:
    """The seed in a Go note private key ``PRIVATE+KEY+<name>+<id>+base64(0x01||seed)``."""
    raw = base64.b64decode(skey.split("+", 4)[4])
    assert raw[0] == SIG_ED25519
    return raw[1:]


PETER_SIGNER = SeedSigner(go_skey_seed(PETER["skey"]))
ENOCH_SIGNER = SeedSigner(bytes(32))


def vkeys_of(vector: dict[str, Any]) -> list[VerifierKey]:
    if "vkeys" in vector:
        return [parse_verifier_key(v) for v in vector["vkeys"]]
    if "vkey" in vector:
        return [parse_verifier_key(vector["vkey"])]
    name = vector["expected"]["verified_by"][0]
    signer = SeedSigner(bytes.fromhex(vector["ed25519_seed_hex"]))
    return [verifier_key(name, signer.public_key)]


def note_with_lines(lines: list[str]) -> bytes:
    text: str = PETER["note_text"]
    return (text + "\n" + "".join(line + "\n" for line in lines)).encode()


# ---------------------------------------------------------------------------- valid vectors


@pytest.mark.parametrize("vector", VALID, ids=[v["name"] for v in VALID])
def test_valid_notes_open(vector: dict[str, Any]) -> None:
    opened = open_note(vector["signed_note"].encode(), vkeys_of(vector))
    assert opened.text == vector["note_text"]
    expected = vector["expected"]
    want = expected["with_both"]["verified"] if "with_both" in expected else expected["verified_by"]
    assert list(opened.signed_by) == want
    assert opened.unverified_signatures == ()


def test_signing_reproduces_peter_neumanns_note_byte_for_byte() -> None:
    signed = sign_note(PETER["note_text"], "PeterNeumann", PETER_SIGNER)
    assert signed == PETER["signed_note"].encode()
    key = verifier_key("PeterNeumann", PETER_SIGNER.public_key)
    assert key.encode() == PETER_VKEY
    assert key.key_id.hex() == PETER["expected"]["key_hash_hex"]


def test_signing_reproduces_enoch_root_line_from_the_all_zero_seed() -> None:
    signed = sign_note(TWO["note_text"], "EnochRoot", ENOCH_SIGNER)
    assert signed.decode().endswith("\n" + NOTES["enoch_sig_line"] + "\n")
    assert verifier_key("EnochRoot", ENOCH_SIGNER.public_key).encode() == ENOCH_VKEY


def test_signing_reproduces_the_sigsum_checkpoint_note() -> None:
    vector = VALID[4]
    signer = SeedSigner(bytes.fromhex(vector["ed25519_seed_hex"]))
    name = vector["expected"]["verified_by"][0]
    assert sign_note(vector["note_text"], name, signer) == vector["signed_note"].encode()


def test_two_signatures_with_only_peter_known() -> None:
    opened = open_note(TWO["signed_note"].encode(), [parse_verifier_key(PETER_VKEY)])
    assert list(opened.signed_by) == TWO["expected"]["with_only_peter"]["verified"]
    unverified = [s.name for s in opened.unverified_signatures]
    assert unverified == TWO["expected"]["with_only_peter"]["unverified"]


def test_two_signatures_with_no_known_key_is_rejected() -> None:
    stranger = parse_verifier_key(VALID[0]["vkey"])
    with pytest.raises(PeerDataError, match="no verifiable signatures"):
        open_note(TWO["signed_note"].encode(), [stranger])


@pytest.mark.parametrize("vector", VALID[:4], ids=[v["name"] for v in VALID[:4]])
def test_verifier_keys_round_trip(vector: dict[str, Any]) -> None:
    for vkey in vector.get("vkeys", [vector.get("vkey")]):
        key = parse_verifier_key(vkey)
        assert key.encode() == vkey
        assert key.sig_type == SIG_ED25519
        assert key.key_id == key_id(key.name, SIG_ED25519, key.public_key)


# ---------------------------------------------------------------------------- invalid vectors


def _malformed_bytes(case: dict[str, Any]) -> bytes:
    if "signed_note_hex" in case:
        return bytes.fromhex(case["signed_note_hex"])
    if "signed_note" in case:
        return str(case["signed_note"]).encode()
    assert case["construct"] == "note_text + '\\n' + (peter_sig_line + '\\n') * 101"
    return note_with_lines([PETER_LINE] * 101)


MALFORMED = NOTES["invalid_must_reject_as_malformed"]


@pytest.mark.parametrize("case", MALFORMED, ids=[c["desc"] for c in MALFORMED])
def test_malformed_notes_are_rejected(case: dict[str, Any]) -> None:
    keys = [parse_verifier_key(v) for v in case["verifier_vkeys"]]
    with pytest.raises(PeerDataError, match="malformed note"):
        open_note(_malformed_bytes(case), keys)


@pytest.mark.parametrize("case", NOTES["invalid_signature"], ids=lambda c: c["desc"][:40])
def test_known_key_with_a_bad_signature_rejects_the_note(case: dict[str, Any]) -> None:
    keys = [parse_verifier_key(v) for v in case["verifier_vkeys"]]
    with pytest.raises(PeerDataError, match=r"PeterNeumann\+c74f20a3"):
        open_note(case["signed_note"].encode(), keys)


@pytest.mark.parametrize("case", NOTES["invalid_vkeys"], ids=lambda c: c["desc"])
def test_bad_verifier_keys_are_rejected(case: dict[str, Any]) -> None:
    with pytest.raises(PeerDataError, match="verifier key"):
        parse_verifier_key(case["vkey"])


# ---------------------------------------------------------------------------- format-only vectors


def test_text_is_split_at_the_last_blank_line() -> None:
    parsed = parse_note_unverified(NOTES["format_only"][0]["signed_note"].encode())
    assert parsed.text == (
        "Ognuno sta solo sul cuor della terra\ntrafitto da un raggio di sole:\n"
        "\ned è subito sera.\n"
    )
    assert [s.name for s in parsed.signatures] == ["quasimodo.example/salvatore"]


@pytest.mark.parametrize(
    ("index", "name", "key_id_hex"),
    [(1, "example.com/behind-the-sofa", "033de0ae"), (2, "example.org/log", "0c400304")],
    ids=["c2sp-checkpoint", "sigsum-dummy"],
)
def test_format_only_signature_lines_parse(index: int, name: str, key_id_hex: str) -> None:
    vector = NOTES["format_only"][index]
    parsed = parse_note_unverified(vector["signed_note"].encode())
    (sig,) = parsed.signatures
    assert (sig.name, sig.key_id.hex(), len(sig.signature)) == (name, key_id_hex, 64)
    assert vector["signed_note"].endswith("\n" + sig.line + "\n")


# ---------------------------------------------------------------------------- the spec's rules


def stranger_line(name: str, kid: bytes) -> str:
    return NoteSignature(name, kid, bytes(64)).line


def test_sixteen_and_a_hundred_signature_lines_are_accepted() -> None:
    peter = parse_verifier_key(PETER_VKEY)
    for total in (16, 100):
        others = [
            stranger_line(f"witness{i}.example", b"\x00\x00\x00\x01") for i in range(total - 1)
        ]
        opened = open_note(note_with_lines([PETER_LINE, *others]), [peter])
        assert opened.signed_by == ("PeterNeumann",)
        assert len(opened.unverified_signatures) == total - 1


@pytest.mark.parametrize(
    "line",
    [
        stranger_line("PeterNeumann", b"\x00\x00\x00\x00"),
        stranger_line("PeterNeumann2", bytes.fromhex("c74f20a3")),
    ],
    ids=["same-name-other-key-id", "same-key-id-other-name"],
)
def test_lines_matching_name_or_key_id_but_not_both_are_ignored(line: str) -> None:
    opened = open_note(note_with_lines([line, PETER_LINE]), [parse_verifier_key(PETER_VKEY)])
    assert opened.signed_by == ("PeterNeumann",)
    assert [s.line for s in opened.unverified_signatures] == [line]


def test_a_failing_known_line_rejects_the_note_even_beside_a_good_one() -> None:
    forged = stranger_line("PeterNeumann", bytes.fromhex("c74f20a3"))
    with pytest.raises(PeerDataError, match="does not verify"):
        open_note(note_with_lines([PETER_LINE, forged]), [parse_verifier_key(PETER_VKEY)])


def test_repeated_identical_lines_are_reported_once() -> None:
    enoch = NOTES["enoch_sig_line"]
    opened = open_note(
        note_with_lines([PETER_LINE, PETER_LINE, enoch, enoch]), [parse_verifier_key(PETER_VKEY)]
    )
    assert len(opened.signatures) == 1
    assert len(opened.unverified_signatures) == 1


@pytest.mark.parametrize(
    ("note", "message"),
    [
        (note_with_lines(["— Bad Name " + PETER_LINE.split(" ")[2]]), "base64"),
        (note_with_lines(["— Bad\u00a0Name " + PETER_LINE.split(" ")[2]]), "key name"),
        (note_with_lines(["— PeterNeumann"]), "no signature"),
        (note_with_lines(["— PeterNeumann AAAA"]), "shorter than a key id"),
        (note_with_lines(["— PeterNeumann x08go/Z!"]), "base64"),
        (note_with_lines([PETER_LINE.replace("nAM=", "nAN=")]), "canonical"),
        (note_with_lines(["-- PeterNeumann " + PETER_LINE.split(" ")[2]]), "does not start"),
        (PETER["signed_note"].replace("your problem,", "your\tproblem,").encode(), "control"),
        (PETER["signed_note"].encode() + b" " * 70_000, "exceeds the limit"),
    ],
    ids=[
        "space-in-name",
        "nbsp-in-name",
        "no-signature",
        "short-signature",
        "bad-base64",
        "non-canonical-base64",
        "ascii-dashes",
        "tab-in-text",
        "too-big",
    ],
)
def test_more_malformed_notes(note: bytes, message: str) -> None:
    with pytest.raises(PeerDataError, match=message):
        open_note(note, [parse_verifier_key(PETER_VKEY)])


def test_open_note_refuses_no_keys_and_cosignature_keys() -> None:
    note = PETER["signed_note"].encode()
    with pytest.raises(InputError, match="no verifier keys"):
        open_note(note, [])
    witness = verifier_key("PeterNeumann", PETER_SIGNER.public_key, SIG_COSIGNATURE_V1)
    with pytest.raises(InputError, match="signature type 0x01"):
        open_note(note, [witness])


def test_open_note_refuses_two_keys_with_one_name_and_id() -> None:
    peter = parse_verifier_key(PETER_VKEY)
    impostor = VerifierKey(peter.name, peter.key_id, SIG_ED25519, bytes(32))
    with pytest.raises(InputError, match="two different verifier keys"):
        open_note(PETER["signed_note"].encode(), [peter, impostor])


@pytest.mark.parametrize(
    ("text", "name", "message"),
    [
        ("no final newline", "PeterNeumann", "ending with a newline"),
        ("bell \x07\n", "PeterNeumann", "control character"),
        ("lone surrogate \ud800\n", "PeterNeumann", "UTF-8"),
        ("fine\n", "Peter Neumann", "key name"),
        ("fine\n", "Peter+Neumann", "key name"),
        ("fine\n", "", "key name"),
    ],
    ids=["no-newline", "control-char", "surrogate", "space-in-name", "plus-in-name", "empty-name"],
)
def test_sign_note_refuses_bad_text_or_name(text: str, name: str, message: str) -> None:
    with pytest.raises(InputError, match=message):
        sign_note(text, name, PETER_SIGNER)


def test_text_with_blank_lines_round_trips() -> None:
    text = "first\n\nthird after a blank line\n\n"
    key = verifier_key("example.com/k", ENOCH_SIGNER.public_key)
    opened = open_note(sign_note(text, "example.com/k", ENOCH_SIGNER), [key])
    assert opened.text == text


@pytest.mark.parametrize(
    ("vkey", "message"),
    [
        ("PeterNeumann+c74f20a3", "form"),
        ("PeterNeumann+C74F20A3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW", "lowercase hex"),
        ("PeterNeumann+c74f20a4+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW", "does not match"),
        ("Peter Neumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW", "key name"),
        ("PeterNeumann+c74f20a3+", "not supported"),
    ],
    ids=["two-parts", "uppercase-id", "wrong-id", "space-in-name", "empty-key"],
)
def test_more_bad_verifier_keys(vkey: str, message: str) -> None:
    with pytest.raises(PeerDataError, match=message):
        parse_verifier_key(vkey)


def test_signature_line_parses_plus_inside_base64() -> None:
    sig = parse_signature_line_unverified(NOTES["enoch_sig_line"])
    assert (sig.name, sig.key_id.hex()) == ("EnochRoot", "af0cfe78")
    assert sig.line == NOTES["enoch_sig_line"]


def test_verifier_key_with_a_lone_surrogate_in_its_name_is_refused() -> None:
    """Found by make fuzz: a name holding a lone surrogate (as a JSON "\\ud800" escape
    produces) crashed key id computation instead of being refused."""
    from exchange.errors import PeerDataError
    from exchange.note import parse_verifier_key

    with pytest.raises(PeerDataError, match="not valid Unicode"):
        parse_verifier_key("log\ud800+00000000+AQ" + "A" * 42 + "=")
