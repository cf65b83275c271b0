"""Agreements and release policies: agreement propose/sign/show/list, policy check/explain/apply."""

from __future__ import annotations

from pathlib import Path

import click

from exchange.agreement import (
    ONWARD_TLPS,
    Agreement,
    parse_agreement_unverified,
    parse_signed_agreement_unverified,
)
from exchange.errors import InputError
from exchange.policy import PolicyInvalid
from exchange.sop import check_report_document
from exchange.termination import Termination
from exchange.times import format_time, parse_time
from node import clock
from node.cli.base import CliContext, cli, examples, json_option, pass_ctx
from node.cli.node_cmds import opened
from node.cli.output import ok, print_fields, print_json, print_table, say, stderr, warn
from node.cli.report_cmds import read_report_file
from node.files import write_export
from node.services.agreements import (
    accept_termination,
    current_agreement,
    load_terms,
    propose_agreement,
    schema_severities,
    sign_and_store,
    stored_agreements,
    terminate_agreement,
)
from node.services.policy import (
    REASON_TEXT,
    active_policy,
    apply_policy,
    check_policy,
    decide_for,
    read_policy_text,
)
from node.services.reports import load_sealed
from node.services.schemas import registry


def _agreement_json(
    a: Agreement, digest: str | None = None, signed_by: list[str] | None = None
) -> dict[str, object]:
    out = a.to_json()
    if digest:
        out["digest"] = digest
    if signed_by is not None:
        out["signed_by"] = signed_by
    return out


def _print_agreement(a: Agreement, digest: str | None, signed_by: list[str]) -> None:
    print_fields(
        [
            ("id", a.id),
            ("version", a.version),
            ("parties", " and ".join(a.parties)),
            ("valid", f"{a.not_before} to {a.not_after}"),
            ("suite", a.suite),
            ("signed by", ", ".join(signed_by) or "nobody"),
            ("digest", digest or "(not yet signed by both)"),
        ]
    )
    rows = []
    for d in a.ceiling:
        for name, sc in sorted(d.schemas.items()):
            rows.append(
                (
                    f"{d.sender} -> {d.receiver}",
                    d.tlp_max,
                    name,
                    ", ".join(sorted(sc.labels)) or "-",
                    ", ".join(sorted(sc.fields)) or "-",
                )
            )
    print_table(
        "Ceiling (the most that may flow)",
        ["direction", "TLP max", "schema", "labels", "fields"],
        rows,
    )
    onward = []
    for d in a.ceiling:
        for schema, levels in [
            ("every schema", d.onward.default),
            *sorted(d.onward.schemas.items()),
        ]:
            for tlp in [t for t in ONWARD_TLPS if t in levels]:
                onward.append(
                    (f"{d.receiver} (from {d.sender})", schema, tlp, ", ".join(sorted(levels[tlp])))
                )
    if onward:
        print_table(
            "Onward (whom the receiver may pass reports on to; anything not listed: nobody)",
            ["receiver", "schema", "TLP", "recipient classes"],
            onward,
        )
    else:
        say("Onward: nothing may be passed on to domestic recipients in either direction.")
    _print_response(a)


def _print_response(a: Agreement) -> None:
    """The response rules: one row per schema and severity, in the schema's severity order."""
    if not a.response:
        say("Response: no deadlines; nothing must be acknowledged in a set time.")
        return
    order = schema_severities(sorted(n for n in a.response if n in registry()))
    rows = []
    for sop in sorted(a.response):
        known = order.get(sop, [])
        rules = a.response[sop]
        for severity in sorted(rules, key=lambda s: (known.index(s) if s in known else 99, s)):
            rule = rules[severity].to_json()
            rows.append((sop, severity, rule["acknowledge"], rule.get("respond", "-")))
    print_table(
        "Response (how soon the receiving partner must acknowledge and respond; both ways)",
        ["schema", "severity", "acknowledge within", "respond within"],
        rows,
    )


@cli.group(
    epilog=examples(
        "accord --data ./pk-moi agreement propose --peer cn-mps --terms t.toml --out a.json",
        "accord --data ./pk-moi agreement show --peer cn-mps",
    )
)
def agreement() -> None:
    """Bilateral agreements: the ceiling both partners signed. Nothing flows without one."""


