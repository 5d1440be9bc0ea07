"""`tariff contracts end` and `end-override`: ending a contract once created, as a customer churns or moves to
another plan (ContractService.EndContract), or one of its price overrides early (ContractService.EndOverride)."""

from __future__ import annotations

from datetime import datetime

import click

from server.admin.output import print_fields, print_json, when
from server.admin.remote import Remote, remote_command
from server.admin.versions import UtcTime, timestamp


@click.group()
def contracts() -> None:
    """Change customers' contracts."""


@contracts.command("end")
@click.argument("contract_id")
@click.option("--at", "at", type=UtcTime(), required=True, help="the contract's new end: usage from then is not its")
@remote_command
def end_contract(remote: Remote, contract_id: str, at: datetime) -> None:
    """Ends CONTRACT_ID at --at (or moves its end there): usage dated before it counts, usage dated at or after it is
    the next contract's or NO_ACTIVE_CONTRACT. Refused when the contract has ended, --at is in the past, usage is
    recorded after it, or it would overlap the customer's next contract. Sending the end it has changes nothing.
    With --json: the contract."""
    from tariff.v1 import contracts_pb2

    request = contracts_pb2.EndContractRequest(contract_id=contract_id, ending_before=timestamp(at))
    with remote.client() as client:
        contract = client.contracts.EndContract(request, timeout=client.default_timeout_s)
    if remote.as_json:
        print_json(contract)
        return
    print_fields(
        [
            ("id", contract.id),
            ("customer", contract.customer_id),
            ("rate card", contract.rate_card_id),
            ("starts", when(contract.starting_at, contract.HasField("starting_at"))),
            ("ends before", when(contract.ending_before, contract.HasField("ending_before"))),
        ],
        title=f"contract {contract.id}",
    )


@contracts.command("end-override")
@click.argument("contract_id")
@click.argument("override_id")
@click.option("--at", "at", type=UtcTime(), required=True, help="the override's new end: usage from then is not its")
@remote_command
def end_override(remote: Remote, contract_id: str, override_id: str, at: datetime) -> None:
    """Ends CONTRACT_ID's override OVERRIDE_ID at --at (or moves its end earlier there): usage dated before it keeps
    the override's price, usage dated at or after it is priced without it. Refused when the override has ended, --at
    is in the past or after its end, or usage of its product is recorded after --at. Sending the end it has changes
    nothing. With --json: the contract."""
    from tariff.v1 import contracts_pb2

    request = contracts_pb2.EndOverrideRequest(
        contract_id=contract_id, override_id=override_id, ending_before=timestamp(at)
    )
    with remote.client() as client:
        contract = client.contracts.EndOverride(request, timeout=client.default_timeout_s)
    if remote.as_json:
        print_json(contract)
        return
    override = next(o for o in contract.overrides if o.id == override_id)
    print_fields(
        [
            ("contract", contract.id),
            ("override", override.id),
            ("product", override.product_id),
            ("starts", when(override.starting_at, override.HasField("starting_at"))),
            ("ends before", when(override.ending_before, override.HasField("ending_before"))),
        ],
        title=f"override {override.id} of contract {contract.id}",
    )
