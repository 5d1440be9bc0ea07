"""The bench's Authorize requests: a reserving request holds under its own id with a TTL the server accepts."""

from __future__ import annotations

from server.app import ServeConfig
from server.bench import loadgen
from server.bench.seed import customer_id


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
