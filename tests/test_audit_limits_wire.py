"""A limit on every input a request stores, over the wire: one past it is INVALID_ARGUMENT naming the field and
changes nothing, one exactly at it is taken (README "Limits on what a request holds", the proto comments).

Free texts and lists that a product, a rate card, a draft, a cohort or a grant holds used to be taken at any
length (a parameter name of 100,000 characters, a change note of megabytes, a product with a million pricing
dimensions): each is kept in memory, journaled, audited and answered whole, so a few such requests made records,
journals and answers (ListProducts, ListVersions, GetBalance: one message each) grow without bound.

The catalogue: product `p` (SUM of `n`), rate card `card` (credits) whose version 1 prices `p` at 1 a unit from
2024-01-01, customer `c1`."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import nullcontext
from pathlib import Path

import grpc
import pytest
from tariff import TariffClient, TariffError
from tariff.v1 import alerts_pb2, contracts_pb2, pricing_pb2, usage_pb2

from engine import commands as cmd
from engine._kernel import BatchIdTooLong
from engine.billing import Billing
from engine.contracts import OveragePolicy
from engine.errors import LimitReached
from engine.ledger import GrantKind
from engine.products import Aggregation
from engine.ratecard import Cohort, Rate, Tier, TieredPrice, TierMode
from engine.state import Engine
from server.convert import timestamp as stamp
from server.records import JournalRecord, decode_record, encode_record
from tests.audit_fixtures import serving, unit
from tests.engine_fixtures import ACTOR, EPOCH_MS
from tests.serverproc import ServerProcess

JAN_2024_MS = 1_704_067_200_000
FAR_FUTURE_MS = 4_102_444_800_000  # 2100-01-01, on an hour: a publish there re-rates nothing


def catalogue(client: TariffClient) -> None:
    product = pricing_pb2.Product(id="p", event_type="p", aggregation=pricing_pb2.SUM, value_key="n")
    client.pricing.CreateProduct(pricing_pb2.CreateProductRequest(product=product))
    client.pricing.CreateRateCard(pricing_pb2.CreateRateCardRequest(id="card", pricing_unit="credits"))
    draft = pricing_pb2.CreateDraftVersionRequest(rate_card_id="card", upsert_rates=[unit("p", "1")])
    client.pricing.CreateDraftVersion(draft)
    publish = pricing_pb2.PublishVersionRequest(rate_card_id="card", version=1, effective_from=stamp(JAN_2024_MS))
    client.pricing.PublishVersion(publish)
    client.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id="c1"))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    data_dir: Path = tmp_path_factory.mktemp("limits") / "data"
    yield from serving(ServerProcess(data_dir), catalogue)


@pytest.fixture
def client(server: ServerProcess) -> Iterator[TariffClient]:
    with server.client() as made:
        yield made


def refused(call: Callable[[], object]) -> tuple[grpc.StatusCode, list[str]]:
    with pytest.raises(TariffError) as failed:
        call()
    return failed.value.code, [v.field for v in failed.value.field_violations]


def versions(client: TariffClient, card: str = "card") -> int:
    return len(client.pricing.ListVersions(pricing_pb2.ListVersionsRequest(rate_card_id=card)).versions)


def draft(client: TariffClient, **fields: object) -> pricing_pb2.RateCardVersion:
    made: pricing_pb2.RateCardVersion = client.pricing.CreateDraftVersion(
        pricing_pb2.CreateDraftVersionRequest(rate_card_id="card", based_on_version=1, **fields)  # type: ignore[arg-type]
    )
    return made


# Rate card versions ----------------------------------------------------------------------------------------------


def test_a_parameter_name_past_128_characters_is_refused_and_one_of_128_is_kept(client: TariffClient) -> None:
    before = versions(client)
    for length in (129, 100_000):
        name = "a" * length
        code, fields = refused(lambda name=name: draft(client, set_parameters={name: "1"}))  # type: ignore[misc]
        assert (code, fields) == (grpc.StatusCode.INVALID_ARGUMENT, [f"set_parameters[{'a' * 128}…]"])
    assert versions(client) == before
    name = "b" * 128
    assert dict(draft(client, set_parameters={name: "1"}).parameters) == {name: "1"}


def test_a_change_note_past_1024_bytes_is_refused_and_one_of_1024_is_kept(client: TariffClient) -> None:
    before = versions(client)
    code, fields = refused(lambda: draft(client, change_note="é" * 512 + "x"))  # 1,025 bytes
    assert (code, fields) == (grpc.StatusCode.INVALID_ARGUMENT, ["change_note"])
    assert versions(client) == before
    assert draft(client, change_note="é" * 512).change_note == "é" * 512


def tiered(tiers: int) -> pricing_pb2.Rate:
    bounded = [pricing_pb2.Tier(up_to=str(i + 1), unit_price="1") for i in range(tiers - 1)]
    return pricing_pb2.Rate(
        product_id="p",
        tiered=pricing_pb2.TieredPrice(mode=pricing_pb2.GRADUATED, tiers=[*bounded, pricing_pb2.Tier(unit_price="1")]),
    )


def test_a_tiered_price_of_more_than_1000_tiers_is_refused_and_one_of_1000_is_kept(client: TariffClient) -> None:
    before = versions(client)
    code, fields = refused(lambda: draft(client, upsert_rates=[tiered(1001)]))
    assert (code, fields) == (grpc.StatusCode.INVALID_ARGUMENT, ["upsert_rates[0].tiered.tiers"])
    assert versions(client) == before
    assert len(draft(client, upsert_rates=[tiered(1000)]).rates[0].tiered.tiers) == 1000


def test_a_rate_matching_more_than_64_dimensions_is_refused(client: TariffClient) -> None:
    before = versions(client)
    match = {f"d{i}": "x" for i in range(65)}
    rate = pricing_pb2.Rate(product_id="p", match=match, unit=pricing_pb2.UnitPrice(price="1"))
    code, fields = refused(lambda: draft(client, upsert_rates=[rate]))
    assert (code, fields) == (grpc.StatusCode.INVALID_ARGUMENT, ["upsert_rates[0].match"])
    assert versions(client) == before


def test_a_cohort_past_a_customers_attributes_is_refused_and_one_at_them_is_published(client: TariffClient) -> None:
    number = draft(client).version

    def publish(attributes: dict[str, str]) -> pricing_pb2.PublishVersionResponse:
        request = pricing_pb2.PublishVersionRequest(
            rate_card_id="card",
            version=number,
            effective_from=stamp(FAR_FUTURE_MS),
            cohort=pricing_pb2.Cohort(attributes=attributes),
        )
        answer: pricing_pb2.PublishVersionResponse = client.pricing.PublishVersion(request)
        return answer

    too_many = {f"k{i}": "v" for i in range(65)}
    assert refused(lambda: publish(too_many)) == (grpc.StatusCode.INVALID_ARGUMENT, ["cohort.attributes"])
    long_key = {"k" * 257: "v"}
    assert refused(lambda: publish(long_key)) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        [f"cohort.attributes[{'k' * 128}…]"],
    )
    long_value = {"k": "v" * 257}
    assert refused(lambda: publish(long_value)) == (grpc.StatusCode.INVALID_ARGUMENT, ["cohort.attributes[k]"])
    got = client.pricing.GetVersion(pricing_pb2.GetVersionRequest(rate_card_id="card", version=number))
    assert got.state == pricing_pb2.DRAFT
    at_limit = {f"k{i:02d}": "v" * 256 for i in range(63)} | {"k" * 256: "v"}
    published = publish(at_limit).version
    assert (published.state, dict(published.cohort.attributes)) == (pricing_pb2.PUBLISHED, at_limit)


def test_a_rate_card_name_past_256_bytes_is_refused_and_one_of_256_is_kept(client: TariffClient) -> None:
    def create(card_id: str, name: str) -> pricing_pb2.RateCard:
        request = pricing_pb2.CreateRateCardRequest(id=card_id, name=name, pricing_unit="credits")
        made: pricing_pb2.RateCard = client.pricing.CreateRateCard(request)
        return made

    assert refused(lambda: create("named-long", "n" * 257)) == (grpc.StatusCode.INVALID_ARGUMENT, ["name"])
    with pytest.raises(TariffError) as missing:
        client.pricing.GetRateCard(pricing_pb2.GetRateCardRequest(id="named-long"))
    assert missing.value.code == grpc.StatusCode.NOT_FOUND
    assert create("named-256", "n" * 256).name == "n" * 256


# Products ------------------------------------------------------------------------------------------------------


def product_ids(client: TariffClient) -> list[str]:
    return [p.id for p in client.pricing.ListProducts(pricing_pb2.ListProductsRequest()).products]


def create_product(client: TariffClient, **fields: object) -> pricing_pb2.Product:
    fields.setdefault("event_type", "e")
    product = pricing_pb2.Product(aggregation=pricing_pb2.COUNT, **fields)  # type: ignore[arg-type]
    made: pricing_pb2.Product = client.pricing.CreateProduct(pricing_pb2.CreateProductRequest(product=product))
    return made


@pytest.mark.parametrize("field", ["name", "event_type", "unit"])
def test_a_product_text_past_256_bytes_is_refused_and_one_of_256_is_kept(client: TariffClient, field: str) -> None:
    before = product_ids(client)
    code, fields = refused(lambda: create_product(client, id=f"long-{field}", **{field: "é" * 128 + "x"}))
    assert (code, fields) == (grpc.StatusCode.INVALID_ARGUMENT, [f"product.{field}"])
    assert product_ids(client) == before
    assert getattr(create_product(client, id=f"at-{field}", **{field: "é" * 128}), field) == "é" * 128


def test_a_product_past_64_pricing_dimensions_or_filters_is_refused_and_one_of_64_is_kept(
    client: TariffClient,
) -> None:
    before = product_ids(client)
    dimensions = [f"d{i}" for i in range(65)]
    code, fields = refused(lambda: create_product(client, id="dims-65", pricing_dimensions=dimensions))
    assert (code, fields) == (grpc.StatusCode.INVALID_ARGUMENT, ["product.pricing_dimensions"])
    filters = {f"f{i}": "x" for i in range(65)}
    code, fields = refused(lambda: create_product(client, id="filters-65", filters=filters))
    assert (code, fields) == (grpc.StatusCode.INVALID_ARGUMENT, ["product.filters"])
    assert product_ids(client) == before
    assert len(create_product(client, id="dims-64", pricing_dimensions=dimensions[:64]).pricing_dimensions) == 64
    assert len(create_product(client, id="filters-64", filters=dict(list(filters.items())[:64])).filters) == 64


# Grants --------------------------------------------------------------------------------------------------------


def test_a_grant_naming_more_than_1000_products_is_refused_and_one_of_1000_is_made(client: TariffClient) -> None:
    def grant(grant_id: str, products: int) -> contracts_pb2.Grant:
        made: contracts_pb2.Grant = client.contracts.GrantCredits(
            contracts_pb2.GrantCreditsRequest(
                grant=contracts_pb2.Grant(
                    id=grant_id,
                    customer_id="c1",
                    kind=contracts_pb2.PROMOTIONAL,
                    amount="1",
                    paid_amount="0",
                    applicable_product_ids=["p"] * products,
                    starts_at=stamp(JAN_2024_MS),
                )
            )
        )
        return made

    code, fields = refused(lambda: grant("g-1001", 1001))
    assert (code, fields) == (grpc.StatusCode.INVALID_ARGUMENT, ["grant.applicable_product_ids"])
    assert all(g.grant_id != "g-1001" for g in client.get_balance("c1").grants)
    assert len(grant("g-1000", 1000).applicable_product_ids) == 1000


# Records journaled before the limits ----------------------------------------------------------------------------


def test_records_journaled_past_the_limits_replay_as_they_were() -> None:
    """The limits hold where a request enters (server/convert.py), never where a command applies: a journal an
    earlier release wrote with longer texts and lists (encoded and decoded as the journal stores them) replays to
    the same products, versions, cohort and grant."""
    dimensions = tuple(f"d{i}" for i in range(65))
    tiers = (*(Tier(str(i + 1), "1", "") for i in range(1000)), Tier("", "1", ""))
    journal: list[cmd.AdminCommand] = [
        cmd.CreateProduct(
            EPOCH_MS,
            ACTOR,
            "p",
            "n" * 300,
            "e" * 300,
            Aggregation.SUM,
            "n",
            {f"f{i}": "x" for i in range(65)},
            dimensions,
            "u" * 300,
        ),
        cmd.CreateRateCard(EPOCH_MS, ACTOR, "card", "c" * 300, "credits"),
        cmd.CreateDraftVersion(
            EPOCH_MS,
            ACTOR,
            "card",
            0,
            {"a" * 200: "1"},
            (),
            (Rate("p", {d: "x" for d in dimensions}, TieredPrice(TierMode.GRADUATED, tiers, "")),),
            (),
            "é" * 2000,
        ),
        cmd.CreateCustomer(EPOCH_MS, ACTOR, "c1", "c1", {"k": "v"}),
        cmd.PublishVersion(EPOCH_MS, ACTOR, "card", 1, EPOCH_MS, Cohort((), {f"k{i}": "v" for i in range(65)}, None)),
        cmd.CreateContract(EPOCH_MS, ACTOR, "k1", "c1", "card", EPOCH_MS, None, OveragePolicy.ALLOW, "1", "USD"),
        cmd.GrantCredits(
            EPOCH_MS,
            ACTOR,
            "g1",
            "c1",
            "k1",
            GrantKind.PROMOTIONAL,
            "1",
            "0",
            0,
            ("p",) * 1001,
            None,
            None,
            "",
        ),
    ]
    replayed = Engine()
    for seq, command in enumerate(journal, start=1):
        stored = decode_record(encode_record(JournalRecord(command=command))).command
        assert stored is not None and not isinstance(stored, cmd.IngestBatch)
        replayed.apply(stored, seq)
    state = replayed.state
    assert (state.products["p"].name, len(state.products["p"].pricing_dimensions)) == ("n" * 300, 65)
    version = state.rate_cards["card"].versions[0]
    assert (dict(version.parameters), version.change_note) == ({"a" * 200: "1"}, "é" * 2000)
    assert version.cohort is not None and len(version.cohort.attributes) == 65
    assert len(version.rates[0].price.tiers) == 1001  # type: ignore[union-attr]
    assert len(state.accounts["c1"].grants[0].applicable_product_ids) == 1001


# Alert rules ---------------------------------------------------------------------------------------------------

ALERT_RULES_MAX = 1_000


def test_a_customer_holds_at_most_1000_alert_rules_a_retry_still_answers_and_a_deletion_makes_room(
    client: TariffClient,
) -> None:
    """Every rule watching a customer is evaluated after each change to it: unbounded, rules made each of its
    events cost without limit. alerts.proto: at most 1,000 rules for one customer (and 1,000 for every customer);
    another is RESOURCE_EXHAUSTED, nothing created."""
    client.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id="watched"))

    def create(rule_id: str, threshold: int) -> alerts_pb2.AlertRule:
        request = alerts_pb2.CreateAlertRequest(
            id=rule_id, customer_id="watched", type=alerts_pb2.LOW_BALANCE, threshold=str(threshold)
        )
        made: alerts_pb2.AlertRule = client.alerts.CreateAlert(request)
        return made

    def held() -> int:
        listed = client.alerts.ListAlertRules(alerts_pb2.ListAlertRulesRequest(page_size=1000)).rules
        return sum(1 for rule in listed if rule.customer_id == "watched")

    for n in range(ALERT_RULES_MAX):
        create(f"w-{n:04d}", n + 1)
    with pytest.raises(TariffError) as full:
        create("w-one-more", 5000)
    assert full.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "1000" in full.value.details.replace(",", "")
    assert held() == ALERT_RULES_MAX
    assert create("w-0005", 6).id == "w-0005"  # a retry of a rule it holds answers it
    client.alerts.DeleteAlertRule(alerts_pb2.DeleteAlertRuleRequest(id="w-0000"))
    assert create("w-one-more", 5000).id == "w-one-more"
    assert held() == ALERT_RULES_MAX


def test_a_rule_past_the_limit_is_refused_when_applied_and_rules_journaled_past_it_replay() -> None:
    """The limit holds when the command applies (requests arriving together all pass any earlier look), for the
    rules watching every customer too; a CreateAlert journaled without the server's mark adds as it did."""
    engine = Engine()
    engine.apply(cmd.CreateCustomer(EPOCH_MS, ACTOR, "c1", "c1", {}), 1)

    def create(rule_id: str, bounded: bool) -> object:
        command = cmd.CreateAlert(EPOCH_MS, ACTOR, rule_id, "", True, "LOW_BALANCE", "1", rules_bounded=bounded)
        return engine.apply(command, engine.state.last_seq + 1)

    for n in range(ALERT_RULES_MAX):
        create(f"all-{n:04d}", True)
    with pytest.raises(LimitReached):
        create("all-more", True)
    create("all-more", False)  # journaled before the limit: replays as it applied
    assert len(engine.state.alerts.rules) == ALERT_RULES_MAX + 1


