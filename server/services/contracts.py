"""ContractService: customers, contracts, overrides and grants."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from decimal import Decimal, InvalidOperation

from tariff.v1 import (
    contracts_pb2,
    contracts_pb2_grpc,
)

from engine import commands as cmd
from engine import credits
from engine.billing import Billing
from engine.contracts import Contract, Customer, Override
from engine.control import DAY_MS, EVENT_MAP_ENTRIES_MAX, TEXT_BYTES_MAX, check_id, check_reference, quoted_id
from engine.customers import OVERRIDES_PER_CONTRACT_MAX, override_id, overrides_full
from engine.errors import EngineError, InvalidArgument
from engine.invoices import CURRENCIES
from engine.ledger import Grant
from engine.money import format_decimal, format_picos
from engine.products import Product
from server import auth, convert
from server.errors import ResourceExhausted, larger_limit, send_limit, too_large, unary
from server.sequencer import Sequencer
from server.services.common import (
    Context,
    SortedKeys,
    _Base,
    _fitted,
    _page,
    actor_of,
    wall_ms,
)


class ContractService(_Base, contracts_pb2_grpc.ContractServiceServicer):
    def __init__(self, billing: Billing, sequencer: Sequencer, clock_ms: Callable[[], int] = wall_ms) -> None:
        super().__init__(billing, sequencer, clock_ms)
        self._customer_ids = SortedKeys()  # ListCustomers' pages

    @unary
    async def CreateCustomer(
        self, request: contracts_pb2.CreateCustomerRequest, context: Context
    ) -> contracts_pb2.Customer:
        command = cmd.CreateCustomer(
            self.clock_ms(),
            actor_of(context),
            request.id,
            _customer_name(request.name),
            _customer_attributes(request.attributes),
            applied_audited=True,
        )
        customer = await self._apply(command, Customer)
        return convert.customer_pb(customer)

    @unary
    async def GetCustomer(self, request: contracts_pb2.GetCustomerRequest, context: Context) -> contracts_pb2.Customer:
        check_reference(request.id, "id", self.engine.state.customers)
        return convert.customer_pb(self.engine.customer(request.id))

    @unary
    async def ListCustomers(
        self, request: contracts_pb2.ListCustomersRequest, context: Context
    ) -> contracts_pb2.ListCustomersResponse:
        customers = self.engine.state.customers
        allowed = auth.allowed_customers()  # a restricted key sees its own only
        ids = self._customer_ids.of(customers) if allowed is None else sorted(c for c in allowed if c in customers)
        page, next_token = _page(ids, request.page_size, request.page_token)
        listed, next_token = _fitted(
            [convert.customer_pb(customers[i]) for i in page], page, next_token, self.page_bytes_max
        )
        return contracts_pb2.ListCustomersResponse(customers=listed, next_page_token=next_token)

    @unary
    async def CreateContract(
        self, request: contracts_pb2.CreateContractRequest, context: Context
    ) -> contracts_pb2.Contract:
        check_reference(request.customer_id, "customer_id", self.engine.state.customers)
        check_reference(request.rate_card_id, "rate_card_id", self.engine.state.rate_cards)
        command = cmd.CreateContract(
            self.clock_ms(),
            actor_of(context),
            request.id,  # empty: the engine names it after the customer and the start (see the proto)
            request.customer_id,
            request.rate_card_id,
            convert.optional_ms(request, "starting_at"),
            convert.optional_ms(request, "ending_before"),
            convert.overage_policy(request.overage_policy),
            convert.decimal_text(request.overage_price, "overage_price"),
            _currency(request.currency),
            applied_audited=True,
            numbered_id_keeps_start=True,
            pricing_unit_shared=True,
        )
        if not self._contract_held(command):
            self._check_new_contract_room(request)
        contract = await self._apply(command, Contract)
        return self._sent_contract(contract.id, f"contract {contract.id!r} was created")

    def _check_answer_room(self, contract_id: str, added_bytes: int, refused: str) -> None:
        """RESOURCE_EXHAUSTED, before anything changes, when a change adding about `added_bytes` to the contract
        would make the answer (the whole contract, its overrides and grants) larger than gRPC sends."""
        size = self._contract_pb(contract_id).ByteSize() + added_bytes + ANSWER_SLACK_BYTES
        if size > send_limit.bytes_max:
            raise too_large(f"{refused}: contract {contract_id!r}", size, larger_limit(size), "would be about")

    def _contract_held(self, command: cmd.CreateContract) -> bool:
        """Whether the contract the command would make is there already (its id, or without one its customer's
        contract from the same start): a retry (or a refusal) that makes nothing, answering the contract as it is,
        which _sent_contract measures exactly; the new contract's estimate would refuse it near the limit."""
        if command.id:
            return command.id in self.engine.state.contracts
        start_ms = command.starting_at_ms
        if start_ms is None:  # the engine's default: the start of the request's UTC day
            start_ms = command.at_ms - command.at_ms % DAY_MS
        return any(k.starting_at_ms == start_ms for k in self.engine.contracts_of(command.customer_id))

    def _check_new_contract_room(self, request: contracts_pb2.CreateContractRequest) -> None:
        """RESOURCE_EXHAUSTED, before the contract is made, when its answer would be larger than gRPC sends: it
        shows every grant of the customer not tied to a contract (granted with customer_id alone)."""
        account = self.engine.state.accounts.get(request.customer_id)
        shared = [g for g in account.grants if not g.contract_id] if account is not None else []
        size = sum(convert.grant_pb(g).ByteSize() + 8 for g in shared) + request.ByteSize() + ANSWER_SLACK_BYTES
        if size > send_limit.bytes_max:
            what = f"the contract was not created: with the {len(shared):,} grants of customer {request.customer_id!r}"
            raise too_large(f"{what} it shows, it", size, larger_limit(size), "would be about")

    def _sent_contract(self, contract_id: str, done: str) -> contracts_pb2.Contract:
        """The contract's message after a change (`done`), or RESOURCE_EXHAUSTED saying the change was made."""
        message = self._contract_pb(contract_id)
        if message.ByteSize() > send_limit.bytes_max:
            raise too_large(f"{done}, but contract {contract_id!r}", message.ByteSize())
        return message

    def _contract_pb(self, contract_id: str) -> contracts_pb2.Contract:
        contract = self.engine.contract(contract_id)
        account = self.engine.state.accounts[contract.customer_id]
        message = convert.contract_pb(contract, [g for g in account.grants if g.contract_id in ("", contract.id)])
        policy = credits.top_up_policy(self.billing, contract.customer_id)
        if policy is not None:
            message.top_up.CopyFrom(_top_up_pb(policy))
        return message

    def _check_top_up_room(self, command: cmd.SetTopUpPolicy) -> None:
        """RESOURCE_EXHAUSTED, before anything changes, when the contract's answer with the command's policy in
        place of the one it shows would be larger than gRPC sends, and larger than it is. Measured exactly, not
        estimated: a retry (the policy it has) answers the contract as it is, which must not be refused while it
        fits. A policy leaving the answer no larger is set even when the contract's grants already took it past
        the limit (its answer then says so): refused, nothing could clear a policy that goes on buying."""
        contract = self.engine.contract(command.contract_id)
        try:
            policy = credits.top_up_as_set(command, contract.currency)
        except EngineError:  # the engine's refusal, as before
            return
        message = self._contract_pb(contract.id)
        size_now = message.ByteSize()
        message.ClearField("top_up")
        if policy is not None:
            message.top_up.CopyFrom(_top_up_pb(policy))
        size = message.ByteSize()
        if size > send_limit.bytes_max and size > size_now:
            what = f"the top-up policy was not set: contract {contract.id!r}"
            raise too_large(what, size, larger_limit(size), "would be")

    @unary
    async def GetContract(self, request: contracts_pb2.GetContractRequest, context: Context) -> contracts_pb2.Contract:
        check_reference(request.id, "id", self.engine.state.contracts)
        return self._contract_pb(request.id)

    @unary
    async def AddOverride(self, request: contracts_pb2.AddOverrideRequest, context: Context) -> contracts_pb2.Contract:
        check_reference(request.contract_id, "contract_id", self.engine.state.contracts)
        check_reference(request.override.product_id, "override.product_id", self.engine.state.products)
        at_ms = self.clock_ms()
        override = convert.override(request.override)
        product = self.engine.state.products.get(override.product_id)
        if product is not None:  # unknown: the engine refuses it as "unknown product"
            _check_override_match(override, product)
        command = cmd.AddOverride(
            at_ms,
            actor_of(context),
            request.contract_id,
            override,
            overrides_bounded=True,
            multiplier_reduced=True,
            applied_audited=True,
        )
        contract_now = self.engine.state.contracts.get(request.contract_id)
        if contract_now is not None:  # unknown: the engine refuses it as NOT_FOUND
            _check_room_for_override(contract_now, command)
            # A retry (an override the contract holds) changes nothing: its answer is the contract as it is, which
            # _sent_contract measures exactly; the estimate's slack would refuse it near the limit.
            if override_id(command) not in {o.id for o in contract_now.overrides}:
                self._check_answer_room(contract_now.id, request.override.ByteSize(), "the override was not added")
        contract = await self._apply(command, Contract)
        return self._sent_contract(contract.id, f"override {override_id(command)!r} was added")

    @unary
    async def EndContract(self, request: contracts_pb2.EndContractRequest, context: Context) -> contracts_pb2.Contract:
        """Sets (or moves) the contract's end (contracts.proto EndContract); the engine holds the rules that read
        the contract, and the kernel's usage (engine/customers.py `_end_contract`)."""
        check_reference(request.contract_id, "contract_id", self.engine.state.contracts)
        end_ms = convert.optional_ms(request, "ending_before")
        if end_ms is None:
            raise InvalidArgument.field("ending_before", "is required: the contract's new end")
        command = cmd.EndContract(self.clock_ms(), actor_of(context), request.contract_id, end_ms)
        contract = await self._apply(command, Contract)
        return self._sent_contract(contract.id, f"contract {contract.id!r} was ended")

    @unary
    async def EndOverride(self, request: contracts_pb2.EndOverrideRequest, context: Context) -> contracts_pb2.Contract:
        """Sets the override's end, or moves it earlier (contracts.proto EndOverride); the engine holds the rules that
        read the override, and the kernel's usage (engine/customers.py `_end_override`)."""
        check_reference(request.contract_id, "contract_id", self.engine.state.contracts)
        contract_now = self.engine.state.contracts.get(request.contract_id)
        held_ids = {o.id for o in contract_now.overrides} if contract_now is not None else set()
        check_reference(request.override_id, "override_id", held_ids)
        end_ms = convert.optional_ms(request, "ending_before")
        if end_ms is None:
            raise InvalidArgument.field("ending_before", "is required: the override's new end")
        command = cmd.EndOverride(self.clock_ms(), actor_of(context), request.contract_id, request.override_id, end_ms)
        contract = await self._apply(command, Contract)
        return self._sent_contract(contract.id, f"override {request.override_id!r} was ended")

    @unary
    async def ExpireGrant(self, request: contracts_pb2.ExpireGrantRequest, context: Context) -> contracts_pb2.Grant:
        """Moves the grant's expiry earlier, or sets one (contracts.proto ExpireGrant); the engine holds the rules
        that read the grant, and the kernel's usage (engine/grants.py `_expire_grant`)."""
        check_reference(request.customer_id, "customer_id", self.engine.state.customers)
        _check_grant_id(request.grant_id)
        expires_at_ms = convert.optional_ms(request, "expires_at")
        if expires_at_ms is None:
            raise InvalidArgument.field("expires_at", "is required: the grant's new expiry")
        command = cmd.ExpireGrant(
            self.clock_ms(),
            actor_of(context),
            request.customer_id,
            request.grant_id,
            expires_at_ms,
        )
        grant = await self._apply(command, Grant)
        return convert.grant_pb(grant)

    @unary
    async def GrantCredits(self, request: contracts_pb2.GrantCreditsRequest, context: Context) -> contracts_pb2.Grant:
        grant_of = request.grant
        if grant_of.customer_id:
            check_reference(grant_of.customer_id, "grant.customer_id", self.engine.state.customers)
        if grant_of.contract_id:
            check_reference(grant_of.contract_id, "grant.contract_id", self.engine.state.contracts)
        for index, product_id in enumerate(grant_of.applicable_product_ids):
            check_reference(product_id, f"grant.applicable_product_ids[{index}]", self.engine.state.products)
        command = convert.grant_credits(request, self.clock_ms(), actor_of(context))
        grant = await self._apply(command, Grant)
        return convert.grant_pb(grant)

    @unary
    async def SetTopUpPolicy(
        self, request: contracts_pb2.SetTopUpPolicyRequest, context: Context
    ) -> contracts_pb2.Contract:
        """Sets the automatic top-up of the contract's customer (one policy per customer); a request without
        top_up clears it. Bad fields are INVALID_ARGUMENT naming them, nothing changed."""
        check_reference(request.contract_id, "contract_id", self.engine.state.contracts)
        top_up = request.top_up
        if top_up.max_per_period > TOP_UPS_PER_PERIOD_MAX:
            raise InvalidArgument.field(
                "top_up.max_per_period",
                f"is at most {TOP_UPS_PER_PERIOD_MAX:,}, not {top_up.max_per_period:,}: each purchase is a grant the "
                "balance lists",
            )
        command = cmd.SetTopUpPolicy(
            self.clock_ms(),
            actor_of(context),
            request.contract_id,
            _threshold_text(request),
            convert.decimal_text(top_up.recharge_to, "top_up.recharge_to"),
            convert.decimal_text(top_up.price_per_credit, "top_up.price_per_credit"),
            top_up.max_per_period if request.HasField("top_up") else 0,
            price_in_contract_currency=True,
        )
        _check_top_up_currency(request, self.engine.contract(request.contract_id))
        self._check_top_up_room(command)
        contract = await self._apply(command, Contract)
        done = "the top-up policy was set" if request.HasField("top_up") else "the top-up policy was cleared"
        return self._sent_contract(contract.id, done)


