"""State the node acts on, derived from its own log rather than from editable rows
(docs/THREATS.md I08, ADR 0013).

A row in ``peers``, ``meta`` or ``agreements`` is a copy; the log event that recorded the
change is the authority. This module folds the few event kinds that decide what the node
trusts and releases (``peer.*``, ``policy.changed``, ``agreement.signed``) into
:class:`LogFacts`, and callers compare the row they are about to act on with it: an
edited row is refused, never acted on, and no passphrase is needed to check.

The fold reads only the leaves it has not seen, found through an index on the leaf's kind
(migration 16): the facts are cached per database file together with the hash of the
last leaf read, so a log that was replaced or rolled back under a running process is read
again from the start. Leaves themselves are
authenticated by the log (signed checkpoints over the Merkle tree, ``audit verify``).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field, replace
from typing import Any

from exchange import merkle
from exchange.card import fingerprints_equal, normalise_fingerprint
from exchange.checkpoint import open_checkpoint
from exchange.errors import AccordError, StoreError
from exchange.events import Event, parse_event_unverified
from exchange.note import parse_verifier_key
from exchange.times import format_time, parse_time
from node.services.log import ExchangeLog
from node.store import store_name

TRUSTED = "trusted"  # keys.truststore.TRUSTED (node may import keys; keys may not import node)
REVOKED = "revoked"

# The first 8 bytes of each kind folded here (node.store.LEAF_KIND_EXPR, indexed).
_KIND_PREFIXES = (b"peer.add", b"peer.upd", b"peer.rev", b"peer.rem", b"policy.c", b"agreemen")


@dataclass(frozen=True)
class PeerState:
    """What the log says a partner's trust-store row holds."""

    fingerprint: str
    status: str
    revoked_from: str | None  # normalised RFC 3339 UTC
    log_index: int  # the event that last changed the row


@dataclass(frozen=True)
class LoggedAgreement:
    digest: str
    agreement_id: str
    version: int
    not_before: str
    not_after: str
    log_index: int


@dataclass(frozen=True)
class LogFacts:
    size: int = 0  # leaves [0, size) are folded in: the tree of a signed checkpoint
    root: bytes = b""
    last_leaf_hash: bytes = b""
    peers: dict[str, PeerState] = field(default_factory=dict)
    policy_digest: str | None = None
    policy_index: int | None = None
    agreements: dict[str, tuple[LoggedAgreement, ...]] = field(default_factory=dict)
    # agreement digest -> the earliest time a signed termination ends it
    terminations: dict[str, str] = field(default_factory=dict)
    termination_digests: frozenset[str] = frozenset()  # each signed statement logged
    # partner -> normalised fingerprint of each identity key it revoked by a signed
    # statement -> the time from which it is invalid (kept when the partner is removed,
    # as ``peer_revocations`` keeps the statements)
    key_revocations: dict[str, dict[str, str]] = field(default_factory=dict)


_CACHE: dict[str, LogFacts] = {}
_LOCK = threading.Lock()


def _time(text: str) -> str:
    return format_time(parse_time(text, field="revoked_from"))


def _fold_peer(
    peers: dict[str, PeerState], keys: dict[str, dict[str, str]], event: Event, index: int
) -> None:
    attrs = event.attrs
    peer = attrs.get("peer")
    if not isinstance(peer, str):
        return
    if event.kind == "peer.revoked" and attrs.get("source") == "statement":
        revoked = keys.setdefault(peer, {})
        key = normalise_fingerprint(str(attrs["revoked_key"]))
        revoked.setdefault(key, _time(str(attrs["revoked_from"])))  # the first one stands
    state = peers.get(peer)
    fingerprint = str(attrs.get("fingerprint", ""))
    if event.kind == "peer.added":
        peers[peer] = PeerState(fingerprint, TRUSTED, None, index)
    elif event.kind == "peer.removed":
        peers.pop(peer, None)
    elif state is None:
        return
    elif event.kind == "peer.updated":
        peers[peer] = replace(state, fingerprint=fingerprint, log_index=index)
    elif event.kind == "peer.revoked":
        revoked_from = _time(str(attrs["revoked_from"]))
        if attrs.get("source") == "statement":
            # The partner revoked one of its own keys: the row changes only when that key
            # is the partner's current one, and then the earlier time wins (TrustStore).
            if not fingerprints_equal(str(attrs.get("revoked_key", "")), fingerprint):
                return
            if state.revoked_from is not None:
                revoked_from = min(revoked_from, state.revoked_from)
        peers[peer] = PeerState(fingerprint, REVOKED, revoked_from, index)


