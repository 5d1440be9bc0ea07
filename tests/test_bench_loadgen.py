"""The bench's Authorize requests: a reserving request holds under its own id with a TTL the server accepts."""

from __future__ import annotations

from tariff.v1 import usage_pb2

from server.app import ServeConfig
from server.bench import loadgen
from server.bench.seed import STAMP_TEMPLATES, customer_id, stamped_batches


def test_a_plain_request_does_not_reserve() -> None:
    request = loadgen.authorize_request(7, 5)
    assert not request.reserve
    assert request.reservation_id == ""
    assert not request.HasField("reservation_ttl")


def test_a_tagged_request_reserves_under_its_own_id_with_a_short_accepted_ttl() -> None:
    first, second = loadgen.authorize_request(7, 5, "run1"), loadgen.authorize_request(8, 5, "run1")
    assert first.reserve and second.reserve
    assert (first.reservation_id, second.reservation_id) == ("run1-7", "run1-8")
    assert first.customer_id == customer_id(2) and second.customer_id == customer_id(3)
    assert first.reservation_ttl.seconds == loadgen.RESERVATION_TTL_S and first.reservation_ttl.nanos == 0
    assert 0 < loadgen.RESERVATION_TTL_S <= ServeConfig.reservation_ttl_max_s


def test_stamped_batches_decode_as_usage_batches_with_ids_never_repeated() -> None:
    """The dedupe fill's byte-stamped batches: each decodes, and no transaction or batch id repeats across them,
    though the stamping reuses a few encoded templates (STAMP_TEMPLATES) many times over."""
    count = STAMP_TEMPLATES * 3 + 1
    decoded = [usage_pb2.UsageBatch.FromString(b) for b in stamped_batches("fill7", 20, 30, count, seed=3)]
    assert len(decoded) == count
    ids = [event.transaction_id for batch in decoded for event in batch.events]
    assert len(ids) == len(set(ids)) == count * 30
    assert len({batch.batch_id for batch in decoded}) == count
    assert all(event.customer_id.startswith("bench-c") and event.values for b in decoded for event in b.events)
    assert decoded[0].events[0].dimensions == decoded[STAMP_TEMPLATES].events[0].dimensions
