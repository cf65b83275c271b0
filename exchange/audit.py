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

Trust comes from the auditor, never from the bundle (ADR 0011): every key used must chain
to an ``Anchor``, an identity key the auditor checked out of band (a fingerprint, or a
card file). The bundle's card chain for node X is used only from the card whose identity
key is X's anchor onward (later versions are rotations that key signed); a chain without
it is an ``audit.unanchored`` finding. Entries no signed checkpoint covers are findings
(``audit.unsigned_tail``), and so is every checkpoint an anchored partner should have
cosigned and did not (``audit.not_cosigned``, rule in ``_partner_findings``).
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
from exchange.card import (
    Card,
    VerifiedChain,
    fingerprints_equal,
    normalise_fingerprint,
    verify_chain_bytes,
)
from exchange.checkpoint import open_checkpoint, parse_checkpoint_unverified
from exchange.cosignature import verify_cosignatures
from exchange.errors import AccordError, InputError, PeerDataError
from exchange.events import Event, parse_event_unverified
from exchange.merkle import CompactRange, leaf_hash
from exchange.names import check_node_id
from exchange.note import VerifierKey, parse_note_unverified, parse_verifier_key

BUNDLE_TYPE = "accord.audit-bundle/v1"
MAX_LINE = 256 * 1024


NO_ANCHOR_NEXT_STEP = (
    "Pass --fingerprint NODE=FINGERPRINT for the bundle's node and for each partner, as you "
    "checked them out of band: 'accord card show' on the node itself, 'accord peer list' on "
    "its partner, or the fingerprints in the signed agreement; or --card FILE with a card "
    "file written by 'accord card export'."
)
MAX_TAIL_FINDINGS = 100  # one finding per unsigned entry up to this many, then one for the rest
_TRUST_KINDS = frozenset(
    {"peer.added", "peer.updated", "peer.removed", "peer.revoked", "checkpoint.cosigned"}
)


@dataclass(frozen=True)
class Finding:
    index: int | None  # the log entry, when one can be named
    code: str
    message: str

    def to_json(self) -> dict[str, Any]:
        return {"index": self.index, "code": self.code, "message": self.message}


# ---- trust anchors: what the auditor checked out of band ---------------------------------


@dataclass(frozen=True)
class Anchor:
    """A node's identity key as the auditor checked it out of band: its fingerprint (what
    'accord card show' and 'accord peer list' print), and for ``--card`` the verified
    card chain it came from (its latest identity key is the anchor)."""

    node: str
    fingerprint: str
    source: str = "fingerprint"  # or "card"
    chain: VerifiedChain | None = None

    def to_json(self) -> dict[str, Any]:
        return {"node": self.node, "fingerprint": self.fingerprint, "source": self.source}


def fingerprint_anchor(text: str) -> Anchor:
    """An anchor from ``NODE=FINGERPRINT`` (the ``--fingerprint`` option)."""
    node, sep, fp = text.partition("=")
    if not sep or not node.strip():
        raise InputError(
            "--fingerprint must be NODE=FINGERPRINT, e.g. pk-moi=Y3TO-64CP-W63K-R2V7-F7PI-SB3E",
            code="audit.bad_anchor",
            next_step=NO_ANCHOR_NEXT_STEP,
        )
    return Anchor(
        check_node_id(node.strip(), field="--fingerprint node"), normalise_fingerprint(fp)
    )


def card_anchor(data: bytes, what: str = "card file") -> Anchor:
    """An anchor from a card file (``accord card export``): its latest identity key."""
    try:
        chain = verify_chain_bytes(data)
    except AccordError as e:
        raise InputError(
            f"{what} is not a valid card chain: {e.message}",
            code="audit.bad_anchor",
            next_step="Give a file written by 'accord card export'.",
        ) from e
    return Anchor(chain.latest.node, chain.latest.fingerprint, "card", chain)


def anchor_map(anchors: Iterable[Anchor]) -> dict[str, Anchor]:
    """One anchor per node; refuses none at all, and two that disagree."""
    out: dict[str, Anchor] = {}
    for anchor in anchors:
        known = out.get(anchor.node)
        if known is None:
            out[anchor.node] = anchor
        elif not fingerprints_equal(known.fingerprint, anchor.fingerprint):
            raise InputError(
                f"two different anchors for {anchor.node}",
                code="audit.bad_anchor",
                next_step="Give one fingerprint (or card file) per node.",
            )
        elif known.chain is None:
            out[anchor.node] = anchor  # the same key; the card file adds its chain
    if not out:
        raise InputError(
            "no trust anchor given: a bundle carries its own keys, so it cannot vouch for them",
            code="audit.no_anchor",
            next_step=NO_ANCHOR_NEXT_STEP,
        )
    return out


