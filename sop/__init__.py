"""The shipped SOP schema pack: JSON Schema 2020-12 documents, one per ``<name>@<major>``.

This is the pack's only I/O. It returns the exact file bytes; ``exchange.sop`` parses
and checks them (``SchemaRegistry.from_documents(load_shipped_schemas())``).
"""

from __future__ import annotations

from importlib import resources

SCHEMA_SUFFIX = ".json"


def load_shipped_schemas() -> dict[str, bytes]:
    """The shipped schemas as ``{"threat-alert@1": <file bytes>, ...}``, sorted by name."""
    pack = resources.files(__name__)
    found = {
        entry.name[: -len(SCHEMA_SUFFIX)]: entry.read_bytes()
        for entry in pack.iterdir()
        if entry.is_file() and entry.name.endswith(SCHEMA_SUFFIX)
    }
    return dict(sorted(found.items()))
