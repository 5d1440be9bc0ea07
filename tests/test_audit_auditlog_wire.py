"""GetAuditLog over the wire (pricing.proto AuditEntry, README "Changing prices safely" and "API keys"): every kind
of state-changing control-plane call is one entry, with the actor the key and x-actor make, its target and its
request's fields; a retry (same ids) and a refused call add none; the filters and pages select exactly; and the log
is the same after kill -9."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import msgspec
import pytest
from tariff import TariffClient
from tariff.v1 import alerts_pb2, contracts_pb2, invoices_pb2, pricing_pb2

from engine import commands as cmd
from engine.contracts import OveragePolicy, Override
from engine.control import fingerprint
from engine.ledger import GrantKind
from server.convert import timestamp as stamp
from tests.audit_fixtures import HOUR_MS, refusal, this_hour_ms, unit
from tests.serverproc import ServerProcess
from tests.test_server_auth import Keys

CARD = "al-card"
KEYS: dict[str, str] = {}


def month_starts_ms() -> tuple[int, int]:
    """The start of last month and of this month (UTC), in ms."""
    now = dt.datetime.now(dt.UTC)
    this = dt.datetime(now.year, now.month, 1, tzinfo=dt.UTC)
    last = dt.datetime(now.year - (now.month == 1), (now.month - 2) % 12 + 1, 1, tzinfo=dt.UTC)
    return int(last.timestamp() * 1000), int(this.timestamp() * 1000)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root: Path = tmp_path_factory.mktemp("audit-auditlog")
    keys = Keys(
        root / "keys.json", {"ops-admin": ("admin", None), "auditor": ("read", None), "c-admin": ("admin", ["al-c"])}
    )
    KEYS.update(keys.key)
    process = ServerProcess(
        root / "data", extra_args=[*keys.args, "--close-grace", "off"], api_key=keys.key["ops-admin"]
    )
    process.start()
    try:
        with process.client() as client, process.client(actor="alice") as alice:
            changes(client, alice)
        yield process
    finally:
        process.stop()


def entries(client: TariffClient, **filters: Any) -> list[pricing_pb2.AuditEntry]:
    """Every entry the filters keep, page by page (page_size 2 unless given)."""
    found: list[pricing_pb2.AuditEntry] = []
    after = 0
    filters.setdefault("page_size", 2)
    while True:
        page = client.pricing.GetAuditLog(pricing_pb2.GetAuditLogRequest(after_seq=after, **filters))
        found.extend(page.entries)
        if not page.next_after_seq:
            return found
        after = page.next_after_seq


def changes(client: TariffClient, alice: TariffClient) -> None:
    """One of each audited call, each retried, and a refused call beside it."""
    last_month_ms, this_month_ms = month_starts_ms()
    product = pricing_pb2.Product(id="al-p", event_type="al_call", aggregation=pricing_pb2.COUNT, unit="calls")
    for _ in range(2):
        alice.pricing.CreateProduct(pricing_pb2.CreateProductRequest(product=product))
    assert (
        refusal(
            lambda: alice.pricing.CreateProduct(
                pricing_pb2.CreateProductRequest(
                    product=pricing_pb2.Product(id="al-p", event_type="other", aggregation=pricing_pb2.COUNT)
                )
            )
        )[0]
        == grpc.StatusCode.ALREADY_EXISTS
    )
    card = pricing_pb2.CreateRateCardRequest(id=CARD, name="Card", pricing_unit="USD")
    for _ in range(2):
        alice.pricing.CreateRateCard(card)
    draft = pricing_pb2.CreateDraftVersionRequest(
        rate_card_id=CARD, set_parameters={"k": "2"}, upsert_rates=[unit("al-p", "k")], request_id="d1"
    )
    for _ in range(2):
        alice.pricing.CreateDraftVersion(draft)
    alice.pricing.ValidateVersion(pricing_pb2.ValidateVersionRequest(rate_card_id=CARD, version=1))
    publish = pricing_pb2.PublishVersionRequest(rate_card_id=CARD, version=1, effective_from=stamp(last_month_ms))
    for _ in range(2):
        alice.pricing.PublishVersion(publish)
    draft2 = pricing_pb2.CreateDraftVersionRequest(
        rate_card_id=CARD, based_on_version=1, set_parameters={"k": "3"}, request_id="d2"
    )
    client.pricing.CreateDraftVersion(draft2)
    cohort = pricing_pb2.PublishVersionRequest(
        rate_card_id=CARD,
        version=2,
        effective_from=stamp(this_hour_ms() + HOUR_MS),
        cohort=pricing_pb2.Cohort(customer_ids=["al-c"]),
    )
    code = refusal(lambda: client.pricing.PublishVersion(cohort))[0]
    assert code in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION)
    customer = contracts_pb2.CreateCustomerRequest(id="al-c", name="C")
    for _ in range(2):
        client.contracts.CreateCustomer(customer)
    for _ in range(2):
        client.pricing.PublishVersion(cohort)
    draft3 = pricing_pb2.CreateDraftVersionRequest(
        rate_card_id=CARD, based_on_version=1, set_parameters={"k": "4"}, request_id="d3"
    )
    client.pricing.CreateDraftVersion(draft3)
    client.pricing.PublishVersion(
        pricing_pb2.PublishVersionRequest(rate_card_id=CARD, version=3, effective_from=stamp(this_hour_ms() + HOUR_MS))
    )
    rollback = pricing_pb2.RollbackRateCardRequest(
        rate_card_id=CARD, to_version=1, effective_from=stamp(this_hour_ms() + 2 * HOUR_MS)
    )
    for _ in range(2):
        client.pricing.RollbackRateCard(rollback)
    contract = contracts_pb2.CreateContractRequest(
        id="al-k",
        customer_id="al-c",
        rate_card_id=CARD,
        starting_at=stamp(last_month_ms),
        overage_policy=contracts_pb2.ALLOW,
        overage_price="1",
        currency="USD",
    )
    for _ in range(2):
        alice.contracts.CreateContract(contract)
    override = contracts_pb2.AddOverrideRequest(
        contract_id="al-k",
        override=contracts_pb2.PriceOverride(
            id="al-o", product_id="al-p", multiplier="0.5", starting_at=stamp(this_month_ms)
        ),
    )
    for _ in range(2):
        alice.contracts.AddOverride(override)
    grant = contracts_pb2.Grant(
        id="al-g", contract_id="al-k", kind=contracts_pb2.PREPAID, amount="10", paid_amount="10"
    )
    for _ in range(2):
        alice.contracts.GrantCredits(contracts_pb2.GrantCreditsRequest(grant=grant))
    policy = contracts_pb2.TopUpPolicy(threshold="2", recharge_to="10", price_per_credit="1", max_per_period=3)
    for _ in range(2):
        alice.contracts.SetTopUpPolicy(contracts_pb2.SetTopUpPolicyRequest(contract_id="al-k", top_up=policy))
    for _ in range(2):
        alice.contracts.SetTopUpPolicy(contracts_pb2.SetTopUpPolicyRequest(contract_id="al-k"))
    rule = alerts_pb2.CreateAlertRequest(id="al-a", customer_id="al-c", type=alerts_pb2.LOW_BALANCE, threshold="5")
    for _ in range(2):
        alice.alerts.CreateAlert(rule)
    for _ in range(2):
        alice.alerts.DeleteAlertRule(alerts_pb2.DeleteAlertRuleRequest(id="al-a"))
    close = invoices_pb2.ClosePeriodRequest(customer_id="al-c", period_start=stamp(last_month_ms))
    for _ in range(2):
        alice.invoices.ClosePeriod(close)
    for _ in range(2):
        alice.invoices.CloseDuePeriods(invoices_pb2.CloseDuePeriodsRequest())
    client.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id="al-d", name="D"))
    bare = contracts_pb2.CreateContractRequest(customer_id="al-d", rate_card_id=CARD)
    for _ in range(2):
        client.contracts.CreateContract(bare)
    client.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id="al-e", name="E"))
    due = contracts_pb2.CreateContractRequest(
        id="al-ek",
        customer_id="al-e",
        rate_card_id=CARD,
        starting_at=stamp(last_month_ms),
        ending_before=stamp(this_month_ms),
    )
    client.contracts.CreateContract(due)
    for _ in range(2):
        alice.invoices.CloseDuePeriods(invoices_pb2.CloseDuePeriodsRequest())
    unnamed = alerts_pb2.CreateAlertRequest(customer_id="al-d", type=alerts_pb2.LOW_BALANCE, threshold="5")
    for _ in range(2):
        client.alerts.CreateAlert(unnamed)


ALICE = "alice via ops-admin"
OPS = "ops-admin"
EXPECTED = [
    ("CreateProduct", "product/al-p", ALICE),
    ("CreateRateCard", f"rate_card/{CARD}", ALICE),
    ("CreateDraftVersion", f"rate_card/{CARD}/version/1", ALICE),
    ("PublishVersion", f"rate_card/{CARD}/version/1", ALICE),
    ("CreateDraftVersion", f"rate_card/{CARD}/version/2", OPS),
    ("CreateCustomer", "customer/al-c", OPS),
    ("PublishVersion", f"rate_card/{CARD}/version/2", OPS),
    ("CreateDraftVersion", f"rate_card/{CARD}/version/3", OPS),
    ("PublishVersion", f"rate_card/{CARD}/version/3", OPS),
    ("RollbackRateCard", f"rate_card/{CARD}/version/4", OPS),
    ("CreateContract", "contract/al-k", ALICE),
    ("AddOverride", "contract/al-k", ALICE),
    ("GrantCredits", "grant/al-g", ALICE),
    ("SetTopUpPolicy", "contract/al-k/top_up", ALICE),
    ("SetTopUpPolicy", "contract/al-k/top_up", ALICE),
    ("CreateAlert", "alert/al-a", ALICE),
    ("DeleteAlertRule", "alert/al-a", ALICE),
    ("ClosePeriod", "customer/al-c/invoice/INV-00000001", ALICE),
    ("CreateCustomer", "customer/al-d", OPS),
    ("CreateContract", "contract/al-d-", OPS),
    ("CreateCustomer", "customer/al-e", OPS),
    ("CreateContract", "contract/al-ek", OPS),
    ("CloseDuePeriods", "invoices", ALICE),
    ("CreateAlert", "alert/alert-", OPS),
]


def rows(found: list[pricing_pb2.AuditEntry]) -> list[tuple[str, str, str]]:
    return [(entry.action, entry.target, entry.actor) for entry in found]


def test_each_change_is_one_entry_retries_and_refusals_none(server: ServerProcess) -> None:
    with server.client(api_key=None) as anonymous:
        assert refusal(lambda: entries(anonymous))[0] == grpc.StatusCode.UNAUTHENTICATED
    with server.client() as client:
        found = entries(client)
    assert [entry.seq for entry in found] == sorted({entry.seq for entry in found})
    got = rows(found)
    assert len(got) == len(EXPECTED), got
    for (action, target, actor), (want_action, want_target, want_actor) in zip(got, EXPECTED, strict=True):
        assert (action, actor) == (want_action, want_actor)
        assert target == want_target or (want_target.endswith("-") and target.startswith(want_target)), target
    times = [entry.time.ToMilliseconds() for entry in found]
    assert times == sorted(times)
    diffs = [json.loads(entry.diff) for entry in found]
    last_month_ms = month_starts_ms()[0]
    assert diffs[3]["effective_from_ms"] == last_month_ms  # the retroactive publish
    assert diffs[6]["cohort"]["customer_ids"] == ["al-c"]
    assert (diffs[9]["version"], diffs[9]["rollback_from"], diffs[9]["rollback_to"]) == (4, 3, 1)
    assert diffs[11]["override"]["multiplier"] == "0.5"
    assert (diffs[13]["threshold"], diffs[14]["threshold"]) == ("2", "")
    assert diffs[16]["alert_type"] == "LOW_BALANCE"


def test_diff_names_what_the_server_applied(server: ServerProcess) -> None:
    """A contract and an alert rule created without an id (and the contract without start, overage price or
    currency), and a grant naming only its contract and no start: the diff holds the id, start, price, currency and
    customer the server gave them, as the target does."""
    with server.client() as client:
        found = entries(client)
        contract = client.contracts.GetContract(contracts_pb2.GetContractRequest(id=found[19].target.split("/", 1)[1]))
    made = json.loads(found[19].diff)
    applied = {
        "id": contract.id,
        "starting_at_ms": contract.starting_at.ToMilliseconds(),
        "overage_price": "1",
        "currency": "USD",
    }
    assert {name: made[name] for name in applied} == applied
    assert json.loads(found[23].diff)["id"] == found[23].target.split("/", 1)[1]
    granted = json.loads(found[12].diff)  # through its contract, with no start: the contract's customer and start
    assert (granted["customer_id"], granted["starts_at_ms"]) == ("al-c", month_starts_ms()[0])


def test_filters_and_pages_select_exactly(server: ServerProcess) -> None:
    with server.client() as client:
        every = entries(client, page_size=1000)
        assert every == entries(client, page_size=1) == entries(client)

        def kept(**filters: Any) -> list[int]:
            return [entry.seq for entry in entries(client, **filters)]

        def where(test: object) -> list[int]:
            return [entry.seq for entry in every if test(entry)]  # type: ignore[operator]

        assert kept(target="contract/al-k") == where(lambda e: e.target.startswith("contract/al-k"))
        assert len(kept(target="contract/al-k")) == 4
        assert kept(target="customer/") == where(lambda e: e.target.startswith("customer/"))
        assert kept(actor="alice") == where(lambda e: e.actor == ALICE)
        assert kept(actor="ops-admin") == [entry.seq for entry in every]
        assert kept(actor=ALICE) == kept(actor="alice")
        assert kept(actor="via") == kept(actor="alic") == []
        assert kept(action="PublishVersion") == where(lambda e: e.action == "PublishVersion") != []
        assert kept(action="PublishVersion", actor="alice") == [every[3].seq]
        start, end = every[4].time, every[10].time
        assert kept(start_time=start, end_time=end) == where(
            lambda e: start.ToMilliseconds() <= e.time.ToMilliseconds() < end.ToMilliseconds()
        )
        assert kept(start_time=end) == where(lambda e: e.time.ToMilliseconds() >= end.ToMilliseconds())
        assert kept(end_time=start) == where(lambda e: e.time.ToMilliseconds() < start.ToMilliseconds())
        refused = pricing_pb2.GetAuditLogRequest(start_time=end, end_time=end)
        assert refusal(lambda: client.pricing.GetAuditLog(refused))[0] == grpc.StatusCode.INVALID_ARGUMENT
        tail = client.pricing.GetAuditLog(pricing_pb2.GetAuditLogRequest(after_seq=every[-2].seq, page_size=1))
        assert ([entry.seq for entry in tail.entries], tail.next_after_seq) == ([every[-1].seq], 0)


def test_actors_of_keys_and_refused_callers(server: ServerProcess) -> None:
    """A restricted key naming an actor, a read key changing something and a bad x-actor are refused, adding no
    entry; a restricted key's own change is under its name; an x-actor naming the key itself is the key alone."""
    rule = alerts_pb2.CreateAlertRequest(customer_id="al-c", type=alerts_pb2.LOW_BALANCE, threshold="7")
    with server.client() as client:
        before = entries(client, page_size=1000)
    with server.client(api_key=KEYS["c-admin"], actor="bob") as named:
        assert refusal(lambda: named.alerts.CreateAlert(rule))[0] == grpc.StatusCode.PERMISSION_DENIED
    with server.client(api_key=KEYS["auditor"]) as reader:
        assert refusal(lambda: reader.alerts.CreateAlert(rule))[0] == grpc.StatusCode.PERMISSION_DENIED
    with server.client(actor="bad actor") as spaced:
        assert refusal(lambda: spaced.alerts.CreateAlert(rule))[0] == grpc.StatusCode.INVALID_ARGUMENT
    last_month_ms, this_month_ms = month_starts_ms()
    other_grant = contracts_pb2.Grant(
        id="al-g", contract_id="al-k", kind=contracts_pb2.PREPAID, amount="11", paid_amount="11"
    )
    backwards = contracts_pb2.CreateContractRequest(
        id="al-back",
        customer_id="al-c",
        rate_card_id=CARD,
        starting_at=stamp(this_month_ms),
        ending_before=stamp(last_month_ms),
    )
    refused_calls = {
        grpc.StatusCode.ALREADY_EXISTS: lambda client: client.contracts.GrantCredits(
            contracts_pb2.GrantCreditsRequest(grant=other_grant)
        ),
        grpc.StatusCode.INVALID_ARGUMENT: lambda client: client.contracts.CreateContract(backwards),
        grpc.StatusCode.FAILED_PRECONDITION: lambda client: client.pricing.RollbackRateCard(
            pricing_pb2.RollbackRateCardRequest(rate_card_id=CARD, to_version=1, effective_from=stamp(last_month_ms))
        ),
    }
    with server.client() as client:
        for code, call in refused_calls.items():
            assert refusal(lambda: call(client))[0] == code  # noqa: B023 (called at once)
    with server.client() as client:
        assert entries(client, page_size=1000) == before
    with server.client(api_key=KEYS["c-admin"]) as restricted:
        made = restricted.alerts.CreateAlert(rule)
    with server.client(actor="ops-admin") as itself:
        itself.alerts.DeleteAlertRule(alerts_pb2.DeleteAlertRuleRequest(id=made.id))
    with server.client(api_key=KEYS["auditor"]) as reader:
        after = entries(reader, page_size=1000)
        assert rows(after[len(before) :]) == [
            ("CreateAlert", f"alert/{made.id}", "c-admin"),
            ("DeleteAlertRule", f"alert/{made.id}", "ops-admin"),
        ]
        assert [entry.seq for entry in entries(reader, actor="c-admin")] == [after[len(before)].seq]
        beyond = reader.pricing.GetAuditLog(pricing_pb2.GetAuditLogRequest(after_seq=after[-1].seq + 100))
        assert (list(beyond.entries), beyond.next_after_seq) == ([], 0)
        big = reader.pricing.GetAuditLog(pricing_pb2.GetAuditLogRequest(page_size=5000))
        assert list(big.entries) == after