# Grants and top-ups --------------------------------------------------------------------------------------------

GRANTS_MAX = 1_000


def promotional(grant_id: str, customer_id: str) -> contracts_pb2.GrantCreditsRequest:
    grant = contracts_pb2.Grant(
        id=grant_id,
        customer_id=customer_id,
        kind=contracts_pb2.PROMOTIONAL,
        amount="1",
        paid_amount="0",
        starts_at=stamp(JAN_2024_MS),
    )
    return contracts_pb2.GrantCreditsRequest(grant=grant)


def test_a_customer_holds_at_most_1000_granted_grants_and_a_retry_still_answers(client: TariffClient) -> None:
    """Every grant is listed in the customer's balance (GetBalance, WatchBalance: one message each, never paged) and
    in its contracts: unbounded, GrantCredits made them RESOURCE_EXHAUSTED for good. contracts.proto: at most 1,000
    grants given by GrantCredits a customer; another is RESOURCE_EXHAUSTED, nothing granted."""
    client.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id="granted"))
    for n in range(GRANTS_MAX):
        client.contracts.GrantCredits(promotional(f"gr-{n:04d}", "granted"))
    with pytest.raises(TariffError) as full:
        client.contracts.GrantCredits(promotional("gr-one-more", "granted"))
    assert full.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "1000" in full.value.details.replace(",", "")
    balance = client.get_balance("granted")
    assert (len(balance.grants), balance.credits_remaining) == (GRANTS_MAX, "1000")
    assert client.contracts.GrantCredits(promotional("gr-0007", "granted")).id == "gr-0007"  # a retry answers


