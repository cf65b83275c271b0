"""Threat cases (docs/THREATS.md) that need a node-level test of their own. Most cases are
tested where the code they attack is tested, marked ``@pytest.mark.threat("...")``; the
index in ``test_threats_index.py`` finds them by that marker."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from exchange.checkpoint import Checkpoint, sign_checkpoint
from exchange.errors import AccordError, PolicyError
from exchange.note import parse_verifier_key
from keys.keyring import witness_name
from node.home import Node
from node.services import outbox
from node.services.audit import export_bundle, verify_bundle_file
from node.services.policy import apply_policy
from node.services.witness import Witness
from tests.adversarial.hostile import HOSTILE, VICTIM, Forge, World, pull, rows, valid
from tests.conftest import Result, snapshot

pytestmark = pytest.mark.timeout(60)


# ---- I01 an edited inbox row ------------------------------------------------------------------


@pytest.mark.threat("I01")
def test_i01_edited_inbox_row_does_not_decrypt(world: World) -> None:
    """An edited inbox row (sealed at rest under AEAD bound to peer and seq) is refused."""
    from node.services.inbox import get_inbox

    [env] = Forge(world).submit()
    assert pull(world, [env]).applied == 1
    [(envelope_id,)] = rows(world.victim, "SELECT envelope_id FROM inbox")
    world.victim.store.conn.execute("UPDATE inbox SET seq = seq + 1")  # moved to another seq
    with pytest.raises(AccordError):
        get_inbox(world.victim, envelope_id)


# ---- H02 split view, H03 an exchange that never reached the log, H04 two writers -------------------


@pytest.mark.threat("H02")
def test_h02_split_view_is_exposed_by_the_witness(world: World) -> None:
    """pk-moi shows cn-mps's witness one log and (to an auditor) another of the same size."""
    hostile, victim = world.hostile, world.victim
    witness = Witness(victim.store, victim.keyring().witness_signer(), witness_name(VICTIM))
    key = parse_verifier_key(world.hostile_card.log_vkey)
    shown = hostile.log.latest_checkpoint()
    assert shown is not None
    witness.add_checkpoint(
        partner=HOSTILE,
        origin=key.name,
        log_key=key,
        old_size=0,
        proof=[],
        note=shown.note,
        now=world.now,
    )
    other = sign_checkpoint(
        Checkpoint(key.name, shown.size, b"\x07" * 32), key.name, hostile.keyring().log_signer()
    )
    with pytest.raises(AccordError) as err:
        witness.add_checkpoint(
            partner=HOSTILE,
            origin=key.name,
            log_key=key,
            old_size=shown.size,
            proof=[],
            note=other,
            now=world.now,
        )
    assert err.value.code == "witness.inconsistent"
    [(held, offered, _reason)] = witness.evidence(key.name)
    assert held == shown.note and offered == other  # both views kept as evidence


def _events(bundle: Path, world: World) -> list[Any]:
    from tests.builders import anchors

    out: list[Any] = []
    verify_bundle_file(bundle, anchors(world.hostile, world.victim), on_event=out.append)
    return out


@pytest.mark.threat("H03")
def test_h03_exchange_that_never_reached_the_log_is_found_by_reconcile(
    world: World, tmp_path: Path
) -> None:
    from exchange.audit import reconcile

    forge = Forge(world)
    sealed = forge.seal_report(valid())  # sealed and sent without release.decided at pk-moi
    assert pull(world, [forge.seal(forge.content(sealed), seq=1)]).applied == 1
    a, b = tmp_path / "pk.bundle", tmp_path / "cn.bundle"
    export_bundle(world.hostile, a, world.now)
    export_bundle(world.victim, b, world.now)
    report = reconcile(HOSTILE, _events(a, world), VICTIM, _events(b, world))
    assert report.findings, "reconcile missed an envelope without a release.decided"


@pytest.mark.threat("H04")
def test_h04_two_writers_racing_keep_checkpoints_consistent(world: World, tmp_path: Path) -> None:
    from exchange import merkle

    data = world.victim.data_dir
    writers = [Node.open(data, lambda: ""), Node.open(data, lambda: "")]
    errors: list[BaseException] = []

    def write(node: Node) -> None:
        try:
            for i in range(15):
                with node.store.transaction() as db:
                    node.record(db, "policy.changed", world.now, policy_digest=f"n{i}")
                node.checkpoint(world.now)
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=write, args=(n,)) for n in writers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    for n in writers:
        n.close()
    assert errors == []
    node = world.victim
    checkpoints = node.log.checkpoints()
    for old, new in itertools.pairwise(checkpoints):
        proof = node.log.consistency_proof(old.size, new.size)
        merkle.verify_consistency(old.size, new.size, old.root, new.root, proof)
    bundle = tmp_path / "cn.bundle"
    export_bundle(node, bundle, world.now)
    from tests.builders import anchors

    assert verify_bundle_file(bundle, anchors(world.victim, world.hostile)).ok


# ---- P10 policy bypass by omission -----------------------------------------------------------------


@pytest.mark.threat("P10")
def test_p10_missing_policy_releases_nothing(world: World) -> None:
    """cn-mps has an agreement with pk-moi but no policy: deny by default."""
    [done] = outbox.submit(world.victim, [valid()], world.now)
    [release] = done.releases
    assert release.envelope_id is None and release.decision.released == ()
    assert rows(world.victim, "SELECT count(*) FROM outbox") == [(0,)]


