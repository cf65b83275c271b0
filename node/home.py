"""A node's data directory: configuration, key file, database, public TLS material.

Layout (mode 0700)::

    config.toml          node id, name, endpoint, listen address, log origin
    node.db              the SQLite store (WAL); absent when config.toml names a
                         PostgreSQL ``database`` (docs/adr/0024), which then holds the state
    keys/secrets.key     every private key, sealed under the passphrase (0600)
    tls/ca.pem, tls/node.pem   public certificates
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import stat
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import structlog

from exchange.canonical import canonical_json, parse_json_unverified
from exchange.card import (
    SUITE_HYBRID,
    Card,
    SignedCard,
    VerifiedChain,
    extend_chain,
    fingerprint,
    fingerprints_equal,
    normalise_fingerprint,
    parse_signed_card_unverified,
    sign_card,
)
from exchange.errors import ConfigError, InputError, KeyringError, PeerDataError, StoreError
from exchange.key_revocation import (
    KeyRevocationStatement,
    card_key,
    matches,
    parse_key_revocation_unverified,
    revoked_keys,
    sign_key_revocation,
    verify_all,
)
from exchange.names import check_display_name, check_endpoint, check_node_id
from exchange.note import parse_verifier_key
from exchange.revocation import (
    MAX_REVOCATIONS,
    Revocation,
    SignedRevocation,
    parse_revocation_unverified,
    sign_revocation,
)
from exchange.times import format_time, parse_time
from keys.keyfile import PASSPHRASE_ENV
from keys.keyring import Keyring, generate_keyring, load_keyring, save_keyring
from keys.truststore import AddResult, KeyRevocation, PeerRecord, TrustStore
from node.config import CONFIG_FILE, NodeConfig, check_database
from node.services.log import ExchangeLog, SignedCheckpoint
from node.services.logstate import LogFacts, log_facts, same_time
from node.store import DB_FILE, NodeStore, PgStore, Tx, open_store, peer_records

KEYFILE = Path("keys") / "secrets.key"
PENDING_KEYFILE = Path("keys") / "secrets.key.new"
log = structlog.get_logger("accord.node")

PassphraseSource = Callable[[], str]

# The kinds of key 'accord keys rotate' replaces, in the order they are applied and logged.
KEY_IDENTITY, KEY_ENCRYPTION, KEY_TLS, KEY_LOG, KEY_WITNESS = (
    "identity",
    "encryption",
    "tls",
    "log",
    "witness",
)
KEY_KINDS = (KEY_IDENTITY, KEY_ENCRYPTION, KEY_TLS, KEY_LOG, KEY_WITNESS)


# The Officer API's Unix socket in the data directory (mode 0600; only the node's OS user).
OFFICER_SOCKET = "officer.sock"


def passphrase_from_env_or(prompt: PassphraseSource) -> PassphraseSource:
    def source() -> str:
        value = os.environ.get(PASSPHRASE_ENV)
        return value if value is not None else prompt()

    return source


def _card_keys(card: Card) -> tuple[object, ...]:
    return (
        card.identity_key,
        card.log_vkey,
        card.witness_vkey,
        card.tls_ca_pem,
        tuple(sorted(k.kid for k in card.encryption_keys)),
    )


def _public_keys(keyring: Keyring, card: Card) -> tuple[object, ...]:
    """What of ``card`` the keyring would put on it: its public keys only."""
    return _card_keys(
        keyring.card(
            name=card.name,
            endpoint=card.endpoint,
            version=card.version,
            issued_at=parse_time(card.issued_at, field="issued_at"),
        )
    )


def _signed_card_from_row(row: bytes) -> SignedCard:
    return parse_signed_card_unverified(
        parse_json_unverified(row, what="stored card", max_bytes=1 << 20)
    )


def _signed_card_row(signed: SignedCard) -> bytes:
    return canonical_json(signed.to_json())


class LoggedPeerRecords:
    """The trust store's rows, with each partner's revoked keys checked against the log
    (docs/THREATS.md I08): a ``peer_revocations`` row deleted, added, moved to another key or
    given a later time is refused, so an old key cannot be un-revoked outside the log."""

    def __init__(self, store: NodeStore, facts: Callable[[], LogFacts]) -> None:
        self._store = store
        self._rows = peer_records(store)
        self._facts = facts

    def get(self, node: str) -> PeerRecord | None:
        return self._rows.get(node)

    def put(self, record: PeerRecord) -> None:
        self._rows.put(record)

    def delete(self, node: str) -> None:
        self._rows.delete(node)

    def all(self) -> list[PeerRecord]:
        return self._rows.all()

    def put_key_revocation(self, node: str, revocation: KeyRevocation) -> None:
        self._rows.put_key_revocation(node, revocation)

    def key_revocations(self, node: str) -> list[KeyRevocation]:
        rows = self._rows.key_revocations(node)
        if self._store.in_transaction():
            # The trust store's own bookkeeping while it records a revocation (its event
            # is not signed yet); what the node acts on is read outside a transaction.
            return rows
        logged = self._facts().key_revocations.get(node, {})
        held = {normalise_fingerprint(fingerprint(r.identity_key)): r for r in rows}
        for key in sorted(set(logged) | set(held)):
            row = held.get(key)
            if row is None or key not in logged:
                what = "identity_key"
            elif not same_time(row.revoked_from, logged[key]):
                what = "revoked_from"
            else:
                continue
            raise KeyringError(
                f"revoked keys of {node} do not match the log entries that recorded "
                f"them (key {key}, field {what})",
                code="keyring.tampered",
                next_step="The database may have been edited: run 'accord audit export' "
                "and 'accord audit verify', and restore the database from a backup.",
            )
        return rows


@dataclass
class Node:
    """An opened node. Keys are loaded (and the passphrase asked) only when needed."""

    data_dir: Path
    config: NodeConfig
    store: NodeStore
    passphrase: PassphraseSource
    _keyring: Keyring | None = field(default=None, repr=False)
    _unencrypted: bool = False
    _own_chain: tuple[tuple[bytes, ...], VerifiedChain] | None = field(default=None, repr=False)

    @classmethod
    def open(cls, data_dir: Path, passphrase: PassphraseSource) -> Node:
        config = NodeConfig.load(data_dir)
        _check_private_dir(data_dir)
        store = open_store(data_dir, config.database, config.node)
        return cls(data_dir=data_dir, config=config, store=store, passphrase=passphrase)

    def close(self) -> None:
        self.store.close()

    def reopen_store(self, *, wait: float = 0.0) -> None:
        """Close the database connection and open a new one: a PostgreSQL node after its
        server restarted, or a standby taking over (docs/adr/0026). With ``wait`` seconds,
        an unreachable server (``store.unavailable``) is retried every second that long."""
        with contextlib.suppress(Exception):  # the old connection may be dead already
            self.store.close()
        deadline = time.monotonic() + wait
        while True:
            try:
                self.store = open_store(self.data_dir, self.config.database, self.config.node)
                return
            except StoreError as e:
                if e.code != "store.unavailable" or time.monotonic() >= deadline:
                    raise
                log.warning("store.unavailable", node=self.config.node)
                time.sleep(1.0)

    # -- keys ----------------------------------------------------------------------------
    def keyring(self) -> Keyring:
        if self._keyring is None:
            keyring = load_keyring(
                self.data_dir / KEYFILE, self.passphrase, on_unencrypted=self._warn_unencrypted
            )
            if keyring.node != self.config.node:
                raise KeyringError(
                    f"key file belongs to node {keyring.node}, not {self.config.node}"
                )
            latest = self.own_chain().latest
            if keyring.identity_signer().public_key != latest.identity_key:
                keyring = self._finish_pending_rotation(latest.identity_key)
            elif _public_keys(keyring, latest) != _card_keys(latest):
                # A rotation that kept the identity key (encryption, TLS, log, witness;
                # ADR 0017) crashed after storing its card: finish it when the pending key
                # file is the card's, or go on with what we have (logged).
                keyring = self._finish_pending_keys(keyring, latest)
            self._keyring = keyring
        return self._keyring

    def _finish_pending_keys(self, current: Keyring, latest: Card) -> Keyring:
        pending = self.data_dir / PENDING_KEYFILE
        if pending.exists():
            keyring = load_keyring(pending, self.passphrase, on_unencrypted=self._warn_unencrypted)
            if _public_keys(keyring, latest) == _card_keys(latest):
                os.replace(pending, self.data_dir / KEYFILE)
                log.info("key.rotation_completed", node=self.config.node)
                return keyring
        log.warning("keyring.card_mismatch", node=self.config.node, version=latest.version)
        return current

    def _warn_unencrypted(self) -> None:
        self._unencrypted = True
        log.warning("keyfile.unencrypted", node=self.config.node, path=str(KEYFILE))

    def _finish_pending_rotation(self, expected_identity: bytes) -> Keyring:
        """A rotation that crashed after storing the new card but before renaming the new
        key file is finished here; anything else is a mismatch we refuse."""
        pending = self.data_dir / PENDING_KEYFILE
        if pending.exists():
            keyring = load_keyring(pending, self.passphrase, on_unencrypted=self._warn_unencrypted)
            if keyring.identity_signer().public_key == expected_identity:
                os.replace(pending, self.data_dir / KEYFILE)
                log.info("key.rotation_completed", node=self.config.node)
                return keyring
        raise KeyringError(
            "the key file's identity key is not the one in this node's latest card",
            code="keyring.mismatch",
            next_step="Restore the key file that belongs to this database from your backup.",
        )

    # -- the exchange log ----------------------------------------------------------------
    @property
    def log(self) -> ExchangeLog:
        return ExchangeLog(self.store, self.config.log_origin, self.data_dir, self.keyring)

    def record(self, db: Tx, kind: str, now: datetime, **attrs: object) -> int:
        """Append one event to the log inside the caller's transaction (staged, and
        written with the transaction's other events just before it commits)."""
        return self.log.stage(kind, now, attrs)

    def checkpoint(self, now: datetime) -> SignedCheckpoint:
        """Sign a checkpoint over everything committed so far (one per commit batch);
        refuses (``log.foreign_entry``, ``log.rolled_back``, ``log.inconsistent``) a log
        that holds anything this node did not write (ADR 0012)."""
        return self.log.sign_checkpoint(
            self.keyring().log_signer(), now, previous_keys=self._replaced_log_keys()
        )

    def _replaced_log_keys(self) -> list[bytes]:
        """The log key the latest card replaced, when the latest card rotated it: the
        newest checkpoint may still be signed by that key until the first checkpoint
        under the new one (ADR 0017; a crash between the two is finished here)."""
        cards = self.own_chain().cards
        if len(cards) < 2 or cards[-1].log_vkey == cards[-2].log_vkey:
            return []
        return [parse_verifier_key(cards[-2].log_vkey).public_key]

    def check_log(self) -> None:
        """Raise what :meth:`checkpoint` would refuse, without signing or writing: used by
        ``serve`` before it listens, and by Status (docs/THREATS.md I04, I07, I09)."""
        with self.store.read_snapshot():
            self.log.verify(previous_keys=self._replaced_log_keys())

    def follow_highwater(self) -> int | None:
        """As a standby (docs/adr/0026): raise this data directory's high-water mark to the
        leader's newest checkpoint, verified with the node's public log keys from its card
        chain in the database. Never loads the key file, never writes the database."""
        with self.store.read_snapshot():
            keys = [parse_verifier_key(self.own_chain().latest.log_vkey).public_key]
            return self.log.follow_highwater([*keys, *self._replaced_log_keys()])

    def check_passphrase(self) -> None:
        """Open the key file with the node's passphrase and keep nothing: a standby learns
        at start, not at takeover, that it could not unlock the keys (docs/adr/0026). It
        finishes no pending rotation (the leader may be in the middle of one)."""
        load_keyring(self.data_dir / KEYFILE, self.passphrase, on_unencrypted=lambda: None)

    def reload_keys(self) -> None:
        """Forget the loaded key file and card chain: a standby taking over loads them
        again, since the leader may have rotated keys while it waited."""
        self._keyring = None
        self._own_chain = None

    # -- cards ---------------------------------------------------------------------------
    def own_chain(self) -> VerifiedChain:
        rows = tuple(self.store.own_card_rows())
        if not rows:
            raise ConfigError(f"node in {self.data_dir} has no card; it was not initialised fully")
        if self._own_chain is None or self._own_chain[0] != rows:  # verified once per version
            self._own_chain = (rows, extend_chain(None, [_signed_card_from_row(r) for r in rows]))
        return self._own_chain[1]

    def trust_store(self) -> TrustStore:
        return TrustStore(
            LoggedPeerRecords(self.store, self.log_facts), self.config.node, self._attest_peer
        )

    def log_facts(self) -> LogFacts:
        """Trust, policy and agreement state as this node's signed log holds it (ADR 0013)."""
        return log_facts(self.log, self.own_chain().latest.log_vkey)

    def attested_peers(self) -> list[PeerRecord]:
        """Every partner's trust-store row, each checked against the log first (what is
        displayed, e.g. by 'peer list', including a revoked partner's revocation time)."""
        records = self.trust_store().list()
        for record in records:
            self._attest_peer(record)
        return records

    def _bind_peer(self, kind: str, now: datetime, **attrs: object) -> None:
        """Log a trust-store change (``attrs["peer"]`` names the partner) and bind its row
        to that log entry, in the caller's transaction."""
        index = self.record(self.store.db, kind, now, **attrs)
        self.store.peers.bind_log_index(str(attrs["peer"]), index)

    def _attest_peer(self, record: PeerRecord) -> None:
        """A trust-store row must be what the log recorded (docs/THREATS.md I03, I08): the
        latest ``peer.*`` event for the partner names its fingerprint, its status and the
        time it is revoked from, and the row is bound to that event. An insider who swaps
        a partner's card, or un-revokes it by editing ``status`` / ``revoked_from`` (or
        points ``log_index`` at an older event), is caught here; editing the log as well
        is caught by the checkpoints and ``audit verify``."""
        state = self.log_facts().peers.get(record.node)
        if state is None or record.log_index != state.log_index:
            mismatch = "log_index"
        elif record.fingerprint != state.fingerprint:
            mismatch = "fingerprint"
        elif record.status != state.status:
            mismatch = "status"
        elif not same_time(record.revoked_from, state.revoked_from):
            mismatch = "revoked_from"
        else:
            return
        raise KeyringError(
            f"trust store entry for {record.node} does not match the log entry that "
            f"recorded it (field {mismatch})",
            code="keyring.tampered",
            next_step="The database may have been edited: run 'accord audit export' and "
            "'accord audit verify', and re-add the partner after checking its fingerprint.",
        )

    def add_peer(
        self, chain_data: bytes, *, fingerprint: str | None, tofu: bool, now: datetime
    ) -> AddResult:
        """Trust a partner's card chain; logged as ``peer.added`` / ``peer.updated``."""
        with self.store.transaction():
            result = self.trust_store().add(chain_data, fingerprint=fingerprint, tofu=tofu, now=now)
            if result.outcome != "unchanged":
                latest = result.chain.latest
                self._bind_peer(
                    "peer.added" if result.outcome == "added" else "peer.updated",
                    now,
                    peer=latest.node,
                    fingerprint=latest.fingerprint,
                    card_version=latest.version,
                    trust_on_first_use=tofu,
                )
        if result.outcome != "unchanged":
            self.checkpoint(now)
        return result

    def refresh_peer_card(self, peer: str, newer: Sequence[SignedCard], now: datetime) -> bool:
        """Newer card versions a partner served (GetCard); logged as ``peer.updated``."""
        with self.store.transaction():
            chain = self.trust_store().update(peer, newer, now)
            if chain is None:
                return False
            latest = chain.latest
            self._bind_peer(
                "peer.updated",
                now,
                peer=peer,
                fingerprint=latest.fingerprint,
                card_version=latest.version,
                trust_on_first_use=False,
            )
        self.checkpoint(now)
        return True

    def remove_peer(self, peer: str, now: datetime) -> PeerRecord:
        with self.store.transaction() as db:
            record = self.trust_store().remove(peer)
            self.record(db, "peer.removed", now, peer=peer, fingerprint=record.fingerprint)
        self.checkpoint(now)
        return record

    def revoke_peer(self, peer: str, revoked_from: datetime, now: datetime) -> PeerRecord:
        with self.store.transaction():
            record = self.trust_store().revoke(peer, revoked_from, now)
            self._bind_peer(
                "peer.revoked",
                now,
                peer=peer,
                fingerprint=record.fingerprint,
                revoked_from=record.revoked_from,
            )
        self.checkpoint(now)
        return record

    def apply_peer_revocations(
        self, peer: str, statements: Sequence[SignedRevocation], now: datetime
    ) -> list[Revocation]:
        """Revocations a partner served for its own keys (GetCard), each verified against
        the chain we trust and logged as ``peer.revoked``; those already known are skipped.
        One that fails stores none of them."""
        if len(statements) > MAX_REVOCATIONS:
            raise PeerDataError(
                f"partner {peer} served more than {MAX_REVOCATIONS} revocations",
                code="peer.revocation_invalid",
            )
        applied: list[Revocation] = []
        with self.store.transaction() as db:
            store = self.trust_store()
            for signed in statements:
                result = store.apply_revocation(peer, signed, now)
                if result is None:
                    continue
                revocation, record = result
                attrs: dict[str, object] = {
                    "peer": peer,
                    "fingerprint": record.fingerprint,
                    "revoked_key": revocation.fingerprint,
                    "revoked_from": revocation.revoked_from,
                    "reason": revocation.reason,
                    "source": "statement",
                }
                if fingerprints_equal(revocation.fingerprint, record.fingerprint):
                    self._bind_peer("peer.revoked", now, **attrs)  # the row changed
                else:
                    self.record(db, "peer.revoked", now, **attrs)
                applied.append(revocation)
        if applied:
            self.checkpoint(now)
        return applied

    # -- our own keys --------------------------------------------------------------------
    def own_revocations(self) -> list[SignedRevocation]:
        """Every revocation of one of our keys, oldest first (served by GetCard)."""
        return [SignedRevocation(st, sig) for st, sig in self.store.meta.own_revocations()]

    def pending_sealed_under(self, key_fingerprint: str, revoked_from: datetime) -> int:
        """Envelopes not yet acknowledged by a partner that were sealed under our identity
        key ``key_fingerprint`` at or after ``revoked_from``: revoking the key from that
        time blocks them (partners refuse them, and sync cannot pass them)."""
        cards = self.own_chain().cards
        era = [i for i, c in enumerate(cards) if fingerprints_equal(c.fingerprint, key_fingerprint)]
        if not era:
            return 0
        end = cards[era[-1] + 1].issued_at if era[-1] + 1 < len(cards) else "9999"
        start = max(format_time(revoked_from), cards[era[0]].issued_at)
        return self.store.outbox.pending_created_between(start, end)

    def own_revocation_count(self) -> int:
        """Statements of every kind (identity keys and, ADR 0018, the other keys): a
        followed Pull ends when this changes, so partners learn a new one in a heartbeat."""
        return self.store.meta.own_revocation_count()

    # -- revocations of replaced log, witness and TLS CA keys (ADR 0018) ------------------
    def own_key_revocations(self) -> list[SignedRevocation]:
        """Every revocation of one of our replaced log/witness/TLS keys, oldest first
        (served by GetCard in ``key_revocations``)."""
        return [SignedRevocation(st, sig) for st, sig in self.store.meta.own_key_revocations()]

    def revoke_own_other_key(
        self, kind: str, wanted: str, revoked_from: datetime, reason: str, now: datetime
    ) -> tuple[KeyRevocationStatement, bool]:
        """Sign, keep and log (``key.revoked`` with ``key``: the kind) a statement that our
        replaced ``kind`` key named by ``wanted`` is invalid from ``revoked_from`` on.
        The current key is refused (rotate first). Returns it and whether it is new."""
        chain = self.own_chain()
        keys: list[str] = []
        for card in chain.cards:
            key = card_key(card, kind)
            if matches(key, wanted) and key not in keys:
                keys.append(key)
        if len(keys) != 1:
            raise InputError(
                f"no {kind} key of this node is named {wanted!r}"
                if not keys
                else f"{wanted!r} names more than one {kind} key; give the whole key",
                code="input.unknown_key",
                next_step="See this node's keys with 'accord keys list --all'.",
            )
        statement = KeyRevocationStatement(
            node=self.config.node,
            kind=kind,
            key=keys[0],
            revoked_from=format_time(revoked_from),
            reason=reason,
            issued_at=format_time(now),
        )
        signed = sign_key_revocation(statement, self.keyring().identity_signer(), chain)
        with self.store.transaction() as db:
            held = self.store.meta.own_key_revocation(kind, keys[0])
            if held is not None:
                return parse_key_revocation_unverified(held), False
            index = self.record(
                db,
                "key.revoked",
                now,
                key=kind,
                key_id=keys[0],
                revoked_from=statement.revoked_from,
                reason=reason,
                current=False,
            )
            self.store.meta.add_own_key_revocation(
                db,
                {
                    "kind": kind,
                    "key": keys[0],
                    "revoked_from": statement.revoked_from,
                    "statement": signed.statement,
                    "signature": signed.signature,
                    "log_index": index,
                },
            )
        self.checkpoint(now)
        return statement, True

    def apply_peer_key_revocations(
        self, peer: str, statements: Sequence[SignedRevocation], now: datetime
    ) -> list[KeyRevocationStatement]:
        """Revocations of a partner's replaced log/witness/TLS keys it served (GetCard):
        all verify against the chain we trust (signed by an identity key of that chain) or
        none is stored; each new one is logged ``peer.key_revoked``. A key is revoked once;
        the first statement stands."""
        if not statements:
            return []
        chain = self.trust_store().trusted_chain(peer, now)
        verified = verify_all(statements, chain)
        applied: list[KeyRevocationStatement] = []
        with self.store.transaction() as db:
            for statement, signed in zip(verified, statements, strict=True):
                if self.store.peers.key_revocation_known(peer, statement.kind, statement.key):
                    continue
                index = self.record(
                    db,
                    "peer.key_revoked",
                    now,
                    peer=peer,
                    key=statement.kind,
                    key_id=statement.key,
                    revoked_from=statement.revoked_from,
                    reason=statement.reason,
                )
                self.store.peers.add_key_revocation(
                    db,
                    {
                        "peer": peer,
                        "kind": statement.kind,
                        "key": statement.key,
                        "revoked_from": statement.revoked_from,
                        "statement": signed.statement,
                        "signature": signed.signature,
                        "log_index": index,
                    },
                )
                applied.append(statement)
        if applied:
            self.checkpoint(now)
        return applied

    def peer_key_revocations(self, peer: str) -> list[KeyRevocationStatement]:
        """The revocations of ``peer``'s log/witness/TLS keys we stored, oldest first."""
        return [
            parse_key_revocation_unverified(st)
            for st, _sig in self.peer_key_revocation_statements(peer)
        ]

    def peer_revoked_keys(self, peer: str, kind: str) -> dict[str, datetime]:
        """``peer``'s revoked keys of ``kind`` (as its cards name them) -> from when."""
        return revoked_keys(self.peer_key_revocations(peer), kind)

    def peer_key_revocation_statements(self, peer: str) -> list[tuple[bytes, bytes]]:
        return self.store.peers.key_revocation_statements(peer)

    def revoke_own_key(
        self, key_fingerprint: str, revoked_from: datetime, reason: str, now: datetime
    ) -> tuple[Revocation, bool]:
        """Sign, keep and log (``key.revoked``) a statement that our identity key with
        ``key_fingerprint`` is invalid from ``revoked_from`` on. Returns the statement and
        whether it is new (a key is revoked once; the first statement stands)."""
        chain = self.own_chain()
        keys = [
            c.identity_key
            for c in chain.cards
            if fingerprints_equal(c.fingerprint, key_fingerprint)
        ]
        if not keys:
            raise InputError(
                "no identity key of this node has that fingerprint",
                code="input.unknown_key",
                next_step="List this node's identity keys with 'accord keys list'.",
            )
        revocation = Revocation(
            node=self.config.node,
            identity_key=keys[0],
            revoked_from=format_time(revoked_from),
            reason=reason,
            issued_at=format_time(now),
        )
        signed = sign_revocation(revocation, self.keyring().identity_signer(), chain)
        with self.store.transaction() as db:  # BEGIN IMMEDIATE: one revoker at a time
            held = self.store.meta.own_revocation(keys[0])
            if held is not None:
                return parse_revocation_unverified(held), False
            index = self.record(
                db,
                "key.revoked",
                now,
                fingerprint=revocation.fingerprint,
                revoked_from=revocation.revoked_from,
                reason=reason,
                current=keys[0] == chain.latest.identity_key,
            )
            self.store.meta.add_own_revocation(
                db,
                {
                    "identity_key": keys[0],
                    "revoked_from": revocation.revoked_from,
                    "statement": signed.statement,
                    "signature": signed.signature,
                    "log_index": index,
                },
            )
        self.checkpoint(now)
        return revocation, True

    def rotate_identity(self, now: datetime) -> VerifiedChain:
        """New identity key; the new card version is signed by the old key and the new."""
        return self.rotate_keys(now, (KEY_IDENTITY,))

    def rotate_encryption(self, now: datetime, suite: str) -> VerifiedChain:
        """Start a new encryption-key epoch; retired keys past retention are destroyed."""
        return self.rotate_keys(now, (KEY_ENCRYPTION,), suite=suite)

    def rotate_keys(
        self, now: datetime, kinds: Sequence[str], *, suite: str | None = None
    ) -> VerifiedChain:
        """Rotate each kind of ``KEY_KINDS`` named (ADR 0017) into one new card version,
        each kind logged (``key.rotated``). The running process uses the new keys at once:
        the keyring is replaced in memory, TLS and channels follow within a refresh."""
        unknown = [k for k in kinds if k not in KEY_KINDS]
        if unknown or not kinds:
            raise InputError(
                f"nothing to rotate: unknown key kind(s) {unknown}" if unknown else "no key kind",
                code="input.key_kind",
                next_step="Name one of: " + ", ".join(KEY_KINDS) + ".",
            )
        old = self.keyring()
        new = old
        wanted = [k for k in KEY_KINDS if k in kinds]
        for kind in wanted:
            if kind == KEY_IDENTITY:
                new = new.with_new_identity()
            elif kind == KEY_ENCRYPTION:
                latest = self.own_chain().latest.encryption_keys
                new = new.with_new_encryption_epoch(now, suite or latest[-1].suite)
            elif kind == KEY_TLS:
                host = self.own_chain().latest.endpoint.rpartition(":")[0].strip("[]")
                new = new.with_new_tls(host, now)
            elif kind == KEY_LOG:
                new = new.with_new_log_key()
            else:
                new = new.with_new_witness_key()
        return self._publish(old, new, now, kinds=wanted)

    def renew_encryption_epochs(self, now: datetime) -> VerifiedChain | None:
        """The unattended epoch (ADR 0017): a new key for every suite whose newest key has
        less than half an epoch left, in one new card version; None when none is due."""
        old = self.keyring()
        new = old.with_renewed_epochs(now)
        if new is None:
            return None
        return self._publish(old, new, now, kinds=[KEY_ENCRYPTION], trigger="schedule")

    def renew_tls_certificate(self, now: datetime) -> bool:
        """A new node certificate from the same CA a month before the old one ends (ADR
        0017): the card does not change, so no new version; logged as ``key.rotated``
        with ``key: "tls_certificate"``. Returns whether it renewed."""
        old = self.keyring()
        host = self.own_chain().latest.endpoint.rpartition(":")[0].strip("[]")
        new = old.with_renewed_certificate(host, now)
        if new is None:
            return False
        latest = self.own_chain().latest
        pending = self.data_dir / PENDING_KEYFILE
        if pending.exists():
            pending.unlink()
        save_keyring(pending, new, self._reuse_passphrase(), replace=False)
        with self.store.transaction() as db:
            self.record(
                db,
                "key.rotated",
                now,
                key="tls_certificate",
                card_version=latest.version,
                fingerprint=latest.fingerprint,
                previous_fingerprint=latest.fingerprint,
                trigger="schedule",
            )
        os.replace(pending, self.data_dir / KEYFILE)
        self._keyring = new
        self.checkpoint(now)
        return True

    def _publish(
        self,
        old: Keyring,
        new: Keyring,
        now: datetime,
        *,
        kinds: Sequence[str],
        trigger: str = "operator",
    ) -> VerifiedChain:
        chain = self.own_chain()
        latest = chain.latest
        card = new.card(
            name=latest.name, endpoint=latest.endpoint, version=latest.version + 1, issued_at=now
        )
        signed = sign_card(card, new.identity_signer(), old.identity_signer())
        extended = extend_chain(chain, [signed])
        pending = self.data_dir / PENDING_KEYFILE
        if pending.exists():
            pending.unlink()
        # 1. the new key file beside the old; 2. the card in one commit; 3. the rename.
        save_keyring(pending, new, self._reuse_passphrase(), replace=False)
        with self.store.transaction() as db:
            self.store.meta.add_own_card(db, card.version, _signed_card_row(signed))
            for kind in kinds:
                self.record(
                    db,
                    "key.rotated",
                    now,
                    key=kind,
                    card_version=card.version,
                    fingerprint=card.fingerprint,
                    previous_fingerprint=latest.fingerprint,
                    encryption_kids=[k.kid for k in card.encryption_keys],
                    trigger=trigger,
                )
        os.replace(pending, self.data_dir / KEYFILE)
        self._keyring = new
        # Signed by the new log key when it changed: from here on the log's checkpoints
        # verify under the card that is now the latest (ADR 0017).
        self.checkpoint(now)
        return extended

    def _reuse_passphrase(self) -> str | None:
        return None if self._unencrypted else self.passphrase()

    # -- witnessing (added for node/rpc/cosigning.py) --------------------------------------------
    def cosigned_size(self, witness: str) -> int:
        """The size of our largest checkpoint ``witness`` has cosigned; 0 when none."""
        size = self.store.log.cosigned_size(witness)
        return 0 if size is None else size


