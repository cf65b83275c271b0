"""Offline audit of an exported exchange log: public keys only, every finding collected.

Bundle format (``accord.audit-bundle/v1``), JSON lines:

1. a header: ``{"type", "node", "origin", "cards": b64(card chain), "peers": {id:
   b64(card chain)}, "size", "checkpoints", "exported_at"}``;
2. one line per signed checkpoint, ascending: ``{"checkpoint": note text with its
   cosignature lines, "stored_root": b64}`` (``stored_root`` is the root the node's
   stored subtree hashes give at that size);
3. one line per log entry, in order: ``{"i": index, "event": b64(leaf bytes), "h":
   b64(stored leaf hash)}``.

The auditor rebuilds the tree from the event bytes and checks every checkpoint signature,
every cosignature from a partner's witness key, every root, and every event's shape and
self-declared index. An edited, deleted or inserted row shows up as a finding naming the
entry (or, when only roots disagree, the range of entries between two checkpoints).
"""

from __future__ import annotations

import hmac
import json
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from exchange.canonical import b64_decode
from exchange.card import VerifiedChain, verify_chain_bytes
from exchange.checkpoint import open_checkpoint, parse_checkpoint_unverified
from exchange.cosignature import verify_cosignatures
from exchange.errors import AccordError, InputError
from exchange.events import Event, parse_event_unverified
from exchange.merkle import CompactRange, leaf_hash
from exchange.note import VerifierKey, parse_note_unverified, parse_verifier_key

BUNDLE_TYPE = "accord.audit-bundle/v1"
MAX_LINE = 256 * 1024


@dataclass(frozen=True)
class Finding:
    index: int | None  # the log entry, when one can be named
    code: str
    message: str

    def to_json(self) -> dict[str, Any]:
        return {"index": self.index, "code": self.code, "message": self.message}


@dataclass
class AuditReport:
    node: str = ""
    origin: str = ""
    entries: int = 0
    checkpoints: int = 0
    cosigned_checkpoints: int = 0
    largest_checkpoint: int = 0
    kinds: Counter[str] = field(default_factory=Counter)
    findings: list[Finding] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.findings

    def add(self, index: int | None, code: str, message: str) -> None:
        self.findings.append(Finding(index, code, message))

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "node": self.node,
            "origin": self.origin,
            "entries": self.entries,
            "checkpoints": self.checkpoints,
            "cosigned_checkpoints": self.cosigned_checkpoints,
            "largest_checkpoint": self.largest_checkpoint,
            "kinds": dict(sorted(self.kinds.items())),
            "findings": [f.to_json() for f in self.findings],
        }


@dataclass(frozen=True)
class _Checkpoint:
    size: int
    root: bytes
    stored_root: bytes
    line: int


def _json_line(raw: bytes, what: str) -> dict[str, Any]:
    if len(raw) > MAX_LINE:
        raise InputError(f"{what}: line longer than {MAX_LINE} bytes")
    try:
        value = json.loads(raw)
    except ValueError as e:
        raise InputError(f"{what}: not JSON") from e
    if not isinstance(value, dict):
        raise InputError(f"{what}: not a JSON object")
    return value


def _chain(value: object, what: str) -> VerifiedChain:
    if not isinstance(value, str):
        raise InputError(f"{what}: card chain missing")
    return verify_chain_bytes(b64_decode(value, what=what))


