"""An audit of requests that look valid and stopped the server's writer, over a real server (one per module).

The writer stops for good at any exception but an engine error while it applies a command (server/sequencer.py:
UNAVAILABLE "the writer stopped; nothing more was committed", then the server shuts down); a command it journaled
and that cannot be applied again stops every restart. Each test here sends such a request and checks the answer is
the documented refusal, the server goes on serving, and a kill -9 and restart gives the same state.

- pricing.proto "Every price field holds a decimal or a formula ... round(x, places) to that many decimal places
  (a negative count rounds to tens, hundreds...)" and "an error naming the field (ValidateVersion)": a count of
  places no Decimal exponent holds (round(1, -1000000): 10^1000000 passes the largest exponent, 10^999999), an
  infinite one (1e999999 * 10 overflows to infinity in the 60-digit context) or one of thousands of digits
  (1e5000, 1e999999) raised decimal.Overflow, OverflowError or ValueError (the last after minutes of turning a
  million-digit count into an int): ValidateVersion answered INTERNAL, and PublishVersion stopped the writer.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from tariff import TariffClient, TariffError
from tariff.v1 import pricing_pb2

from tests.audit_fixtures import serving, unit
from tests.serverproc import ServerProcess

# A deadline for a call that took minutes before the fix (a million-digit count read as an int).
SLOW_CALL_TIMEOUT_S = 20.0


def catalogue(client: TariffClient) -> None:
    product = pricing_pb2.Product(id="units", event_type="work", aggregation=pricing_pb2.SUM, value_key="n")
    client.pricing.CreateProduct(pricing_pb2.CreateProductRequest(product=product))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root: Path = tmp_path_factory.mktemp("audit-writerstop")
    yield from serving(ServerProcess(root / "data", extra_args=["--close-grace", "off"]), catalogue)


def refusal_of(call: object) -> tuple[grpc.StatusCode, list[str], str]:
    try:
        answer = call()  # type: ignore[operator]
    except TariffError as error:
        return error.code, [v.field for v in error.field_violations], error.details
    return grpc.StatusCode.OK, [], str(answer)[:200]


ROUNDS = {
    "past the largest exponent": "round(1, -1000000)",
    "infinite": "round(1, 1e999999 * 10)",
    "of 5,001 digits": "round(1, 1e5000)",
    "of a million digits": "round(1, 1e999999)",
}


@pytest.mark.parametrize("case", list(ROUNDS))
def test_a_round_to_a_count_of_places_no_decimal_holds_is_a_validation_error(server: ServerProcess, case: str) -> None:
    """A draft pricing `units` at ROUNDS[case]: ValidateVersion reports an ERROR naming rates[0]'s price and
    round(); PublishVersion is INVALID_ARGUMENT naming that field, nothing published; the server goes on serving
    (a card is created after), and after kill -9 and a restart the draft is still a draft."""
    card_id = f"round-{list(ROUNDS).index(case)}"
    with server.client() as client:
        client.pricing.CreateRateCard(pricing_pb2.CreateRateCardRequest(id=card_id, pricing_unit="credits"))
        draft = pricing_pb2.CreateDraftVersionRequest(rate_card_id=card_id, upsert_rates=[unit("units", ROUNDS[case])])
        client.pricing.CreateDraftVersion(draft)
        validate = pricing_pb2.ValidateVersionRequest(rate_card_id=card_id, version=1)
        code, _, details = refusal_of(lambda: client.pricing.ValidateVersion(validate, timeout=SLOW_CALL_TIMEOUT_S))
        assert code == grpc.StatusCode.OK, details
        report = client.pricing.ValidateVersion(validate)
        errors = [(f.path, f.message) for f in report.findings if f.severity == pricing_pb2.ERROR]
        assert len(errors) == 1 and errors[0][0] == "rates[0].unit.price" and "round()" in errors[0][1], errors
        publish = pricing_pb2.PublishVersionRequest(rate_card_id=card_id, version=1)
        code, fields, details = refusal_of(lambda: client.pricing.PublishVersion(publish, timeout=SLOW_CALL_TIMEOUT_S))
        assert (code, fields) == (grpc.StatusCode.INVALID_ARGUMENT, ["version.rates[0].unit.price"]), details
        client.pricing.CreateRateCard(pricing_pb2.CreateRateCardRequest(id=f"{card_id}-after", pricing_unit="credits"))
    assert server.running
    server.kill9()
    server.restart()
    with server.client() as client:
        card = client.pricing.GetRateCard(pricing_pb2.GetRateCardRequest(id=card_id))
        assert (card.latest_version, card.current_version) == (1, 0)
