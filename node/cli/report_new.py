"""``accord report new``: a guided interview that writes a report from its SOP schema.

Each field is asked with its title, description, label, allowed values, bounds and an
example; an answer is checked against the schema at once and asked again, naming the rule,
when it is wrong (the message never repeats the value). Then the node explains, per
partner, what would be sent; the officer confirms and the node seals and sends. Without a
running node the report can be saved to a file and submitted later.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import click
from rich.console import Console
from rich.table import Table
from rich.text import Text

from exchange.errors import AccordError, InputError
from exchange.sop import (
    DEFAULT_REPORT_LIMITS,
    TLP_LEVELS,
    Problem,
    ReportInvalid,
    SchemaRegistry,
    check_report_document,
    disclosed_field_problems,
    field_rule_problems,
    join_path,
)
from node.cli.base import CliContext, examples, json_option, pass_ctx
from node.cli.loop_cmds import REPLY_SOP, answered_item
from node.cli.officer_cmds import TLP_STYLE, print_submitted
from node.cli.output import ok, print_error, print_json, safe, stderr, stdout, warn
from node.cli.report_cmds import report
from node.files import write_export
from node.home import OFFICER_SOCKET
from node.rpc._pb.accord.v1 import officer_pb2
from node.rpc.officer_client import call, officer
from node.services.policy import REASON_TEXT
from node.services.schemas import registry

TLP_MEANING: Final = {
    "clear": "no limit on disclosure",
    "green": "the partner's community, not public channels",
    "amber": "the partner's organisation and its clients, need to know only",
    "amber+strict": "the partner's organisation only",
    "red": "the named recipients only, nobody else",
}
Path_ = tuple[str | int, ...]


class _Skip:
    """An optional field the officer left empty."""


SKIP: Final = _Skip()


def _kind(schema: dict[str, Any]) -> str:
    kind = schema.get("type", "string")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "string")
    return str(kind)


def _nest(path: Path_, value: Any) -> dict[str, Any]:
    """``{"location": {"lat": v}}`` for path ("location", "lat"); list indices become 0."""
    for key in reversed(path):
        value = [value] if isinstance(key, int) else {key: value}
    assert isinstance(value, dict)
    return value


def _display(path: Path_) -> str:
    out = ""
    for key in path:
        out = join_path(out, key)
    return out


def _hints(schema: dict[str, Any]) -> list[str]:
    """What an answer must look like, from the schema's side only."""
    hints = []
    if "enum" in schema:
        hints.append("one of: " + ", ".join(str(v) for v in schema["enum"]))
    low, high = schema.get("minimum"), schema.get("maximum")
    if low is not None and high is not None:
        hints.append(f"from {low} to {high}")
    elif low is not None:
        hints.append(f"at least {low}")
    elif high is not None:
        hints.append(f"at most {high}")
    if schema.get("format") == "date-time":
        hints.append("RFC 3339 date-time with an offset")
    if "pattern" in schema:
        hints.append(f"pattern {schema['pattern']}")
    examples = schema.get("examples") or []
    if examples and not isinstance(examples[0], list | dict):
        hints.append(f"e.g. {examples[0]}")
    return hints


def _convert(answer: str, schema: dict[str, Any]) -> Any:
    """The typed answer as a JSON value of the schema's type (ValueError names the rule)."""
    enum = schema.get("enum")
    if enum and all(isinstance(v, str) for v in enum):
        for value in enum:
            if answer.casefold() == value.casefold():
                return value
        return answer  # the schema check names the allowed values
    kind = _kind(schema)
    if kind == "integer":
        try:
            return int(answer)
        except ValueError:
            raise ValueError("must be a whole number (rule 'type')") from None
    if kind == "number":
        try:
            number = float(answer)
        except ValueError:
            raise ValueError("must be a number, e.g. 25.1264 (rule 'type')") from None
        return int(number) if number.is_integer() and "." not in answer else number
    if kind == "boolean":
        if answer.lower() in ("y", "yes", "true"):
            return True
        if answer.lower() in ("n", "no", "false"):
            return False
        raise ValueError("answer yes or no (rule 'type')")
    return answer


