"""The shipped SOP schema pack: JSON Schema 2020-12 documents, one per ``<name>@<major>``.

Beside them, ``rules/<name>@<major>.json`` holds a schema's cross-field rules (docs/adr/0020):
kept out of the schema so its digest, pinned by signed agreements, never changes for them.

This is the pack's only I/O. It returns the exact file bytes; ``exchange.sop`` parses
and checks them
(``SchemaRegistry.from_documents(load_shipped_schemas(), load_shipped_rules())``).
"""

from __future__ import annotations

from importlib import resources

SCHEMA_SUFFIX = ".json"
RULES_DIR = "rules"


def load_shipped_schemas() -> dict[str, bytes]:
    """The shipped schemas as ``{"threat-alert@1": <file bytes>, ...}``, sorted by name."""
    pack = resources.files(__name__)
    found = {
        entry.name[: -len(SCHEMA_SUFFIX)]: entry.read_bytes()
        for entry in pack.iterdir()
        if entry.is_file() and entry.name.endswith(SCHEMA_SUFFIX)
    }
    return dict(sorted(found.items()))


def load_shipped_rules() -> dict[str, bytes]:
    """The shipped cross-field rules as ``{"threat-alert@1": <file bytes>, ...}``, by name."""
    folder = resources.files(__name__).joinpath(RULES_DIR)
    if not folder.is_dir():
        return {}
    found = {
        entry.name[: -len(SCHEMA_SUFFIX)]: entry.read_bytes()
        for entry in folder.iterdir()
        if entry.is_file() and entry.name.endswith(SCHEMA_SUFFIX)
    }
    return dict(sorted(found.items()))