def test_publish_without_effective_from_names_the_hour_applied(server: ServerProcess) -> None:
    """A publish and a rollback naming no effective_from: the diff's effective_from_ms is the hour the call was
    applied in (its entry's time, to the hour); a cohort's created-after instant is kept to the millisecond."""
    created_after = stamp(month_starts_ms()[0])
    created_after.nanos += 1_500_000  # 1.5 ms: kept as 1 ms
    with server.client() as client:
        draft = pricing_pb2.CreateDraftVersionRequest(rate_card_id=CARD, based_on_version=1, set_parameters={"k": "5"})
        number = client.pricing.CreateDraftVersion(draft).version
        cohort = pricing_pb2.Cohort(attributes={"tier": "gold"}, customers_created_after=created_after)
        client.pricing.PublishVersion(
            pricing_pb2.PublishVersionRequest(rate_card_id=CARD, version=number, cohort=cohort)
        )
        draft.set_parameters["k"] = "6"
        other = client.pricing.CreateDraftVersion(draft).version
        client.pricing.PublishVersion(pricing_pb2.PublishVersionRequest(rate_card_id=CARD, version=other))
        client.pricing.RollbackRateCard(pricing_pb2.RollbackRateCardRequest(rate_card_id=CARD, to_version=number - 1))
        found = entries(client, target=f"rate_card/{CARD}", page_size=1000)
    published, unrolled, rolled = found[-4], found[-2], found[-1]
    assert (published.action, unrolled.action, rolled.action) == (
        "PublishVersion",
        "PublishVersion",
        "RollbackRateCard",
    )
    for entry in (published, unrolled, rolled):
        assert json.loads(entry.diff)["effective_from_ms"] == entry.time.ToMilliseconds() // HOUR_MS * HOUR_MS
    made = json.loads(published.diff)["cohort"]
    assert (made["attributes"], made["customers_created_after_ms"]) == ({"tier": "gold"}, month_starts_ms()[0] + 1)