def test_a_top_up_policy_buys_at_most_1000_times_a_period(client: TariffClient) -> None:
    """Each purchase is a grant the balance lists for good: max_per_period is at most 1,000 (more is
    INVALID_ARGUMENT naming top_up.max_per_period, nothing set)."""
    client.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id="topped"))
    contract = client.contracts.CreateContract(
        contracts_pb2.CreateContractRequest(
            id="topped-k", customer_id="topped", rate_card_id="card", starting_at=stamp(JAN_2024_MS)
        )
    )

    def set_policy(times: int) -> contracts_pb2.Contract:
        policy = contracts_pb2.TopUpPolicy(threshold="1", recharge_to="2", price_per_credit="1", max_per_period=times)
        answer: contracts_pb2.Contract = client.contracts.SetTopUpPolicy(
            contracts_pb2.SetTopUpPolicyRequest(contract_id=contract.id, top_up=policy)
        )
        return answer

    for times in (1001, 2**32 - 1):
        code, fields = refused(lambda times=times: set_policy(times))  # type: ignore[misc]
        assert (code, fields) == (grpc.StatusCode.INVALID_ARGUMENT, ["top_up.max_per_period"])
    got = client.contracts.GetContract(contracts_pb2.GetContractRequest(id=contract.id))
    assert not got.HasField("top_up")
    assert set_policy(1000).top_up.max_per_period == 1000