def audit_bundle(
    lines: Iterable[bytes],
    *,
    since: tuple[int, bytes] | None = None,
    progress: Callable[[int], None] | None = None,
    on_event: Callable[[Event], None] | None = None,
) -> AuditReport:
    """Verify a bundle given as raw lines. ``since`` = (size, root) of a checkpoint the
    auditor verified before: the log must extend it. ``on_event`` sees every well-formed
    event (e.g. for reconciliation); trust them only if the report has no findings."""
    report = AuditReport()
    it = iter(lines)
    try:
        header = _json_line(next(it), "bundle header")
    except StopIteration:
        report.add(None, "bundle.empty", "the bundle is empty")
        return report
    except AccordError as e:
        report.add(None, "bundle.header", e.message)
        return report
    if header.get("type") != BUNDLE_TYPE:
        report.add(None, "bundle.header", f"not an {BUNDLE_TYPE} bundle")
        return report
    try:
        own = _chain(header.get("cards"), "bundle cards")
        peers = {str(k): _chain(v, f"bundle card of {k}") for k, v in dict(header["peers"]).items()}
        size = int(header["size"])
        n_checkpoints = int(header["checkpoints"])
        origin = str(header["origin"])
    except (AccordError, KeyError, TypeError, ValueError) as e:
        message = e.message if isinstance(e, AccordError) else f"header field missing ({e})"
        report.add(None, "bundle.header", message)
        return report
    report.node, report.origin = own.latest.node, origin
    log_keys = _log_keys(own, report)
    witnesses = _witness_keys(peers, report)

    checkpoints = _read_checkpoints(it, n_checkpoints, log_keys, witnesses, origin, report)
    pending = sorted(checkpoints, key=lambda c: c.size)
    tree = CompactRange()
    verified_upto = 0
    expected = 0
    for raw in it:
        if not raw.strip():
            continue
        try:
            line = _json_line(raw, f"entry {expected}")
            index = line["i"]
            event_data = b64_decode(line["event"], what=f"entry {expected} event")
            stored_hash = b64_decode(line["h"], what=f"entry {expected} hash")
        except (AccordError, KeyError, TypeError) as e:
            message = e.message if isinstance(e, AccordError) else f"entry {expected}: malformed"
            report.add(expected, "entry.malformed", message)
            tree.append(b"\x00" * 32)
            expected += 1
            continue
        if index != expected:
            report.add(expected, "entry.out_of_order", f"entry {expected}: row numbered {index}")
        computed = leaf_hash(event_data)
        if not hmac.compare_digest(computed, stored_hash):
            report.add(
                expected,
                "entry.edited",
                f"entry {expected}: event does not match its stored leaf hash",
            )
        try:
            event = parse_event_unverified(event_data)
            report.kinds[event.kind] += 1
            if on_event is not None:
                on_event(event)
            if event.index != expected:
                report.add(
                    expected,
                    "entry.moved",
                    f"entry {expected}: event records index {event.index} "
                    "(a row was deleted, inserted or moved)",
                )
        except AccordError as e:
            report.add(expected, "entry.bad_event", f"entry {expected}: {e.message}")
        tree.append(computed)
        expected += 1
        if since is not None and tree.size == since[0] and tree.root() != since[1]:
            report.add(
                expected - 1,
                "log.since",
                f"the log does not extend the checkpoint of size {since[0]}",
            )
        while pending and pending[0].size == tree.size:
            cp = pending.pop(0)
            if tree.root() != cp.root:
                report.add(
                    verified_upto,
                    "checkpoint.root",
                    f"checkpoint {cp.size}: signed root does not match entries {verified_upto}.."
                    f"{cp.size - 1}; an entry in that range was changed",
                )
            else:
                verified_upto = cp.size
            if tree.root() != cp.stored_root:
                report.add(
                    cp.size - 1,
                    "checkpoint.stored_root",
                    f"checkpoint {cp.size}: the node's stored subtree hashes give another root",
                )
        if progress is not None and expected % 10000 == 0:
            progress(expected)
    report.entries = expected
    if progress is not None:
        progress(expected)
    if expected != size:
        report.add(expected, "bundle.size", f"header says {size} entries, bundle has {expected}")
    for cp in pending:
        report.add(
            None, "checkpoint.beyond_log", f"checkpoint {cp.size} is beyond the {expected} entries"
        )
    if since is not None and since[0] > expected:
        report.add(None, "log.since", f"the log ({expected}) is smaller than checkpoint {since[0]}")
    return report


def _log_keys(own: VerifiedChain, report: AuditReport) -> list[VerifierKey]:
    keys: dict[str, VerifierKey] = {}
    for card in own.cards:
        try:
            key = parse_verifier_key(card.log_vkey)
            keys[key.encode()] = key
        except AccordError as e:
            report.add(None, "card.log_key", e.message)
    return list(keys.values())


def _witness_keys(peers: dict[str, VerifiedChain], report: AuditReport) -> list[VerifierKey]:
    keys: list[VerifierKey] = []
    for node, chain in sorted(peers.items()):
        try:
            keys.append(parse_verifier_key(chain.latest.witness_vkey))
        except AccordError as e:
            report.add(None, "card.witness_key", f"{node}: {e.message}")
    return keys