@dataclass
class Interview:
    """Asks a schema's fields one by one; ``err`` sends the conversation to stderr."""

    reg: SchemaRegistry
    sop: str
    ui: Console
    err: bool
    # the top-level answers so far
    answers: dict[str, Any] = dataclasses.field(default_factory=dict)

    # -- terminal ------------------------------------------------------------------------

    def ask(self, label: str, default: str = "") -> str:
        answer: str = click.prompt(label, default=default, show_default=bool(default), err=self.err)
        return answer.strip()

    def confirm(self, question: str, *, default: bool) -> bool:
        return bool(click.confirm(question, default=default, err=self.err))

    def note(self, text: str, style: str = "dim") -> None:
        self.ui.print(Text(text, style=style))

    def reject(self, lines: Sequence[str]) -> None:
        for line in lines:
            self.ui.print(Text("  ✗ ", style="red bold") + Text(safe(line)))
        self.ui.print(Text("  Please answer again.", style="dim"))

    # -- checks --------------------------------------------------------------------------

    def problems(self, path: Path_, value: Any) -> list[str]:
        """Problems of one answer, checked against the schema in place (paths shown as
        the officer knows them; never the value)."""
        target = "fields." + _display(tuple(0 if isinstance(k, int) else k for k in path))
        found: list[Problem] = disclosed_field_problems(
            self.reg, self.sop, _nest(path, value), limits=DEFAULT_REPORT_LIMITS
        )
        if not found:  # cross-field rules (an end before its start), with earlier answers
            merged = {**self.answers, **_nest(path, value)}
            found = field_rule_problems(self.reg, self.sop, merged)
        shown = _display(path)
        out = []
        for p in found:
            if p.path == target or p.path.startswith((target + ".", target + "[")):
                where = shown + p.path[len(target) :]
                out.append(f"{where}: {p.detail} (rule '{p.rule}')")
        return out

    # -- fields --------------------------------------------------------------------------

    def tlp(self) -> str:
        self.ui.print()
        self.ui.print(Text("TLP", style="bold") + Text("  who may the partner share it with?"))
        for level in TLP_LEVELS:
            self.ui.print(
                Text(f"  {level:<13}", style=TLP_STYLE.get(level, "")) + Text(TLP_MEANING[level])
            )
        while True:
            answer = self.ask("tlp", default="amber").lower()
            if answer in TLP_LEVELS:
                return answer
            self.reject([f"tlp: must be one of {', '.join(TLP_LEVELS)} (TLP 2.0)"])

    def fields(self, preset: dict[str, Any] | None = None) -> dict[str, Any]:
        """Ask every field; ``preset`` fields are filled in and shown, not asked."""
        doc = self.reg.schema(self.sop)
        out: dict[str, Any] = {}
        self.answers = out  # what cross-field rules are checked against
        for name in doc["properties"]:
            if preset and name in preset:
                out[name] = preset[name]
                self.note(f"{name}: {safe(str(preset[name]))} (set by --reply-to)")
                continue
            self.field(name, out)
        return out

    def field(self, name: str, out: dict[str, Any]) -> None:
        """Ask one top-level field into ``out`` (removing it when skipped)."""
        doc = self.reg.schema(self.sop)
        sub = doc["properties"][name]
        labels = self.reg.labels(self.sop)
        required = name in set(doc.get("required", []))
        need = "required" if required else "optional, Enter skips"
        self.ui.print()
        self.ui.print(
            Text(f"{sub.get('title', name)}", style="bold")
            + Text(f"  ({name} · {labels[name]} · {need})", style="dim")
        )
        if sub.get("description"):
            self.note(sub["description"], style="")
        value = self.value((name,), sub, required)
        if value is SKIP:
            out.pop(name, None)
        else:
            out[name] = value

    def review(self, level: str, fields: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        """Every answer at once, numbered; the officer may change any before sealing."""
        names = list(self.reg.schema(self.sop)["properties"])
        self.answers = fields
        while True:
            rows = [("1", "tlp", level.upper())]
            for n, name in enumerate(names, start=2):
                shown = json.dumps(fields[name], ensure_ascii=False) if name in fields else "-"
                rows.append((str(n), name, shown))
            self.ui.print()
            table = Table(title="Review your answers", title_justify="left")
            for column in ("#", "field", "answer"):
                table.add_column(column)
            for row in rows:
                table.add_row(*(Text(safe(c)) for c in row))
            self.ui.print(table)
            answer = self.ask("Change which answer? (number, Enter: none)")
            if not answer:
                return level, fields
            if not answer.isdigit() or not 1 <= int(answer) <= len(rows):
                self.reject([f"choose a number from 1 to {len(rows)}, or press Enter"])
                continue
            if answer == "1":
                level = self.tlp()
            else:
                self.field(names[int(answer) - 2], fields)

    def value(self, path: Path_, schema: dict[str, Any], required: bool) -> Any:
        kind = _kind(schema)
        if kind == "object":
            return self.object(path, schema, required)
        if kind == "array":
            return self.array(path, schema, required)
        return self.scalar(path, schema, required)

    def scalar(self, path: Path_, schema: dict[str, Any], required: bool) -> Any:
        shown = _display(path)
        hints = _hints(schema)
        if len(path) > 1 and schema.get("title"):
            hints.insert(0, str(schema["title"]))
        if hints:
            self.note("  " + "; ".join(hints))
        while True:
            answer = self.ask(shown)
            if not answer:
                if not required:
                    return SKIP
                self.reject([f"{shown}: is required (rule 'required')"])
                continue
            try:
                value = _convert(answer, schema)
            except ValueError as e:
                self.reject([f"{shown}: {e}"])
                continue
            problems = self.problems(path, value)
            if not problems:
                return value
            self.reject(problems)

    def object(self, path: Path_, schema: dict[str, Any], required: bool) -> Any:
        shown = _display(path)
        if not required and not self.confirm(f"Add {shown}?", default=False):
            return SKIP
        inner = set(schema.get("required", []))
        while True:
            out: dict[str, Any] = {}
            for name, sub in schema.get("properties", {}).items():
                value = self.value((*path, name), sub, name in inner)
                if value is not SKIP:
                    out[name] = value
            if not out and not required:
                return SKIP
            problems = self.problems(path, out)
            if not problems:
                return out
            self.reject(problems)

    def array(self, path: Path_, schema: dict[str, Any], required: bool) -> Any:
        shown = _display(path)
        item = schema.get("items", {})
        most = int(schema.get("maxItems", 100))
        examples = schema.get("examples") or []
        if examples and isinstance(examples[0], list) and examples[0]:
            self.note(f"  e.g. {examples[0][0]}")
        while True:
            if _kind(item) == "object":
                items = self.object_items(path, item, most)
            elif "enum" in item or _kind(item) in ("integer", "number", "boolean"):
                items = self.listed_items(path, item, required)
            else:
                items = self.line_items(path, item, most)
            if not items:
                if not required:
                    return SKIP
                self.reject([f"{shown}: needs at least one entry (rule 'required')"])
                continue
            problems = self.problems(path, items)
            if not problems:
                return items
            self.reject(problems)

    def object_items(self, path: Path_, item: dict[str, Any], most: int) -> list[Any]:
        items: list[Any] = []
        while len(items) < most:
            which = "an" if not items else "another"
            if not self.confirm(f"Add {which} entry to {_display(path)}?", default=False):
                break
            items.append(self.object((*path, len(items)), item, True))
        return items

    def line_items(self, path: Path_, item: dict[str, Any], most: int) -> list[Any]:
        self.note(f"  one per line, up to {most}; an empty line ends the list")
        items: list[Any] = []
        while len(items) < most:
            where = (*path, len(items))
            answer = self.ask(_display(where))
            if not answer:
                break
            problems = self.problems(where, answer)
            if problems:
                self.reject(problems)
                continue
            items.append(answer)
        return items

    def listed_items(self, path: Path_, item: dict[str, Any], required: bool) -> list[Any]:
        self.note("  " + "; ".join(["comma-separated", *_hints(item)]))
        while True:
            answer = self.ask(_display(path))
            items: list[Any] = []
            wrong: list[str] = []
            for i, part in enumerate(p.strip() for p in answer.split(",") if p.strip()):
                try:
                    value = _convert(part, item)
                except ValueError as e:
                    wrong.append(f"{_display((*path, i))}: {e}")
                    continue
                wrong += self.problems((*path, i), value)
                items.append(value)
            if not wrong:
                return items
            self.reject(wrong)


# -- explanation, confirmation, submission -------------------------------------------------


def _explanation(ui: Console, decisions: Sequence[officer_pb2.ReleaseOutcome]) -> None:
    if not decisions:
        ui.print(Text("No trusted partner: the report would be stored and logged, sent to nobody."))
    for d in decisions:
        sent = len(d.released) + len(d.transformed)
        title = f"{d.peer} would receive {sent} field(s)" if sent else f"{d.peer}: nothing"
        table = Table(title=safe(title), title_justify="left", header_style="bold")
        for col in ("field", "outcome", "why / how"):
            table.add_column(col, overflow="fold")
        rows = [(f, "sent as written", "") for f in d.released]
        rows += [(t.field, "sent transformed", f"transform {t.transform}") for t in d.transformed]
        rows += [(w.field, "WITHHELD", REASON_TEXT.get(w.reason, w.reason)) for w in d.withheld]
        for row in sorted(rows):
            table.add_row(*(Text(safe(c)) for c in row))
        ui.print(table)
        ui.print(Text(f"{sent} of {len(rows)} fields would be sent to {safe(d.peer)}."))


def _offer_save(iv: Interview, data: bytes, sop: str, data_dir: Path) -> Path | None:
    if not iv.confirm("Save the report to a file, to submit it later?", default=True):
        return None
    default = f"{sop.split('@')[0]}-report.json"
    while True:
        path = Path(iv.ask("file", default=default))
        try:
            write_export(path, data)  # 0600, never over a file or through a link
        except InputError as e:
            iv.reject([f"{e}; choose another name"])
            continue
        ok(f"report saved to {path} (mode 0600)")
        iv.note(f"Submit it once the node runs: accord --data {data_dir} report submit {path}")
        return path


@report.command(
    "new",
    epilog=examples(
        "accord --data ./pk-moi report new --schema threat-alert@1",
        "accord report new --schema incident-report@1 --out incident.json",
        "accord --data ./cn-mps report new --reply-to 0193f2c5",
    ),
)
@click.option(
    "--schema",
    "sop",
    metavar="NAME@V",
    help="e.g. threat-alert@1 (required unless --reply-to: response@1).",
)
@click.option(
    "--reply-to",
    "reply_to",
    metavar="ID",
    help="Answer a received item (inbox id or prefix) with a response@1 report.",
)
@click.option("--tlp", type=click.Choice(TLP_LEVELS), help="Set the TLP instead of asking.")
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Only write the report to this file (JSON, mode 0600); send nothing.",
)
@json_option
@pass_ctx
def report_new(
    ctx: CliContext,
    sop: str | None,
    reply_to: str | None,
    tlp: str | None,
    out: Path | None,
    as_json: bool,
) -> None:
    """Write a report step by step: each field is asked from the schema and checked at once.

    Then shows, per partner, what would be sent and what withheld, asks for confirmation,
    and submits to the running node. With --out, only writes the file. Ctrl-C abandons
    the report; nothing is stored.
    """
    reg = registry()
    preset: dict[str, Any] = {}
    if reply_to is not None:
        answered = answered_item(ctx, reply_to)
        preset["in_reply_to"] = answered.report_id
        sop = sop or REPLY_SOP
        tlp = tlp or answered.tlp
    if sop is None:
        raise InputError(
            "--schema is required (or --reply-to ID for a reply)",
            next_step="e.g. accord report new --schema threat-alert@1",
        )
    doc = reg.schema(sop)
    if out is not None and (out.exists() or out.is_symlink()):
        raise InputError(f"{out} exists", next_step="Choose another --out; nothing was asked.")
    ui = stderr if as_json else stdout
    iv = Interview(reg, sop, ui, err=as_json)
    if out is None and not (ctx.data_dir / OFFICER_SOCKET).exists():
        warn(
            f"no node is serving {ctx.data_dir}: you can write the report now and save it "
            "to a file at the end"
        )
    ui.print(Text(f"{doc.get('title', sop)} ({sop})", style="bold underline"))
    if doc.get("description"):
        ui.print(Text(doc["description"]))
    iv.note("Answer each question; Enter skips an optional field; Ctrl-C abandons the report.")
    level = tlp or iv.tlp()
    level, fields = iv.review(level, iv.fields(preset))
    while True:
        data = (
            json.dumps({"sop": sop, "tlp": level, "fields": fields}, indent=2, ensure_ascii=False)
            + "\n"
        ).encode()
        try:
            check_report_document(reg, data, "json")  # the whole report, as the node will
            break
        except ReportInvalid as e:  # e.g. a cross-field rule an answer changed in review broke
            iv.reject([str(p) for p in e.problems])
            level, fields = iv.review(level, fields)
    ui.print()
    ui.print(
        Text(f" TLP:{level.upper()} ", style=f"bold reverse {TLP_STYLE.get(level, 'white')}")
        + Text(f"  {sop} report complete: {', '.join(fields)}")
    )
    if out is not None:
        write_export(out, data)
        if as_json:
            print_json({"saved": str(out), "sop": sop, "tlp": level, "fields": sorted(fields)})
            return
        ok(f"report written to {out} (mode 0600); nothing was sent")
        iv.note(f"Submit it with: accord --data {ctx.data_dir} report submit {out}")
        return
    try:
        with officer(ctx.data_dir) as stub:
            explained = call(stub.Explain, officer_pb2.ExplainRequest(report=data))
            ui.print()
            _explanation(ui, explained.decisions)
            peers = [d.peer for d in explained.decisions if d.released or d.transformed]
            to = ", ".join(peers) if peers else "nobody (stored and logged only)"
            if not iv.confirm(f"Seal and send this report to {to}?", default=False):
                iv.note("Not sent; nothing was stored.", style="bold")
                _offer_save(iv, data, sop, ctx.data_dir)
                raise click.exceptions.Exit(130)  # a refused confirmation, as elsewhere
            answer = call(stub.Submit, officer_pb2.SubmitRequest(report=data))
    except AccordError as e:
        print_error(e)
        _offer_save(iv, data, sop, ctx.data_dir)
        raise click.exceptions.Exit(e.exit_code) from None
    print_submitted(answer, as_json, f"report {answer.report_id} sealed (version {answer.version})")