def _from_anchor(chain: VerifiedChain, fingerprint: str) -> tuple[Card, ...] | None:
    for i, card in enumerate(chain.cards):
        if fingerprints_equal(card.fingerprint, fingerprint):
            return chain.cards[i:]
    return None


def anchored_cards(chain: VerifiedChain | None, anchor: Anchor) -> tuple[Card, ...] | None:
    """The cards of ``chain`` the anchor vouches for: from the first card whose identity
    key has the anchored fingerprint onward (later versions are rotations signed by it;
    earlier ones are not vouched for, so their keys are never used). A card anchor also
    supplies the cards when the bundle has no chain for the node, or only an earlier part
    of the card file's chain. None: the chain does not chain to the anchor."""
    if chain is not None:
        found = _from_anchor(chain, anchor.fingerprint)
        if found is not None:
            return found
    if anchor.chain is not None and (
        chain is None or anchor.chain.signed[: len(chain.signed)] == chain.signed
    ):
        return _from_anchor(anchor.chain, anchor.fingerprint)
    return None


@dataclass
class PartnerCoverage:
    """What one anchored partner's witness vouched for in this log."""

    node: str
    keys: bool = False  # a witness key chained to the anchor
    largest_cosigned: int = 0  # the largest checkpoint it cosigned (covers every smaller one)
    cosigned_checkpoints: int = 0
    recorded_cosigned: int = 0  # the largest size the log records it cosigning
    due_upto: int = 0  # checkpoints up to this size were due from it (_partner_findings)
    peer_since: int | None = None  # the entry of its first peer.added

    def to_json(self) -> dict[str, Any]:
        return {
            "node": self.node,
            "witness_key_anchored": self.keys,
            "largest_cosigned": self.largest_cosigned,
            "cosigned_checkpoints": self.cosigned_checkpoints,
            "recorded_cosigned": self.recorded_cosigned,
            "due_upto": self.due_upto,
            "peer_since": self.peer_since,
        }


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
    anchors: list[dict[str, Any]] = field(default_factory=list)  # each anchor and its use
    partners: dict[str, PartnerCoverage] = field(default_factory=dict)  # anchored partners
    unanchored_peers: list[str] = field(default_factory=list)  # in the bundle, keys unused

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
            "anchors": self.anchors,
            "partners": {k: v.to_json() for k, v in sorted(self.partners.items())},
            "unanchored_peers": self.unanchored_peers,
            "findings": [f.to_json() for f in self.findings],
        }


@dataclass(frozen=True)
class _Checkpoint:
    size: int
    root: bytes
    stored_root: bytes
    line: int
    cosigned_by: frozenset[str] = frozenset()  # anchored partners whose cosignature verified
    log_key: str = ""  # the verifier key (encoded) of the log key that signed it


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


@dataclass
class _Trust:
    """The keys the verifier may use, each chained to an anchor."""

    log_keys: list[VerifierKey]
    witnesses: dict[str, list[VerifierKey]]  # anchored partner -> its witness keys
    missing: set[str]  # anchored partners with no card chain in the bundle nor a card file


def _resolve_trust(
    own: VerifiedChain,
    peers: dict[str, VerifiedChain],
    anchors: dict[str, Anchor],
    report: AuditReport,
) -> _Trust:
    node = own.latest.node
    anchor = anchors.get(node)
    cards = None if anchor is None else anchored_cards(own, anchor)
    if anchor is None:
        report.add(
            None,
            "audit.unanchored",
            f"no anchor for {node}, whose log this is: its log keys come from the bundle "
            "itself and prove nothing",
        )
    elif cards is None:
        report.add(
            None,
            "audit.unanchored",
            f"{node}: the bundle's card chain does not contain the anchored identity key "
            f"{anchor.fingerprint}; its log keys are not the anchored node's",
        )
    if anchor is not None:
        report.anchors.append(_anchor_row(anchor, cards, "log keys" if cards else "none"))
    # Unanchored, the checks below still run with the bundle's own keys (so the report
    # names everything else), but the finding above fails the audit whatever they say.
    log_keys = _log_keys(cards or own.cards, report)
    trust = _Trust(log_keys, {}, set())
    for other, anchor in sorted(anchors.items()):
        if other == node:
            continue
        chain = peers.get(other)
        cards = anchored_cards(chain, anchor)
        coverage = report.partners.setdefault(other, PartnerCoverage(other))
        if cards is not None:
            trust.witnesses[other] = _witness_keys(other, cards, report)
            coverage.keys = bool(trust.witnesses[other])
        elif chain is not None:
            report.add(
                None,
                "audit.unanchored",
                f"{other}: the bundle's card chain does not contain the anchored identity "
                f"key {anchor.fingerprint}; its witness key is not the anchored partner's",
            )
        else:
            trust.missing.add(other)
        report.anchors.append(_anchor_row(anchor, cards, "witness keys" if cards else "none"))
    report.unanchored_peers = sorted(set(peers) - set(anchors))
    return trust


