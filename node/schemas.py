"""The schema registry the node uses: the shipped SOP pack, checked once per process."""

from __future__ import annotations

from functools import cache

from exchange.sop import SchemaRegistry
from sop import load_shipped_schemas


@cache
def registry() -> SchemaRegistry:
    return SchemaRegistry.from_documents(load_shipped_schemas())
