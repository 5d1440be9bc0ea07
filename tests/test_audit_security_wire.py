"""Security audit over the wire: README "### API keys" against one real server started with keys.

A hostile key holder restricted to customer acme tries to read or change customer beta through every RPC, to
learn whether beta used a transaction id, or to reach admin RPCs with a weaker role. One server for the file.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path

import grpc
import pytest
from google.protobuf import timestamp_pb2
from tariff.v1 import alerts_pb2, balance_pb2, contracts_pb2, invoices_pb2, pricing_pb2

from engine.errors import MADE_BY_ANOTHER_REQUEST
from tests.demo_usage import ACME, CHEAP, demo_batch
from tests.serverproc import ServerFactory, ServerProcess, free_port
from tests.test_server_auth import BETA, CHANNEL_OPTIONS, Keys, add_beta, code_of

AUDIT_KEYS: dict[str, tuple[str, list[str] | None]] = {
    "ops-admin": ("admin", None),
    "meter": ("ingest", None),
    "finance": ("read", None),
    "acme-meter": ("ingest", [ACME]),
    "acme-portal": ("read", [ACME]),
    "acme-admin": ("admin", [ACME]),
}
BETA_TX_PREFIX = "beta-tx"


class World:
    def __init__(self, server: ServerProcess, keys: Keys, beta_reservation_id: str) -> None:
        self.server, self.keys, self.beta_reservation_id = server, keys, beta_reservation_id


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """The demo server with the keys above; beta has 100 credits, 3 events (ids beta-tx-i) and a held reservation."""
    root: Path = tmp_path_factory.mktemp("audit-security")
    keys = Keys(root / "keys.json", AUDIT_KEYS)
    server = ServerProcess(root / "data", demo=True, extra_args=keys.args, api_key=keys.key["ops-admin"])
    server.start()
    try:
        with server.client() as admin:
            add_beta(admin)
            ack = admin.usage.IngestUsageBatch(demo_batch("beta-usage", BETA_TX_PREFIX, 3, customer=BETA))
            assert ack.accepted == 3
            hold = admin.balance.Authorize(
                balance_pb2.AuthorizeRequest(customer_id=BETA, event_type="ai_action", dimensions=CHEAP, reserve=True)
            )
            assert hold.allowed and hold.reservation_id
        yield World(server, keys, hold.reservation_id)
    finally:
        server.stop()


def beta_balance(world: World) -> balance_pb2.Balance:
    with world.server.client() as admin:
        balance: balance_pb2.Balance = admin.balance.GetBalance(balance_pb2.GetBalanceRequest(customer_id=BETA))
    return balance


def assert_refused(calls: dict[str, Callable[[], object]], key_name: str) -> None:
    for what, call in calls.items():
        code, details = code_of(call)
        assert code == grpc.StatusCode.PERMISSION_DENIED, (what, code, details)
        assert key_name in details and "Beta Ltd" not in details and "99.5" not in details, (what, details)


def test_restricted_read_key_is_refused_every_read_about_another_customer_or_all(world: World) -> None:
    with world.server.client(api_key=world.keys.key["acme-portal"]) as portal:
        calls: dict[str, Callable[[], object]] = {
            "WatchBalance(beta)": lambda: next(
                iter(portal.balance.WatchBalance(balance_pb2.WatchBalanceRequest(customer_id=BETA), timeout=5))
            ),
            "PreviewInvoice(beta)": lambda: portal.invoices.PreviewInvoice(
                invoices_pb2.PreviewInvoiceRequest(customer_id=BETA)
            ),
            "ListInvoices(all)": lambda: portal.invoices.ListInvoices(invoices_pb2.ListInvoicesRequest()),
            "ListInvoices(beta)": lambda: portal.invoices.ListInvoices(
                invoices_pb2.ListInvoicesRequest(customer_id=BETA)
            ),
            "GetInvoice(by number)": lambda: portal.invoices.GetInvoice(
                invoices_pb2.GetInvoiceRequest(invoice_number="INV-000001")
            ),
            "GetRevenueReport(beta)": lambda: portal.invoices.GetRevenueReport(
                invoices_pb2.GetRevenueReportRequest(customer_id=BETA)
            ),
            "SimulateVersion(acme+beta)": lambda: portal.pricing.SimulateVersion(
                pricing_pb2.SimulateVersionRequest(rate_card_id="ai-credits", version=1, customer_ids=[ACME, BETA])
            ),
            "ListVersions": lambda: portal.pricing.ListVersions(
                pricing_pb2.ListVersionsRequest(rate_card_id="ai-credits")
            ),
            "ListRateCards": lambda: portal.pricing.ListRateCards(pricing_pb2.ListRateCardsRequest()),
        }
        assert_refused(calls, "acme-portal")


def test_an_unknown_customer_is_refused_like_a_foreign_one_so_existence_is_not_revealed(world: World) -> None:
    with world.server.client(api_key=world.keys.key["acme-portal"]) as portal:
        answers = {
            customer: [
                code_of(
                    functools.partial(portal.balance.GetBalance, balance_pb2.GetBalanceRequest(customer_id=customer))
                ),
                code_of(functools.partial(portal.contracts.GetCustomer, contracts_pb2.GetCustomerRequest(id=customer))),
            ]
            for customer in (BETA, "ghost")
        }
    codes = {customer: [code for code, _ in pairs] for customer, pairs in answers.items()}
    assert codes == {c: [grpc.StatusCode.PERMISSION_DENIED] * 2 for c in (BETA, "ghost")}, answers
    # The wording differs only by the id the caller itself sent.
    assert [d.replace("'ghost'", "'beta'") for _, d in answers["ghost"]] == [d for _, d in answers[BETA]]


def test_restricted_ingest_key_cannot_authorize_or_release_for_another_customer(world: World) -> None:
    held_before = beta_balance(world).credits_held
    assert held_before == "0.5", "the fixture's hold"
    with world.server.client(api_key=world.keys.key["acme-meter"]) as meter:
        mixed = balance_pb2.AuthorizeBatch(
            requests=[
                balance_pb2.AuthorizeRequest(request_id="a", customer_id=ACME, event_type="ai_action"),
                balance_pb2.AuthorizeRequest(request_id="b", customer_id=BETA, event_type="ai_action"),
            ]
        )
        assert_refused(
            {
                "AuthorizeBatches(mixed)": lambda: list(meter.balance.AuthorizeBatches(iter([mixed]), timeout=5)),
                "ReleaseReservation(beta)": lambda: meter.balance.ReleaseReservation(
                    balance_pb2.ReleaseReservationRequest(customer_id=BETA, reservation_id=world.beta_reservation_id)
                ),
            },
            "acme-meter",
        )
        # Beta's hold named under acme: NOT_FOUND, worded exactly as for a reservation never made.
        foreign = code_of(
            lambda: meter.balance.ReleaseReservation(
                balance_pb2.ReleaseReservationRequest(customer_id=ACME, reservation_id=world.beta_reservation_id)
            )
        )
        unknown = code_of(
            lambda: meter.balance.ReleaseReservation(
                balance_pb2.ReleaseReservationRequest(customer_id=ACME, reservation_id="r-never-made")
            )
        )
        assert foreign[0] == unknown[0] == grpc.StatusCode.NOT_FOUND, (foreign, unknown)
        assert foreign[1].replace(world.beta_reservation_id, "X") == unknown[1].replace("r-never-made", "X")
        # An acme event naming beta's reservation does not settle (free) beta's hold.
        batch = demo_batch("acme-settles-beta", "acme-settle", 1)
        batch.events[0].reservation_id = world.beta_reservation_id
        ack = meter.usage.IngestUsageBatch(batch)
        assert ack.accepted == 1, ack
    assert beta_balance(world).credits_held == held_before


def test_transaction_ids_are_per_customer_so_a_restricted_key_learns_nothing_of_anothers(world: World) -> None:
    with world.server.client(api_key=world.keys.key["acme-meter"]) as meter:
        ack = meter.usage.IngestUsageBatch(demo_batch("acme-probe", BETA_TX_PREFIX, 3))
    assert (ack.accepted, ack.duplicates, [r for r in ack.rejected if r.reason]) == (3, 0, []), ack


def test_restricted_admin_key_cannot_change_another_customer(world: World) -> None:
    before = beta_balance(world)
    with world.server.client(api_key=world.keys.key["acme-admin"]) as admin_acme:
        grant = contracts_pb2.Grant(
            id="sneaky", customer_id=ACME, contract_id="beta-2026", kind=contracts_pb2.PREPAID, amount="5"
        )
        calls: dict[str, Callable[[], object]] = {
            "GrantCredits(acme on beta's contract)": lambda: admin_acme.contracts.GrantCredits(
                contracts_pb2.GrantCreditsRequest(grant=grant)
            ),
            "GrantCredits(beta's contract only)": lambda: admin_acme.contracts.GrantCredits(
                contracts_pb2.GrantCreditsRequest(
                    grant=contracts_pb2.Grant(id="s2", contract_id="beta-2026", kind=contracts_pb2.PREPAID, amount="5")
                )
            ),
            "CreateAlert(beta)": lambda: admin_acme.alerts.CreateAlert(
                alerts_pb2.CreateAlertRequest(customer_id=BETA, threshold="1")
            ),
            "CreateAlert(all)": lambda: admin_acme.alerts.CreateAlert(
                alerts_pb2.CreateAlertRequest(all=True, threshold="1")
            ),
            "ClosePeriod(beta)": lambda: admin_acme.invoices.ClosePeriod(
                invoices_pb2.ClosePeriodRequest(customer_id=BETA)
            ),
            "CloseDuePeriods": lambda: admin_acme.invoices.CloseDuePeriods(invoices_pb2.CloseDuePeriodsRequest()),
            "CreateCustomer(beta)": lambda: admin_acme.contracts.CreateCustomer(
                contracts_pb2.CreateCustomerRequest(id=BETA, name="Beta Ltd")
            ),
            "AddOverride(beta's contract)": lambda: admin_acme.contracts.AddOverride(
                contracts_pb2.AddOverrideRequest(contract_id="beta-2026")
            ),
            "SetTopUpPolicy(beta's contract)": lambda: admin_acme.contracts.SetTopUpPolicy(
                contracts_pb2.SetTopUpPolicyRequest(contract_id="beta-2026")
            ),
        }
        assert_refused(calls, "acme-admin")
    with world.server.client(api_key=world.keys.key["acme-admin"], actor="someone-else") as named:
        code, details = code_of(
            lambda: named.alerts.CreateAlert(alerts_pb2.CreateAlertRequest(customer_id=ACME, threshold="1"))
        )
        assert code == grpc.StatusCode.PERMISSION_DENIED and "x-actor" in details, (code, details)
    assert beta_balance(world) == before


@pytest.mark.parametrize("name", ["meter", "finance", "acme-meter", "acme-portal"])
def test_weaker_roles_are_permission_denied_on_admin_rpcs_naming_key_and_role(world: World, name: str) -> None:
    role = AUDIT_KEYS[name][0]
    with world.server.client(api_key=world.keys.key[name]) as weak:
        code, details = code_of(lambda: weak.invoices.CloseDuePeriods(invoices_pb2.CloseDuePeriodsRequest()))
    assert code == grpc.StatusCode.PERMISSION_DENIED, (code, details)
    assert f"key {name!r} has role {role!r}" in details, details


@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer wrong", "Bearer ", "Basic abc"],
)
def test_a_missing_or_malformed_key_is_unauthenticated(world: World, authorization: str | None) -> None:
    metadata = [] if authorization is None else [("authorization", authorization)]
    with grpc.insecure_channel(world.server.target, options=CHANNEL_OPTIONS) as channel:
        call = channel.unary_unary(
            "/tariff.v1.BalanceService/GetBalance",
            request_serializer=balance_pb2.GetBalanceRequest.SerializeToString,
            response_deserializer=balance_pb2.Balance.FromString,
        )
        code, _ = code_of(lambda: call(balance_pb2.GetBalanceRequest(customer_id=ACME), metadata=metadata, timeout=5))
    assert code == grpc.StatusCode.UNAUTHENTICATED


def test_raw_key_without_bearer_scheme_is_unauthenticated(world: World) -> None:
    with grpc.insecure_channel(world.server.target, options=CHANNEL_OPTIONS) as channel:
        call = channel.unary_unary(
            "/tariff.v1.BalanceService/GetBalance",
            request_serializer=balance_pb2.GetBalanceRequest.SerializeToString,
            response_deserializer=balance_pb2.Balance.FromString,
        )
        metadata = [("authorization", world.keys.key["ops-admin"])]
        code, _ = code_of(lambda: call(balance_pb2.GetBalanceRequest(customer_id=ACME), metadata=metadata, timeout=5))
    assert code == grpc.StatusCode.UNAUTHENTICATED


def test_own_customer_revenue_report_and_simulation_carry_no_other_customers_money(world: World) -> None:
    """What a restricted key may ask about its customer is computed over that customer only: the product lines,
    the reconciliation and the simulation must not fold in beta's 90 paid or its usage."""
    start, end = timestamp_pb2.Timestamp(seconds=0), timestamp_pb2.Timestamp(seconds=2**32)
    with world.server.client(api_key=world.keys.key["acme-portal"]) as portal:
        own = portal.invoices.GetRevenueReport(
            invoices_pb2.GetRevenueReportRequest(customer_id=ACME, period_start=start, period_end=end)
        )
        simulated = portal.pricing.SimulateVersion(
            pricing_pb2.SimulateVersionRequest(
                rate_card_id="ai-credits", version=1, customer_ids=[ACME], period_start=start, period_end=end
            )
        )
    with world.server.client() as admin:
        everyone = admin.invoices.GetRevenueReport(
            invoices_pb2.GetRevenueReportRequest(period_start=start, period_end=end)
        )
    assert {line.customer_id for line in own.customer_lines} == {ACME}
    assert {line.customer_id for line in everyone.customer_lines} == {ACME, BETA}
    # Beta's 90 paid for its prepaid grant shows in the all-customer report only.
    sold_acme, sold_all = Decimal(own.reconciliation.prepaid_sold), Decimal(everyone.reconciliation.prepaid_sold)
    assert (sold_acme, sold_all - sold_acme) == (Decimal("45000"), Decimal("90")), (own, everyone)
    assert {a.customer_id for a in simulated.amounts} <= {ACME}
    assert Decimal(simulated.totals.current_amount) == sum(Decimal(a.current_amount) for a in simulated.amounts)