# What a change's answer may hold beyond what the request adds to it: a generated id, the fields' tags, a policy.
ANSWER_SLACK_BYTES = 1024
# Purchases a top-up policy may make in one billing period: each is a grant the balance lists for good. Checked
# where the request enters: policies journaled with more replay as they were.
TOP_UPS_PER_PERIOD_MAX = 1_000


def _top_up_pb(policy: credits.TopUp) -> contracts_pb2.TopUpPolicy:
    return contracts_pb2.TopUpPolicy(
        threshold=format_picos(policy.threshold),
        recharge_to=format_picos(policy.recharge_to),
        price_per_credit=format_decimal(policy.price_per_credit),
        max_per_period=policy.max_per_period,
        currency=policy.currency,
    )


def _customer_name(name: str) -> str:
    """A customer's name once it is at most TEXT_BYTES_MAX bytes of UTF-8, as an attribute's value, and holds no
    character convert.check_shown_text refuses (invoices, the audit log and the CLI show it as it is);
    INVALID_ARGUMENT naming `name` otherwise. Unbounded, a few names of megabytes made a page of ListCustomers larger
    than any client reads. Checked here, not in the engine, so that customers journaled before the checks replay as
    they were."""
    size = len(name.encode())
    if size > TEXT_BYTES_MAX:
        raise InvalidArgument.field("name", f"must be at most {TEXT_BYTES_MAX} bytes (UTF-8), not {size}")
    return convert.check_shown_text(name, "name", "a name")


