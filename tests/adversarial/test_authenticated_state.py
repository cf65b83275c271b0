"""docs/THREATS.md I08: state edited outside the log (inbox metadata such as TLP, partner status
or revocation, the active policy digest, the current agreement) is detected and never acted
on (ADR 0013). Each test edits the victim's database as an insider with the file but not the
passphrase would, replays what the node does next, and checks the stored state after."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import timedelta

import pytest

from exchange.errors import AccordError, KeyringError, PolicyError, StoreError
from exchange.events import parse_event_unverified
from node.rpc._pb.accord.v1 import officer_pb2
from node.rpc.officer_service import ExchangeOfficerService
from node.services import outbox
from node.services.agreements import (
    ceiling,
    current_agreement,
    propose_agreement,
    sign_and_store,
    stored_agreements,
)
from node.services.inbox import apply_batch, get_inbox, list_inbox
from node.services.policy import (
    POLICY_DIGEST_META,
    POLICY_FILE,
    active_policy,
    apply_policy,
    check_policy,
    decide_for,
)
from tests.adversarial.hostile import HOSTILE, VICTIM, Forge, World, log_kinds, pull, rows, valid
from tests.builders import insider_append_event, sqlite_store
from tests.conftest import POLICY, TERMS, Result, snapshot

pytestmark = [pytest.mark.threat("I08"), pytest.mark.timeout(90)]


def _edit(world: World, sql: str, *args: object) -> None:
    """What an insider does with sqlite3 and the database file: no keyring, no log."""
    with world.victim.store.transaction():
        world.victim.store.conn.execute(sql, args)


def _received(world: World) -> str:
    [env] = Forge(world).submit()
    assert pull(world, [env]).applied == 1
    [(envelope_id, tlp)] = rows(world.victim, "SELECT envelope_id, tlp FROM inbox")
    assert tlp == "amber"
    return str(envelope_id)


def _refused(error: pytest.ExceptionInfo[AccordError], item: str, field: str) -> None:
    assert error.value.code == "store.row_tampered"
    assert item in error.value.message and f"field {field}" in error.value.message


# ---- the inbox ---------------------------------------------------------------------------------


def test_i08_inbox_tlp_set_to_clear_is_never_shown(world: World) -> None:
    envelope_id = _received(world)
    [item] = list_inbox(world.victim)
    assert item.tlp == "amber"  # the control: untouched, it is shown
    _edit(world, "UPDATE inbox SET tlp = 'clear'")
    before = snapshot(world.victim.data_dir)
    for read in (lambda: list_inbox(world.victim), lambda: get_inbox(world.victim, envelope_id)):
        with pytest.raises(StoreError) as err:
            read()
        _refused(err, envelope_id, "tlp")
        assert "clear" not in err.value.message.lower()  # the value is never printed
    # What `inbox list`, `inbox show` and `inbox export` ask the serving node for.
    service = ExchangeOfficerService(world.victim, None, now=lambda: world.now)
    for call in (
        service.ListInbox(officer_pb2.ListInboxRequest(limit=10), None),
        service.GetInbox(officer_pb2.GetInboxRequest(envelope_id=envelope_id), None),
    ):
        with pytest.raises(StoreError) as err:
            asyncio.run(call)
        _refused(err, envelope_id, "tlp")
    assert snapshot(world.victim.data_dir) == before  # reading refused changes nothing
    _edit(world, "UPDATE inbox SET tlp = 'amber'")
    assert list_inbox(world.victim)[0].tlp == "amber"


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("sop", "'incident-report@1'"),
        ("issuer", "'de-bka'"),
        ("report_id", "'0193f2c5-0000-7000-8000-000000000000'"),
        ("version", "version + 1"),
        ("fields", "'[\"title\"]'"),
        ("transformed", "'{}'"),
        ("received_at", "'2020-01-01T00:00:00Z'"),
        ("kind", "'retraction'"),
    ],
)
def test_i08_every_shown_inbox_column_is_checked(world: World, column: str, value: str) -> None:
    envelope_id = _received(world)
    _edit(world, f"UPDATE inbox SET {column} = {value}")
    with pytest.raises(StoreError) as err:
        get_inbox(world.victim, envelope_id)
    _refused(err, envelope_id, column)


def test_i08_inbox_row_given_another_envelope_id_is_refused(world: World) -> None:
    envelope_id = _received(world)
    other = "0193f2c5-0000-7000-8000-000000000001"
    _edit(world, "UPDATE inbox SET envelope_id = ?", other)
    with pytest.raises(StoreError) as err:
        get_inbox(world.victim, other)
    _refused(err, envelope_id, "envelope_id")  # named by its authenticated id


def test_i08_hidden_retraction_is_refused_not_ignored(world: World) -> None:
    envelope_id = _received(world)
    [report_id] = Forge(world).report_ids()
    outbox.retract(world.hostile, report_id, "erroneous", world.now)
    assert pull(world, outbox.pending(world.hostile, VICTIM, 1, 256)).applied == 1
    [item] = list_inbox(world.victim)
    assert item.retracted  # the control
    _edit(world, "UPDATE inbox SET report_id = ? WHERE kind = 'retraction'", envelope_id)
    with pytest.raises(StoreError) as err:
        list_inbox(world.victim)
    assert err.value.code == "store.row_tampered" and "field report_id" in err.value.message


def test_i08_edited_version_column_does_not_open_a_rollback(world: World) -> None:
    """The receive path's version check (P01) reads the held version from the record."""
    forge = Forge(world)
    [e1] = forge.submit()
    assert pull(world, [e1]).applied == 1
    [report_id] = forge.report_ids()
    [e2] = forge.amend(report_id, valid(severity="critical"))
    _edit(world, "UPDATE inbox SET version = 0")
    before = snapshot(world.victim.data_dir)
    p = pull(world, [e2])
    assert p.applied == 0 and p.code == "store.row_tampered"
    assert snapshot(world.victim.data_dir) == before


