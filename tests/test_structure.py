"""The rules of the layout (docs/DESIGN.md §2) and of the CLI, checked on the source itself."""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from node.cli.base import cli

ROOT = Path(__file__).resolve().parents[1]

# exchange/ is pure: no I/O, no clock, no hidden randomness, no upward imports.
FORBIDDEN_IN_EXCHANGE = {
    "grpc",
    "sqlite3",
    "sqlite_utils",
    "os",
    "pathlib",
    "io",
    "socket",
    "subprocess",
    "time",
    "random",
    "secrets",
    "shutil",
    "tempfile",
    "structlog",
    "logging",
    "node",
    "keys",
    "sop",
}
FORBIDDEN_CALLS = {"now", "utcnow", "today", "urandom", "token_bytes", "open"}
FORBIDDEN_IN_KEYS = {"node", "grpc"}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text("utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def _calls(path: Path) -> set[str]:
    tree = ast.parse(path.read_text("utf-8"))
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Attribute):
                out.add(func.attr)
            elif isinstance(func, ast.Name):
                out.add(func.id)
    return out


@pytest.mark.parametrize("path", sorted((ROOT / "exchange").rglob("*.py")), ids=lambda p: p.name)
def test_exchange_is_pure(path: Path) -> None:
    assert not (_imports(path) & FORBIDDEN_IN_EXCHANGE), (
        f"{path.name} imports I/O or an upper layer"
    )
    assert not (_calls(path) & FORBIDDEN_CALLS), f"{path.name} reads a clock, randomness or files"


@pytest.mark.parametrize("path", sorted((ROOT / "keys").rglob("*.py")), ids=lambda p: p.name)
def test_keys_does_not_depend_on_node(path: Path) -> None:
    assert not (_imports(path) & FORBIDDEN_IN_KEYS)


def _commands(
    group: click.Group, prefix: tuple[str, ...] = (), *, groups: bool = False
) -> list[tuple[tuple[str, ...], click.Command]]:
    out: list[tuple[tuple[str, ...], click.Command]] = []
    for name, cmd in sorted(group.commands.items()):
        path = (*prefix, name)
        if isinstance(cmd, click.Group):
            if groups:
                out.append((path, cmd))
            out.extend(_commands(cmd, path, groups=groups))
        else:
            out.append((path, cmd))
    return out


COMMANDS = _commands(cli)
GROUPS = [
    ((), cli),
    *((p, c) for p, c in _commands(cli, groups=True) if isinstance(c, click.Group)),
]
EVERYTHING = [((), cli), *_commands(cli, groups=True)]


@pytest.mark.parametrize(("path", "cmd"), COMMANDS, ids=[" ".join(p) for p, _ in COMMANDS])
def test_every_command_has_help_with_an_example(path: tuple[str, ...], cmd: click.Command) -> None:
    assert cmd.help and cmd.help.strip(), f"accord {' '.join(path)} has no help"
    assert cmd.epilog and "Example" in cmd.epilog, f"accord {' '.join(path)} has no example"
    assert "accord " in cmd.epilog and " ".join(path) in cmd.epilog


@pytest.mark.parametrize(("path", "cmd"), GROUPS, ids=[" ".join(p) or "accord" for p, _ in GROUPS])
def test_every_command_group_has_an_example(path: tuple[str, ...], cmd: click.Command) -> None:
    assert cmd.help and cmd.help.strip(), f"accord {' '.join(path)} has no help"
    assert cmd.epilog and "Example" in cmd.epilog, f"accord {' '.join(path)} has no example"
    assert "accord " in cmd.epilog and " ".join(path) in cmd.epilog


@pytest.mark.parametrize("width", [60, 80, 100])
@pytest.mark.parametrize(
    ("path", "cmd"), EVERYTHING, ids=[" ".join(p) or "accord" for p, _ in EVERYTHING]
)
def test_help_prints_each_example_on_one_line(
    path: tuple[str, ...], cmd: click.Command, width: int
) -> None:
    """Click rewraps help text; an example must come out as one whole line, whatever the
    terminal width (a run-together or broken example cannot be pasted)."""
    assert cmd.epilog
    examples = [
        line.strip() for line in cmd.epilog.splitlines()[1:] if line.strip() not in ("", "\b")
    ]
    assert examples, f"accord {' '.join(path)}: no example lines"
    result = CliRunner().invoke(cli, [*path, "--help"], terminal_width=width)
    assert result.exit_code == 0, result.output
    shown = [line.strip() for line in result.output.splitlines()]
    for example in examples:
        assert example in shown, f"accord {' '.join(path)} --help breaks {example!r}"


