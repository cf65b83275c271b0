"""docs/THREATS.md B07: what a command writes for the officer is a private file, written
only where the officer said, never over a file without --force, never through a link."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from exchange.errors import InputError
from node.files import write_export
from tests.conftest import TERMS, Result, propose

Accord = Callable[..., Result]


@pytest.fixture(autouse=True)
def loose_umask() -> Iterator[None]:
    old = os.umask(0o022)  # what most shells have: files would be world-readable
    yield
    os.umask(old)


@pytest.mark.threat("B07")
def test_a_new_export_is_0600(tmp_path: Path) -> None:
    out = tmp_path / "x.json"
    write_export(out, b"partner data")
    assert out.read_bytes() == b"partner data" and out.stat().st_mode & 0o777 == 0o600


@pytest.mark.threat("B07")
def test_an_existing_file_is_kept_without_force(tmp_path: Path) -> None:
    out = tmp_path / "x.json"
    out.write_bytes(b"officer's own file")
    with pytest.raises(InputError) as err:
        write_export(out, b"partner data")
    assert "exists" in str(err.value) and "--force" in (err.value.next_step or "")
    assert out.read_bytes() == b"officer's own file"


@pytest.mark.threat("B07")
@pytest.mark.parametrize("force", [False, True])
def test_a_planted_link_is_never_followed(tmp_path: Path, force: bool) -> None:
    target = tmp_path / "elsewhere" / "collected"
    target.parent.mkdir()
    link = tmp_path / "x.json"
    link.symlink_to(target)  # dangling: following it would create the attacker's file
    if not force:
        with pytest.raises(InputError):
            write_export(link, b"partner data")
        assert link.is_symlink()
    else:
        write_export(link, b"partner data", force=True)
        assert not link.is_symlink() and link.read_bytes() == b"partner data"
        assert link.stat().st_mode & 0o777 == 0o600
    assert not target.exists()


@pytest.mark.threat("B07")
def test_force_replaces_a_link_to_an_existing_file_without_writing_through_it(
    tmp_path: Path,
) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"untouched")
    link = tmp_path / "x.json"
    link.symlink_to(victim)
    write_export(link, b"partner data", force=True)
    assert victim.read_bytes() == b"untouched"
    assert link.read_bytes() == b"partner data" and not link.is_symlink()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".x.json")] == []


@pytest.mark.threat("B07")
def test_card_export_and_agreement_propose_write_private_files(
    make_node: Callable[..., Path], accord: Accord, tmp_path: Path
) -> None:
    pk = make_node("pk-moi", 7441)
    cn = make_node("cn-mps", 7442)
    card = tmp_path / "pk.card"
    assert accord("--data", pk, "card", "export", "--out", card).code == 0
    assert card.stat().st_mode & 0o777 == 0o600
    before = card.read_bytes()
    again = accord("--data", pk, "card", "export", "--out", card)
    assert again.code != 0 and "exists" in again.err and card.read_bytes() == before
    assert accord("--data", pk, "card", "export", "--out", card, "--force").code == 0
    # an agreement proposal to a planted dangling link is refused before anything is signed
    cn_card = tmp_path / "cn.card"
    assert accord("--data", cn, "card", "export", "--out", cn_card).code == 0
    fp = accord("--data", cn, "card", "show", "--json").json()["fingerprint"]
    assert accord("--data", pk, "peer", "add", cn_card, "--fingerprint", fp).code == 0
    link = tmp_path / "proposal.json"
    link.symlink_to(tmp_path / "planted")
    r = accord(
        "--data", pk, "agreement", "propose", "--peer", "cn-mps", "--terms", TERMS, "--out", link
    )
    assert r.code != 0 and not (tmp_path / "planted").exists()
    written = propose(accord, pk, tmp_path)
    assert written.stat().st_mode & 0o777 == 0o600


@pytest.mark.threat("B07")
def test_init_makes_an_existing_directory_private_and_open_refuses_a_loose_one(
    tmp_path: Path, accord: Accord
) -> None:
    data = tmp_path / "pk-moi"
    data.mkdir(mode=0o755)
    r = accord(
        "--data", data, "init", "--node", "pk-moi", "--name", "PK", "--endpoint", "127.0.0.1:7441"
    )
    assert r.code == 0, r.err
    assert data.stat().st_mode & 0o777 == 0o700
    data.chmod(0o750)  # someone loosened it afterwards
    shown = accord("--data", data, "card", "show")
    assert shown.code != 0 and "config.loose_permissions" in shown.err
    assert "chmod 700" in shown.err


@pytest.mark.threat("B07")
def test_audit_export_is_private_and_never_follows_a_link(
    make_node: Callable[..., Path], accord: Accord, tmp_path: Path
) -> None:
    pk = make_node("pk-moi", 7441)
    bundle = tmp_path / "pk.bundle"
    target = tmp_path / "planted"
    bundle.symlink_to(target)
    r = accord("--data", pk, "audit", "export", "--out", bundle)
    assert r.code != 0 and "exists" in r.err and not target.exists()
    r = accord("--data", pk, "audit", "export", "--out", bundle, "--force")
    assert r.code == 0, r.err
    assert not bundle.is_symlink() and not target.exists()
    assert bundle.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".partial")] == []
