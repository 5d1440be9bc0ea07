"""`tariff grants`, `tariff grant expire`, `tariff topup set|clear|show`, `tariff reserve` and `tariff release`: a customer's credit grants,
its automatic top-up, and holding credit as a gateway does (ContractService, BalanceService)."""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any

import click

from server.admin.balance import pricing_unit_for_people, print_decision
from server.admin.output import (
    UINT32_MAX,
    decimal_option,
    left_out_note,
    parse_numbers,
    parse_pairs,
    print_fields,
    print_json,
    print_table,
    unit_suffix,
    when,
)
from server.admin.remote import Remote, remote_command
from server.admin.versions import UtcTime, timestamp


@click.command()
@click.argument("customer_id")
@remote_command
def grants(remote: Remote, customer_id: str) -> None:
    """A customer's grants in burn order (top-ups the server bought included): kind, amount, drawn, remaining,
    held by reservations, expired (breakage), revenue recognised."""
    from tariff.v1 import contracts_pb2

    with remote.client() as client:
        found = client.get_balance(customer_id)
    if remote.as_json:
        # grants_left_out only when the server left some out (Balance.grants), so other answers print as they did.
        left_out = {"grants_left_out": found.grants_left_out} if found.grants_left_out else {}
        print_json({"grants": list(found.grants), **left_out})
        return
    rows = [
        (
            g.grant_id,
            contracts_pb2.GrantKind.Name(g.kind),
            g.amount,
            g.drawn,
            g.remaining,
            g.held,
            g.expired,
            g.recognized_revenue,
            when(g.starts_at),
            when(g.expires_at, g.HasField("expires_at")),
        )
        for g in found.grants
    ]
    # The title's unit is the credits'; recognised revenue is money (drawn x paid / amount), in the contract's currency.
    revenue = f"revenue ({found.currency})" if found.currency else "revenue"
    columns = ("grant", "kind", "amount", "drawn", "remaining", "held", "expired", revenue, "starts", "expires")
    unit = unit_suffix(found.pricing_unit)  # none before the customer's first contract
    print_table(columns, rows, title=f"grants of {customer_id}{unit}{left_out_note(found.grants_left_out)}")


@click.group()
def topup() -> None:
    """A contract's automatic top-up: when available credit falls below the threshold, one TOP_UP grant
    recharges it to recharge_to at price_per_credit, at most max_per_period times a billing period."""


@topup.command("set")
@click.argument("contract_id")
@click.option(
    "--threshold",
    required=True,
    callback=decimal_option,
    help="decimal credits: top up when available credit falls below it",
)
@click.option(
    "--recharge-to",
    required=True,
    callback=decimal_option,
    help="decimal credits: what a top-up brings available credit to",
)
@click.option("--price-per-credit", required=True, callback=decimal_option, help="decimal, in the contract's currency")
@click.option("--max-per-period", required=True, type=click.IntRange(0, UINT32_MAX), help="top-ups per billing period")
@remote_command
def topup_set(
    remote: Remote, contract_id: str, threshold: str, recharge_to: str, price_per_credit: str, max_per_period: int
) -> None:
    """Sets the top-up policy of CONTRACT_ID's customer. With --json: the policy (a TopUpPolicy), not the whole
    contract."""
    from tariff.v1 import contracts_pb2

    policy = contracts_pb2.TopUpPolicy(
        threshold=threshold, recharge_to=recharge_to, price_per_credit=price_per_credit, max_per_period=max_per_period
    )
    request = contracts_pb2.SetTopUpPolicyRequest(contract_id=contract_id, top_up=policy)
    with remote.client() as client:
        contract = client.contracts.SetTopUpPolicy(request, timeout=client.default_timeout_s)
    _print_policy(remote, contract)


@topup.command("clear")
@click.argument("contract_id")
@remote_command
def topup_clear(remote: Remote, contract_id: str) -> None:
    """Clears the top-up policy of CONTRACT_ID's customer (a SetTopUpPolicy without top_up; clearing none changes
    nothing). With --json: null, the policy left."""
    from tariff.v1 import contracts_pb2

    request = contracts_pb2.SetTopUpPolicyRequest(contract_id=contract_id)
    with remote.client() as client:
        contract = client.contracts.SetTopUpPolicy(request, timeout=client.default_timeout_s)
    _print_policy(remote, contract)


@topup.command("show")
@click.argument("contract_id")
@remote_command
def topup_show(remote: Remote, contract_id: str) -> None:
    """The top-up policy of CONTRACT_ID's customer (empty when none is set; with --json: null)."""
    from tariff.v1 import contracts_pb2

    with remote.client() as client:
        contract = client.contracts.GetContract(
            contracts_pb2.GetContractRequest(id=contract_id), timeout=client.default_timeout_s
        )
    _print_policy(remote, contract)