def test_override_without_id_names_its_id(server: ServerProcess) -> None:
    """An override added without an id is named by the server (after its content): the diff names that id."""
    override = contracts_pb2.PriceOverride(product_id="al-p", price="0.25", starting_at=stamp(month_starts_ms()[1]))
    with server.client() as client:
        for _ in range(2):
            contract = client.contracts.AddOverride(
                contracts_pb2.AddOverrideRequest(contract_id="al-k", override=override)
            )
        (made,) = [held.id for held in contract.overrides if held.price == "0.25"]
        entry = entries(client, target="contract/al-k", page_size=1000)[-1]
    assert entry.action == "AddOverride"
    assert json.loads(entry.diff)["override"]["id"] == made != ""


def test_unnamed_customer_and_rate_card_diff_their_names(server: ServerProcess) -> None:
    """A customer and a rate card created without a name are named after their id: the diff says so."""
    with server.client() as client:
        client.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id="al-n"))
        client.pricing.CreateRateCard(pricing_pb2.CreateRateCardRequest(id="al-n-card", pricing_unit="USD"))
        assert client.contracts.GetCustomer(contracts_pb2.GetCustomerRequest(id="al-n")).name == "al-n"
        customer = entries(client, target="customer/al-n", page_size=1000)
        card = entries(client, target="rate_card/al-n-card", page_size=1000)
    assert [json.loads(entry.diff)["name"] for entry in customer + card] == ["al-n", "al-n-card"]