def _customer_attributes(attributes: Mapping[str, str]) -> dict[str, str]:
    """A customer's attributes once no key or value holds a character convert.check_shown_text refuses;
    INVALID_ARGUMENT naming `attributes[key]` otherwise. Their count and sizes are the engine's to check
    (check_text_map): more entries than it takes are left to it, unread here. Checked here, not in the engine, so that
    customers journaled before the check replay as they were."""
    if len(attributes) <= EVENT_MAP_ENTRIES_MAX:
        convert.check_shown_entries(attributes, "attributes", "attribute")
    return dict(attributes)


def _currency(code: str) -> str:
    """A contract's currency once it is an ISO 4217 code of the server's currency table (engine/invoices.py
    CURRENCIES: three capital letters, a minor unit), or empty (USD). INVALID_ARGUMENT naming `currency` otherwise:
    "usd" and "USD" would be two currencies to the revenue report (which refuses a customer with two), "US Dollar"
    none, and "XYZ" or "XXX" would reach invoices rounded to a guessed minor unit. Checked here, not in the engine,
    so that contracts journaled before the check replay as they were."""
    if code and code not in CURRENCIES:
        raise InvalidArgument.field(
            "currency",
            f'{quoted_id(code)} must be an ISO 4217 currency code that has a minor unit ("USD", "JPY"; not "usd", "XXX")',
        )
    return code