def _anchor_row(anchor: Anchor, cards: tuple[Card, ...] | None, use: str) -> dict[str, Any]:
    return {
        **anchor.to_json(),
        "card_version": None if cards is None else cards[0].version,
        "used_for": use,
    }


def audit_bundle(
    lines: Iterable[bytes],
    *,
    anchors: Iterable[Anchor],
    since: tuple[int, bytes] | None = None,
    progress: Callable[[int], None] | None = None,
    on_event: Callable[[Event], None] | None = None,
    scanner: Scanner | None = None,
) -> AuditReport:
    """Verify a bundle given as raw lines against the auditor's ``anchors`` (at least
    one; ``InputError`` otherwise). ``since`` = (size, root) of a checkpoint the auditor
    verified before: the log must extend it. ``on_event`` sees every well-formed event
    (e.g. for reconciliation); trust them only if the report has no findings.
    ``scanner`` checks the entry lines chunk by chunk (default: here, ``scan_in_process``);
    the outcome is the same whichever scans them."""
    anchored = anchor_map(anchors)
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
    if header.get("node") != own.latest.node:
        report.add(None, "bundle.header", f"the header names another node than {own.latest.node}")
    trust = _resolve_trust(own, peers, anchored, report)

    checkpoints = _read_checkpoints(it, n_checkpoints, trust, origin, report)
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
    _tail_findings(report, expected)
    _log_key_findings(report, checkpoints, own, fold)
    _partner_findings(report, checkpoints, fold, trust, expected)
    return report


def _tail_findings(report: AuditReport, entries: int) -> None:
    """Every entry past the largest signed checkpoint is signed by nothing: a truncated,
    withheld or never-signed tail."""
    signed = min(report.largest_checkpoint, entries)
    for i in range(signed, min(entries, signed + MAX_TAIL_FINDINGS)):
        report.add(
            i,
            "audit.unsigned_tail",
            f"entry {i} is past the largest signed checkpoint ({signed}): no signature covers it",
        )
    if entries > signed + MAX_TAIL_FINDINGS:
        first = signed + MAX_TAIL_FINDINGS
        report.add(
            first,
            "audit.unsigned_tail",
            f"entries {first}..{entries - 1} ({entries - first} more) are past the largest "
            f"signed checkpoint ({signed}): no signature covers them",
        )


