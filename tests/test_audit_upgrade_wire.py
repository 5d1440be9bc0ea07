"""An upgrade audit over the wire: a data directory written by an earlier release's server (commit 740b286, its
snapshot and journal records after it: tests/fixtures/make_datadir_upgrade1.py says what it holds) is read by this
release's server with the same state (README "State after a restart is the state the journal implies": journaled
commands keep their server-set fields, the kernel's snapshot formats are versioned, every replayed batch gives the
digest journaled with it). Every read that release answered (tests/fixtures/datadir-upgrade1.json: the catalogue,
versions, diffs, a simulation, the audit log, contracts, balances, drafts, final invoices, explanations page by
page, revenue reports, alert rules and the alerts fired) is answered the same, but for what the docs announce
changed since; then the upgraded server takes more usage and closes two periods, with amounts computed by hand, and
answers the same after a kill -9."""

from __future__ import annotations

import importlib.util
import json
import tarfile
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest
from tariff.v1 import contracts_pb2, invoices_pb2, pricing_pb2, usage_pb2

from tests.audit_fixtures import serving
from tests.serverproc import ServerProcess

FIXTURES = Path(__file__).resolve().parent / "fixtures"


def _maker() -> ModuleType:
    """The fixture's maker, whose `reads` the fixture's answers were recorded by (it imports the client only)."""
    spec = importlib.util.spec_from_file_location("make_datadir_upgrade1", FIXTURES / "make_datadir_upgrade1.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


MAKER = _maker()
# A balance's current period is the wall clock's, and its as_of_seq counts the AdvanceClock records the server's
# clock adds as it forgets ended holds: neither is the fixture's state. Its grants and credit are compared, and the
# fixture's periods through their drafts and invoices.
NOW_FIELDS = ("as_of_seq", "period_charges", "overage_amount", "overage_due", "period_start", "period_end")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root: Path = tmp_path_factory.mktemp("audit-upgrade")
    with tarfile.open(FIXTURES / "datadir-upgrade1.tar.gz") as archive:
        archive.extractall(root / "data", filter="data")
    yield from serving(ServerProcess(root / "data"), lambda _client: None)


def comparable(reads: dict[str, Any]) -> dict[str, Any]:
    """The reads without what depends on the wall clock (NOW_FIELDS of balances)."""
    out = dict(reads)
    for name, value in reads.items():
        if name.startswith("balance "):
            out[name] = {key: field for key, field in value.items() if key not in NOW_FIELDS}
    return out


def spent_before(draft: dict[str, Any]) -> set[str]:
    """The grants a draft leaves out since c00e6aa (invoices.proto Invoice.grant_balances, every draft's rule): spent
    whole (granted = drawn, nothing remaining or expired) and not touched by the period: no line drew on it and it
    was not bought in it."""
    drew = {credit["grant_id"] for line in draft.get("lines", ()) for credit in line.get("credits_applied", ())}
    bought = f"top-up-{int(MAKER.at(draft['period_start'][:19]))}-"
    return {
        grant["grant_id"]
        for grant in draft.get("grant_balances", ())
        if grant["granted"] == grant.get("drawn", "0")
        and grant.get("remaining", "0") == "0"
        and grant.get("expired", "0") == "0"
        and grant["grant_id"] not in drew
        and not grant["grant_id"].startswith(bought)
    }


def announced(expected: dict[str, Any]) -> dict[str, Any]:
    """The earlier release's answers as the docs say this release answers them: a balance carries its contract's
    currency (Balance.currency), and a draft's grant_balances leave out the grants spent before its period (final
    invoices closed before the rule keep theirs)."""
    out = dict(expected)
    for name, value in expected.items():
        if name.startswith("balance "):
            out[name] = {**value, "currency": _currency_of(expected, value["customer_id"])}
        if name.startswith("preview ") and isinstance(value, dict) and "grant_balances" in value:
            left_out = spent_before(value)
            kept = [grant for grant in value.get("grant_balances", ()) if grant["grant_id"] not in left_out]
            out[name] = {**value, "grant_balances": kept}
    return out


def _currency_of(expected: dict[str, Any], customer_id: str) -> str:
    """Balance.currency, which came after the fixture was recorded: that of the customer's contract (each customer
    of the fixture has one)."""
    currencies = [
        value["currency"]
        for name, value in expected.items()
        if name.startswith("contract ") and value["customer_id"] == customer_id
    ]
    assert len(currencies) == 1, (customer_id, currencies)
    currency: str = currencies[0]
    return currency


def test_the_earlier_release_s_data_directory_reads_the_same(server: ServerProcess) -> None:
    """About 4,750 values over 97 reads. The changes the docs announce: each balance carries its contract's currency
    (Balance.currency, which the earlier release did not have); the December drafts of acme and beta leave out
    acme-promo, acme-big and beta-pre, spent whole in earlier periods (the earlier release listed them)."""
    expected = json.loads((FIXTURES / "datadir-upgrade1.json").read_text())
    drafts = {
        name: value for name, value in expected.items() if name.startswith("preview ") and isinstance(value, dict)
    }
    assert {name: sorted(spent_before(draft)) for name, draft in drafts.items() if spent_before(draft)} == {
        "preview acme 1796083200000": ["acme-big", "acme-promo"],
        "preview beta 1796083200000": ["beta-pre"],
    }
    with server.client() as client:
        got = MAKER.reads(client)
    assert comparable(got) == comparable(announced(expected))


def acme_pre_expiry_ms() -> int:
    """acme-pre's expiry as the fixture's run set it (a retry of its grant sends it again)."""
    expected = json.loads((FIXTURES / "datadir-upgrade1.json").read_text())
    grant = next(g for g in expected["contract acme"]["grants"] if g["id"] == "acme-pre")
    return round(datetime.fromisoformat(grant["expires_at"]).timestamp() * 1000)


class _Recorder:
    """Stands for a client's service stubs: records each call's method name and request, answers nothing."""

    def __init__(self, calls: list[tuple[str, Any]]) -> None:
        self.calls = calls

    def __getattr__(self, name: str) -> Any:
        return lambda request, **_: self.calls.append((name, request))


def catalogue_requests() -> list[tuple[str, Any]]:
    """The catalogue's requests as the fixture's maker sent them to the earlier release."""
    calls: list[tuple[str, Any]] = []
    MAKER.catalogue(SimpleNamespace(pricing=_Recorder(calls)))
    return calls


def test_retries_of_the_earlier_release_s_keyed_calls_answer_as_the_first(server: ServerProcess) -> None:
    """README "Every state-changing call is safe to retry ... also after a restart": the catalogue's keyed calls
    (CreateProduct by id, CreateRateCard by id, CreateDraftVersion by request_id, PublishVersion by version and
    effective_from) and the customers' (customers, contracts, overrides, grants, alert rules), sent again as the
    earlier release took them, answer with what the first call made and write nothing (no audit entry, no record).
    Its snapshot holds the fingerprints that release computed, before CreateProduct had `empty_count_missing` and
    CreateDraftVersion `drafts_bounded`."""
    keyed = [
        (name, request)
        for name, request in catalogue_requests()
        if name != "CreateDraftVersion" or request.request_id  # a draft without one is not safe to retry
    ]
    names = ["CreateProduct"] * 4 + ["CreateRateCard"] * 2
    assert [name for name, _ in keyed] == [*names, "CreateDraftVersion", "PublishVersion", "PublishVersion"]
    with server.client() as client:
        audit = client.pricing.GetAuditLog(pricing_pb2.GetAuditLogRequest(page_size=1000)).entries
        seq = client.get_balance("acme").as_of_seq
        answers = [MAKER.plain(getattr(client.pricing, name)(request)) for name, request in keyed]
        assert answers[0]["id"] == "tokens" and answers[6]["version"] == 1
        MAKER.customers(client, acme_pre_expiry_ms())
        assert client.pricing.GetAuditLog(pricing_pb2.GetAuditLogRequest(page_size=1000)).entries == audit
        assert client.get_balance("acme").as_of_seq == seq


def test_an_earlier_release_s_top_up_policy_set_again_takes_the_contract_s_currency(server: ServerProcess) -> None:
    """README "Automatic top-up": a policy set by an earlier release has no currency (it buys in every contract's
    periods); the same SetTopUpPolicy sent again (the fixture's, through beta's EUR contract) is not a retry of it
    but sets the policy in EUR: one audit entry, and every contract of beta answers currency EUR."""
    with server.client() as client:
        contract = client.contracts.GetContract(contracts_pb2.GetContractRequest(id="beta-c"))
        assert (contract.top_up.price_per_credit, contract.top_up.currency) == ("0.5", "")
        entries = len(client.pricing.GetAuditLog(pricing_pb2.GetAuditLogRequest(page_size=1000)).entries)
        policy = contracts_pb2.TopUpPolicy(threshold="15", recharge_to="50", price_per_credit="0.5", max_per_period=2)
        request = contracts_pb2.SetTopUpPolicyRequest(contract_id="beta-c", top_up=policy)
        assert client.contracts.SetTopUpPolicy(request).top_up.currency == "EUR"
        assert client.contracts.SetTopUpPolicy(request).top_up.currency == "EUR"  # now a retry: nothing more
        audit = client.pricing.GetAuditLog(pricing_pb2.GetAuditLogRequest(page_size=1000)).entries
        assert [(e.action, e.target) for e in audit[entries:]] == [("SetTopUpPolicy", "contract/beta-c/top_up")]


def test_the_upgraded_server_goes_on_from_the_earlier_state(server: ServerProcess) -> None:
    """`late` (ALLOW, overage at 1 USD; card version 1 prices model a at base x markup = 0.02 x 1.5 = 0.03 per 1,000
    tokens, in force again from Nov 10 as the rollback's version 4; calls at 2 per started 100). October holds 2,000
    tokens: 0.06. November held 4,000 (0.12); 1,000 more tokens and 150 calls (one event sent twice: a duplicate)
    make 5,000 tokens, 0.15, and 2 packages, 4: 4.15 due. acme's December draft (18.75, all drawn on acme-pre, which
    has expired since) takes 500 tokens of model a at 0.03 per 1,000: 0.015 of overage at 0.9 USD, 0.0135, due
    0.01. Closed, both invoices, and every read, are the same after a kill -9 (old and new records replayed)."""
    expected = json.loads((FIXTURES / "datadir-upgrade1.json").read_text())
    nov, dec = MAKER.NOV, MAKER.DEC
    events = [
        MAKER.event("l-3", "late", "llm", nov + 21 * MAKER.DAY_MS, {"tokens": 1000}, model="a"),
        MAKER.event("l-4", "late", "api", nov + 22 * MAKER.DAY_MS, {"n": 150}),
        MAKER.event("a-dec-2", "acme", "llm", dec + 5 * MAKER.DAY_MS, {"tokens": 500}, model="a"),
    ]
    with server.client() as client:
        ack = client.usage.IngestUsageBatch(usage_pb2.UsageBatch(batch_id="after", events=[*events, events[0]]))
        assert (ack.accepted, ack.duplicates, list(ack.rejected)) == (3, 1, [])
        closed = [
            client.invoices.ClosePeriod(
                invoices_pb2.ClosePeriodRequest(customer_id="late", period_start=MAKER.stamp(start))
            )
            for start in (MAKER.OCT, nov)
        ]
        assert [(i.status, i.subtotal, i.overage_due, i.total_due) for i in closed] == [
            (invoices_pb2.INVOICE_FINAL, "0.06", "0.06", "0.06"),
            (invoices_pb2.INVOICE_FINAL, "4.15", "4.15", "4.15"),
        ]
        assert [(line.line_id, line.quantity, line.amount) for line in closed[1].lines] == [
            ("calls", "150", "4"),
            ("tokens;model=a", "5000", "0.15"),
        ]
        december = MAKER.plain(
            client.invoices.PreviewInvoice(
                invoices_pb2.PreviewInvoiceRequest(customer_id="acme", period_start=MAKER.stamp(dec))
            )
        )
        before = expected["preview acme 1796083200000"]
        assert (before["subtotal"], before["overage_amount"], before["total_due"]) == ("18.75", "0", "0.00")
        assert (december["subtotal"], december["overage_amount"], december["total_due"]) == ("18.765", "0.015", "0.01")
        answered = comparable(MAKER.reads(client))
    server.kill9()
    server.start()
    with server.client() as client:
        assert comparable(MAKER.reads(client)) == answered
