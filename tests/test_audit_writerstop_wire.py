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
- pricing.proto/README: a version holds up to 10,000 rates, and equally specific rates one event could match are
  a validation error. Validation compared every pair of rates (50,000,000 pairs, 72 s on the event loop, at each
  ValidateVersion and twice at a publish) and listed every ambiguous pair (25,000,000 for 5,000 rates on one
  dimension beside 5,000 on another: gigabytes of the server's memory).
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
    priced = pricing_pb2.Product(
        id="models", event_type="call", aggregation=pricing_pb2.COUNT, pricing_dimensions=["model", "region"]
    )
    client.pricing.CreateProduct(pricing_pb2.CreateProductRequest(product=priced))


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


def rates_on(dimension: str, count: int, start: int = 0) -> list[pricing_pb2.Rate]:
    return [unit("models", "1", **{dimension: f"v{i}"}) for i in range(start, start + count)]


def test_a_version_of_the_most_rates_validates_publishes_and_restarts_promptly(server: ServerProcess) -> None:
    """pricing.proto/README: a version holds up to 10,000 rates. A draft of 10,000 rates on `models`, each matching
    its own `model` (one price per model), is valid: ValidateVersion answers ok and PublishVersion publishes it,
    each within SLOW_CALL_TIMEOUT_S x 3 (generous; they take about a second). Before, validation compared every
    pair of rates: 72 s on the event loop at each ValidateVersion, and twice at the publish (its check, then the
    tables' compile), the server serving nothing meanwhile."""
    with server.client() as client:
        client.pricing.CreateRateCard(pricing_pb2.CreateRateCardRequest(id="many", pricing_unit="credits"))
        draft = pricing_pb2.CreateDraftVersionRequest(rate_card_id="many", upsert_rates=rates_on("model", 10_000))
        client.pricing.CreateDraftVersion(draft, timeout=SLOW_CALL_TIMEOUT_S * 3)
        validate = pricing_pb2.ValidateVersionRequest(rate_card_id="many", version=1)
        code, _, details = refusal_of(lambda: client.pricing.ValidateVersion(validate, timeout=SLOW_CALL_TIMEOUT_S * 3))
        assert (code, details.startswith("ok: true")) == (grpc.StatusCode.OK, True), details
        publish = pricing_pb2.PublishVersionRequest(rate_card_id="many", version=1)
        code, _, details = refusal_of(lambda: client.pricing.PublishVersion(publish, timeout=SLOW_CALL_TIMEOUT_S * 3))
        assert code == grpc.StatusCode.OK, details
    server.kill9()
    server.restart()
    with server.client() as client:
        card = client.pricing.GetRateCard(pricing_pb2.GetRateCardRequest(id="many"))
        assert (card.latest_version, card.current_version) == (1, 1)


def test_ambiguous_rates_are_listed_up_to_a_hundred_pairs(server: ServerProcess) -> None:
    """A draft of 300 rates each matching its own `model` and 300 each matching its own `region`: an event of model
    v0 in region v300 matches rates[0] and rates[300], equally specific, and so on for 90,000 pairs. ValidateVersion
    lists the first 100 pairs (rates[300] as specific as rates[0], rates[301] as rates[0], ...) and one error
    saying there are more (101 errors), and PublishVersion is INVALID_ARGUMENT naming the first of them (101 violations in all). Before,
    every pair was listed: 90,000 findings, a reply past the client's 4 MB limit (25,000,000 for the 10,000 rates
    a version may hold, gigabytes of the server's memory)."""
    with server.client() as client:
        client.pricing.CreateRateCard(pricing_pb2.CreateRateCardRequest(id="ambiguous", pricing_unit="credits"))
        rates = rates_on("model", 300) + rates_on("region", 300, start=300)
        client.pricing.CreateDraftVersion(
            pricing_pb2.CreateDraftVersionRequest(rate_card_id="ambiguous", upsert_rates=rates)
        )
        validate = pricing_pb2.ValidateVersionRequest(rate_card_id="ambiguous", version=1)
        code, _, details = refusal_of(lambda: client.pricing.ValidateVersion(validate))
        assert code == grpc.StatusCode.OK, details
        report = client.pricing.ValidateVersion(validate)
        errors = [(f.path, f.message) for f in report.findings if f.severity == pricing_pb2.ERROR]
        assert len(errors) == 101, len(errors)
        assert errors[0][0] == "rates[300].match" and "as specific as rates[0]" in errors[0][1], errors[0]
        assert errors[1][0] == "rates[301].match" and "as specific as rates[0]" in errors[1][1], errors[1]
        assert "the first 100 such pairs are listed" in errors[100][1], errors[100]
        publish = pricing_pb2.PublishVersionRequest(rate_card_id="ambiguous", version=1)
        code, fields, details = refusal_of(lambda: client.pricing.PublishVersion(publish))
        assert (code, fields[0]) == (grpc.StatusCode.INVALID_ARGUMENT, "version.rates[300].match"), details
        assert "(101 violations in all" in details, details
    assert server.running