def test_a_grant_past_the_limit_is_refused_when_applied_and_grants_journaled_past_it_replay() -> None:
    engine = Engine()
    engine.apply(cmd.CreateCustomer(EPOCH_MS, ACTOR, "c1", "c1", {}), 1)

    def grant(grant_id: str, bounded: bool) -> object:
        command = cmd.GrantCredits(
            EPOCH_MS, ACTOR, grant_id, "c1", "", GrantKind.PROMOTIONAL, "1", "0", 0, (), EPOCH_MS, None, "",
            grants_bounded=bounded,
        )  # fmt: skip
        return engine.apply(command, engine.state.last_seq + 1)

    for n in range(GRANTS_MAX):
        grant(f"g-{n:04d}", True)
    with pytest.raises(LimitReached):
        grant("g-more", True)
    grant("g-more", False)  # journaled before the limit: replays as it applied
    assert len(engine.state.accounts["c1"].grants) == GRANTS_MAX + 1


# Usage batches -------------------------------------------------------------------------------------------------


def test_a_batch_id_past_256_bytes_is_refused_whole_so_every_ack_can_be_sent(client: TariffClient) -> None:
    """usage.proto: every batch gets its ack, whose batch_id echoes the batch's. A batch just under the message
    limit (16 MiB) holding a batch_id of nearly all of it and 10,000 events with a transaction id alone (each
    rejected: its rejection, index and reason added, is larger than the event) had an ack past the limit, which
    gRPC refused to send ("Sent message larger than max"): the call ended RESOURCE_EXHAUSTED with no ack. A
    batch_id is at most 256 bytes, as a transaction id: a longer one is INVALID_ARGUMENT naming batch_id, nothing
    of the batch applied."""
    events = [usage_pb2.UsageEvent(transaction_id=f"t{i}") for i in range(10_000)]
    room = 16 * 1024 * 1024 - usage_pb2.UsageBatch(events=events).ByteSize() - 8
    code, fields = refused(
        lambda: client.usage.IngestUsageBatch(usage_pb2.UsageBatch(batch_id="b" * room, events=events))
    )
    assert (code, fields) == (grpc.StatusCode.INVALID_ARGUMENT, ["batch_id"])
    event = usage_pb2.UsageEvent(transaction_id="b-1", customer_id="c1", event_type="p", timestamp_ms=JAN_2024_MS)
    code, fields = refused(
        lambda: client.usage.IngestUsageBatch(usage_pb2.UsageBatch(batch_id="é" * 128 + "x", events=[event]))
    )
    assert (code, fields) == (grpc.StatusCode.INVALID_ARGUMENT, ["batch_id"])
    ack = client.usage.IngestUsageBatch(usage_pb2.UsageBatch(batch_id="é" * 128, events=[event]))
    assert (ack.batch_id, ack.accepted + ack.duplicates + len(ack.rejected)) == ("é" * 128, 1)


