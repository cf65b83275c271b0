"""The fuzz harnesses of ``make fuzz`` under hypothesis: random and mutated inputs to every
parser and verifier may only raise AccordError. Bounded here; atheris goes deeper."""

from __future__ import annotations

import base64
import contextlib
import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exchange.canonical import canonical_json
from exchange.card import SignedCard, chain_bytes
from exchange.errors import AccordError
from exchange.purpose import Purpose, signed_message
from fuzz.harnesses import TARGETS
from fuzz.seeds import _Signer, seeds

SEEDS = seeds()


def _run(name: str, data: bytes) -> None:
    with contextlib.suppress(AccordError):
        TARGETS[name](data)


@st.composite
def mutated(draw: st.DrawFn, name: str) -> bytes:
    corpus = SEEDS.get(name)
    if not corpus or draw(st.booleans()):
        return draw(st.binary(max_size=2048))
    data = bytearray(draw(st.sampled_from(corpus)))
    for _ in range(draw(st.integers(1, 8))):
        if not data:
            break
        i = draw(st.integers(0, len(data) - 1))
        op = draw(st.sampled_from(["flip", "delete", "insert", "truncate"]))
        if op == "flip":
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "delete":
            del data[i]
        elif op == "insert":
            data[i:i] = draw(st.binary(min_size=1, max_size=8))
        else:
            del data[i:]
    return bytes(data)


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_harness_accepts_its_valid_seeds_or_refuses_cleanly(name: str) -> None:
    for data in SEEDS.get(name, [b""]):
        _run(name, data)


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_harness_never_raises_anything_but_accord_errors(name: str) -> None:
    @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(data=mutated(name))
    def check(data: bytes) -> None:
        _run(name, data)

    check()


# ---- type confusion: every JSON value of every seed replaced by every JSON type ----------

JSON_VALUES: list[object] = [0, -1, 2**70, 1.5, None, True, [], [1], {}, {"a": 1}, "", "AAAA"]


def _paths(doc: object, prefix: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    out: list[tuple[object, ...]] = []
    items = (
        doc.items() if isinstance(doc, dict) else enumerate(doc) if isinstance(doc, list) else []
    )
    for key, value in items:
        out.append((*prefix, key))
        out.extend(_paths(value, (*prefix, key)))
    return out


def _replaced(doc: object, path: tuple[object, ...], value: object) -> object:
    copy = json.loads(json.dumps(doc))
    target = copy
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return copy


def _encode(doc: object) -> bytes:
    """Canonical where it can be (so the parsers get past their canonical-form check)."""
    try:
        return canonical_json(doc)
    except AccordError:
        return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def _json_variants(data: bytes) -> list[bytes]:
    """``data`` with each JSON value swapped for each JSON type: whole documents, each
    line of a JSON-lines bundle, and the statement of a ``statement NUL signature`` pair."""
    out: list[bytes] = []
    statement, nul, signature = data.partition(b"\x00")
    lines = statement.split(b"\n")
    for n, line in enumerate(lines):
        try:
            doc = json.loads(line)
        except ValueError:
            continue
        for path in _paths(doc):
            for value in JSON_VALUES:
                new = _encode(_replaced(doc, path, value))
                out.append(b"\n".join([*lines[:n], new, *lines[n + 1 :]]) + nul + signature)
    return out


def _card_variants(chain: bytes) -> list[bytes]:
    """The card inside a chain, each value swapped, re-signed by the seed key so parsing
    gets as far as it can."""
    signer = _Signer()
    card = json.loads(base64.b64decode(json.loads(chain)["cards"][0]["card"]))
    out = []
    for path in _paths(card):
        for value in JSON_VALUES:
            data = _encode(_replaced(card, path, value))
            signature = signer.sign(signed_message(Purpose.CARD, data))
            out.append(chain_bytes([SignedCard(data, signature, None)]))
    return out


JSON_SEEDS = (
    "bundle",
    "card_chain",
    "envelope_header",
    "event",
    "report",
    "retraction",
    "revocation",
)


def test_the_json_seeds_are_the_json_formats() -> None:
    text_formats = {"checkpoint", "note", "policy", "sd_jwt"}  # notes, TOML, compact JWS
    assert set(JSON_SEEDS) == set(SEEDS) - text_formats


@pytest.mark.parametrize("name", JSON_SEEDS)
def test_no_json_type_in_any_field_crashes_a_parser(name: str) -> None:
    """A number, null, list or object where a string belongs (and so on) is refused as
    bad input, never an AttributeError or an unhashable TypeError (found: a bundle line
    with a number for base64, an event whose kind is a list, a card whose suite is a list)."""
    variants = [v for seed in SEEDS[name] for v in _json_variants(seed)]
    if name == "card_chain":
        variants += _card_variants(SEEDS[name][0])
    assert variants
    for data in variants:
        _run(name, data)


# ---- inputs that crashed a harness once (make fuzz saves them under fuzz/crashes/) --------

REGRESSIONS = sorted((Path(__file__).parent / "fuzz_regressions").glob("*"))


@pytest.mark.parametrize("path", REGRESSIONS, ids=[p.name for p in REGRESSIONS])
def test_inputs_that_once_crashed_a_harness(path: Path) -> None:
    """File name: ``<target>-<what>``. The input must now be refused cleanly (or pass)."""
    target = next(t for t in sorted(TARGETS, key=len, reverse=True) if path.name.startswith(t))
    _run(target, path.read_bytes())


def test_the_bundle_seed_verifies_under_the_harness_anchors() -> None:
    """The anchored verifier refuses a bundle that does not chain to its anchors; the seed
    must chain to the harness's, or the fuzzer would never get past that check to the
    cosignatures, the due rule and the entries."""
    from exchange.audit import audit_bundle
    from fuzz.harnesses import BUNDLE_ANCHORS

    report = audit_bundle(SEEDS["bundle"][0].splitlines(), anchors=BUNDLE_ANCHORS)
    assert report.ok, report.findings
    assert report.entries == 3 and report.partners["cn-mps"].largest_cosigned == 2