@agreement.command(
    "propose",
    epilog=examples(
        "accord --data ./pk-moi agreement propose --peer cn-mps "
        "--terms sop/agreements/example-terms.toml --out agreement.json"
    ),
)
@click.option("--peer", required=True, help="The partner node id.")
@click.option(
    "--terms",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Terms file (TOML).",
)
@click.option(
    "--out",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Agreement file to write (mode 0600).",
)
@click.option("--force", is_flag=True, help="Replace FILE if it exists.")
@json_option
@pass_ctx
def agreement_propose(
    ctx: CliContext, peer: str, terms: Path, out: Path, force: bool, as_json: bool
) -> None:
    """Turn terms into a canonical agreement, sign it, and write it for the partner."""
    if (out.exists() or out.is_symlink()) and not force:
        raise InputError(f"{out} exists", next_step="Choose another --out, or pass --force.")
    with opened(ctx) as node:
        signed = propose_agreement(node, peer, load_terms(terms), clock.now())
    write_export(out, signed.to_bytes(), force=force)
    content = parse_agreement_unverified(signed.agreement_bytes)
    if as_json:
        print_json(
            {**_agreement_json(content, signed_by=sorted(signed.signatures)), "file": str(out)}
        )
        return
    _print_agreement(content, None, sorted(signed.signatures))
    ok(
        f"agreement proposed and signed; send {out} to {peer} "
        "to countersign ('accord agreement sign')"
    )


@agreement.command("sign", epilog=examples("accord --data ./cn-mps agreement sign agreement.json"))
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--yes", is_flag=True, help="Sign without asking for confirmation.")
@json_option
@pass_ctx
def agreement_sign(ctx: CliContext, file: Path, yes: bool, as_json: bool) -> None:
    """Review and countersign an agreement; once both parties signed, store it.

    Every signature already on it must verify. The file is updated in place, so it can be
    sent back to the partner, who runs the same command to store the completed agreement.
    """
    data = file.read_bytes()
    content = parse_agreement_unverified(parse_signed_agreement_unverified(data).agreement_bytes)
    if not yes and not as_json:
        _print_agreement(content, None, sorted(parse_signed_agreement_unverified(data).signatures))
        click.confirm("Sign this agreement on behalf of this node?", abort=True, err=True)
    with opened(ctx) as node:
        signed, verified = sign_and_store(node, data, clock.now())
    file.write_bytes(signed.to_bytes())
    signers = sorted(signed.signatures)
    if as_json:
        print_json(
            {
                **_agreement_json(content, verified.digest if verified else None, signers),
                "stored": verified is not None,
                "file": str(file),
            }
        )
        return
    if verified is None:
        ok(
            f"signed; {file} now carries {', '.join(signers)}'s signature(s). "
            "Send it back to the partner."
        )
    else:
        ok(
            f"agreement {content.id} is signed by both parties "
            f"and in force until {content.not_after}"
        )
        say(f"digest {verified.digest}")