def test_an_event_or_request_for_an_unknown_customer_is_refused_to_a_restricted_key_like_a_foreign_one(
    world: World,
) -> None:
    with world.server.client(api_key=world.keys.key["acme-meter"]) as meter:
        for customer in (BETA, "ghost"):
            batch = demo_batch(f"probe-{customer}", f"probe-{customer}", 2)
            batch.events[1].customer_id = customer
            code, details = code_of(functools.partial(meter.usage.IngestUsageBatch, batch))
            assert code == grpc.StatusCode.PERMISSION_DENIED and "events[1]" in details, (customer, code, details)
            request = balance_pb2.AuthorizeRequest(customer_id=customer, event_type="ai_action", dimensions=CHEAP)
            code, details = code_of(functools.partial(meter.balance.Authorize, request))
            assert code == grpc.StatusCode.PERMISSION_DENIED, (customer, code, details)


def test_x_actor_is_refused_to_a_restricted_key_on_state_changing_calls_only(world: World) -> None:
    with world.server.client(api_key=world.keys.key["acme-meter"], actor="someone-else") as named:
        code, details = code_of(lambda: named.usage.IngestUsageBatch(demo_batch("named", "named", 1)))
        assert code == grpc.StatusCode.PERMISSION_DENIED and "x-actor" in details, (code, details)
        code, details = code_of(
            lambda: named.balance.ReleaseReservation(
                balance_pb2.ReleaseReservationRequest(customer_id=ACME, reservation_id="r-never-made")
            )
        )
        assert code == grpc.StatusCode.PERMISSION_DENIED and "x-actor" in details, (code, details)
        # A read changes nothing, so naming someone is harmless there.
        assert named.balance.GetBalance(balance_pb2.GetBalanceRequest(customer_id=ACME)).customer_id == ACME
    with world.server.client() as admin:
        audit = admin.pricing.GetAuditLog(pricing_pb2.GetAuditLogRequest(page_size=1000)).entries
    assert not [e for e in audit if "someone-else" in e.actor], audit


