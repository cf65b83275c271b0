"""Agreements at a node: proposing from officer-written terms, countersigning, storing the
fully signed agreement (logged as ``agreement.signed``), and finding the one in force."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from exchange.agreement import (
    NO_ONWARD,
    NO_RESPONSE_RULES,
    RECIPIENT_CLASSES,
    Agreement,
    Ceiling,
    OnwardRules,
    ResponseRules,
    SignedAgreement,
    VerifiedAgreement,
    ceiling_for,
    direction,
    parse_agreement_unverified,
    parse_onward,
    parse_response,
    parse_signed_agreement_unverified,
    propose,
    response_problems,
    sign_agreement,
    verified_signers,
    verify_agreement,
)
from exchange.canonical import sha256_digest
from exchange.card import SUITE_HYBRID, SUITE_X25519
from exchange.crypto import verify_ed25519
from exchange.errors import InputError, PeerDataError, PolicyError, StoreError
from exchange.purpose import Purpose, signed_message
from exchange.termination import (
    Termination,
    parse_signed_termination_unverified,
    parse_termination_unverified,
    sign_termination,
    verify_termination,
)
from exchange.times import format_time, parse_time
from node.home import Node
from node.services.schemas import registry

SUITES = {"hybrid": SUITE_HYBRID, "x25519": SUITE_X25519}
MAX_TERMS = 64 * 1024


@dataclass(frozen=True)
class StoredAgreement:
    digest: str
    peer: str
    id: str
    version: int
    not_before: str
    not_after: str
    stored_at: str
    signed: bytes


def _schemas_of(section: dict[str, Any], where: str) -> dict[str, tuple[list[str], list[str]]]:
    out = {}
    for name, rule in dict(section.get("schema", {})).items():
        if not isinstance(rule, dict):
            raise InputError(f"{where}.schema.{name} must be a table with fields and labels")
        unknown = set(rule) - {"fields", "labels"}
        if unknown:
            raise InputError(f"{where}.schema.{name}: unknown keys {sorted(unknown)}")
        out[name] = (list(rule.get("fields", [])), list(rule.get("labels", [])))
    return out


def _onward_of(section: dict[str, Any], where: str) -> OnwardRules:
    """``[send.onward]`` / ``[receive.onward]``: whom the receiver may pass reports on to.
    Left out, nothing goes onward."""
    if "onward" not in section:
        return NO_ONWARD
    try:
        return parse_onward(section["onward"], f"{where}.onward", from_terms=True)
    except InputError as e:
        raise InputError(
            f"terms: {e.message}",
            next_step="Name TLP levels clear, green, amber or amber+strict, and recipient "
            f"classes from: {', '.join(RECIPIENT_CLASSES)}.",
        ) from e


def schema_severities(names: list[str] | None = None) -> dict[str, list[str]]:
    """Each schema's ``severity`` enum in the local pack (an empty list when it has none):
    what the response rules of an agreement may be keyed by."""
    reg = registry()
    out: dict[str, list[str]] = {}
    for name in reg.names() if names is None else names:
        prop = reg.schema(name).get("properties", {}).get("severity", {})
        enum = prop.get("enum") if isinstance(prop, dict) else None
        out[name] = [v for v in enum if isinstance(v, str)] if isinstance(enum, list) else []
    return out


def _response_of(terms: dict[str, Any]) -> ResponseRules:
    """``[response."<schema>".<severity>]`` with ``acknowledge`` and optional ``respond``.
    Left out, the agreement sets no deadlines."""
    if "response" not in terms:
        return NO_RESPONSE_RULES
    try:
        return parse_response(terms["response"], "response", from_terms=True)
    except InputError as e:
        raise InputError(
            f"terms: {e.message}",
            next_step='Write e.g. [response."threat-alert@1".critical] with acknowledge = '
            '"PT15M" and respond = "PT24H" (ISO 8601 durations, 1 second to 90 days).',
        ) from e


def terms_to_agreement(node: Node, peer: str, text: str, now: datetime) -> Agreement:
    """Build an agreement from the officer's terms file (``sop/agreements/example-terms.toml``)."""
    if len(text) > MAX_TERMS:
        raise InputError(f"terms file is larger than {MAX_TERMS} characters")
    try:
        terms = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise InputError(f"terms file is not valid TOML: {e}") from e
    unknown = set(terms) - {
        "id",
        "suite",
        "valid_days",
        "not_before",
        "not_after",
        "send",
        "receive",
        "response",
    }
    if unknown:
        raise InputError(f"terms: unknown keys {sorted(unknown)}")
    for key in ("id", "send", "receive"):
        if key not in terms:
            raise InputError(f"terms: '{key}' is missing")
    suite = SUITES.get(str(terms.get("suite", "hybrid")))
    if suite is None:
        raise InputError(f"terms: suite must be one of {sorted(SUITES)}")
    me = node.config.node
    send, receive = dict(terms["send"]), dict(terms["receive"])
    for where, section in (("send", send), ("receive", receive)):
        unknown_keys = set(section) - {"tlp_max", "schema", "onward"}
        if unknown_keys:
            raise InputError(f"terms: {where}: unknown keys {sorted(unknown_keys)}")
    directions = [
        direction(
            me,
            peer,
            str(send.get("tlp_max", "")),
            _schemas_of(send, "send"),
            _onward_of(send, "send"),
        ),
        direction(
            peer,
            me,
            str(receive.get("tlp_max", "")),
            _schemas_of(receive, "receive"),
            _onward_of(receive, "receive"),
        ),
    ]
    reg = registry()
    names = sorted({n for d in directions for n in d.schemas})
    unknown_schemas = [n for n in names if n not in reg]
    if unknown_schemas:
        raise InputError(
            f"terms: unknown schema {unknown_schemas[0]}", next_step="See 'accord schema list'."
        )
    response = _response_of(terms)
    not_before = (
        parse_time(terms["not_before"], field="not_before") if "not_before" in terms else now
    )
    if "not_after" in terms:
        not_after = parse_time(terms["not_after"], field="not_after")
    else:
        not_after = not_before + timedelta(days=int(terms.get("valid_days", 365)))
    return propose(
        agreement_id=str(terms["id"]),
        parties=[me, peer],
        schemas={n: reg.digest(n) for n in names},
        ceiling=directions,
        suite=suite,
        not_before=not_before,
        not_after=not_after,
        schema_labels={n: reg.labels(n) for n in names},
        response=response,
        schema_severities=schema_severities(names),
    )