@agreement.command(
    "terminate",
    epilog=examples(
        "accord --data ./pk-moi agreement terminate --peer cn-mps --reason replaced --out end.json",
        "accord --data ./cn-mps agreement terminate --file end.json",
    ),
)
@click.option("--peer", help="End the agreement in force with this partner (signs a statement).")
@click.option(
    "--file",
    "file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Record the partner's signed termination statement instead.",
)
@click.option("--at", "at", help="When it ends, RFC 3339 UTC (default: now). Never in the past.")
@click.option(
    "--reason",
    type=click.Choice(["replaced", "breach", "ended"]),
    default="ended",
    show_default=True,
)
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="With --peer: the statement file to send the partner (mode 0600).",
)
@click.option("--force", is_flag=True, help="Replace the --out file if it exists.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@json_option
@pass_ctx
def agreement_terminate(
    ctx: CliContext,
    peer: str | None,
    file: Path | None,
    at: str | None,
    reason: str,
    out: Path | None,
    force: bool,
    yes: bool,
    as_json: bool,
) -> None:
    """End an agreement: sign a termination for the partner, or record the partner's.

    Either party may end the agreement alone. From the given time on, nothing is released
    or accepted under it; both logs record it (agreement.terminated) once the partner has
    run this command with the statement file. An end cannot be back-dated.
    """
    if (peer is None) == (file is None):
        raise InputError("give either --peer (to end it) or --file (to record the partner's)")
    now = clock.now()
    if file is not None:
        with opened(ctx) as node:
            termination, new = accept_termination(node, file.read_bytes(), now)
        result = {**_termination_json(termination), "recorded": new}
        if as_json:
            print_json(result)
        else:
            ok(
                f"{termination.by} ends agreement {termination.agreement[:20]}… at "
                f"{termination.effective_at} ({termination.reason})"
                + ("" if new else "; already recorded")
            )
        return
    if out is None:
        raise InputError("--peer needs --out FILE: the statement the partner must record")
    effective = parse_time(at, field="--at") if at is not None else now
    if not yes and not as_json:
        click.confirm(
            f"End the agreement with {peer} at {format_time(effective)}? Nothing will flow "
            "under it afterwards.",
            abort=True,
            err=True,
        )
    if (out.exists() or out.is_symlink()) and not force:
        raise InputError(f"{out} exists", next_step="Choose another --out, or pass --force.")
    with opened(ctx) as node:
        data, termination = terminate_agreement(node, peer or "", effective, reason, now)
    write_export(out, data, force=force)
    if as_json:
        print_json({**_termination_json(termination), "file": str(out)})
        return
    ok(f"agreement with {peer} ends at {termination.effective_at}; logged")
    say(f"Next: send {out} to {peer}; they run 'accord agreement terminate --file {out.name}'.")


def _termination_json(t: Termination) -> dict[str, object]:
    return {
        "agreement_digest": t.agreement,
        "by": t.by,
        "peer": t.peer,
        "effective_at": t.effective_at,
        "reason": t.reason,
    }


@agreement.command("list", epilog=examples("accord --data ./pk-moi agreement list --json"))
@json_option
@pass_ctx
def agreement_list(ctx: CliContext, as_json: bool) -> None:
    """List stored agreements (signed by both parties)."""
    with opened(ctx) as node:
        rows = stored_agreements(node)
        now = clock.now()
        in_force = {r.peer: current_agreement(node, r.peer, now) for r in rows}
    current = {peer: a.digest for peer, a in in_force.items() if a is not None}
    items = [
        {
            "digest": r.digest,
            "peer": r.peer,
            "id": r.id,
            "version": r.version,
            "not_before": r.not_before,
            "not_after": r.not_after,
            "current": current.get(r.peer) == r.digest,
        }
        for r in rows
    ]
    if as_json:
        print_json(items)
        return
    if not items:
        say("No agreements yet. Propose one with 'accord agreement propose'.")
        return
    print_table(
        "Agreements",
        ["peer", "id", "valid until", "in force", "digest"],
        [
            (i["peer"], i["id"], i["not_after"], "yes" if i["current"] else "no", i["digest"])
            for i in items
        ],
    )


@agreement.command("show", epilog=examples("accord --data ./pk-moi agreement show --peer cn-mps"))
@click.option("--peer", help="Show the agreement in force with this partner.")
@click.option(
    "--file",
    "file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Or an agreement file.",
)
@json_option
@pass_ctx
def agreement_show(ctx: CliContext, peer: str | None, file: Path | None, as_json: bool) -> None:
    """Show an agreement: parties, validity and the ceiling in each direction."""
    if (peer is None) == (file is None):
        raise InputError("give exactly one of --peer or --file")
    if file is not None:
        signed = parse_signed_agreement_unverified(file.read_bytes())
        content, digest = parse_agreement_unverified(signed.agreement_bytes), None
        signers = sorted(signed.signatures)
        warn("signatures in a file are shown as claimed; 'accord agreement sign' verifies them")
    else:
        with opened(ctx) as node:
            verified = current_agreement(node, peer or "", clock.now())
        if verified is None:
            raise InputError(
                f"no agreement in force with {peer}",
                code="policy.no_agreement",
                next_step="Propose one with 'accord agreement propose'.",
            )
        content, digest, signers = verified.agreement, verified.digest, sorted(verified.signatures)
    if as_json:
        print_json(_agreement_json(content, digest, signers))
    else:
        _print_agreement(content, digest, signers)


# -- policy -------------------------------------------------------------------------------


@cli.group(
    epilog=examples(
        "accord --data ./pk-moi policy apply sop/policies/example.toml",
        "accord --data ./pk-moi policy explain --peer cn-mps alert.json",
    )
)
def policy() -> None:
    """Release policies: what each partner may receive, per field (deny by default)."""


def _problems_table(e: PolicyInvalid) -> None:
    print_table(
        f"{len(e.problems)} problem(s)",
        ["line", "key", "code", "rule"],
        [(p.line or "-", p.key, p.code, p.rule) for p in e.problems],
    )


@policy.command(
    "check", epilog=examples("accord --data ./pk-moi policy check sop/policies/example.toml")
)
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@json_option
@pass_ctx
def policy_check(ctx: CliContext, file: Path, as_json: bool) -> None:
    """Check a policy file: names, labels, transforms and, with a node, the agreements."""
    text = read_policy_text(file)
    node_cm = opened(ctx) if (ctx.data_dir / "config.toml").exists() else None
    try:
        if node_cm is not None:
            with node_cm as node:
                checked = check_policy(node, text, clock.now())
        else:
            checked = check_policy(None, text, clock.now())
    except PolicyInvalid as e:
        if as_json:
            print_json(
                {
                    "valid": False,
                    "problems": [
                        {"line": p.line, "key": p.key, "code": p.code, "rule": p.rule}
                        for p in e.problems
                    ],
                }
            )
        else:
            _problems_table(e)
            stderr.print("The policy was not applied. Fix each named key and check again.")
        raise click.exceptions.Exit(4) from None
    if as_json:
        print_json({"valid": True, "digest": checked.digest, "peers": sorted(checked.peers)})
        return
    ok(f"policy is valid for {', '.join(sorted(checked.peers))} (digest {checked.digest})")


@policy.command(
    "apply", epilog=examples("accord --data ./pk-moi policy apply sop/policies/example.toml")
)
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@json_option
@pass_ctx
def policy_apply(ctx: CliContext, file: Path, as_json: bool) -> None:
    """Check a policy and make it this node's active release policy (logged)."""
    text = read_policy_text(file)
    with opened(ctx) as node:
        try:
            applied = apply_policy(node, text, clock.now())
        except PolicyInvalid as e:
            _problems_table(e)
            raise
    if as_json:
        print_json({"digest": applied.digest, "peers": sorted(applied.peers)})
        return
    ok(f"policy applied for {', '.join(sorted(applied.peers))} (digest {applied.digest})")


@policy.command(
    "explain",
    epilog=examples(
        "accord --data ./pk-moi policy explain --peer cn-mps alert.json",
        "accord --data ./pk-moi policy explain --peer cn-mps --report 0193...",
    ),
)
@click.argument(
    "file", required=False, type=click.Path(dir_okay=False, path_type=Path, allow_dash=True)
)
@click.option("--peer", required=True, help="The partner the decision is for.")
@click.option("--report", "report_id", help="A stored report id instead of FILE.")
@click.option(
    "--policy",
    "policy_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Explain with this policy instead of the active one (nothing is applied).",
)
@json_option
@pass_ctx
def policy_explain(
    ctx: CliContext,
    file: Path | None,
    peer: str,
    report_id: str | None,
    policy_file: Path | None,
    as_json: bool,
) -> None:
    """Show, field by field, what PEER would receive of a report, and why the rest is withheld."""
    from exchange.sop import Report

    if (file is None) == (report_id is None):
        raise InputError("give a report FILE or --report ID (one of them)")
    now = clock.now()
    with opened(ctx) as node:
        node.trust_store().trusted_chain(peer, now)
        if file is not None:
            data, fmt = read_report_file(file)
            report = check_report_document(registry(), data, fmt).report  # type: ignore[arg-type]
        else:
            from exchange.sdjwt import PresentationLimits, verify_presentation

            sealed = load_sealed(node, report_id or "")
            key = node.store.reports.latest_issuer_key(report_id)
            v = verify_presentation(
                sealed.full_presentation(), bytes(key), limits=PresentationLimits()
            )
            report = Report(v.sop, v.tlp, dict(v.fields))
        pol = (
            check_policy(node, read_policy_text(policy_file), now)
            if policy_file
            else active_policy(node, now)
        )
        decision = decide_for(node, report, peer, now, pol)
    rows = decision.rows()
    if as_json:
        print_json(
            {
                "peer": peer,
                "schema": report.sop,
                "tlp": report.tlp,
                "policy_digest": decision.policy_digest,
                "agreement_digest": decision.agreement_digest,
                "releases_anything": decision.releases_anything,
                "fields": [{"field": f, "outcome": o, "detail": d} for f, o, d in rows],
            }
        )
        return
    if pol is None:
        warn(
            "this node has no active release policy: nothing is released "
            "('accord policy apply FILE')"
        )
    if decision.agreement_digest is None:
        warn(f"no agreement in force with {peer} for {report.sop}: nothing is released")
    style = {
        "released": "sent as written",
        "transformed": "sent transformed",
        "withheld": "WITHHELD",
    }
    print_table(
        f"What {peer} would receive of this {report.sop} report (TLP:{report.tlp.upper()})",
        ["field", "outcome", "why / how"],
        [
            (
                f,
                style[o],
                (
                    f"transform {d}"
                    if o == "transformed"
                    else REASON_TEXT.get(d, d)
                    if o == "withheld"
                    else ""
                ),
            )
            for f, o, d in rows
        ],
    )
    n_out = sum(1 for _f, o, _d in rows if o != "withheld")
    say(f"{n_out} of {len(rows)} fields would be sent to {peer}.")