def _print_policy(remote: Remote, contract: object) -> None:
    from tariff.v1 import contracts_pb2

    assert isinstance(contract, contracts_pb2.Contract)
    # Without a policy the contract's top_up is unset: JSON null and empty cells, never a made-up policy of 0 top-ups.
    policy = contract.top_up if contract.HasField("top_up") else None
    if remote.as_json:
        print_json(policy)
        return
    print_fields(
        [
            ("contract", contract.id),
            ("threshold", policy.threshold if policy else None),
            ("recharge to", policy.recharge_to if policy else None),
            ("price per credit", policy.price_per_credit if policy else None),
            # Empty for a policy an earlier release took, which answers no currency.
            ("currency", (policy.currency or None) if policy else None),
            ("max per period", policy.max_per_period if policy else None),
        ]
    )


DURATION_SECONDS_MAX = 315_576_000_000  # the most a protobuf Duration holds (10,000 years)


class TtlSeconds(click.ParamType[float]):
    """A hold's TTL in seconds: more than 0 (a hold lasting no time, or less, is malformed whatever the server) and
    at most what a Duration holds (NaN, infinities and more than 10,000 years make protobuf raise while the request
    is built), else a usage error (exit 2) sent nowhere. A TTL past the server's --reservation-ttl-max-s, which
    the client does not know, is the server's to refuse."""

    name = "float"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        seconds = click.FLOAT.convert(value, param, ctx)
        if not (math.isfinite(seconds) and 0 < seconds <= DURATION_SECONDS_MAX):
            self.fail(
                f"{value!r} is not a number of seconds more than 0 and at most {DURATION_SECONDS_MAX}", param, ctx
            )
        return seconds


TTL_SECONDS = TtlSeconds()


@click.command()
@click.argument("customer_id")
@click.argument("event_type")
@click.argument("dimensions", nargs=-1, metavar="[DIMENSION=VALUE]...")
@click.option("--value", "values", multiple=True, metavar="NAME=NUMBER", help="a measured quantity (repeatable)")
@click.option("--id", "reservation_id", default="", help="the reservation id (a retry with it holds once)")
@click.option(
    "--ttl-s",
    type=TTL_SECONDS,
    default=None,
    help="seconds the hold lasts unless settled, more than 0 (the server refuses more than its maximum)  "
    "[default: 60, or the server's maximum when shorter]",
)
@remote_command
def reserve(
    remote: Remote,
    customer_id: str,
    event_type: str,
    dimensions: tuple[str, ...],
    values: tuple[str, ...],
    reservation_id: str,
    ttl_s: float | None,
) -> None:
    """Authorize with a hold: when allowed, the estimated cost is held until an event carrying the reservation
    id settles it, `tariff release` frees it, or its TTL runs out. A denial is an answer: exit status 0."""
    with remote.client() as client:
        decision = client.authorize(
            customer_id,
            event_type,
            parse_pairs(dimensions, "DIMENSION=VALUE"),
            parse_numbers(values, "--value"),
            reserve=True,
            reservation_ttl_s=ttl_s,
            reservation_id=reservation_id,
        )
        unit = pricing_unit_for_people(remote, client, customer_id)
    print_decision(remote, decision, held=True, unit=unit)


@click.command()
@click.argument("customer_id")
@click.argument("reservation_id")
@remote_command
def release(remote: Remote, customer_id: str, reservation_id: str) -> None:
    """Frees a customer's reservation: its held credit becomes available again."""
    from tariff.v1 import balance_pb2

    request = balance_pb2.ReleaseReservationRequest(customer_id=customer_id, reservation_id=reservation_id)
    with remote.client() as client:
        released = client.balance.ReleaseReservation(request, timeout=client.default_timeout_s)
        unit = pricing_unit_for_people(remote, client, customer_id)
    if remote.as_json:
        print_json(released)
        return
    label = unit_suffix(unit)
    print_fields([("reservation", reservation_id), (f"released{label}", released.released_amount)])


@click.group("grant")
def grant() -> None:
    """Change one of a customer's grants (`tariff grants CUSTOMER` lists them)."""


@grant.command("expire")
@click.argument("grant_id")
@click.option("--customer", "customer_id", required=True, help="the customer whose grant it is")
@click.option("--at", "at", type=UtcTime(), required=True, help="the grant's new expiry: what it holds then breaks")
@remote_command
def expire_grant(remote: Remote, grant_id: str, customer_id: str, at: datetime) -> None:
    """Ends GRANT_ID early: moves its expiry to --at (or sets one). What it still holds then is breakage, as for a
    grant created expiring then. Refused when the grant has expired, --at is in the past or after its expiry, or
    usage is recorded after --at. Sending the expiry it has changes nothing. With --json: the grant."""
    from tariff.v1 import contracts_pb2

    request = contracts_pb2.ExpireGrantRequest(customer_id=customer_id, grant_id=grant_id, expires_at=timestamp(at))
    with remote.client() as client:
        found = client.contracts.ExpireGrant(request, timeout=client.default_timeout_s)
    if remote.as_json:
        print_json(found)
        return
    print_fields(
        [
            ("id", found.id),
            ("customer", found.customer_id),
            ("kind", contracts_pb2.GrantKind.Name(found.kind)),
            ("amount", found.amount),
            ("starts", when(found.starts_at, found.HasField("starts_at"))),
            ("expires", when(found.expires_at, found.HasField("expires_at"))),
        ],
        title=f"grant {found.id}",
    )