def test_x_actor_is_refused_to_a_restricted_key_on_an_ingest_stream(world: World) -> None:
    with world.server.client(api_key=world.keys.key["acme-meter"], actor="someone-else") as named:
        code, details = code_of(lambda: list(named.usage.IngestUsage(iter([demo_batch("s", "named-stream", 1)]))))
    assert code == grpc.StatusCode.PERMISSION_DENIED and "x-actor" in details, (code, details)
    with world.server.client() as admin:
        assert admin.usage.IngestUsageBatch(demo_batch("after", "named-stream", 1)).accepted == 1, "nothing applied"


def test_reservation_ids_are_per_customer_so_reusing_anothers_learns_and_touches_nothing(world: World) -> None:
    """acme's key holds, then frees, under beta's reservation id: its own hold only, beta's stays."""
    held_before = beta_balance(world).credits_held
    with world.server.client(api_key=world.keys.key["acme-meter"]) as meter:
        request = balance_pb2.AuthorizeRequest(
            customer_id=ACME,
            event_type="ai_action",
            dimensions=CHEAP,
            reserve=True,
            reservation_id=world.beta_reservation_id,
        )
        code, details = code_of(functools.partial(meter.balance.Authorize, request))
        assert code == grpc.StatusCode.OK, (code, details)
        released = meter.balance.ReleaseReservation(
            balance_pb2.ReleaseReservationRequest(customer_id=ACME, reservation_id=world.beta_reservation_id)
        )
        assert released.released_amount == "0.5"
    assert beta_balance(world).credits_held == held_before


