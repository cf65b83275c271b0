"""The feed's page query reads along its index: no scan of the collection, no sort."""

from __future__ import annotations

from pathlib import Path

import pytest

from node.store import Store
from node.store.feed import FeedStore, Visibility

VISIBLE = Visibility(frozenset({("green", "threat-alert@1"), ("amber", "threat-alert@1")}))


@pytest.mark.threat("F03")
@pytest.mark.parametrize(
    "query",
    [
        {"after": None, "added_after": None},
        {"after": ("2026-12-01T00:00:00.000Z", 42), "added_after": None},
        {"after": None, "added_after": "2026-12-01T00:00:00.000Z", "types": ["report"]},
        {"after": ("2026-12-01T00:00:00.000Z", 42), "added_after": None, "versions": ["all"]},
        {"after": None, "added_after": None, "ids": ["report--x"], "versions": ["first"]},
    ],
)
def test_pages_are_keyset_reads_on_the_index(tmp_path: Path, query: dict[str, object]) -> None:
    store = Store.open(tmp_path, create=True)
    try:
        sql, args = FeedStore(store).page_sql("pk-moi", VISIBLE, limit=101, **query)  # type: ignore[arg-type]
        plan = [str(r[3]) for r in store.conn.execute("EXPLAIN QUERY PLAN " + sql, args)]
    finally:
        store.close()
    assert plan[0].startswith("SEARCH f USING INDEX feed_page (peer=?"), plan
    assert not any(step.startswith("SCAN") or "TEMP B-TREE" in step for step in plan), plan