# ---- partner status and revocation ---------------------------------------------------------------


def test_i08_unrevoked_partner_stays_refused(world: World) -> None:
    [env] = Forge(world).submit()
    victim = world.victim
    victim.revoke_peer(HOSTILE, world.now - timedelta(minutes=5), world.now)
    assert pull(world, [env]).code == "peer.revoked"  # the control
    [(added,)] = [(i,) for i, e in victim.log.leaves(0, 1000) if b'"kind":"peer.added"' in e]
    for sql, args in (
        ("UPDATE peers SET status = 'trusted', revoked_from = NULL WHERE node = ?", ()),
        ("UPDATE peers SET log_index = ? WHERE node = ?", (added,)),  # and point at peer.added
    ):
        _edit(world, sql, *args, HOSTILE)
        before = snapshot(victim.data_dir)
        p = pull(world, [env])
        assert p.applied == 0 and p.code == "keyring.tampered"
        assert snapshot(victim.data_dir) == before
        assert rows(victim, "SELECT count(*) FROM inbox") == [(0,)]
        with pytest.raises(KeyringError) as err:
            victim.trust_store().trusted_chain(HOSTILE, world.now)
        assert err.value.code == "keyring.tampered" and HOSTILE in err.value.message


def test_i08_later_revocation_time_is_refused(world: World) -> None:
    [env] = Forge(world).submit()
    victim = world.victim
    victim.revoke_peer(HOSTILE, world.now - timedelta(minutes=5), world.now)
    _edit(world, "UPDATE peers SET revoked_from = '2999-01-01T00:00:00Z' WHERE node = ?", HOSTILE)
    before = snapshot(victim.data_dir)
    p = pull(world, [env])
    assert p.applied == 0 and p.code == "keyring.tampered"
    assert snapshot(victim.data_dir) == before
    with pytest.raises(KeyringError) as err:
        victim.trust_store().trusted_chain(HOSTILE, world.now)
    assert "field revoked_from" in err.value.message


# ---- the active policy ---------------------------------------------------------------------------