def test_an_ack_of_transaction_ids_too_long_to_take_is_sent_with_them_cut(client: TariffClient) -> None:
    """usage.proto: every batch gets its ack, with index, transaction_id and reason whole. A transaction_id over 256
    bytes is INVALID_EVENT, and its rejection echoed it whole: 10,000 such events filling a batch just under the
    message limit (16 MiB) had an ack about 50 KB larger, which gRPC refused to send ("Sent message larger than
    max"): no ack. Such an id (which no event can have) is cut in an ack that would not fit otherwise, to its
    first 256 bytes ending " …"; indexes and reasons whole."""
    limit = 16 * 1024 * 1024
    probe = usage_pb2.UsageBatch(events=[usage_pb2.UsageEvent(transaction_id="x" * 1000) for _ in range(10_000)])
    longer = (limit - 64 - probe.ByteSize()) // 10_000
    ids = [f"{i:05d}" + "x" * (995 + longer) for i in range(10_000)]
    batch = usage_pb2.UsageBatch(events=[usage_pb2.UsageEvent(transaction_id=i) for i in ids])
    assert limit - 100_000 < batch.ByteSize() <= limit
    ack = client.usage.IngestUsageBatch(batch)
    assert ack.ByteSize() <= limit and (ack.accepted, ack.duplicates, len(ack.rejected)) == (0, 0, 10_000)
    for index, rejection in enumerate(ack.rejected):
        assert (rejection.index, rejection.reason) == (index, usage_pb2.INVALID_EVENT)
        sent = rejection.transaction_id
        assert len(sent.encode()) <= 256 and sent.endswith(" …") and ids[index].startswith(sent[:-2])


