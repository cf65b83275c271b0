"""The node's release policy: the active file (``DATA/policy.toml``), checked against the
current agreements whenever it is loaded, and the decision for one report and partner."""

from __future__ import annotations

import hmac
import os
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from types import MappingProxyType

from exchange.agreement import Ceiling, ceilings_between
from exchange.errors import InputError, PolicyError
from exchange.policy import (
    PeerStats,
    Policy,
    ReleaseDecision,
    decide,
    parse_policy,
    reciprocity_window_start,
)
from exchange.sop import Report
from exchange.times import format_time, parse_time
from node.home import Node
from node.services.agreements import ceiling, current_agreement
from node.services.inbox import received_times
from node.services.schemas import registry
from node.store import PgStore

POLICY_FILE = "policy.toml"
POLICY_DIGEST_META = "policy.digest"  # a copy of the digest last logged (never trusted)
MAX_POLICY_FILE = 256 * 1024

REASON_TEXT = {
    "no-agreement": "no agreement signed by both partners allows this schema",
    "not-in-policy": "the policy does not release it (deny by default)",
    "not-in-schema": "not a field of the schema",
    "unknown-label": "the field's label is unknown",
    "withheld-label": "its label is withheld by the policy (withhold wins)",
    "drop": "dropped by a transform",
    "above-ceiling": "above the agreed ceiling",
    "no-legal-basis": "personal data without a named legal basis",
    "reciprocity": "reciprocity: the partner has not sent enough reports lately",
    "tlp-above-max": "the report's TLP is above what this partner may receive",
    "transform-unsupported": "the transform cannot apply to this value",
}


def read_policy_text(path: Path) -> str:
    if not path.is_file():
        raise InputError(f"{path} is not a file")
    if path.stat().st_size > MAX_POLICY_FILE:
        raise InputError(f"{path} is larger than {MAX_POLICY_FILE} bytes")
    try:
        return path.read_text("utf-8")
    except UnicodeDecodeError as e:
        raise InputError(f"{path} is not UTF-8 text") from e


def _ceilings(node: Node, now: datetime) -> dict[str, Mapping[str, Ceiling]]:
    reg = registry()
    me = node.config.node
    out: dict[str, Mapping[str, Ceiling]] = {}
    for record in node.trust_store().list():
        agreement = current_agreement(node, record.node, now)
        if agreement is None:
            continue
        names = [n for n in agreement.agreement.schemas if n in reg]
        out[record.node] = ceilings_between(
            agreement,
            me,
            record.node,
            {n: reg.labels(n) for n in names},
            {n: reg.digest(n) for n in names},
        )
    return out


def check_policy(node: Node | None, text: str, now: datetime) -> Policy:
    """Parse and check a policy; with a node, also against every current agreement."""
    reg = registry()
    labels = {n: reg.labels(n) for n in reg.names()}
    return parse_policy(text, labels, ceilings=_ceilings(node, now) if node else None)


def logged_policy_digest(node: Node) -> str | None:
    """The digest in the latest ``policy.changed`` event of the log: the policy in force
    (docs/THREATS.md I08). ``meta['policy.digest']`` is kept as a copy for older tools and is
    never trusted: editing it together with the file releases nothing."""
    return node.log_facts().policy_digest


def active_policy(node: Node, now: datetime) -> Policy | None:
    """The applied policy, or None when there is none (nothing is released). A policy file
    that is not the one last applied and logged is refused: a release policy changes only
    through ``accord policy apply``, which logs it (``policy.changed``)."""
    path = node.data_dir / POLICY_FILE
    if not path.exists():
        return None
    policy = check_policy(node, read_policy_text(path), now)
    logged = logged_policy_digest(node)
    if logged is None or not hmac.compare_digest(logged, policy.digest):
        raise PolicyError(
            f"{path} is not the release policy last applied (it was changed outside "
            "'accord policy apply', so the change is not in the log)",
            code="policy.unlogged",
            next_step=f"Review the file, then apply it with 'accord --data {node.data_dir} "
            f"policy apply {path}' (or restore the applied version). Nothing is released "
            "until then.",
        )
    return policy


def apply_policy(node: Node, text: str, now: datetime) -> Policy:
    """Install ``text`` as the active policy (checked first); logs ``policy.changed`` and
    records its digest in the same transaction (a file changed by hand is then refused)."""
    policy = check_policy(node, text, now)
    logged = logged_policy_digest(node)
    path = node.data_dir / POLICY_FILE
    tmp = node.data_dir / (POLICY_FILE + ".tmp")
    tmp.write_text(text, "utf-8")
    if logged == policy.digest:  # the same rules (comments or layout may differ)
        os.replace(tmp, path)
        return policy
    with node.store.transaction() as db:
        node.record(
            db,
            "policy.changed",
            now,
            policy_digest=policy.digest,
            previous_digest=logged,
            peers=sorted(policy.peers),
        )
        node.store.set_meta(db, POLICY_DIGEST_META, policy.digest)
        # Inside the transaction: if the commit fails after this, the new file is refused
        # as unlogged until it is applied again; never a logged policy that is not in force.
        os.replace(tmp, path)
    node.checkpoint(now)
    return policy


def _has_inbox(node: Node) -> bool:
    """Whether the store has its inbox table yet (a SQLite database rewound past the
    exchange migration has none; a PostgreSQL one is always migrated on open)."""
    return isinstance(node.store, PgStore) or "inbox" in node.store.db.table_names()


def peer_stats(node: Node, policy: Policy, peer: str, now: datetime) -> PeerStats:
    """When ``peer``'s reports arrived, inside the policy's reciprocity window."""
    start = reciprocity_window_start(policy, peer, now)
    rule = policy.peers[peer].reciprocity if peer in policy.peers else None
    if start is None or rule is None or not _has_inbox(node):
        return PeerStats(received_at=())
    times = received_times(node, peer, format_time(start), rule.min_reports)
    return PeerStats(received_at=tuple(parse_time(t, field="received_at") for t in times))


def release_decision(
    node: Node,
    report: Report,
    peer: str,
    now: datetime,
    *,
    policy: Policy,
    limit: Ceiling | None,
    stats: PeerStats,
) -> ReleaseDecision:
    """The one place a release decision is built: ``report submit`` (node/services/outbox.py, with
    the ceiling and statistics it computed once per partner and batch) and ``policy explain``
    (:func:`decide_for`) both call it, so what explain shows is what submit sends."""
    return decide(
        report.fields,
        report.tlp,
        report.sop,
        registry().labels(report.sop),
        policy,
        limit,
        peer,
        stats,
        now,
        node.keyring().pseudonym_key(peer),
    )


def decide_for(
    node: Node, report: Report, peer: str, now: datetime, policy: Policy | None
) -> ReleaseDecision:
    """The decision for ``peer`` now, under ``policy`` (default: none, i.e. deny)."""
    agreement = current_agreement(node, peer, now)
    policy = policy if policy is not None else Policy(MappingProxyType({}))
    return release_decision(
        node,
        report,
        peer,
        now,
        policy=policy,
        limit=ceiling(node, agreement, node.config.node, peer, report.sop),
        stats=peer_stats(node, policy, peer, now),
    )