def test_i08_policy_file_and_meta_digest_edited_release_nothing(world: World) -> None:
    sender = world.hostile  # pk-moi applied the example policy
    path = sender.data_dir / POLICY_FILE
    text = path.read_text("utf-8")
    edited = text.replace(
        'release = ["recommended_actions"]', 'release = ["recommended_actions", "indicators"]'
    )
    assert edited != text
    digest = check_policy(sender, edited, world.now).digest
    assert active_policy(sender, world.now) is not None  # the control
    path.write_text(edited, "utf-8")
    with sender.store.transaction() as db:
        sender.store.set_meta(db, POLICY_DIGEST_META, digest)
    before = snapshot(sender.data_dir)
    leaves = sender.log.size()
    with pytest.raises(PolicyError) as err:
        outbox.submit(sender, [valid()], world.now)
    assert err.value.code == "policy.unlogged"
    assert sender.log.size() == leaves and snapshot(sender.data_dir) == before
    assert log_kinds(sender).count("policy.changed") == 1  # only the applied one
    # The rules in force are still the logged ones: restoring the file releases again.
    path.write_text(text, "utf-8")
    assert active_policy(sender, world.now) is not None


# ---- the current agreement -----------------------------------------------------------------------


def _narrow_agreement(world: World) -> str:
    """A second agreement, in force longer, that lets pk-moi send cn-mps only public fields."""
    terms = (
        TERMS.read_text("utf-8")
        .replace("pk-moi:cn-mps:2026", "pk-moi:cn-mps:narrow")
        .replace("valid_days = 365", "valid_days = 400")
        .replace('labels = ["public", "operational", "tactical"]', 'labels = ["public"]')
    )
    offer = propose_agreement(world.hostile, VICTIM, terms, world.now)
    _countersigned, verified = sign_and_store(world.victim, offer.to_bytes(), world.now)
    assert verified is not None
    return verified.digest


def test_i08_edited_agreement_row_does_not_change_the_ceiling(world: World) -> None:
    victim = world.victim
    wide = current_agreement(victim, HOSTILE, world.now)
    assert wide is not None
    narrow = _narrow_agreement(world)
    current = current_agreement(victim, HOSTILE, world.now)
    assert current is not None and current.digest == narrow  # the control
    limit = ceiling(victim, current, HOSTILE, VICTIM, "threat-alert@1")
    assert limit is not None
    # Make the wide agreement look newest: the old query picked it (ORDER BY not_after).
    _edit(
        world,
        "UPDATE agreements SET not_after = '2099-01-01T00:00:00Z' WHERE digest = ?",
        wide.digest,
    )
    leaves = victim.log.size()
    again = current_agreement(victim, HOSTILE, world.now)
    assert again is not None and again.digest == narrow
    assert ceiling(victim, again, HOSTILE, VICTIM, "threat-alert@1") == limit
    with pytest.raises(StoreError) as err:
        stored_agreements(victim)  # 'agreement list' names the edited row
    assert err.value.code == "store.row_tampered" and "field not_after" in err.value.message
    # Push the current one out of its window instead: refused, not silently the wide one.
    _edit(
        world, "UPDATE agreements SET not_after = '2000-01-01T00:00:00Z' WHERE digest = ?", narrow
    )
    with pytest.raises(StoreError) as err:
        current_agreement(victim, HOSTILE, world.now)
    assert err.value.code == "store.row_tampered" and "field not_after" in err.value.message
    assert victim.log.size() == leaves  # refusing logs nothing, decides nothing
    assert [parse_event_unverified(e).kind for _i, e in victim.log.leaves(0, 1000)].count(
        "agreement.signed"
    ) == 2


def test_i08_deleted_current_agreement_row_is_refused(world: World) -> None:
    victim = world.victim
    _narrow_agreement(world)
    current = current_agreement(victim, HOSTILE, world.now)
    assert current is not None
    _edit(world, "DELETE FROM agreements WHERE digest = ?", current.digest)
    with pytest.raises(StoreError) as err:
        current_agreement(victim, HOSTILE, world.now)
    assert err.value.code == "store.row_tampered" and "field missing" in err.value.message


