"""The transaction handle every repository write takes.

``Tx`` is what both backends' handles share: each backend's ``transaction()`` yields its own
(SQLite: sqlite-utils' ``Database`` over the Store's one connection; PostgreSQL:
``node.store.dialect.PgTx`` over the PgStore's one connection), and each store's
``Dialect`` narrows it to that type before running a write in it. A repository's read runs
on the same connection, so inside a transaction it sees the transaction's own writes
(docs/adr/0023).
"""

from __future__ import annotations

from typing import Any, Protocol

import sqlite_utils


class Tx(Protocol):
    """An open transaction: run one statement in it (the backend's own placeholders)."""

    def execute(self, sql: str, parameters: Any = None, /) -> Any: ...


def sqlite_db(db: Tx) -> sqlite_utils.Database:
    """The SQLite repositories' handle: the ``Database`` that ``Store.transaction()`` yields."""
    if not isinstance(db, sqlite_utils.Database):
        raise TypeError(f"a SQLite repository was handed {type(db).__name__}, not its Database")
    return db


# One row as the database returns it: plain values in the column order of the query the
# repository method names.
Row = tuple[Any, ...]