def test_list_customers_pages_hold_only_the_keys_customers_whatever_the_page_token(world: World) -> None:
    with world.server.client() as admin:
        first = admin.contracts.ListCustomers(contracts_pb2.ListCustomersRequest(page_size=1))
    assert first.next_page_token, "the admin's first page stops after acme"
    with world.server.client(api_key=world.keys.key["acme-portal"]) as portal:
        for token in ("", first.next_page_token):
            listed = portal.contracts.ListCustomers(contracts_pb2.ListCustomersRequest(page_token=token))
            assert {c.id for c in listed.customers} <= {ACME}, (token, listed)


def test_keys_without_tls_beyond_loopback_serve_with_a_loud_clear_text_warning(
    server_factory: ServerFactory, tmp_path: Path
) -> None:
    keys = Keys(tmp_path / "keys.json", {"ops-admin": ("admin", None)})
    port = free_port()
    server = server_factory(
        extra_args=[*keys.args, "--listen", f"0.0.0.0:{port}"], api_key=keys.key["ops-admin"], start=False
    )
    server.port = port
    server.start()
    with server.client() as admin:  # served (a warning, not a refusal)
        assert admin.contracts.ListCustomers(contracts_pb2.ListCustomersRequest()) is not None
    log = server.log_tail(200)
    assert f"serving 0.0.0.0:{port} with API keys but WITHOUT TLS" in log and "clear text" in log, log


