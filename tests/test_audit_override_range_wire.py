"""An override's multiplier against the range of a charge, over the wire (docs/architecture.md "Inside": a charge
that would overflow its 128-bit picos rejects the event, INVALID_EVENT; contracts.proto PriceOverride: a multiplier
scales the rate card's price). A multiplier of 1 prices as the rate card does, so it cannot take a charge out of
range: an event the rate card alone prices must be priced alike under it, and twice as much under a multiplier of 2.

Catalogue of tests/test_audit_pricing_wire.py: product `units` (SUM of `n`), card `card` whose version 1 is one
catch-all UNIT rate at 123456789.123456789, customer `c` with contract `k-c` (no override); here also customers
`one`, `two` and `almost` on the card, with a multiplier override of 1, 2 and 0.999999999999999999.

999,999,999,999,999 units at 123456789.123456789 = 123456789123456665543210.876543211 exactly (1.2 x 10^23, or
1.2 x 10^35 picos: far inside 128 bits, whose limit is 1.7 x 10^38 picos); times 2 it is
246913578246913331086421.753086422; times 0.999999999999999999 it is 123456789123456665419754.087419754334456...,
rounded half-even to picos 123456789123456665419754.087419754334. Before the fix the kernel multiplied quantity, price and multiplier, each at
10^-18, in 256 bits (10^33 x 1.2 x 10^26 x 10^18 passes 2^255) and refused all three events as out of range."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from tariff import TariffClient
from tariff.v1 import contracts_pb2

from engine.products import Aggregation
from tests.audit_fixtures import HOUR_MS, open_contract, serving, this_hour_ms
from tests.engine_fixtures import EPOCH_MS, World, rate, unit
from tests.kernel_fixtures import KernelWorld, usage_event
from tests.serverproc import ServerProcess
from tests.test_audit_pricing_wire import CARD, catalogue, work

PRICE = "123456789.123456789"
UNITS = 999_999_999_999_999.0


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    start_ms = this_hour_ms() - HOUR_MS

    def setup(client: TariffClient) -> None:
        catalogue(client, start_ms, price=PRICE)
        for customer_id, multiplier in (("one", "1"), ("two", "2"), ("almost", "0.999999999999999999")):
            open_contract(client, customer_id, f"k-{customer_id}", start_ms, rate_card_id=CARD)
            override = contracts_pb2.PriceOverride(id=f"o-{customer_id}", product_id="units", multiplier=multiplier)
            client.contracts.AddOverride(
                contracts_pb2.AddOverrideRequest(contract_id=f"k-{customer_id}", override=override)
            )

    yield from serving(ServerProcess(tmp_path_factory.mktemp("audit-override-range") / "data"), setup)


def charged(client: TariffClient, customer_id: str) -> tuple[list[str], str]:
    event = work(f"t-{customer_id}", this_hour_ms() + 1, UNITS)
    event.customer_id = customer_id
    ack = client.ingest_batch([event], batch_id=f"b-{customer_id}")
    return [r.message for r in ack.rejected], str(client.get_balance(customer_id).period_charges)


def test_a_multiplier_prices_what_the_rate_card_alone_prices_in_range(server: ServerProcess) -> None:
    with server.client() as client:
        assert charged(client, "c") == ([], "123456789123456665543210.876543211")
        assert charged(client, "one") == ([], "123456789123456665543210.876543211")
        assert charged(client, "two") == ([], "246913578246913331086421.753086422")
        assert charged(client, "almost") == ([], "123456789123456665419754.087419754334")


@pytest.mark.parametrize("reduced", [False, True])
def test_an_override_journaled_before_the_mark_replays_as_it_priced_then(reduced: bool) -> None:
    """AddOverride's server-set `multiplier_reduced` (engine/commands.py): a command stored without it (False)
    refuses the event as it did when it was taken, so its journal replays to the same state; with it, the event
    is charged 123456789123456665543210.876543211 as above."""
    world = World()
    world.product("units", event_type="work", aggregation=Aggregation.SUM, value_key="n", dimensions=())
    world.rate_card()
    world.version([rate("units", unit(PRICE))])
    world.customer()
    world.contract()
    world.override("units", multiplier="1", multiplier_reduced=reduced)
    kernel = KernelWorld(world)
    kernel.load()
    ack = kernel.ingest([usage_event("t", EPOCH_MS + 1, {"n": UNITS}, event_type="work")], EPOCH_MS + 2)
    assert ack.accepted == (1 if reduced else 0)
    assert kernel.charged() == (123456789123456665543210876543211000 if reduced else 0)