@pytest.mark.parametrize(
    "sql",
    [
        "DELETE FROM peer_revocations",
        "UPDATE peer_revocations SET revoked_from = '2999-01-01T00:00:00Z'",
    ],
    ids=["deleted", "later"],
)
def test_i08_unrevoked_old_key_stays_refused(world: World, sql: str) -> None:
    """pk-moi seals two reports, rotates and revokes its old key from between them (P06);
    an insider then deletes or postpones the stored revocation at cn-mps."""
    pk, cn = world.hostile, world.victim
    t0 = world.now
    old_fp = pk.own_chain().latest.fingerprint
    outbox.submit(pk, [valid()], t0)
    outbox.submit(pk, [valid()], t0 + timedelta(seconds=10))
    chain = pk.rotate_identity(t0 + timedelta(seconds=20))
    pk.revoke_own_key(old_fp, t0 + timedelta(seconds=5), "compromised", t0)
    later = t0 + timedelta(seconds=30)
    assert cn.refresh_peer_card(HOSTILE, list(chain.signed), later)
    assert len(cn.apply_peer_revocations(HOSTILE, pk.own_revocations(), later)) == 1
    assert set(cn.trust_store().revoked_keys(HOSTILE)) == {chain.cards[0].identity_key}
    _edit(world, sql)
    before = snapshot(cn.data_dir)
    envelopes = outbox.pending(pk, VICTIM, 0, 256)
    with pytest.raises(KeyringError) as err:
        apply_batch(cn, HOSTILE, envelopes, later)
    assert err.value.code == "keyring.tampered" and HOSTILE in err.value.message
    assert snapshot(cn.data_dir) == before
    assert rows(cn, "SELECT count(*) FROM inbox") == [(0,)]


# ---- how the log is read -------------------------------------------------------------------------


def test_i08_log_facts_come_through_the_kind_index_and_not_from_it(world: World) -> None:
    """The fold finds its events through migration 16's index; an insider who drops or
    replaces the index slows the node down but cannot hide an event from it."""
    from node.services.logstate import _CACHE, _KIND_PREFIXES
    from node.store.log import LEAVES_BY_KIND_SQL as _SELECT

    victim = world.victim
    plan = rows(victim, "EXPLAIN QUERY PLAN " + _SELECT, *_KIND_PREFIXES, 0, 10**9)
    assert any("log_leaves_by_kind" in str(step) for step in plan)
    victim.revoke_peer(HOSTILE, world.now, world.now)
    facts = victim.log_facts()
    assert facts.peers[HOSTILE].status == "revoked" and facts.policy_digest is None
    _edit(world, "DROP INDEX log_leaves_by_kind")
    _edit(world, "CREATE INDEX log_leaves_by_kind ON log_leaves (substr(event, 1, 8))")
    _CACHE.clear()
    assert victim.log_facts() == facts


# ---- reciprocity -------------------------------------------------------------------------------


def test_i08_retraction_relabelled_as_a_report_earns_no_tactical_fields(world: World) -> None:
    """pk-moi releases recommended_actions (tactical) to cn-mps only while cn-mps has sent
    5 reports in 30 days. cn-mps sent 4 and retracted one; an insider at pk-moi turns the
    retraction row into a fifth 'report'."""
    pk, cn = world.hostile, world.victim
    apply_policy(cn, POLICY.read_text("utf-8").replace("cn-mps", HOSTILE), world.now)
    done = outbox.submit(cn, [valid() for _ in range(4)], world.now)
    outbox.retract(cn, done[0].report_id, "erroneous", world.now)
    received = apply_batch(pk, VICTIM, outbox.pending(cn, HOSTILE, 0, 256), world.now)
    assert received.applied == 5 and not received.rejected
    policy = active_policy(pk, world.now)
    report = valid().report
    decision = decide_for(pk, report, VICTIM, world.now, policy)
    assert decision.withheld.get("recommended_actions") == "reciprocity"  # the control
    with pk.store.transaction():
        pk.store.conn.execute("UPDATE inbox SET kind = 'report' WHERE kind = 'retraction'")
    before = snapshot(pk.data_dir)
    with pytest.raises(StoreError) as err:
        decide_for(pk, report, VICTIM, world.now, policy)
    assert err.value.code == "store.row_tampered" and "field kind" in err.value.message
    with pytest.raises(StoreError):
        outbox.submit(pk, [valid()], world.now)
    assert snapshot(pk.data_dir) == before