def _party_keys(
    node: Node, agreement: Agreement, now: datetime, signed: SignedAgreement | None = None
) -> dict[str, bytes]:
    """Each party's identity key for verifying ``signed``: the key in its card chain that
    made its signature (a party may have rotated since it signed), else its current key."""
    me = node.config.node
    chains = {me: node.own_chain()}
    for party in agreement.parties:
        if party != me:
            chains[party] = node.trust_store().trusted_chain(party, now)
    keys = {}
    for party, chain in chains.items():
        keys[party] = chain.latest.identity_key
        signature = None if signed is None else signed.signatures.get(party)
        if signature is None:
            continue
        message = signed_message(Purpose.AGREEMENT, signed.agreement_bytes)  # type: ignore[union-attr]
        for card in reversed(chain.cards):
            try:
                verify_ed25519(card.identity_key, message, signature, what="agreement signature")
            except PeerDataError:
                continue
            keys[party] = card.identity_key
            break
    return keys


def propose_agreement(node: Node, peer: str, terms: str, now: datetime) -> SignedAgreement:
    node.trust_store().trusted_chain(peer, now)  # only with a partner we trust
    agreement = terms_to_agreement(node, peer, terms, now)
    return sign_agreement(agreement, node.config.node, node.keyring().identity_signer())


def sign_and_store(
    node: Node, data: bytes, now: datetime
) -> tuple[SignedAgreement, VerifiedAgreement | None]:
    """Countersign an agreement file. Every signature present must verify first. When both
    parties have signed, the agreement is stored and logged; returns it verified."""
    signed = parse_signed_agreement_unverified(data)
    content = parse_agreement_unverified(signed.agreement_bytes)
    me = node.config.node
    if me not in content.parties:
        raise PolicyError("this node is not a party to the agreement", code="policy.not_a_party")
    keys = _party_keys(node, content, now, signed)
    verified_signers(signed, keys)
    _check_schemas(content)
    if me not in signed.signatures:
        signed = sign_agreement(signed, me, node.keyring().identity_signer())
    if set(signed.signatures) != set(content.parties):
        return signed, None
    verified = verify_agreement(signed, keys, now)
    peer = content.peer_of(me)
    with node.store.transaction() as db:
        exists = node.store.agreements.exists(verified.digest)
        if not exists:
            node.store.agreements.add(
                db,
                {
                    "digest": verified.digest,
                    "peer": peer,
                    "id": content.id,
                    "version": content.version,
                    "signed": signed.to_bytes(),
                    "not_before": content.not_before,
                    "not_after": content.not_after,
                    "stored_at": format_time(now),
                },
            )
            node.record(
                db,
                "agreement.signed",
                now,
                peer=peer,
                agreement_id=content.id,
                agreement_version=content.version,
                agreement_digest=verified.digest,
                parties=list(content.parties),
                suite=content.suite,
                not_before=content.not_before,
                not_after=content.not_after,
            )
    if not exists:
        node.checkpoint(now)
    return signed, verified


