"""A receipt committed at the receiver but never delivered (a crash, a failed Acknowledge)
stays 'unacknowledged' until the partner confirms it; the sync loop re-sends exactly those
(docs/THREATS.md C01; the loop itself is exercised by tests/integration/test_crash.py)."""

from __future__ import annotations

from datetime import UTC, datetime

from node.home import Node
from node.services import outbox
from node.services.inbox import apply_batch, receipts_acknowledged, unacknowledged_receipts
from tests.builders import valid_report


def _states(node: Node) -> list[str]:
    rows = node.store.conn.execute("SELECT state FROM outbox ORDER BY seq").fetchall()
    return [str(r[0]) for r in rows]


def test_lost_receipt_is_resent_until_confirmed(pair: tuple[Node, Node]) -> None:
    pk, cn = pair
    now = datetime.now(UTC).replace(microsecond=0)
    outbox.submit(pk, [valid_report()], now)
    outbox.submit(pk, [valid_report()], now)
    first, second = outbox.pending(pk, "cn-mps", 0, 256)
    lost = apply_batch(cn, "pk-moi", [first], now).receipt  # committed, never delivered
    delivered = apply_batch(cn, "pk-moi", [second], now).receipt
    assert lost is not None and delivered is not None
    outbox.accept_receipt(pk, "cn-mps", delivered.statement, delivered.signature, now)
    assert _states(pk) == ["pending", "delivered"]

    # Nothing was confirmed yet: both are offered again, oldest first.
    assert unacknowledged_receipts(cn, "pk-moi") == [(1, lost), (2, delivered)]
    _, new = outbox.accept_receipt(pk, "cn-mps", lost.statement, lost.signature, now)
    assert new
    _, new = outbox.accept_receipt(pk, "cn-mps", delivered.statement, delivered.signature, now)
    assert not new  # a duplicate changes nothing
    assert _states(pk) == ["delivered", "delivered"]
    receipts_acknowledged(cn, "pk-moi", 2)
    assert unacknowledged_receipts(cn, "pk-moi") == []

    # Only receipts after the mark are offered again; the mark never moves back.
    outbox.submit(pk, [valid_report()], now)
    [third] = outbox.pending(pk, "cn-mps", 2, 256)
    out = apply_batch(cn, "pk-moi", [third], now)
    assert out.receipt is not None
    receipts_acknowledged(cn, "pk-moi", 1)
    assert unacknowledged_receipts(cn, "pk-moi") == [(3, out.receipt)]