def _check_override_match(override: Override, product: Product) -> None:
    """INVALID_ARGUMENT naming `override.match.<key>` for a match entry on a key that is not one of the product's
    pricing dimensions, as a rate's is (overrides match an event's pricing dimensions only), or of a value longer
    than an event's dimension value may be: such an override would never price anything; or of a value holding a
    character convert.check_shown_text refuses. A "*" entry is left out of the match anyway. Checked here, not in
    the engine, so that overrides journaled before the check replay as they were."""
    for key, value in override.match.items():  # normalized: no "*" entries
        if key not in product.pricing_dimensions:
            raise InvalidArgument.field(
                f"override.match.{key}",
                f"{key!r} is not a pricing dimension of {product.id!r} ({list(product.pricing_dimensions)})",
            )
        size = len(value.encode())
        if size > TEXT_BYTES_MAX:  # an event's longer value is INVALID_EVENT (kernel decode.rs): it never matches
            raise InvalidArgument.field(
                f"override.match.{key}",
                f"values are at most {TEXT_BYTES_MAX} bytes (an event's dimension value is), not {size}",
            )
        # GetContract and the CLI show it: a key is one of the product's pricing dimensions, checked as it was made.
        convert.check_shown_text(value, f"override.match.{key}", "a match value")


def _check_room_for_override(contract: Contract, command: cmd.AddOverride) -> None:
    """RESOURCE_EXHAUSTED for a new override on a contract that holds OVERRIDES_PER_CONTRACT_MAX; a retry of one it
    holds (same id, or same content when unnamed) goes on, and answers as a retry does."""
    if len(contract.overrides) < OVERRIDES_PER_CONTRACT_MAX:
        return
    if override_id(command) in {o.id for o in contract.overrides}:
        return
    raise ResourceExhausted(overrides_full(contract))