def terminate_agreement(
    node: Node, peer: str, effective_at: datetime, reason: str, now: datetime
) -> tuple[bytes, Termination]:
    """End the agreement in force with ``peer`` at ``effective_at``: sign a termination
    statement for the partner, and log it (``agreement.terminated``). Returns the file's
    bytes. Nothing flows under that agreement from ``effective_at`` on, on either side once
    the partner has recorded the statement (``accept_termination``)."""
    agreement = current_agreement(node, peer, now)
    if agreement is None:
        raise PolicyError(
            f"no agreement with {peer} is in force", code="peer.no_agreement",
            next_step="'accord agreement list' shows the agreements and their dates.",
        )  # fmt: skip
    if effective_at < now - timedelta(minutes=5):
        raise InputError("--at is in the past: an end cannot be back-dated")
    termination = Termination(
        agreement=agreement.digest,
        by=node.config.node,
        peer=peer,
        effective_at=format_time(effective_at),
        reason=reason,
        issued_at=format_time(now),
    )
    signed = sign_termination(termination, node.keyring().identity_signer())
    _record_termination(node, termination, signed.to_bytes(), now)
    return signed.to_bytes(), termination


def accept_termination(node: Node, data: bytes, now: datetime) -> tuple[Termination, bool]:
    """Verify a partner's termination file and log it; returns it and whether it was new.
    It must be signed by the partner's identity key and name an agreement between us."""
    signed = parse_signed_termination_unverified(data)
    unverified = parse_termination_unverified(signed.statement)
    if unverified.peer != node.config.node:
        raise PeerDataError(
            "the termination is addressed to another node", code="agreement.bad_termination"
        )
    chain = node.trust_store().trusted_chain(unverified.by, now)
    termination = verify_termination(signed, chain.latest.identity_key)
    known = {a.digest for a in node.log_facts().agreements.get(termination.by, ())}
    if termination.agreement not in known:
        raise PeerDataError(
            f"the termination names no agreement this node holds with {termination.by}",
            code="agreement.bad_termination",
        )
    return termination, _record_termination(node, termination, data, now)


def _record_termination(node: Node, t: Termination, data: bytes, now: datetime) -> bool:
    digest = sha256_digest(data)
    other = t.peer if t.by == node.config.node else t.by
    if digest in node.log_facts().termination_digests:
        return False  # the same file accepted twice adds nothing (docs/THREATS.md B05)
    with node.store.transaction() as db:
        node.record(
            db,
            "agreement.terminated",
            now,
            peer=other,
            by=t.by,
            agreement_digest=t.agreement,
            effective_at=t.effective_at,
            reason=t.reason,
            termination_digest=digest,
        )
    node.checkpoint(now)  # the fold reads what a signed checkpoint covers
    return True


def _check_schemas(agreement: Agreement) -> None:
    reg = registry()
    for name, digest in agreement.schemas.items():
        if name not in reg or reg.digest(name) != digest:
            raise PolicyError(
                f"agreement schema {name} is not the one this node ships (digest differs)",
                code="policy.schema_mismatch",
                next_step="Both partners must run the same SOP schema pack.",
            )
    problems = response_problems(agreement, schema_severities(sorted(agreement.schemas)))
    if problems:
        raise PolicyError(
            f"agreement: {problems[0]}",
            code="policy.agreement_invalid",
            next_step="Ask the partner to propose terms whose response rules name severities "
            "of the agreed schemas.",
        )