@pytest.mark.parametrize(
    "text",
    [
        "",
        "[peer.pk-moi]\n",
        '[peer.pk-moi.schema."threat-alert@1"]\nrelease = []\n',
        '[peer.pk-moi.schema."threat-alert@1"]\nrelease = ["no_such_field"]\n',
        '[peer.pk-moi.schema."threat-alert@1"]\nrelease_labels = ["no-such-label"]\n',
        '[peer.pk-moi.schema."threat-alert@1"]\nrelease = ["Title"]\n',
        '[peer.pk-moi.schema."threat-alert"]\nrelease = ["title"]\n',
    ],
    ids=[
        "empty",
        "no-schema",
        "empty-list",
        "unknown-field",
        "unknown-label",
        "other-name",
        "no-version",
    ],
)
@pytest.mark.threat("P10")
def test_p10_policy_bypass_by_omission_never_matches_all(world: World, text: str) -> None:
    before = snapshot(world.victim.data_dir)
    try:
        apply_policy(world.victim, text, world.now)
    except PolicyError:
        assert snapshot(world.victim.data_dir) == before  # refused: nothing changed
        return
    [done] = outbox.submit(world.victim, [valid()], world.now)
    assert done.releases[0].decision.released == ()
    assert done.releases[0].envelope_id is None


# ---- B03-B06 the CLI ------------------------------------------------------------------------------


@pytest.mark.threat("B03")
def test_b03_partner_text_is_shown_escaped(capsys: pytest.CaptureFixture[str]) -> None:
    from node.cli.output import print_table, safe

    hostile = "ok\x1b[2J\x1b]0;pwned\x07\r\u202eevil\u200f\x00"
    shown = safe(hostile)
    for raw in ("\x1b", "\r", "\u202e", "\u200f", "\x00", "\x07"):
        assert raw not in shown
    assert "\\u001b" in shown and "\\u202e" in shown
    print_table("inbox", ["title"], [(hostile,)])
    out = capsys.readouterr().out
    for raw in ("\x1b[2J", "\r", "\u202e", "\x00"):
        assert raw not in out


@pytest.mark.threat("B04")
def test_b04_trust_on_first_use_needs_a_flag_and_is_logged(
    world: World, accord: Callable[..., Result], tmp_path: Path
) -> None:
    from tests.adversarial.hostile import make_node

    new = make_node(tmp_path, "fr-dgs", world.now)
    card = tmp_path / "fr.card"
    card.write_bytes(new.own_chain().to_bytes())
    new.close()
    before = snapshot(world.victim.data_dir)
    r = accord("--data", world.victim.data_dir, "peer", "add", card)
    assert r.code != 0 and snapshot(world.victim.data_dir) == before
    world.victim.close()
    r = accord("--data", world.victim.data_dir, "peer", "add", card, "--trust-on-first-use")
    assert r.code == 0, r.err
    world.victim = Node.open(world.victim.data_dir, lambda: "")
    from tests.adversarial.hostile import log_events

    [added] = [e for e in log_events(world.victim) if e.get("peer") == "fr-dgs"]
    assert added["kind"] == "peer.added" and added["trust_on_first_use"] is True


@pytest.mark.threat("B05")
def test_b05_an_import_done_twice_adds_nothing(world: World) -> None:
    chain = world.hostile.own_chain()
    before = snapshot(world.victim.data_dir)
    result = world.victim.add_peer(
        chain.to_bytes(), fingerprint=chain.latest.fingerprint, tofu=False, now=world.now
    )
    assert result.outcome == "unchanged"
    assert snapshot(world.victim.data_dir) == before


@pytest.mark.threat("B05")
def test_b05_two_cli_commands_at_once_are_consistent(
    world: World, accord: Callable[..., Result], tmp_path: Path
) -> None:
    from tests.adversarial.hostile import make_node

    cards = []
    for name in ("fr-dgs", "it-aise"):
        node = make_node(tmp_path, name, world.now)
        card = tmp_path / f"{name}.card"
        card.write_bytes(node.own_chain().to_bytes())
        cards.append((card, node.own_chain().latest.fingerprint))
        node.close()
    opened = [Node.open(world.victim.data_dir, lambda: "") for _ in cards]
    errors: list[BaseException] = []

    def add(node: Node, card: Path, fp: str) -> None:
        try:
            for _ in range(2):  # and each import twice
                node.add_peer(card.read_bytes(), fingerprint=fp, tofu=False, now=world.now)
        except BaseException as e:  # pragma: no cover
            errors.append(e)

    threads = [
        threading.Thread(target=add, args=(n, c, f))
        for n, (c, f) in zip(opened, cards, strict=True)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    for n in opened:
        n.close()
    assert errors == []
    peers = rows(world.victim, "SELECT node FROM peers ORDER BY node")
    assert peers == [("fr-dgs",), ("it-aise",), (HOSTILE,)]
    added = rows(
        world.victim,
        "SELECT count(*) FROM log_leaves WHERE CAST(event AS TEXT) LIKE '%\"peer.added\"%'",
    )
    assert added == [(3,)]


@pytest.mark.threat("B06")
def test_b06_no_command_rewrites_history() -> None:
    import click

    from node.cli import commands  # noqa: F401  registers every command
    from node.cli.base import cli

    names: list[str] = []

    def walk(group: click.Command, prefix: str) -> None:
        names.append(prefix)
        if isinstance(group, click.Group):
            for name, sub in group.commands.items():
                walk(sub, f"{prefix} {name}".strip())

    walk(cli, "")
    forbidden = ("delete", "prune", "truncate", "rewrite", "resign", "re-sign", "purge", "compact")
    assert not [n for n in names if any(word in n for word in forbidden)], names
    log_commands = {n for n in names if n.startswith("log ")}
    assert log_commands == {"log show", "log checkpoint", "log prove"}
