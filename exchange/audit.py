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
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from itertools import islice
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
    scanner: Scanner | None = None,
) -> AuditReport:
    """Verify a bundle given as raw lines. ``since`` = (size, root) of a checkpoint the
    auditor verified before: the log must extend it. ``on_event`` sees every well-formed
    event (e.g. for reconciliation); trust them only if the report has no findings.
    ``scanner`` checks the entry lines chunk by chunk (default: here, ``scan_in_process``);
    the outcome is the same whichever scans them."""
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
    fold = _Fold(report, sorted(checkpoints, key=lambda c: c.size), since, progress)
    for chunk in (scanner or scan_in_process)(it, on_event is not None):
        fold.add(chunk, on_event)
    expected = fold.tree.size
    report.entries = expected
    if progress is not None:
        progress(expected)
    if expected != size:
        report.add(expected, "bundle.size", f"header says {size} entries, bundle has {expected}")
    for cp in fold.pending:
        report.add(
            None, "checkpoint.beyond_log", f"checkpoint {cp.size} is beyond the {expected} entries"
        )
    if since is not None and since[0] > expected:
        report.add(None, "log.since", f"the log ({expected}) is smaller than checkpoint {since[0]}")
    return report


# ---- entries: each line checked on its own (parallel-safe), then folded in order ----------

SCAN_CHUNK = 4096
_ZERO_LEAF = b"\x00" * 32


@dataclass(frozen=True)
class ScannedLines:
    """Entry lines checked on their own, in bundle order: what each claims and hashes to.
    Positions are relative to the chunk; the fold knows where it starts. Picklable, so a
    verifier may scan chunks in other processes (``node.audit``)."""

    count: int
    leaves: bytes  # 32 bytes per entry: the computed leaf hash (zeros when malformed)
    claimed: list[object]  # the row number each line gives ("i"); None when malformed
    indexes: list[int | None]  # the index each event records; None when it does not parse
    kinds: dict[str, int]
    problems: dict[int, list[tuple[str, str]]]  # position -> [(code, message)], in order
    events: list[Event | None] | None = None  # kept when the caller wants them


def scan_lines(lines: list[bytes], keep_events: bool = False) -> ScannedLines:
    """Check entry lines that need no context: the JSON line, the event bytes against the
    stored hash, the event's own shape. Blank lines are skipped."""
    leaves: list[bytes] = []
    claimed: list[object] = []
    indexes: list[int | None] = []
    kinds: Counter[str] = Counter()
    problems: dict[int, list[tuple[str, str]]] = {}
    events: list[Event | None] | None = [] if keep_events else None
    for raw in lines:
        if not raw.strip():
            continue
        at = len(leaves)
        try:
            line = _json_line(raw, "line")
            index = line["i"]
            event_data = b64_decode(line["event"], what="event")
            stored_hash = b64_decode(line["h"], what="hash")
        except (AccordError, KeyError, TypeError) as e:
            message = e.message if isinstance(e, AccordError) else "malformed"
            problems[at] = [("entry.malformed", message)]
            leaves.append(_ZERO_LEAF)
            claimed.append(None)
            indexes.append(None)
            if events is not None:
                events.append(None)
            continue
        computed = leaf_hash(event_data)
        leaves.append(computed)
        claimed.append(index)
        found: list[tuple[str, str]] = []
        if not hmac.compare_digest(computed, stored_hash):
            found.append(("entry.edited", "event does not match its stored leaf hash"))
        event: Event | None = None
        try:
            event = parse_event_unverified(event_data)
        except AccordError as e:
            found.append(("entry.bad_event", e.message))
        if event is not None:
            kinds[event.kind] += 1
        indexes.append(None if event is None else event.index)
        if events is not None:
            events.append(event)
        if found:
            problems[at] = found
    return ScannedLines(
        len(leaves), b"".join(leaves), claimed, indexes, dict(kinds), problems, events
    )


Scanner = Callable[[Iterator[bytes], bool], Iterable[ScannedLines]]


def scan_in_process(lines: Iterator[bytes], keep_events: bool) -> Iterator[ScannedLines]:
    """The default ``Scanner``: chunks of ``SCAN_CHUNK`` lines, scanned here."""
    while chunk := list(islice(lines, SCAN_CHUNK)):
        yield scan_lines(chunk, keep_events)


