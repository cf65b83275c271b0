"""The schema registry the node uses: the shipped SOP pack and its cross-field rules,
checked once per process."""

from __future__ import annotations

from functools import cache

from exchange.sop import SchemaRegistry
from sop import load_shipped_rules, load_shipped_schemas


@cache
def registry() -> SchemaRegistry:
    return SchemaRegistry.from_documents(load_shipped_schemas(), load_shipped_rules())
