"""Work a single request makes, bounded over the wire (continuing tests/test_audit_bounded_wire.py): a diff of two
large versions gives the event loop back as it goes, so reads are served while it runs.

One server for the file, catalogue: product `calls` (event type `c`, SUM of `n`) on rate card `card` (1 credit a
unit, from 1990-01-01), customer `reader` on it."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest
from tariff import TariffClient
from tariff.v1 import balance_pb2, pricing_pb2

from server.convert import timestamp as stamp
from tests.audit_fixtures import open_contract, refusal, serving
from tests.serverproc import ServerProcess

JAN_1990_MS = 631_152_000_000  # 1990-01-01T00:00:00Z


def catalogue(client: TariffClient) -> None:
    product = pricing_pb2.Product(id="calls", event_type="c", aggregation=pricing_pb2.SUM, value_key="n")
    client.pricing.CreateProduct(pricing_pb2.CreateProductRequest(product=product))
    client.pricing.CreateRateCard(pricing_pb2.CreateRateCardRequest(id="card", pricing_unit="credits"))
    rate = pricing_pb2.Rate(product_id="calls", unit=pricing_pb2.UnitPrice(price="1"))
    client.pricing.CreateDraftVersion(pricing_pb2.CreateDraftVersionRequest(rate_card_id="card", upsert_rates=[rate]))
    client.pricing.PublishVersion(
        pricing_pb2.PublishVersionRequest(rate_card_id="card", version=1, effective_from=stamp(JAN_1990_MS))
    )
    open_contract(client, "reader", "k-reader", JAN_1990_MS, rate_card_id="card")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("audit-bounded2")
    yield from serving(ServerProcess(root / "data", extra_args=["--close-grace", "off"]), catalogue)


def tiered(n: int) -> pricing_pb2.Rate:
    """A rate of three GRADUATED tiers priced by formulas of `base`, for `calls` with k = v<n>."""
    tiers = [
        pricing_pb2.Tier(up_to="100 * base", unit_price="base * 3"),
        pricing_pb2.Tier(up_to="1000 * base", unit_price="base * 2"),
        pricing_pb2.Tier(unit_price="base"),
    ]
    price = pricing_pb2.TieredPrice(mode=pricing_pb2.GRADUATED, tiers=tiers)
    return pricing_pb2.Rate(product_id="calls", match={"k": f"v{n}"}, tiered=price)


def test_reads_are_served_while_a_diff_of_two_large_versions_runs(server: ServerProcess) -> None:
    """Rate card `deep`: version 1 holds 10,000 rates of three tiers priced by formulas of `base` (a version's
    most), version 2 is version 1 with parameter `spare` added, which no formula names. DiffVersions 1 -> 2
    evaluates every price field of every rate on both sides (seconds of Python) and answers one parameter change
    (`spare` ADDED, "" -> "1") and no rate.

    The diff is sent first; GetBalance of `reader` is then asked again and again until the diff's answer
    arrives: several are answered before it (the loop serves them between the diff's steps). No timing is
    asserted: only the order in which answers arrive.

    Before the fix the diff ran on the event loop in one go (1.85 s here for two such versions): no read sent
    after it was answered before it."""
    with server.client() as client:
        client.pricing.CreateRateCard(pricing_pb2.CreateRateCardRequest(id="deep", pricing_unit="credits"))
        draft = pricing_pb2.CreateDraftVersionRequest(
            rate_card_id="deep", set_parameters={"base": "0.5"}, upsert_rates=[tiered(n) for n in range(10_000)]
        )
        assert client.pricing.CreateDraftVersion(draft).version == 1
        again = pricing_pb2.CreateDraftVersionRequest(
            rate_card_id="deep", based_on_version=1, set_parameters={"spare": "1"}
        )
        assert client.pricing.CreateDraftVersion(again).version == 2

        diff = pricing_pb2.DiffVersionsRequest(rate_card_id="deep", from_version=1, to_version=2)
        running = client.pricing.DiffVersions.future(diff)
        answered_before = 0
        while not running.done():
            balance = client.balance.GetBalance(balance_pb2.GetBalanceRequest(customer_id="reader"))
            assert balance.customer_id == "reader"
            answered_before += 0 if running.done() else 1
        answer = running.result()
        assert [(p.name, p.kind, p.old_value, p.new_value) for p in answer.parameters] == [
            ("spare", pricing_pb2.ADDED, "", "1")
        ]
        assert not answer.rates
        assert answered_before >= 3, f"only {answered_before} reads were answered while the diff ran"


DRAFTS_MAX = 1_000  # drafts a rate card holds unpublished (README "Limits")
FAR_FUTURE_MS = 4_102_444_800_000  # 2100-01-01, on an hour: a publish there re-rates nothing


def test_a_rate_card_holds_at_most_1000_drafts(server: ServerProcess) -> None:
    """Rate card `drafty`: version 1 (one rate, `calls` at 1) published from 1990-01-01, then drafts 2 to 1001
    based on it, 1,000 unpublished drafts, each made with request_id d<n>. Draft 1002 is RESOURCE_EXHAUSTED
    naming the limit (1,000), and nothing is made (ListVersions' page_size 1 past version 1001 answers nothing).
    A retry of draft d2 still answers version 2 (a retry of what is held is never refused). Publishing draft 2
    (from 2100-01-01, re-rating nothing) leaves 999 drafts: the next draft is taken, as version 1002.

    Before the fix any number of drafts was taken, each held in memory (up to 16 MiB) for ever: draft 1002 was
    made."""
    with server.client() as client:
        client.pricing.CreateRateCard(pricing_pb2.CreateRateCardRequest(id="drafty", pricing_unit="credits"))
        rate = pricing_pb2.Rate(product_id="calls", unit=pricing_pb2.UnitPrice(price="1"))
        first = pricing_pb2.CreateDraftVersionRequest(rate_card_id="drafty", upsert_rates=[rate])
        assert client.pricing.CreateDraftVersion(first).version == 1
        publish = pricing_pb2.PublishVersionRequest(rate_card_id="drafty", version=1, effective_from=stamp(JAN_1990_MS))
        client.pricing.PublishVersion(publish)

        def draft(n: int) -> pricing_pb2.CreateDraftVersionRequest:
            return pricing_pb2.CreateDraftVersionRequest(rate_card_id="drafty", based_on_version=1, request_id=f"d{n}")

        for group in range(2, 2 + DRAFTS_MAX, 100):  # sent 100 at a time, so their commits are grouped
            pending = [client.pricing.CreateDraftVersion.future(draft(n)) for n in range(group, group + 100)]
            assert sorted(p.result().version for p in pending) == list(range(group, group + 100))

        code, details = refusal(lambda: client.pricing.CreateDraftVersion(draft(1002)))
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "1,000" in details and "draft" in details, details
        after = pricing_pb2.ListVersionsRequest(rate_card_id="drafty", page_size=1, page_token="1001")
        assert not client.pricing.ListVersions(after).versions

        assert client.pricing.CreateDraftVersion(draft(2)).version == 2  # a retry of a draft held

        publish = pricing_pb2.PublishVersionRequest(
            rate_card_id="drafty", version=2, effective_from=stamp(FAR_FUTURE_MS)
        )
        client.pricing.PublishVersion(publish)
        assert client.pricing.CreateDraftVersion(draft(1002)).version == 1002