def _fold(facts: LogFacts, rows: list[tuple[int, bytes]]) -> LogFacts:
    peers = dict(facts.peers)
    keys = {peer: dict(known) for peer, known in facts.key_revocations.items()}
    agreements = dict(facts.agreements)
    terminations = dict(facts.terminations)
    termination_digests = set(facts.termination_digests)
    policy_digest, policy_index = facts.policy_digest, facts.policy_index
    for index, data in rows:
        event = parse_event_unverified(data)
        if event.kind.startswith("peer."):
            _fold_peer(peers, keys, event, index)
        elif event.kind == "policy.changed":
            policy_digest, policy_index = str(event.attrs["policy_digest"]), index
        elif event.kind == "agreement.terminated":
            termination_digests.add(str(event.attrs["termination_digest"]))
            digest, ends = str(event.attrs["agreement_digest"]), _time(event.attrs["effective_at"])
            if digest not in terminations or parse_time(ends, field="effective_at") < parse_time(
                terminations[digest], field="effective_at"
            ):
                terminations[digest] = ends
        elif event.kind == "agreement.signed":
            a: dict[str, Any] = event.attrs
            peer = str(a["peer"])
            agreements[peer] = (
                *agreements.get(peer, ()),
                LoggedAgreement(
                    str(a["agreement_digest"]),
                    str(a["agreement_id"]),
                    int(a["agreement_version"]),
                    str(a["not_before"]),
                    str(a["not_after"]),
                    index,
                ),
            )
    return replace(
        facts,
        peers=peers,
        key_revocations=keys,
        agreements=agreements,
        terminations=terminations,
        termination_digests=frozenset(termination_digests),
        policy_digest=policy_digest,
        policy_index=policy_index,
    )


def _unsupported(why: str) -> StoreError:
    return StoreError(
        f"the log does not support the state this node holds ({why})",
        code="log.inconsistent",
        next_step="Run 'accord audit export' and 'accord audit verify' to find the edit, and "
        "restore the database from a backup.",
    )


def log_facts(log: ExchangeLog, log_vkey: str) -> LogFacts:
    """The facts of the leaves covered by the latest checkpoint this node signed.

    The checkpoint's signature is verified under the node's own log key (public, in its
    card: no passphrase needed) and every folded leaf is proven to be in that tree (an
    inclusion proof from the stored subtrees, against the signed root). An entry someone
    appended without the keyring is past every signed checkpoint and is not folded; one
    rewritten inside the signed tree is refused. A change the node committed becomes a
    fact when its checkpoint is signed, which the node does right after each commit."""
    store = log.store
    signed = log.latest_checkpoint()
    if signed is None:
        return LogFacts()
    key = store_name(store)
    with _LOCK:
        facts = _CACHE.get(key, LogFacts())
    if facts.size:
        held = store.log.leaf_hash(facts.size - 1)
        if facts.size > signed.size or held is None or held != facts.last_leaf_hash:
            facts = LogFacts()  # another log than the one cached: read it all again
    if facts.size == signed.size and facts.root == signed.root:
        return facts
    try:
        head = open_checkpoint(signed.note, [parse_verifier_key(log_vkey)], origin=log.origin)
    except AccordError as e:
        raise _unsupported(f"checkpoint {signed.size} does not verify: {e.code}") from e
    if head.checkpoint.size != signed.size or head.checkpoint.root_hash != signed.root:
        raise _unsupported(f"checkpoint {signed.size} is not the one its note signs")
    size, root = signed.size, signed.root
    rows = store.log.events_of_kinds(_KIND_PREFIXES, facts.size, size)
    reader = log.reader()
    for index, data in rows:
        try:
            proof = merkle.inclusion_proof(index, size, reader)
            merkle.verify_inclusion(merkle.leaf_hash(data), index, size, proof, root)
        except AccordError as e:
            raise _unsupported(f"entry {index} is not in the signed tree") from e
    facts = _fold(facts, rows)
    last = store.log.leaf_hash(size - 1)
    assert last is not None  # the signed tree holds entry size - 1
    facts = replace(facts, size=size, root=root, last_leaf_hash=last)
    if not store.in_transaction():  # what a rollback may undo is not remembered
        with _LOCK:
            _CACHE[key] = facts
    return facts


def same_time(a: str | None, b: str | None) -> bool:
    if a is None or b is None:
        return a is b
    return parse_time(a, field="time") == parse_time(b, field="time")