def test_contract_and_grant_ids_are_server_wide_a_taken_id_says_only_that(world: World) -> None:
    """README: a restricted admin key creating a contract or grant under an id another customer holds learns that
    the id is taken (ALREADY_EXISTS) and nothing else: not the owner, not the amount; nothing changes."""
    before = beta_balance(world)
    with world.server.client(api_key=world.keys.key["acme-admin"]) as admin_acme:
        contract = contracts_pb2.CreateContractRequest(id="beta-2026", customer_id=ACME, rate_card_id="ai-credits")
        grant = contracts_pb2.Grant(
            id="beta-prepaid", customer_id=ACME, kind=contracts_pb2.PREPAID, amount="100", paid_amount="90"
        )
        answers = [
            code_of(functools.partial(admin_acme.contracts.CreateContract, contract)),
            code_of(
                functools.partial(admin_acme.contracts.GrantCredits, contracts_pb2.GrantCreditsRequest(grant=grant))
            ),
        ]
    assert [code for code, _ in answers] == [grpc.StatusCode.ALREADY_EXISTS] * 2, answers
    assert [details for _, details in answers] == [
        "contract 'beta-2026' already exists" + MADE_BY_ANOTHER_REQUEST,
        "grant 'beta-prepaid' already exists" + MADE_BY_ANOTHER_REQUEST,
    ]
    assert beta_balance(world) == before


def test_x_actor_is_refused_to_a_restricted_key_on_holds_but_not_on_plain_authorization(world: World) -> None:
    def request(reserve: bool) -> balance_pb2.AuthorizeRequest:
        return balance_pb2.AuthorizeRequest(
            request_id="r", customer_id=ACME, event_type="ai_action", dimensions=CHEAP, reserve=reserve
        )

    with world.server.client(api_key=world.keys.key["acme-meter"], actor="someone-else") as named:
        held = {
            "AuthorizeStream": lambda: list(named.balance.AuthorizeStream(iter([request(True)]), timeout=5)),
            "AuthorizeBatches": lambda: list(
                named.balance.AuthorizeBatches(iter([balance_pb2.AuthorizeBatch(requests=[request(True)])]), timeout=5)
            ),
        }
        for what, call in held.items():
            code, details = code_of(call)
            assert code == grpc.StatusCode.PERMISSION_DENIED and "x-actor" in details, (what, code, details)
        assert named.balance.Authorize(request(False)).allowed, "a plain authorization changes nothing"
    assert beta_balance(world).credits_held == "0.5"