def test_the_log_is_the_same_after_kill9(server: ServerProcess) -> None:
    with server.client() as client:
        before = entries(client, page_size=1000)
    server.kill9()
    server.start()
    with server.client() as client:
        assert entries(client, page_size=1000) == before


def test_records_without_the_field_encode_and_fingerprint_as_before() -> None:
    """A CreateCustomer, CreateRateCard, CreateContract, CreateAlert, AddOverride or GrantCredits stored before `applied_audited` has no such entry: it decodes to False,
    encodes to the same bytes, and a new command with it has the fingerprint the old one had (a retry after an
    upgrade is still the same request)."""
    contract = cmd.CreateContract(1, "a", "", "c", "r", None, None, OveragePolicy.ALLOW, "", "")
    alert = cmd.CreateAlert(1, "a", "", "c", False, "LOW_BALANCE", "5")
    grant = cmd.GrantCredits(1, "a", "g", "", "k", GrantKind.PREPAID, "1", "1", 0, (), None, None, "")
    override = cmd.AddOverride(1, "a", "k", Override("", "p", {}, "0.5", None, 0, None))
    customer = cmd.CreateCustomer(1, "a", "c", "", {})
    card = cmd.CreateRateCard(1, "a", "r", "", "USD")
    for old, new in (
        (customer, msgspec.structs.replace(customer, applied_audited=True)),
        (card, msgspec.structs.replace(card, applied_audited=True)),
        (override, msgspec.structs.replace(override, applied_audited=True)),
        (grant, msgspec.structs.replace(grant, applied_audited=True)),
        (contract, msgspec.structs.replace(contract, applied_audited=True)),
        (alert, msgspec.structs.replace(alert, applied_audited=True)),
    ):
        stored = msgspec.json.encode(old)
        assert b"applied_audited" not in stored
        assert msgspec.json.decode(stored, type=type(old)) == old
        assert fingerprint(new) == fingerprint(old)
