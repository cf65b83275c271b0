"""The transaction handle every repository write takes.

Today it is sqlite-utils' ``Database`` over the Store's one connection, yielded by
``Store.transaction()``; a repository's read runs on the same connection, so inside a
transaction it sees the transaction's own writes. A second backend brings its own handle
(docs/adr/0023).
"""

from __future__ import annotations

from typing import Any

import sqlite_utils

Tx = sqlite_utils.Database

# One row as the database returns it: plain values in the column order of the query the
# repository method names.
Row = tuple[Any, ...]