def is_serving(data_dir: Path) -> bool:
    """True when an ``accord serve`` answers on this node's Officer socket."""
    path = data_dir / "officer.sock"
    if not path.exists():
        return False
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
        return True
    except OSError:
        return False
    finally:
        probe.close()


def init_node(
    data_dir: Path,
    *,
    node: str,
    name: str,
    endpoint: str,
    passphrase: str | None,
    now: datetime,
    suite: str = SUITE_HYBRID,
    database: str | None = None,
) -> Node:
    """Create a node in an empty (or missing) data directory. Every argument is checked
    before anything is written; an existing node is never touched. With ``database`` (a
    PostgreSQL URL or keyword DSN) the node's state goes there and ``config.toml`` names
    it; keys, TLS material and the key file stay in the data directory."""
    check_node_id(node, field="--node")
    check_display_name(name, field="--name")
    check_endpoint(endpoint, field="--endpoint")
    if database is not None:
        database = check_database(database, key="--database")
    for existing in (CONFIG_FILE, DB_FILE, str(KEYFILE)):
        if (data_dir / existing).exists():
            raise ConfigError(
                f"{data_dir} already holds an Accord node ({existing} exists)",
                code="config.exists",
                next_step="Use another --data directory; an existing node is never overwritten.",
            )
    if data_dir.exists() and not data_dir.is_dir():
        raise ConfigError(f"{data_dir} exists and is not a directory")
    config = NodeConfig(
        node=node,
        name=name,
        endpoint=endpoint,
        listen=endpoint,
        log_origin=f"{node}.accord/log",
        database=database,
    )
    host = endpoint.rpartition(":")[0].strip("[]")
    keyring = generate_keyring(node, config.log_origin, host, now, suite)

    created = not data_dir.exists()
    try:
        return _write_new_node(data_dir, config, keyring, passphrase, now)
    except BaseException:
        _remove_partial_node(data_dir, created)
        raise


