"""Decimal strings a request carries are held to their documented range exactly (README "Decimal strings": below
10^18, at most 18 decimal places, exact at 12 for amounts of credit; "`1e18` and `1e-19` are refused, never
rounded"), over a real server, one per module.

The range was checked on the value normalized in a 60-digit context (engine/money.py in_range), which is not exact
for two kinds of text the grammar takes and the 64-character limit lets in:
- more than 60 significant digits: "0.1000...0001" (62 decimal places) was normalized to 0.1, found in range, and
  then read as 0.1 where an amount became picos (a grant of 0.1 credits, an alert threshold of 0.1, a top-up price
  of 0.1), or kept with its 62 places where the text is stored (a paid amount, an override, an overage price);
- a value below about 10^-1,000,058, the context's smallest: "1e-1000059" was normalized to 0 and found in range.
  A rollover fraction of it was answered as a text of a million characters; an override's multiplier of it was
  journaled, then stopped the writer when the customer's tables were compiled, and stopped every restart after.
Each is now INVALID_ARGUMENT naming the field where the request enters, and changes nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from tariff import TariffClient, TariffError
from tariff.v1 import contracts_pb2

from tests.audit_fixtures import audit_count
from tests.serverproc import ServerProcess
from tests.test_decimal_grammar_wire import decimal_fields

CARD = "ai-credits"  # the demo's rate card (server/demo.py)
CONTRACT = "acme-2026"  # the demo's contract


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root: Path = tmp_path_factory.mktemp("audit-decimals")
    process = ServerProcess(root / "data", demo=True)
    process.start()
    try:
        yield process
    finally:
        process.stop()


def many_places(whole: str) -> str:
    """`whole` + ".1" + zeros + "1", 64 characters: in the grammar and the length limit, with more significant
    digits than the 60 of the context the range was checked in ("0.1000...0001", 62 decimal places)."""
    return f"{whole}.1{'1'.rjust(62 - len(whole), '0')}"


# The whole part of each field's probe: a sound value for the field but for its decimal places (a top-up's
# recharge_to must be above its threshold of 10).
WHOLE = {"top_up.recharge_to": "100"}


def refused(call: Callable[[], object]) -> tuple[grpc.StatusCode, list[str], str]:
    try:
        answer = call()
    except TariffError as error:
        return error.code, [v.field for v in error.field_violations], error.details
    return grpc.StatusCode.OK, [], str(answer)[:200]


def customer_made(client: TariffClient) -> None:
    try:
        client.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id="globex", name="Globex"))
    except TariffError as error:
        assert error.code == grpc.StatusCode.ALREADY_EXISTS


@pytest.mark.parametrize("kind", ["more than 60 significant digits", "below the context's smallest exponent"])
def test_a_decimal_out_of_range_is_refused_exactly_never_rounded(server: ServerProcess, kind: str) -> None:
    with server.client() as client:
        customer_made(client)
        before = audit_count(client)
        for field in decimal_fields(client, "1"):
            if kind == "more than 60 significant digits":
                text = many_places(WHOLE.get(field, "0"))
                assert len(text) == 64
            else:
                text = "1e-1000059"
            code, fields, details = refused(decimal_fields(client, text)[field])
            assert (code, fields) == (grpc.StatusCode.INVALID_ARGUMENT, [field]), (field, text[:12], details)
            assert "decimal places" in details or "out of range" in details, (field, details)
        assert audit_count(client) == before
        assert server.running


def test_a_long_or_exponent_text_of_a_value_in_range_is_read_exactly(server: ServerProcess) -> None:
    """Trailing zeros are no decimal places: 64 characters of 1.000... are 1, and 100e-20 is 10^-18."""
    one = "1." + "0" * 62
    with server.client() as client:
        customer_made(client)
        grant = contracts_pb2.Grant(
            id="g-long-one", contract_id=CONTRACT, kind=contracts_pb2.PREPAID, amount=one, paid_amount=one
        )
        made = client.contracts.GrantCredits(contracts_pb2.GrantCreditsRequest(grant=grant))
        assert (made.amount, made.paid_amount) == ("1", "1")
        contract = client.contracts.CreateContract(
            contracts_pb2.CreateContractRequest(customer_id="globex", rate_card_id=CARD, overage_price="100e-20")
        )
        assert contract.overage_price == "0.000000000000000001"