def _tampered(what: str, field: str) -> StoreError:
    return StoreError(
        f"{what} does not match what was signed and logged (field {field})",
        code="store.row_tampered",
        next_step="The database was edited outside Accord: nothing is released under it. "
        "Run 'accord audit export' and 'accord audit verify', and restore the database "
        "from a backup.",
    )


def _check_row(node: Node, stored: StoredAgreement, logged: set[str]) -> None:
    """A stored agreement's columns are copies of its signed bytes, and only an agreement
    the log recorded (``agreement.signed``) is one (docs/THREATS.md I08)."""
    what = f"stored agreement {stored.digest[:20]}"
    try:
        signed = parse_signed_agreement_unverified(stored.signed)
        content = parse_agreement_unverified(signed.agreement_bytes)
    except (InputError, PeerDataError) as e:
        raise _tampered(what, "signed") from e
    checks = (
        ("digest", sha256_digest(signed.agreement_bytes) == stored.digest),
        ("log", stored.digest in logged),
        (
            "peer",
            node.config.node in content.parties
            and content.peer_of(node.config.node) == stored.peer,
        ),
        ("id", content.id == stored.id),
        ("version", content.version == stored.version),
        ("not_before", content.not_before == stored.not_before),
        ("not_after", content.not_after == stored.not_after),
    )
    for name, ok in checks:
        if not ok:
            raise _tampered(what, name)


def _logged_digests(node: Node) -> dict[str, set[str]]:
    return {
        peer: {a.digest for a in entries} for peer, entries in node.log_facts().agreements.items()
    }


def stored_agreements(node: Node, peer: str | None = None) -> list[StoredAgreement]:
    """Stored agreements, each checked against its signed bytes and the log."""
    rows = node.store.agreements.rows(peer)
    out = [
        StoredAgreement(r[0], r[1], r[2], int(r[3]), r[4], r[5], r[6], bytes(r[7])) for r in rows
    ]
    logged = _logged_digests(node)
    for stored in out:
        _check_row(node, stored, logged.get(stored.peer, set()))
    return out


def _stored(node: Node, digest: str) -> StoredAgreement | None:
    row = node.store.agreements.row(digest)
    if row is None:
        return None
    r = row
    return StoredAgreement(r[0], r[1], r[2], int(r[3]), r[4], r[5], r[6], bytes(r[7]))


def current_agreement(node: Node, peer: str, now: datetime) -> VerifiedAgreement | None:
    """The agreement in force with ``peer`` at ``now``: of those the log recorded as signed
    by both (``agreement.signed``) and already started, the one signed last. A newer
    agreement supersedes the older ones from its ``not_before`` on, even when they would
    run longer, and when it ends nothing is in force (an older, looser one does not come
    back); one signed later but not started yet leaves the current one in force until it
    starts (docs/adr/0004-agreement-and-release-policy.md). Read from its row, checked
    against the log and re-verified from bytes: which agreement is current is decided by
    the log, never by the editable columns (docs/THREATS.md I08)."""
    entries = node.log_facts().agreements.get(peer, ())
    logged = {a.digest for a in entries}
    started = [a for a in entries if parse_time(a.not_before, field="not_before") <= now]
    if not started:
        return None
    entry = max(started, key=lambda a: a.log_index)  # the order both signatures were logged
    if now > parse_time(entry.not_after, field="not_after"):
        return None
    ends = node.log_facts().terminations.get(entry.digest)
    if ends is not None and now >= parse_time(ends, field="effective_at"):
        return None  # ended by a signed termination, ours or the partner's
    stored = _stored(node, entry.digest)
    if stored is None or stored.peer != peer:
        raise _tampered(f"stored agreement {entry.digest[:20]}", "missing")
    _check_row(node, stored, logged)
    signed = parse_signed_agreement_unverified(stored.signed)
    content = parse_agreement_unverified(signed.agreement_bytes)
    return verify_agreement(signed, _party_keys(node, content, now, signed), now)


def ceiling(
    node: Node, agreement: VerifiedAgreement | None, sender: str, receiver: str, schema: str
) -> Ceiling | None:
    if agreement is None:
        return None
    reg = registry()
    try:
        return ceiling_for(
            agreement, sender, receiver, schema, reg.labels(schema), reg.digest(schema)
        )
    except PolicyError:
        return None


def load_terms(path: Path) -> str:
    if not path.is_file():
        raise InputError(f"{path} is not a file")
    return path.read_text("utf-8")