def test_a_batch_journaled_with_a_long_batch_id_replays() -> None:
    """The server sets batch_ids_bounded for the batches it receives; replay (Billing.ingest without it) takes a
    journaled batch whose batch_id an earlier release accepted at any length."""
    batch = usage_pb2.UsageBatch(batch_id="b" * 1000, events=[usage_pb2.UsageEvent(transaction_id="t")])
    billing = Billing()
    with pytest.raises(BatchIdTooLong):
        billing.ingest(batch.SerializeToString(), EPOCH_MS, batch_ids_bounded=True)
    ack = usage_pb2.IngestAck.FromString(billing.ingest(batch.SerializeToString(), EPOCH_MS).ack)
    assert (ack.batch_id, len(ack.rejected)) == ("b" * 1000, 1)


def test_a_version_holds_10000_rates_and_1000_parameters_and_one_more_is_refused(client: TariffClient) -> None:
    """pricing.proto: at most 10,000 rates and 1,000 parameters a version, its base's included; more is
    INVALID_ARGUMENT naming upsert_rates or set_parameters, nothing made."""
    product = pricing_pb2.Product(id="pm", event_type="pm", aggregation=pricing_pb2.COUNT, pricing_dimensions=["m"])
    client.pricing.CreateProduct(pricing_pb2.CreateProductRequest(product=product))
    rates = [unit("pm", "1", m=f"v{i}") for i in range(10_000)]  # with the base's rate of p: 10,001
    parameters = {f"x{i}": "1" for i in range(1_001)}
    before = versions(client)
    assert refused(lambda: draft(client, upsert_rates=rates)) == (grpc.StatusCode.INVALID_ARGUMENT, ["upsert_rates"])
    code, fields = refused(lambda: draft(client, set_parameters=parameters))
    assert (code, fields) == (grpc.StatusCode.INVALID_ARGUMENT, ["set_parameters"])
    assert versions(client) == before
    assert len(draft(client, upsert_rates=rates[1:]).rates) == 10_000
    del parameters["x0"]
    assert len(draft(client, set_parameters=parameters).parameters) == 1_000