def _partner_findings(
    report: AuditReport, checkpoints: list[_Checkpoint], fold: _Fold, trust: _Trust, entries: int
) -> None:
    """Cosignatures the log says exist, and those an anchored partner should have given.

    Partner X's witness covers every checkpoint up to the largest one it cosigned (it
    checked consistency from what it held). A checkpoint of size s is *due* from an
    anchored partner X when (1) X was a peer at s: X's last ``peer.added``/``peer.updated``
    before entry s is not followed by a ``peer.removed`` or a ``peer.revoked`` of its
    current key; and (2) X had a round that started after s was signed: the log records
    X cosigning a size >= s (``checkpoint.cosigned``), or records two answers from X at
    entries >= s (checkpoint s was committed before the first; the second round began after
    it and the cosigner always sends its latest checkpoint). The newest checkpoints, signed
    after the last round X could answer (e.g. the one 'audit export' signs), are not due.
    Each due checkpoint above X's coverage is ``audit.not_cosigned``."""
    present = {cp.size for cp in checkpoints}
    by_peer: dict[str, list[tuple[int, str, int]]] = {}
    for index, kind, peer, value in fold.peer_events:
        if index < entries:
            by_peer.setdefault(peer, []).append((index, kind, value))
    for peer, events in sorted(by_peer.items()):
        for index, kind, value in events:
            if kind == "checkpoint.cosigned" and value not in present:
                report.add(
                    index,
                    "audit.checkpoint_missing",
                    f"entry {index} records {peer} cosigning checkpoint {value}, which the "
                    "bundle leaves out",
                )
    for peer, coverage in sorted(report.partners.items()):
        events = by_peer.get(peer, [])
        added = [i for i, kind, _v in events if kind == "peer.added"]
        coverage.peer_since = added[0] if added else None
        if peer in trust.missing and coverage.peer_since is None and not events:
            # Anchored (e.g. for the other bundle of a reconcile), but this log never had
            # it as a partner: nothing was due from it here.
            del report.partners[peer]
            for row in report.anchors:
                if row["node"] == peer:
                    row["used_for"] = "none (not a partner of this log)"
            continue
        answers = [(i, v) for i, kind, v in events if kind == "checkpoint.cosigned"]
        coverage.recorded_cosigned = max((v for _i, v in answers), default=0)
        second_last = answers[-2][0] if len(answers) > 1 else 0
        coverage.due_upto = max(coverage.recorded_cosigned, second_last)
        mine = [cp for cp in checkpoints if peer in cp.cosigned_by and cp.size in fold.root_ok]
        coverage.cosigned_checkpoints = len(mine)
        coverage.largest_cosigned = max((cp.size for cp in mine), default=0)
        if peer in trust.missing and coverage.peer_since is not None:
            report.add(
                coverage.peer_since,
                "audit.peer_missing",
                f"entry {coverage.peer_since} adds {peer} as a partner, but the bundle has no "
                f"card chain for it: its cosignatures cannot be checked (pass --card for {peer}"
                " if it was removed)",
            )
        for cp in sorted(checkpoints, key=lambda c: c.size):
            if coverage.largest_cosigned < cp.size <= coverage.due_upto and _peer_at(
                events, cp.size
            ):
                report.add(
                    None,
                    "audit.not_cosigned",
                    f"checkpoint {cp.size}: {peer} should have cosigned it or a larger one "
                    f"(due up to size {coverage.due_upto} by the log's checkpoint.cosigned "
                    f"entries), but the largest checkpoint {peer} cosigned in the bundle is "
                    f"{coverage.largest_cosigned}",
                )
    report.cosigned_checkpoints = sum(
        1 for cp in checkpoints if cp.cosigned_by and cp.size in fold.root_ok
    )


def _peer_at(events: list[tuple[int, str, int]], size: int) -> bool:
    """Whether the partner was a peer when the checkpoint of ``size`` was signed."""
    state = False
    for index, kind, value in events:
        if index >= size:
            break
        if kind in ("peer.added", "peer.updated"):
            state = True
        elif kind == "peer.removed" or (kind == "peer.revoked" and value):
            state = False
    return state


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
    # (position, kind, peer, value) of the events that say who witnesses the log: peer.*
    # and checkpoint.cosigned (value: its size; for peer.revoked, 1 if the current key)
    trust_events: list[tuple[int, str, str, int]] = field(default_factory=list)
    # (position, card version) of each key.rotated event of the log key (ADR 0017)
    log_key_events: list[tuple[int, int]] = field(default_factory=list)


def scan_lines(lines: list[bytes], keep_events: bool = False) -> ScannedLines:
    """Check entry lines that need no context: the JSON line, the event bytes against the
    stored hash, the event's own shape. Blank lines are skipped."""
    leaves: list[bytes] = []
    claimed: list[object] = []
    indexes: list[int | None] = []
    kinds: Counter[str] = Counter()
    problems: dict[int, list[tuple[str, str]]] = {}
    events: list[Event | None] | None = [] if keep_events else None
    trust_events: list[tuple[int, str, str, int]] = []
    log_key_events: list[tuple[int, int]] = []
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
            if event.kind in _TRUST_KINDS and isinstance(event.attrs.get("peer"), str):
                trust_events.append((at, event.kind, event.attrs["peer"], _trust_value(event)))
            if event.kind == "key.rotated" and event.attrs.get("key") == "log":
                log_key_events.append((at, _int_attr(event, "card_version", -1)))
        indexes.append(None if event is None else event.index)
        if events is not None:
            events.append(event)
        if found:
            problems[at] = found
    return ScannedLines(
        len(leaves),
        b"".join(leaves),
        claimed,
        indexes,
        dict(kinds),
        problems,
        events,
        trust_events,
        log_key_events,
    )


