"""Cohort rollouts in the engine and the kernel (engine/cohorts.py): which version prices a customer's usage when
versions are published for cohorts (overlapping cohorts, attribute match, customers_created_after, a customer
created after the publish), refusals that change nothing, retries, and a retroactive cohort publish that
re-rates its members' usage only."""

from __future__ import annotations

import json
from collections.abc import Mapping

import pytest
from tariff.v1 import usage_pb2

from engine import commands as cmd
from engine.billing import Billing
from engine.contracts import OveragePolicy
from engine.errors import FailedPrecondition, InvalidArgument, Repeated
from engine.ratecard import Cohort, Rate, Version, VersionState
from engine.versions import PublishResult
from tests.engine_fixtures import ACTOR, EPOCH_MS, HOUR_MS, World, picos, rate, unit
from tests.kernel_fixtures import usage_event

T = EPOCH_MS


class Pricing:
    """A Billing over a World set up with one SUM product ("tokens" by model) and version 1 of "card" (1 credit a
    token for every model) from T; later commands go through the Billing, as the writer applies them."""

    def __init__(self) -> None:
        world = World()
        world.product("tokens", dimensions=("model",))
        world.rate_card()
        world.version([rate("tokens", unit("1"))], effective_from_ms=T)
        self.billing = Billing(engine=world.engine)
        self.events = 0

    def apply(self, command: cmd.AdminCommand) -> object:
        return self.billing.apply(command, self.billing.last_seq + 1)

    def customer(self, customer_id: str, attributes: Mapping[str, str] | None = None, *, at_ms: int = T) -> None:
        self.apply(cmd.CreateCustomer(at_ms, ACTOR, customer_id, customer_id, dict(attributes or {})))
        self.apply(
            cmd.CreateContract(
                at_ms, ACTOR, f"c-{customer_id}", customer_id, "card", T, None, OveragePolicy.ALLOW, "1", "USD"
            )
        )

    def draft(self, rates: list[Rate]) -> int:
        version = self.apply(cmd.CreateDraftVersion(T, ACTOR, "card", 0, {}, (), tuple(rates), (), ""))
        assert isinstance(version, Version)
        return version.number

    def publish(
        self, number: int, effective_from_ms: int, cohort: Cohort | None = None, *, at_ms: int = T
    ) -> PublishResult:
        result = self.apply(cmd.PublishVersion(at_ms, ACTOR, "card", number, effective_from_ms, cohort))
        assert isinstance(result, PublishResult)
        return result

    def ingest(self, customer_id: str, ts_ms: int, tokens: float, model: str = "gpt-4") -> None:
        self.events += 1
        event = usage_event(
            f"e{self.events}", ts_ms, {"tokens": tokens}, customer_id=customer_id, dimensions={"model": model}
        )
        batch = usage_pb2.UsageBatch(batch_id=f"b{self.events}", events=[event]).SerializeToString()
        done = self.billing.ingest(batch, ts_ms + HOUR_MS)
        assert done.accepted == 1, done.rejected

    def charged_by_version(self, customer_id: str) -> dict[int, int]:
        """Picos charged under each version, from the customer's hour buckets."""
        usage = self.billing.kernel.usage(customer_id)
        assert usage is not None
        out: dict[int, int] = {}
        for _hour, _product, _dimensions, usages in usage[1]:
            for _card, version, _quantity, _events, amount in usages:
                out[version] = out.get(version, 0) + amount
        return out


def price(text: str) -> list[Rate]:
    return [rate("tokens", unit(text))]


def test_the_newest_effective_version_whose_cohort_holds_the_customer_prices_its_usage() -> None:
    p = Pricing()
    p.customer("acme", {"tier": "gold"})
    p.customer("beta", {"tier": "silver"})
    p.customer("carol", {"tier": "gold"})
    p.customer("dave", {"tier": "silver"})
    # v2: acme and beta, 2 a token from T+2h; v3 (published later, effective earlier): gold, 3 a token from T+1h.
    p.publish(p.draft(price("2")), T + 2 * HOUR_MS, Cohort(customer_ids=("beta", "acme")))
    p.publish(p.draft(price("3")), T + HOUR_MS, Cohort(attributes={"tier": "gold"}))
    for customer_id in ("acme", "beta", "carol", "dave"):
        p.ingest(customer_id, T + 30 * 60_000, 10)  # before either cohort version: version 1
        p.ingest(customer_id, T + 90 * 60_000, 10)  # gold's version 3 from T+1h
        p.ingest(customer_id, T + 3 * HOUR_MS, 10)  # v2 is the newest-effective for acme and beta
    assert p.charged_by_version("acme") == {1: picos("10"), 3: picos("30"), 2: picos("20")}
    assert p.charged_by_version("beta") == {1: picos("20"), 2: picos("20")}
    assert p.charged_by_version("carol") == {1: picos("10"), 3: picos("60")}
    assert p.charged_by_version("dave") == {1: picos("30")}
    card = p.billing.engine.rate_card("card")
    # Outside cohorts version 1 is in force throughout; the cohorts are kept as published (ids sorted).
    assert [card.version_number_at(T + h * HOUR_MS) for h in (0, 1, 2, 3)] == [1, 1, 1, 1]
    assert card.version(2).cohort == Cohort(customer_ids=("acme", "beta"))
    assert card.version(3).cohort == Cohort(attributes={"tier": "gold"})


