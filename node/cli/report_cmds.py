"""SOP schemas and reports: schema list/show, report validate."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from exchange.errors import InputError
from exchange.sop import ReportInvalid, check_report_document
from node.cli.base import cli, examples, json_option
from node.cli.output import ok, print_json, print_table, stderr
from node.services.schemas import registry

MAX_REPORT_FILE = 1 << 20


@cli.group(
    epilog=examples(
        "accord schema list",
        "accord schema show threat-alert@1",
    )
)
def schema() -> None:
    """The SOP schemas reports must follow (shipped pack, agreed by both partners)."""


@schema.command("list", epilog=examples("accord schema list --json"))
@json_option
def schema_list(as_json: bool) -> None:
    """List the SOP schemas with their digests."""
    reg = registry()
    items = [
        {
            "id": name,
            "title": reg.schema(name).get("title", ""),
            "digest": reg.digest(name),
            "fields": len(reg.labels(name)),
        }
        for name in reg.names()
    ]
    if as_json:
        print_json(items)
        return
    print_table(
        "SOP schemas",
        ["id", "title", "fields", "digest"],
        [(i["id"], i["title"], i["fields"], i["digest"]) for i in items],
    )


def _type_of(prop: dict[str, Any]) -> str:
    if "enum" in prop:
        return "one of " + ", ".join(map(str, prop["enum"]))
    kind = prop.get("type", "any")
    if kind == "array":
        return f"list of {_type_of(prop.get('items', {}))}"
    if kind == "object":
        return "object {" + ", ".join(prop.get("properties", {})) + "}"
    return str(kind)


@schema.command("show", epilog=examples("accord schema show threat-alert@1"))
@click.argument("name", metavar="NAME@V")
@json_option
def schema_show(name: str, as_json: bool) -> None:
    """Show a schema's fields: type, label (what sharing it means) and whether required."""
    reg = registry()
    doc = reg.schema(name)
    labels = reg.labels(name)
    required = set(doc.get("required", []))
    props: dict[str, dict[str, Any]] = doc["properties"]
    if as_json:
        print_json(
            {
                "id": name,
                "digest": reg.digest(name),
                "title": doc.get("title", ""),
                "fields": [
                    {
                        "name": f,
                        "label": labels[f],
                        "required": f in required,
                        "type": _type_of(p),
                        "title": p.get("title", ""),
                    }
                    for f, p in props.items()
                ],
            }
        )
        return
    print_table(
        f"{name}: {doc.get('title', '')}  ({reg.digest(name)})",
        ["field", "label", "required", "type", "meaning"],
        [
            (f, labels[f], "yes" if f in required else "", _type_of(p), p.get("title", ""))
            for f, p in props.items()
        ],
    )


@cli.group(
    epilog=examples(
        "accord --data ./pk-moi report new --schema threat-alert@1",
        "accord --data ./pk-moi report list",
    )
)
def report() -> None:
    """Threat reports: validate (and, with a running node, submit, list, show)."""


def read_report_file(path: Path) -> tuple[bytes, str]:
    if str(path) == "-":
        data = sys.stdin.buffer.read(MAX_REPORT_FILE + 1)
        if len(data) > MAX_REPORT_FILE:
            raise InputError(f"standard input is larger than {MAX_REPORT_FILE} bytes")
        fmt = "toml" if data.lstrip()[:1] not in (b"{", b"[") else "json"
    else:
        if not path.is_file():
            raise InputError(f"{path} is not a file")
        if path.stat().st_size > MAX_REPORT_FILE:
            raise InputError(f"{path} is larger than {MAX_REPORT_FILE} bytes")
        data = path.read_bytes()
        fmt = "toml" if path.suffix.lower() == ".toml" else "json"
    return data, fmt


@report.command(
    "validate",
    epilog=examples(
        "accord report validate alert.json", "accord report validate alert.toml --json"
    ),
)
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path, allow_dash=True))
@json_option
def report_validate(file: Path, as_json: bool) -> None:
    """Check a report (JSON or TOML) against its SOP schema; lists every problem at once.

    The report shape: {"sop": "threat-alert@1", "tlp": "amber", "fields": {...}}.
    Nothing is stored. Exits 2 when the report is invalid.
    """
    data, fmt = read_report_file(file)
    try:
        valid = check_report_document(registry(), data, fmt)  # type: ignore[arg-type]
    except ReportInvalid as e:
        if as_json:
            print_json(
                {
                    "valid": False,
                    "problems": [
                        {"path": p.path, "rule": p.rule, "type": p.json_type, "detail": p.detail}
                        for p in e.problems
                    ],
                }
            )
        else:
            print_table(
                f"{len(e.problems)} problem(s) in {file}",
                ["field", "rule", "found", "problem"],
                [(p.path, p.rule, p.json_type, p.detail) for p in e.problems],
            )
            stderr.print("Nothing was stored. Fix every listed field and validate again.")
        raise click.exceptions.Exit(2) from None
    fields = sorted(valid.report.fields)
    if as_json:
        print_json(
            {
                "valid": True,
                "sop": valid.report.sop,
                "sop_digest": valid.sop_digest,
                "tlp": valid.report.tlp,
                "fields": fields,
            }
        )
        return
    ok(
        f"valid {valid.report.sop} report (TLP:{valid.report.tlp.upper()}), "
        f"fields: {', '.join(fields)}"
    )