@pytest.mark.parametrize(("path", "cmd"), COMMANDS, ids=[" ".join(p) for p, _ in COMMANDS])
def test_every_command_is_in_the_readme(path: tuple[str, ...], cmd: click.Command) -> None:
    readme = (ROOT / "README.md").read_text("utf-8")
    pattern = r"accord (--data \S+ )?" + re.escape(" ".join(path)) + r"(\s|`|$)"
    assert re.search(pattern, readme, re.MULTILINE), (
        f"README.md does not show 'accord {' '.join(path)}'"
    )


def test_readme_starts_with_the_two_commands() -> None:
    readme = (ROOT / "README.md").read_text("utf-8")
    first_block = readme.split("```")[1]
    assert first_block.split() == ["make", "demo", "make", "test"] or first_block.split()[1:] == [
        "make",
        "demo",
        "make",
        "test",
    ]


# ---- The repository stands on its own ---------------------------------------------------------

# A user clones the repository and nothing else: nothing may read a folder beside the clone.
OUTSIDE = re.compile(r"\.\./shared|parents\[2\]\.parent|/shared/(vectors|THREATS|DESIGN)")
DOC_REFERENCE = re.compile(r"([\w./-]*)\b(DESIGN|THREATS)\.md")
TEXT_SUFFIXES = {".py", ".md", ".toml", ".txt", ".cfg", ".proto", ".sh", ""}


def _tracked_text_files() -> list[Path]:
    try:
        git = shutil.which("git") or "git"
        listed = subprocess.run(
            [git, "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True, timeout=30
        ).stdout.decode("utf-8")
        paths = [ROOT / name for name in listed.split("\0") if name]
    except (OSError, subprocess.CalledProcessError):  # an exported tree without .git
        paths = [p for p in ROOT.rglob("*") if ".venv" not in p.parts and ".git" not in p.parts]
    return [p for p in paths if p.is_file() and p.suffix in TEXT_SUFFIXES]


def test_nothing_reads_outside_the_repository() -> None:
    hits = [
        f"{path.relative_to(ROOT)}:{n}"
        for path in _tracked_text_files()
        for n, line in enumerate(path.read_text("utf-8", errors="replace").splitlines(), 1)
        if OUTSIDE.search(line)
    ]
    assert not hits, f"these lines point outside the repository: {hits}"


def test_every_design_or_threats_document_named_exists() -> None:
    """Every design or threat document a file names resolves, from the file or the root."""
    broken = []
    for path in _tracked_text_files():
        text = path.read_text("utf-8", errors="replace")
        for match in DOC_REFERENCE.finditer(text):
            named = (
                match.group(0).lstrip("./") if match.group(1).startswith("./") else match.group(0)
            )
            if not any((base / named).resolve().is_file() for base in (path.parent, ROOT)):
                broken.append(f"{path.relative_to(ROOT)}: {match.group(0)}")
    assert not broken, f"documents named but not in the repository: {sorted(set(broken))}"


@pytest.mark.parametrize("path", sorted((ROOT / "tests").rglob("*.py")), ids=lambda p: p.name)
def test_no_test_module_imports_another(path: Path) -> None:
    """Shared builders live in tests/builders.py and the conftest files: importing a
    ``test_*`` module runs its collection-time code twice and ties tests together."""
    tree = ast.parse(path.read_text("utf-8"))
    imported = [
        n.module
        for n in ast.walk(tree)
        if isinstance(n, ast.ImportFrom) and n.module and n.level == 0
    ]
    bad = [
        m for m in imported if m.startswith("tests.") and m.rsplit(".", 1)[-1].startswith("test_")
    ]
    assert not bad, f"{path.relative_to(ROOT)} imports test modules {bad}"


# SQL runs only in node/store/ (docs/adr/0023): elsewhere in node, a call like these is a
# statement that bypasses the repositories. The import-linter contract in `make lint` keeps
# the drivers out; this keeps the statements out (the issue's `git grep` made a test).
SQL_CALL = re.compile(r"\.(execute|executemany|executescript|table)\(")


def test_no_sql_outside_node_store() -> None:
    store = ROOT / "node" / "store"
    hits = [
        f"{path.relative_to(ROOT)}:{n}: {line.strip()}"
        for path in sorted((ROOT / "node").rglob("*.py"))
        if store not in path.parents
        for n, line in enumerate(path.read_text("utf-8").splitlines(), 1)
        if SQL_CALL.search(line)
    ]
    assert not hits, "SQL outside node/store (move it into a repository there):\n" + "\n".join(hits)