def test_i08_peer_list_never_shows_an_edited_revocation(
    world: World, accord: Callable[..., Result]
) -> None:
    victim = world.victim
    victim.revoke_peer(HOSTILE, world.now, world.now)
    shown = accord("--data", victim.data_dir, "peer", "list", "--json")
    assert shown.code == 0 and "revoked" in shown.out  # the control
    _edit(world, "UPDATE peers SET revoked_from = '2999-01-01T00:00:00Z' WHERE node = ?", HOSTILE)
    before = snapshot(victim.data_dir)
    shown = accord("--data", victim.data_dir, "peer", "list", "--json")
    assert shown.code != 0 and "keyring.tampered" in shown.err and "2999" not in shown.err
    assert "field revoked_from" in shown.err and shown.out == ""
    assert snapshot(victim.data_dir) == before


# ---- log entries written without the keyring ------------------------------------------------------


def test_i08_appended_policy_changed_entry_releases_nothing(world: World) -> None:
    """The insider edits the policy file and the meta row and appends a well-formed
    ``policy.changed`` entry with correct Merkle hashes (no key needed for those): it is
    past every checkpoint the node signed, so the fold does not count it."""
    sender = world.hostile
    path = sender.data_dir / POLICY_FILE
    text = path.read_text("utf-8")
    edited = text.replace('release = ["recommended_actions"]', 'release = ["indicators"]')
    digest = check_policy(sender, edited, world.now).digest
    path.write_text(edited, "utf-8")
    with sender.store.transaction() as db:
        sender.store.set_meta(db, POLICY_DIGEST_META, digest)
    insider_append_event(
        sqlite_store(sender).conn, "policy.changed", world.now, policy_digest=digest, peers=[VICTIM]
    )
    before = snapshot(sender.data_dir)
    with pytest.raises(PolicyError) as err:
        outbox.submit(sender, [valid()], world.now)
    assert err.value.code == "policy.unlogged"
    assert snapshot(sender.data_dir) == before


def test_i08_rewritten_revocation_entry_is_refused(world: World) -> None:
    """Rewriting the signed ``peer.revoked`` entry (and the row to match) to postpone the
    revocation: the entry no longer hashes into the tree the node signed."""
    [env] = Forge(world).submit()
    victim = world.victim
    victim.revoke_peer(HOSTILE, world.now - timedelta(minutes=5), world.now)
    record = victim.trust_store().get(HOSTILE)  # bound to the peer.revoked entry
    assert record.revoked_from is not None and record.log_index is not None
    later = "2999-01-01T00:00:00Z"
    _edit(
        world,
        "UPDATE log_leaves SET event = CAST(replace(CAST(event AS TEXT), ?, ?) AS BLOB) "
        "WHERE idx = ?",
        record.revoked_from,
        later,
        record.log_index,
    )
    _edit(world, "UPDATE peers SET revoked_from = ? WHERE node = ?", later, HOSTILE)
    from node.services.logstate import _CACHE

    before = snapshot(victim.data_dir)
    p = pull(world, [env])  # had this process folded the entry, the row would disagree
    assert p.applied == 0 and p.code in ("keyring.tampered", "log.inconsistent")
    _CACHE.clear()  # as a fresh process (a CLI command, a restarted serve) reads it
    p = pull(world, [env])
    assert p.applied == 0 and p.code == "log.inconsistent"
    assert snapshot(victim.data_dir) == before
    assert rows(victim, "SELECT count(*) FROM inbox") == [(0,)]