def _write_new_node(
    data_dir: Path, config: NodeConfig, keyring: Keyring, passphrase: str | None, now: datetime
) -> Node:
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    # An existing directory keeps its mode through mkdir: a 0755 one would leave node.db and
    # decrypted partner data readable by every local user (docs/THREATS.md B07).
    os.chmod(data_dir, 0o700)
    save_keyring(data_dir / KEYFILE, keyring, passphrase, replace=False)
    tls_dir = data_dir / "tls"
    tls_dir.mkdir(mode=0o700, exist_ok=True)
    (tls_dir / "ca.pem").write_bytes(keyring.tls.ca_cert_pem)
    (tls_dir / "node.pem").write_bytes(keyring.tls.cert_pem)
    store = open_store(data_dir, config.database, config.node, create=True)
    if isinstance(store, PgStore) and store.own_card_rows():
        store.close()
        raise ConfigError(
            f"{store.where} already holds an Accord node",
            code="config.exists",
            next_step="Give each node a database of its own; an existing node is never "
            "overwritten.",
        )
    card = keyring.card(name=config.name, endpoint=config.endpoint, version=1, issued_at=now)
    signed = sign_card(card, keyring.identity_signer(), None)
    with store.transaction() as db:
        store.meta.add_own_card(db, 1, _signed_card_row(signed))
        store.set_meta(db, "node", config.node)
        ExchangeLog(store, config.log_origin, keys=lambda: keyring).append(
            db, [("node.created", now, {"node": config.node, "fingerprint": card.fingerprint})]
        )
    node = Node(
        data_dir=data_dir,
        config=config,
        store=store,
        passphrase=lambda: passphrase or "",
        _keyring=keyring,
        _unencrypted=passphrase is None,
    )
    node.checkpoint(now)
    # config.toml last: its presence marks a complete node.
    tmp = data_dir / (CONFIG_FILE + ".tmp")
    tmp.write_text(config.to_toml(), "utf-8")
    os.replace(tmp, data_dir / CONFIG_FILE)
    return node


def _check_private_dir(data_dir: Path) -> None:
    """The data directory holds the database and exports of partner data: owner only."""
    mode = stat.S_IMODE(data_dir.stat().st_mode)
    if mode & 0o077:
        raise ConfigError(
            f"the data directory {data_dir} has loose permissions {mode:04o}",
            code="config.loose_permissions",
            next_step=f"Run 'chmod 700 {data_dir}' and check who could have read node.db.",
        )


def _remove_partial_node(data_dir: Path, created: bool) -> None:
    """An init that failed half-way leaves nothing behind (so it can simply be retried)."""
    if created:
        shutil.rmtree(data_dir, ignore_errors=True)
        return
    for name in ("keys", "tls"):
        shutil.rmtree(data_dir / name, ignore_errors=True)
    for name in (
        DB_FILE,
        DB_FILE + "-wal",
        DB_FILE + "-shm",
        CONFIG_FILE + ".tmp",
        "log.highwater",
    ):
        (data_dir / name).unlink(missing_ok=True)