def _trust_value(event: Event) -> int:
    if event.kind == "checkpoint.cosigned":
        return _int_attr(event, "size", -1)
    if event.kind == "peer.revoked":
        revoked = event.attrs.get("revoked_key")  # absent: the partner's current key
        return int(revoked is None or revoked == event.attrs.get("fingerprint"))
    return 0


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
        self.root_ok: set[int] = set()  # checkpoint sizes whose signed root matches the entries
        self.peer_events: list[tuple[int, str, str, int]] = []  # positions in the log
        self.log_key_events: list[tuple[int, int]] = []  # (position, card version)

    def add(self, chunk: ScannedLines, on_event: Callable[[Event], None] | None) -> None:
        start = self.tree.size
        self.report.kinds.update(chunk.kinds)
        self.peer_events.extend(
            (start + k, kind, peer, v) for k, kind, peer, v in chunk.trust_events
        )
        self.log_key_events.extend((start + k, v) for k, v in chunk.log_key_events)
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
                self.root_ok.add(cp.size)
            if tree.root() != cp.stored_root:
                report.add(
                    cp.size - 1,
                    "checkpoint.stored_root",
                    f"checkpoint {cp.size}: the node's stored subtree hashes give another root",
                )
        if self.progress is not None and size % 10000 == 0:
            self.progress(size)


def _log_keys(cards: Iterable[Card], report: AuditReport) -> list[VerifierKey]:
    keys: dict[str, VerifierKey] = {}
    for card in cards:
        try:
            key = parse_verifier_key(card.log_vkey)
            keys[key.encode()] = key
        except AccordError as e:
            report.add(None, "card.log_key", e.message)
    return list(keys.values())


def _witness_keys(node: str, cards: Iterable[Card], report: AuditReport) -> list[VerifierKey]:
    keys: dict[str, VerifierKey] = {}
    for card in cards:
        try:
            key = parse_verifier_key(card.witness_vkey)
            keys[key.encode()] = key
        except AccordError as e:
            report.add(None, "card.witness_key", f"{node}: {e.message}")
    return list(keys.values())


def _read_checkpoints(
    it: Any,
    count: int,
    trust: _Trust,
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
            verified = open_checkpoint(note, trust.log_keys, origin=origin)
        except AccordError as e:
            size_hint = _size_hint(note)
            report.add(None, "checkpoint.signature", f"checkpoint {size_hint}: {e.message}")
            continue
        cp = verified.checkpoint
        signed_by = next((k.encode() for k in trust.log_keys if _signed_by(note, k, origin)), "")
        cosigned_by: set[str] = set()
        if trust.witnesses and _has_foreign_lines(note, verified.note.signatures):
            for partner, keys in sorted(trust.witnesses.items()):
                try:
                    verify_cosignatures(note, keys)
                    cosigned_by.add(partner)
                except PeerDataError as e:
                    if e.code != "peer.not_cosigned":
                        report.add(
                            None,
                            "checkpoint.cosignature",
                            f"checkpoint {cp.size}: {partner}: {e.message}",
                        )
                except AccordError as e:
                    report.add(
                        None,
                        "checkpoint.cosignature",
                        f"checkpoint {cp.size}: {partner}: {e.message}",
                    )
        current = _Checkpoint(
            cp.size, cp.root_hash, stored_root, n, frozenset(cosigned_by), signed_by
        )
        if previous is not None and cp.size <= previous.size:
            report.add(None, "checkpoint.order", f"checkpoint {cp.size} follows {previous.size}")
        previous = current
        report.largest_checkpoint = max(report.largest_checkpoint, cp.size)
        out.append(current)
    return out


def _signed_by(note: bytes, key: VerifierKey, origin: str) -> bool:
    try:
        open_checkpoint(note, [key], origin=origin)
    except AccordError:
        return False
    return True


def _log_key_findings(
    report: AuditReport, checkpoints: list[_Checkpoint], own: VerifiedChain, fold: _Fold
) -> None:
    """Origin continuity across log-key rotations (ADR 0017). The origin never changes;
    a checkpoint of size s must be signed by the log key in force at s: that of the card
    version named by the last ``key.rotated`` event of the log key among entries 0..s-1,
    or, before any, that of the chain's first card. A checkpoint signed by a key of
    another era (an old key used after its rotation, or a new one before) is refused."""
    by_version = {c.version: c.log_vkey for c in own.cards}
    events = sorted(fold.log_key_events)
    for cp in checkpoints:
        if not cp.log_key:
            continue
        version = own.cards[0].version
        for index, card_version in events:
            if index >= cp.size:
                break
            version = card_version
        expected = by_version.get(version)
        if expected is None:
            report.add(
                None,
                "checkpoint.log_key_era",
                f"checkpoint {cp.size}: the log names card version {version} for its log "
                "key, which the card chain does not hold",
            )
        elif expected != cp.log_key:
            report.add(
                None,
                "checkpoint.log_key_era",
                f"checkpoint {cp.size} is not signed by the log key of card version "
                f"{version}, the one in force at that size",
            )


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