def test_a_customer_created_after_the_publish_joins_by_attributes_and_creation_time() -> None:
    p = Pricing()
    p.customer("old-gold", {"tier": "gold"})
    p.customer("edge-gold", {"tier": "gold"}, at_ms=T + HOUR_MS)
    cohort = Cohort(attributes={"tier": "gold"}, customers_created_after_ms=T + HOUR_MS)
    p.publish(p.draft(price("5")), T + 2 * HOUR_MS, cohort, at_ms=T + HOUR_MS)
    # Created after the publish: a gold one after the cohort's time joins (its timeline compiled when it is
    # created); a silver one does not, nor one created exactly at the cohort's time (strictly after), nor before.
    p.customer("new-gold", {"tier": "gold"}, at_ms=T + 3 * HOUR_MS)
    p.customer("new-silver", {"tier": "silver"}, at_ms=T + 3 * HOUR_MS)
    for customer_id in ("old-gold", "edge-gold", "new-gold", "new-silver"):
        p.ingest(customer_id, T + 4 * HOUR_MS, 2)
    assert p.charged_by_version("new-gold") == {2: picos("10")}
    assert p.charged_by_version("new-silver") == {1: picos("2")}
    assert p.charged_by_version("edge-gold") == {1: picos("2")}
    assert p.charged_by_version("old-gold") == {1: picos("2")}


def test_a_bad_cohort_is_refused_naming_the_field_and_changes_nothing() -> None:
    p = Pricing()
    p.customer("acme")
    number = p.draft(price("2"))
    refusals = [
        (Cohort(customer_ids=("acme", "ghost", "zed")), "cohort.customer_ids", "no such customer: 'ghost', 'zed'"),
        (Cohort(customer_ids=("",)), "cohort.customer_ids", "an id must not be empty"),
        (Cohort(attributes={"": "gold"}), "cohort.attributes", "an attribute key must not be empty"),
        (Cohort(attributes={"tier": ""}), "cohort.attributes[tier]", "an attribute match needs a value"),
    ]
    for cohort, field, message in refusals:
        with pytest.raises(InvalidArgument) as refused:
            p.publish(number, T + HOUR_MS, cohort)
        assert refused.value.violations == [(field, message)]
    version = p.billing.engine.rate_card("card").version(number)
    assert (version.state, version.cohort, version.effective_from_ms) == (VersionState.DRAFT, None, None)


def test_a_cohort_publish_retried_is_answered_as_before_and_another_cohort_is_refused() -> None:
    p = Pricing()
    p.customer("acme")
    p.customer("beta")
    number = p.draft(price("2"))
    first = p.publish(number, T + HOUR_MS, Cohort(customer_ids=("beta", "acme")))
    with pytest.raises(Repeated) as again:
        p.publish(number, T + HOUR_MS, Cohort(customer_ids=("acme", "beta", "acme")))
    assert isinstance(again.value.result, PublishResult) and again.value.result.version == first.version
    with pytest.raises(FailedPrecondition, match="already published for another cohort"):
        p.publish(number, T + HOUR_MS, Cohort(customer_ids=("acme",)))
    with pytest.raises(FailedPrecondition, match="already published for another cohort"):
        p.publish(number, T + HOUR_MS)
    assert p.billing.engine.rate_card("card").version(number).cohort == Cohort(customer_ids=("acme", "beta"))
    # One audit entry for the publish (the retry and the refusals changed nothing), its diff naming the cohort.
    found, _ = p.billing.engine.audit_page(0, f"rate_card/card/version/{number}", 10, None, None)
    publishes = [json.loads(e.diff) for e in found if e.action == "PublishVersion"]
    assert [d["cohort"]["customer_ids"] for d in publishes] == [["beta", "acme"]]


def test_an_empty_cohort_is_everyone() -> None:
    p = Pricing()
    p.customer("acme")
    number = p.draft(price("2"))
    assert p.publish(number, T + HOUR_MS, Cohort()).version.cohort is None
    assert p.billing.engine.rate_card("card").version_number_at(T + HOUR_MS) == number


def test_a_retroactive_cohort_publish_rerates_its_members_only() -> None:
    p = Pricing()
    p.customer("pilot")
    p.customer("other")
    p.ingest("pilot", T + HOUR_MS, 10)
    p.ingest("other", T + HOUR_MS, 10)
    # The other customer's model has no rate in version 2: checking its usage against it would refuse the publish.
    p.ingest("other", T + HOUR_MS, 7, model="llama")
    other_before = p.billing.kernel.usage("other")
    number = p.draft([rate("tokens", unit("2"), model="gpt-4")])
    result = p.publish(number, T, Cohort(customer_ids=("pilot",)), at_ms=T + 3 * HOUR_MS)
    assert (result.customers_rerated, result.buckets_rerated, result.events_rerated) == (1, 1, 1)
    assert result.rerated_amount_delta_picos == picos("10")
    assert p.charged_by_version("pilot") == {number: picos("20")}
    assert p.billing.kernel.usage("other") == other_before
    assert p.charged_by_version("other") == {1: picos("17")}
    assert p.billing.engine.rate_card("card").version(number).cohort == Cohort(customer_ids=("pilot",))