def _check_top_up_currency(request: contracts_pb2.SetTopUpPolicyRequest, contract: Contract) -> None:
    """INVALID_ARGUMENT naming top_up.currency when the request names a currency other than the contract's: the
    policy's price is in the currency of the contract it is set through, so a policy read from a contract in
    another currency and sent through this one would be repriced (0.9 USD as 0.9 JPY). Checked here, before any
    command is made: the command does not carry it."""
    named = request.top_up.currency
    if named and named != contract.currency:
        raise InvalidArgument.field(
            "top_up.currency",
            f"must be the currency of contract {quoted_id(contract.id)} ({contract.currency}), not {quoted_id(named)}"
            " (the price is in the currency of the contract the policy is set through)",
        )


def _threshold_text(request: contracts_pb2.SetTopUpPolicyRequest) -> str:
    """The request's top_up.threshold once it is a decimal a policy can use. Checked here, not in the engine, so
    that journaled commands replay as they were applied: the engine reads a policy without threshold,
    recharge_to and max_per_period as a clearing, but only a request without top_up may clear (contracts.proto),
    so a present one without threshold (empty, or only a price) is refused; and available credit is never below
    0, so a threshold of 0 would never buy."""
    text = convert.decimal_text(request.top_up.threshold, "top_up.threshold")
    if not request.HasField("top_up"):
        return text
    if not text:
        raise InvalidArgument.field("top_up.threshold", "is required (a request without top_up clears the policy)")
    try:
        zero = Decimal(text).is_zero()
    except InvalidOperation:  # an exponent past what Decimal holds: the engine refuses it as no decimal
        return text
    if zero:
        raise InvalidArgument.field(
            "top_up.threshold", "must be above 0: available credit is never below 0, so the policy would never buy"
        )
    return text


# The ids of the grants the server makes (credits.rs: top-up-<period start ms>-<n>, rollover-<grant>-<period end
# ms>, each with '+' added while taken): longer than a chosen id may be (a rollover's holds its grant's whole id).
_MADE_GRANT_ID = re.compile(r"(top-up|rollover)-[A-Za-z0-9._:@+-]{1,240}")


def _check_grant_id(grant_id: str) -> None:
    """ExpireGrant's grant_id: required, and an id by the rule of chosen ids or one the server makes."""
    if not grant_id:
        raise InvalidArgument.field("grant_id", "is required: the grant to expire")
    if _MADE_GRANT_ID.fullmatch(grant_id) is None:
        check_id(grant_id, "grant_id")
