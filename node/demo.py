"""``make demo``: two partner nodes, pk-moi and cn-mps, on loopback in a temporary folder.

Each step runs the real ``accord`` command and shows it, so the demo doubles as a
walk-through a newcomer can repeat by hand.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from rich.console import Console
from rich.rule import Rule

console = Console(highlight=False)
ACCORD = [sys.executable, "-m", "node"]


def step(title: str) -> None:
    console.print()
    console.print(Rule(f"[bold]{title}", align="left"))


def run(*args: str | Path, env: dict[str, str], capture: bool = False) -> str:
    shown = " ".join(shlex.quote(str(a)) for a in ("accord", *args))
    console.print(f"[dim]$[/dim] [cyan]{shown}[/cyan]")
    proc = subprocess.run(
        [*ACCORD, *map(str, args)], env=env, check=False, text=True, capture_output=capture
    )
    if proc.returncode != 0:
        if capture:
            sys.stderr.write(proc.stderr)
        raise SystemExit(f"demo step failed: {shown} (exit {proc.returncode})")
    return proc.stdout if capture else ""


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="accord-demo-"))
    env = {**os.environ, "ACCORD_PASSPHRASE": "demo passphrase, not for production"}
    env.pop("ACCORD_HOME", None)
    pk, cn = work / "pk-moi", work / "cn-mps"
    try:
        console.print("[bold]Accord demo[/bold]: two partner agencies set up a secure exchange.")
        console.print(f"Working in {work} (removed at the end).")

        step("1. Each agency creates its node (keys sealed under a passphrase)")
        run(
            "--data",
            pk,
            "init",
            "--node",
            "pk-moi",
            "--name",
            "Pakistan Ministry of Interior",
            "--endpoint",
            "127.0.0.1:7441",
            env=env,
        )
        run(
            "--data",
            cn,
            "init",
            "--node",
            "cn-mps",
            "--name",
            "China Ministry of Public Security",
            "--endpoint",
            "127.0.0.1:7442",
            env=env,
        )

        step("2. They exchange cards and read fingerprints to each other by phone")
        run("--data", pk, "card", "export", "--out", work / "pk-moi.card", env=env)
        run("--data", cn, "card", "export", "--out", work / "cn-mps.card", env=env)
        fp_pk = json.loads(run("--data", pk, "card", "show", "--json", env=env, capture=True))[
            "fingerprint"
        ]
        fp_cn = json.loads(run("--data", cn, "card", "show", "--json", env=env, capture=True))[
            "fingerprint"
        ]
        console.print(
            f"pk-moi reads out [bold]{fp_pk}[/bold]; cn-mps reads out [bold]{fp_cn}[/bold]"
        )

        step("3. Each trusts the other's card only if the fingerprint matches")
        run("--data", cn, "peer", "add", work / "pk-moi.card", "--fingerprint", fp_pk, env=env)
        run("--data", pk, "peer", "add", work / "cn-mps.card", "--fingerprint", fp_cn, env=env)

        step("4. A forged fingerprint is refused and changes nothing")
        proc = subprocess.run(
            [
                *ACCORD,
                "--data",
                str(cn),
                "peer",
                "add",
                str(work / "pk-moi.card"),
                "--fingerprint",
                "AAAA-BBBB-CCCC-DDDD-EEEE-FFFF",
            ],
            env=env,
            check=False,
            text=True,
            capture_output=True,
        )
        console.print(
            f"[dim]$[/dim] [cyan]accord --data {cn} peer add pk-moi.card "
            "--fingerprint AAAA-…[/cyan]"
        )
        console.print(proc.stderr.strip())
        if proc.returncode == 0:
            raise SystemExit("demo: a wrong fingerprint was accepted")

        step("5. The trust stores")
        run("--data", pk, "peer", "list", env=env)
        run("--data", cn, "peer", "list", env=env)

        console.print()
        console.print(
            "[green bold]Demo complete.[/green bold] "
            "Both nodes trust each other, pinned by fingerprint."
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