def _read_checkpoints(
    it: Any,
    count: int,
    log_keys: list[VerifierKey],
    witnesses: list[VerifierKey],
    origin: str,
    report: AuditReport,
) -> list[_Checkpoint]:
    out: list[_Checkpoint] = []
    previous: _Checkpoint | None = None
    for n in range(count):
        try:
            line = _json_line(next(it), f"checkpoint line {n}")
            note = str(line["checkpoint"]).encode("utf-8")
            stored_root = b64_decode(line["stored_root"], what=f"checkpoint line {n} stored_root")
        except StopIteration:
            report.add(None, "bundle.truncated", f"bundle ends after {n} of {count} checkpoints")
            break
        except (AccordError, KeyError, TypeError) as e:
            report.add(
                None, "checkpoint.malformed", f"checkpoint line {n}: malformed ({type(e).__name__})"
            )
            continue
        report.checkpoints += 1
        try:
            verified = open_checkpoint(note, log_keys, origin=origin)
        except AccordError as e:
            size_hint = _size_hint(note)
            report.add(None, "checkpoint.signature", f"checkpoint {size_hint}: {e.message}")
            continue
        cp = verified.checkpoint
        current = _Checkpoint(cp.size, cp.root_hash, stored_root, n)
        if previous is not None and cp.size <= previous.size:
            report.add(None, "checkpoint.order", f"checkpoint {cp.size} follows {previous.size}")
        previous = current
        report.largest_checkpoint = max(report.largest_checkpoint, cp.size)
        if witnesses and _has_foreign_lines(note, verified.note.signatures):
            try:
                verify_cosignatures(note, witnesses)
                report.cosigned_checkpoints += 1
            except AccordError as e:
                report.add(None, "checkpoint.cosignature", f"checkpoint {cp.size}: {e.message}")
        out.append(current)
    return out


def _has_foreign_lines(note: bytes, own: Iterable[object]) -> bool:
    return len(parse_note_unverified(note).signatures) > len(tuple(own))


def _size_hint(note: bytes) -> str:
    try:
        return str(parse_checkpoint_unverified(parse_note_unverified(note).text).size)
    except AccordError:
        return "?"


# ---------------------------------------------------------------------------- reconcile

RECONCILED_KINDS = frozenset(
    {"release.decided", "envelope.received", "envelope.rejected", "receipt.received"}
)


@dataclass
class ReconcileReport:
    matched: int = 0
    findings: list[Finding] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.findings

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "matched": self.matched,
            "findings": [f.to_json() for f in self.findings],
        }


def reconcile(
    node_a: str, events_a: Iterable[Event], node_b: str, events_b: Iterable[Event]
) -> ReconcileReport:
    """Match each side's releases with the other side's inbox events and receipts.

    Per direction X -> Y: every ``release.decided`` at X for Y needs an ``envelope.received``
    or ``envelope.rejected`` at Y for the same envelope id, and a ``receipt.received`` at X
    covering its seq; every ``envelope.received`` at Y needs X's ``release.decided``
    (THREATS.md H03). Indexes in findings are entries of the side named in the message."""
    report = ReconcileReport()
    a, b = list(events_a), list(events_b)
    _reconcile_direction(node_a, a, node_b, b, report)
    _reconcile_direction(node_b, b, node_a, a, report)
    return report


def _reconcile_direction(
    sender: str, sent: list[Event], receiver: str, received: list[Event], report: ReconcileReport
) -> None:
    releases = {
        str(e.attrs.get("envelope_id")): e
        for e in sent
        if e.kind == "release.decided"
        and e.attrs.get("peer") == receiver
        and e.attrs.get("envelope_id")
    }
    receipts = [
        (int(e.attrs.get("first_seq", 0)), int(e.attrs.get("last_seq", -1)))
        for e in sent
        if e.kind == "receipt.received" and e.attrs.get("peer") == receiver
    ]
    arrivals = {
        str(e.attrs.get("envelope_id")): e
        for e in received
        if e.kind in ("envelope.received", "envelope.rejected") and e.attrs.get("peer") == sender
    }
    for envelope_id, event in sorted(arrivals.items(), key=lambda kv: kv[1].index):
        if envelope_id not in releases:
            report.findings.append(
                Finding(
                    event.index,
                    "reconcile.unreleased",
                    f"{receiver} entry {event.index}: envelope {envelope_id} from {sender} has no "
                    f"release.decided in {sender}'s log",
                )
            )
    for envelope_id, event in sorted(releases.items(), key=lambda kv: kv[1].index):
        seq = int(event.attrs.get("seq", -1))
        if envelope_id not in arrivals:
            report.findings.append(
                Finding(
                    event.index,
                    "reconcile.undelivered",
                    f"{sender} entry {event.index}: envelope {envelope_id} (seq {seq}) "
                    f"to {receiver} is not in {receiver}'s log",
                )
            )
            continue
        if not any(first <= seq <= last for first, last in receipts):
            report.findings.append(
                Finding(
                    event.index,
                    "reconcile.no_receipt",
                    f"{sender} entry {event.index}: envelope {envelope_id} (seq {seq}) "
                    "has no receipt",
                )
            )
            continue
        report.matched += 1
