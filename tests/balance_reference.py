"""The balance as GetBalance built it before the kernel encoded grants and before spent grants were cut from the
encoded bytes (server/services/balance.py `_sent_balance_bytes`): the Balance message built grant by grant, fitted
under the message limit as a message. Kept as the reference tests/test_balance_encoded.py and
server/bench/balance_read.py hold the server's bytes to."""

from __future__ import annotations

from tariff.v1 import balance_pb2

from server.errors import send_limit, too_large
from server.services.balance import _count_field_bytes, _varint_bytes


def _sent_balance(balance: balance_pb2.Balance) -> balance_pb2.Balance:
    """The balance when gRPC can send it, its spent grants left out as balance.proto `grants` says where listing
    them all would not fit; otherwise RESOURCE_EXHAUSTED naming the customer and the limit that would. The server
    keeps every grant for the customer's life and a top-up policy adds up to 1,000 a period, so without leaving the
    spent ones out a long-lived customer's balance became unreadable for good. BalanceService is not wrapped by
    `unary`'s size check (the hot path): without this, gRPC refused the answer in its own words ("Sent message
    larger than max")."""
    size = balance.ByteSize()
    if size <= send_limit.bytes_max:
        return balance
    fitted = _without_spent_grants(balance, size, send_limit.bytes_max)
    if fitted is None:
        raise too_large(f"the balance of customer {balance.customer_id!r} ({len(balance.grants):,} grants)", size)
    return fitted


def _without_spent_grants(balance: balance_pb2.Balance, size: int, bytes_max: int) -> balance_pb2.Balance | None:
    """`balance` (`size` bytes) with its spent grants (nothing remaining or held) left out, those starting earliest
    first (at a tie, the earlier in burn order), until it is at most `bytes_max` bytes; None when leaving out every
    one is not enough."""
    spent = [i for i, g in enumerate(balance.grants) if g.remaining == "0" and g.held == "0"]
    spent.sort(key=lambda i: (balance.grants[i].starts_at.seconds, balance.grants[i].starts_at.nanos, i))
    left_out: set[int] = set()
    for index in spent:
        if size + _count_field_bytes(len(left_out)) <= bytes_max:
            break
        grant_bytes = balance.grants[index].ByteSize()
        size -= 1 + _varint_bytes(grant_bytes) + grant_bytes  # the field's tag, its length, the grant
        left_out.add(index)
    if size + _count_field_bytes(len(left_out)) > bytes_max:
        return None
    fitted = balance_pb2.Balance()
    fitted.CopyFrom(balance)
    del fitted.grants[:]
    fitted.grants.extend(g for i, g in enumerate(balance.grants) if i not in left_out)
    fitted.grants_left_out = len(left_out)
    return fitted