# The product catalogue -----------------------------------------------------------------------------------------

CATALOGUE_BYTES_MAX = 4 * 1024 * 1024  # what a gRPC client reads by default, as a list page


def widest_product(product_id: str) -> pricing_pb2.Product:
    """A product at every limit: about 51 KB."""
    return pricing_pb2.Product(
        id=product_id,
        name="n" * 256,
        event_type="e" * 256,
        aggregation=pricing_pb2.SUM,
        value_key="v" * 256,
        filters={f"{i:02d}" + "k" * 254: "x" * 256 for i in range(64)},
        pricing_dimensions=[f"{i:02d}" + "d" * 254 for i in range(64)],
        unit="u" * 256,
    )


def test_the_catalogue_stays_within_what_a_client_reads_so_list_products_always_answers(
    client: TariffClient, tmp_path: Path
) -> None:
    """ListProducts answers every product in one message, never paged, and nothing is ever deleted: a product that
    took it past what a client reads (4 MiB by default) made it fail for good. pricing.proto: CreateProduct is
    RESOURCE_EXHAUSTED, nothing created, when the catalogue would take more than 4 MiB (the paged lists' page),
    less under a lower --message-mb-max (1 MiB: the limit less 64 KiB)."""
    for catalogue_max, made_range, server in (
        (CATALOGUE_BYTES_MAX, (70, 90), None),
        (1024 * 1024 - 64 * 1024, (15, 22), ServerProcess(tmp_path / "data", extra_args=["--message-mb-max", "1"])),
    ):
        if server is not None:
            server.start()
        try:
            with server.client() if server is not None else nullcontext(client) as admin:
                made = fill_catalogue(admin)
                assert made_range[0] < made < made_range[1], made
                catalogue = admin.pricing.ListProducts(pricing_pb2.ListProductsRequest())
                assert catalogue.ByteSize() <= catalogue_max
                assert f"wide-{made:03d}" not in [p.id for p in catalogue.products]
                again = pricing_pb2.CreateProductRequest(product=widest_product("wide-000"))
                assert admin.pricing.CreateProduct(again).id == "wide-000"  # a retry of a product held answers
        finally:
            if server is not None:
                server.stop()


def fill_catalogue(client: TariffClient) -> int:
    """Widest products until CreateProduct is RESOURCE_EXHAUSTED: how many were made."""
    made = 0
    with pytest.raises(TariffError) as full:
        while made < 200:
            client.pricing.CreateProduct(pricing_pb2.CreateProductRequest(product=widest_product(f"wide-{made:03d}")))
            made += 1
    assert full.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    return made