class _Fold:
    """Rebuild the tree from scanned chunks in order; name every entry whose position
    disagrees with what it claims; check the since point and each checkpoint root at
    its size. A chunk with nothing to name takes a fast path with the same outcome."""

    def __init__(
        self,
        report: AuditReport,
        pending: list[_Checkpoint],
        since: tuple[int, bytes] | None,
        progress: Callable[[int], None] | None,
    ) -> None:
        self.report = report
        self.pending = pending
        self.since = since
        self.progress = progress
        self.tree = CompactRange()
        self.verified_upto = 0

    def add(self, chunk: ScannedLines, on_event: Callable[[Event], None] | None) -> None:
        start = self.tree.size
        self.report.kinds.update(chunk.kinds)
        if on_event is not None and chunk.events is not None:
            for event in chunk.events:
                if event is not None:
                    on_event(event)
        positions = list(range(start, start + chunk.count))
        if not chunk.problems and chunk.claimed == positions and chunk.indexes == positions:
            self._extend_clean(chunk.leaves, start)
            return
        for k in range(chunk.count):
            expected = start + k
            claimed = chunk.claimed[k]
            problems = chunk.problems.get(k, [])
            if claimed is not None and claimed != expected:
                self.report.add(
                    expected, "entry.out_of_order", f"entry {expected}: row numbered {claimed}"
                )
            for code, message in problems:
                self.report.add(expected, code, f"entry {expected}: {message}")
            recorded = chunk.indexes[k]
            if recorded is not None and recorded != expected:
                self.report.add(
                    expected,
                    "entry.moved",
                    f"entry {expected}: event records index {recorded} "
                    "(a row was deleted, inserted or moved)",
                )
            self.tree.extend(chunk.leaves, 32 * k, 32 * k + 32)
            self._at_size()

    def _extend_clean(self, leaves: bytes, start: int) -> None:
        """Append a chunk with no entry findings, stopping only at the sizes where
        ``_at_size`` can do something (the since point, checkpoints, progress)."""
        end = start + len(leaves) // 32
        stops = {s for s in range(start - start % 10000 + 10000, end + 1, 10000)}
        stops.update(cp.size for cp in self.pending if start < cp.size <= end)
        if self.since is not None and start < self.since[0] <= end:
            stops.add(self.since[0])
        stops.add(end)
        done = start
        for stop in sorted(stops):
            self.tree.extend(leaves, 32 * (done - start), 32 * (stop - start))
            done = stop
            self._at_size()

    def _at_size(self) -> None:
        tree, report, size = self.tree, self.report, self.tree.size
        if self.since is not None and size == self.since[0] and tree.root() != self.since[1]:
            report.add(
                size - 1, "log.since", f"the log does not extend the checkpoint of size {size}"
            )
        while self.pending and self.pending[0].size == size:
            cp = self.pending.pop(0)
            if tree.root() != cp.root:
                report.add(
                    self.verified_upto,
                    "checkpoint.root",
                    f"checkpoint {cp.size}: signed root does not match entries "
                    f"{self.verified_upto}..{cp.size - 1}; an entry in that range was changed",
                )
            else:
                self.verified_upto = cp.size
            if tree.root() != cp.stored_root:
                report.add(
                    cp.size - 1,
                    "checkpoint.stored_root",
                    f"checkpoint {cp.size}: the node's stored subtree hashes give another root",
                )
        if self.progress is not None and size % 10000 == 0:
            self.progress(size)


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
    (docs/THREATS.md H03). Indexes in findings are entries of the side named in the message."""
    report = ReconcileReport()
    a, b = list(events_a), list(events_b)
    _reconcile_direction(node_a, a, node_b, b, report)
    _reconcile_direction(node_b, b, node_a, a, report)
    return report


def _int_attr(event: Event, name: str, default: int) -> int:
    """An integer attribute of a signed event; a node that signs another type in its own
    log gets no match from it (a finding), never a crash of the auditor's tool."""
    value = event.attrs.get(name, default)
    return value if isinstance(value, int) and not isinstance(value, bool) else default


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
        (_int_attr(e, "first_seq", 0), _int_attr(e, "last_seq", -1))
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
        seq = _int_attr(event, "seq", -1)
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
