"""The control plane's stored state and the rules every admin command shares: ids, retry keys, lookups.

`BillingState` is what must survive a restart (a msgspec Struct, so a snapshot is one encode): catalogue,
rate cards and versions, contracts, grants as granted, audit log (mostly sealed in compressed chunks) and retry
keys. `ControlPlane` is what the command modules (catalogue, versions, customers, grants, audit) build on;
engine/state.py ties them together.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import re
from collections.abc import Callable, Container, Iterable, Iterator
from datetime import UTC, datetime
from typing import Any, TypeVar

import msgspec

from engine import commands as cmd
from engine._kernel import period_containing
from engine.alerts import AlertBook
from engine.contracts import Contract, Customer
from engine.errors import InvalidArgument, NotFound, Repeated
from engine.invoices import Invoice
from engine.ledger import Grant
from engine.money import PICOS_PER_UNIT, format_decimal, format_picos
from engine.pending import PendingRerating
from engine.products import Product
from engine.ratecard import HOUR_MS, RateCard

DAY_MS = 24 * 3_600_000
ID_CHARS_MAX = 128
# The id rule, held to the whole text (is_id: fullmatch). Its `$` also matches before a final "\n": re.match with
# it, as releases before the whole-text check used it, let "probe\n" through (check_applied_id).
ID_PATTERN = re.compile(rf"^[A-Za-z0-9._:@-]{{1,{ID_CHARS_MAX}}}$")
ID_RULE_WHY = "must be 1-128 characters of letters, digits and ._:@-"
TEXT_BYTES_MAX = 256
TEXT_CHARS_SAFE = TEXT_BYTES_MAX // 4  # UTF-8 takes at most 4 bytes a character
EVENT_MAP_ENTRIES_MAX = 64
# A snapshot part holds at most this many entries of one of the state's dicts or lists: at 10,000 customers
# a part of accounts (the widest entries) encodes in about 0.3 ms, so a caller pausing between parts never
# holds its thread for long (msgspec holds the GIL for a whole encode call).
SNAPSHOT_PART_ENTRIES = 256
# Sealed audit chunks are each a few KB of base64: a part holds fewer of them.
SNAPSHOT_PART_AUDIT_CHUNKS = 16


class AuditEntry(msgspec.Struct, frozen=True, array_like=True, gc=False):
    seq: int
    at_ms: int
    actor: str
    action: str
    target: str
    diff: str  # JSON of the command's fields


class AuditChunk(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """Consecutive audit entries sealed into two zlib streams (engine/audit.py writes and reads them): kept as
    objects, an entry takes about 1.2 KiB of heap; sealed, tens of bytes. The targets have a stream of their
    own so that a read filtering by target skips a chunk without decompressing its entries."""

    first_seq: int
    last_seq: int
    targets: bytes  # the entries' targets, joined by newlines (no target holds one: ids cannot)
    rows: bytes  # msgpack: [seq, at_ms, actor, action, diff] per entry


class Account(msgspec.Struct, gc=False):
    """One customer's grants as granted (their balances are the kernel's) and its closed periods."""

    customer_id: str
    # A tuple, not a list: a tuple of untracked structs drops out of the garbage collector's view after its first
    # collection, where a list stays tracked for ever, one per customer in every full collection (which holds
    # the event loop for the objects the server did not freeze at start: server/app.py).
    grants: tuple[Grant, ...] = ()
    closed_periods: dict[int, None] = {}  # a dict, not a set: snapshot bytes keep one order
    invoices: dict[int, str] = {}  # period start -> the number of its final invoice


# Shared by every account without a closed period (most): msgspec gives each Account its own empty dicts, 64 bytes
# each. Never changed in place: closing a period gives the account new dicts (engine/invoicing.py _finalise).
NO_CLOSED_PERIODS: dict[int, None] = {}
NO_INVOICES: dict[int, str] = {}


# Times and amounts repeat: the commands of a bulk load share their millisecond, contracts start on the first of
# a month, grants come in a few sizes; and an int past 2^30 is 32 bytes (a grant amount in picos, 36 to 48). One
# object per value among the recent distinct ones: the whole table is forgotten when full, so it stays small and
# a value still in use is shared again from its next use.
SHARED_INTS_MAX = 4096
_shared_ints: dict[int, int] = {}


def shared_int(value: int) -> int:
    """`value`, as the object already held for an equal value if there is one."""
    held = _shared_ints.setdefault(value, value)
    if len(_shared_ints) > SHARED_INTS_MAX:
        _shared_ints.clear()
    return held


def new_account(customer_id: str) -> Account:
    return Account(customer_id, (), NO_CLOSED_PERIODS, NO_INVOICES)


def share_empty_dicts(account: Account) -> None:
    """An account decoded from a snapshot holds its own empty dicts: the shared ones instead."""
    if not account.closed_periods:
        account.closed_periods = NO_CLOSED_PERIODS
    if not account.invoices:
        account.invoices = NO_INVOICES


class RequestMark(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """What made an idempotency key's first call: its fingerprint, and the draft version it created (if any)."""

    fingerprint: bytes
    version: int = 0


class BillingState(msgspec.Struct):
    last_seq: int = 0
    customers: dict[str, Customer] = {}
    products: dict[str, Product] = {}
    rate_cards: dict[str, RateCard] = {}
    contracts: dict[str, Contract] = {}
    accounts: dict[str, Account] = {}
    audit: list[AuditEntry] = []  # the log's open tail, after audit_chunks (before them: the whole log)
    grants_created: int = 0
    # Idempotency key ("grant/g-1", "rate_card/gpt/draft/<request_id>", ...) -> the request that used it first:
    # a retry of that same request is answered as the first call was, and changes nothing.
    requests: dict[str, RequestMark] = {}
    audit_chunks: list[AuditChunk] = []  # the log's sealed entries, oldest first
    alerts: AlertBook = msgspec.field(default_factory=AlertBook)  # alert rules and fired alerts (engine/alerts.py)
    invoices: dict[str, Invoice] = {}  # final invoices by number
    invoices_created: int = 0  # the last invoice number's serial
    rerating: PendingRerating | None = None  # a publish's re-rating still running online (engine/pending.py)
    # Customer -> the currency of the contract its top-up policy was set through (a SetTopUpPolicy with
    # price_in_contract_currency): the policy buys only in periods of contracts in it (engine/tables.py). No entry:
    # no policy, or one set by a record of an earlier release, which buys in every contract's periods, as then.
    # Kept here, not on each account, so that customers without such a policy cost nothing.
    top_up_currencies: dict[str, str] = {}


_json = msgspec.json.Encoder()


def encode_state_parts(state: BillingState, entries_per_part: int = SNAPSHOT_PART_ENTRIES) -> Iterator[bytes]:
    """The JSON of `state`, byte for byte `msgspec.json.encode(state)`, in parts of at most `entries_per_part`
    entries of any one dict or list, so that the caller may pause between parts (a snapshot on the event loop)."""
    yield from _struct_parts(state, entries_per_part)


def _struct_parts(value: msgspec.Struct, entries_per_part: int) -> Iterator[bytes]:
    """A struct's JSON in parts; a struct field (the alert book) is split the same way, its log and marks too."""
    yield b"{"
    for index, field in enumerate(msgspec.structs.fields(type(value))):
        yield (b"," if index else b"") + _json.encode(field.encode_name) + b":"
        item = getattr(value, field.name)
        size = min(entries_per_part, SNAPSHOT_PART_AUDIT_CHUNKS) if field.name == "audit_chunks" else entries_per_part
        if isinstance(item, dict) and len(item) > size:
            yield from _dict_parts(item, size)
        elif isinstance(item, list) and len(item) > size:
            yield from _list_parts(item, size)
        elif isinstance(item, AlertBook | PendingRerating):
            yield from _struct_parts(item, entries_per_part)
        else:
            yield _json.encode(item)
    yield b"}"


def _dict_parts(value: dict[Any, Any], size: int) -> Iterator[bytes]:
    entries = iter(value.items())
    separator = b"{"
    while chunk := dict(itertools.islice(entries, size)):
        yield separator + _json.encode(chunk)[1:-1]  # the chunk without its own braces
        separator = b","
    yield b"}"


def _list_parts(value: list[Any], size: int) -> Iterator[bytes]:
    for start in range(0, len(value), size):
        yield (b"[" if start == 0 else b",") + _json.encode(value[start : start + size])[1:-1]
    yield b"]"


def is_id(text: str) -> bool:
    """Whether the whole of `text` follows the id rule (as engine/kernel/src/account.rs is_id): a trailing
    newline breaks it, as any character outside the rule does."""
    return ID_PATTERN.fullmatch(text) is not None


def check_id(value: str, field_path: str) -> None:
    """The one rule for every id a client chooses (documented in the proto comments): 1-128 characters of
    ASCII letters, digits and . _ : @ -, over the whole text. Checked where a request enters the server
    (server/convert.py check_chosen_ids, check_reference), before anything is journaled."""
    if not value:
        raise InvalidArgument.field(field_path, "is required")
    if not is_id(value):
        raise InvalidArgument.field(field_path, f"{quoted_id(value)} {ID_RULE_WHY}")


def check_applied_id(value: str, field_path: str) -> None:
    """The id rule as a command checks it when it applies, at replay too: as check_id, but an id ending in one
    "\n" passes (re.match with ID_PATTERN, whose `$` matches before a final newline). Releases before the
    whole-text rule checked ids only so, and journaled commands holding such ids ("probe\n"); they must replay as
    they applied. No live command brings one here: the server refuses every such id where the request enters,
    before the command is submitted (server/convert.py check_chosen_ids, from server/services/common.py _apply),
    naming the same field this names."""
    if not value:
        raise InvalidArgument.field(field_path, "is required")
    if not ID_PATTERN.match(value):
        raise InvalidArgument.field(field_path, f"{quoted_id(value)} {ID_RULE_WHY}")


def quoted_id(value: str) -> str:
    """`value` quoted for a message, cut to ID_CHARS_MAX characters ("…" after the quote when cut), as the kernel
    quotes a customer_id (engine/kernel/src/decode.rs py_repr_cut): an answer quoting ids stays bounded in bytes."""
    if len(value) <= ID_CHARS_MAX:
        return repr(value)
    return f"{value[:ID_CHARS_MAX]!r}…"


def entry_name(key: str) -> str:
    """A map entry named in a field path by its key, whole or cut to ID_CHARS_MAX characters with "…": bounded as
    `quoted_id` is, and never naming, cut without a mark, an entry the request does not hold."""
    return key if len(key) <= ID_CHARS_MAX else key[:ID_CHARS_MAX] + "…"


def check_reference(value: str, field_path: str, known: Container[str]) -> None:
    """An id a request names to find a record by: INVALID_ARGUMENT naming `field_path` when it is empty or breaks
    the id rule. An id `known` holds is never re-checked (a record stored by an earlier release answers to its
    id as it did); a well-formed unknown one passes, for the lookup to answer NOT_FOUND naming it."""
    if value not in known:
        check_id(value, field_path)


_Record = TypeVar("_Record", Customer, Contract, Grant)
_fingerprint_encoder = msgspec.msgpack.Encoder(order="deterministic")


def fingerprint(command: cmd.AdminCommand) -> bytes:
    """What a retry must repeat to be the same request: every field but the time and the caller."""
    unasked = {name: False for name in cmd.SERVER_SET_FIELDS if name in command.__struct_fields__}
    command = msgspec.structs.replace(command, at_ms=0, actor="", **unasked)
    canonical = _fingerprint_encoder.encode(command)
    return hashlib.blake2b(canonical, digest_size=16).digest()


def same_request(held: bytes, command: cmd.AdminCommand) -> bool:
    """Whether `held`, a fingerprint kept under a key, is `command`'s: as `fingerprint` computes it, or as a release
    before the command's server-set fields computed it. A command without omit_defaults encodes those fields, False
    included, so a release that had not added them fingerprinted the same request without them; the fingerprints
    its snapshot keeps (CreateProduct before `empty_count_missing`, CreateDraftVersion before `drafts_bounded`) are
    the same requests."""
    return held == fingerprint(command) or held == _fingerprint_without_server_set(command)


def _fingerprint_without_server_set(command: cmd.AdminCommand) -> bytes:
    unasked = [name for name in cmd.SERVER_SET_FIELDS if name in command.__struct_fields__]
    if not unasked or command.__struct_config__.omit_defaults:
        return fingerprint(command)  # the fields, False, are left out already
    fields = {name: getattr(command, name) for name in command.__struct_fields__ if name not in unasked}
    earlier = _without_fields(type(command), tuple(unasked))(**{**fields, "at_ms": 0, "actor": ""})
    return hashlib.blake2b(_fingerprint_encoder.encode(earlier), digest_size=16).digest()


@functools.cache
def _without_fields(kind: type[msgspec.Struct], left_out: tuple[str, ...]) -> type[msgspec.Struct]:
    """`kind` as a release before the fields `left_out` defined it: the same tag and fields, in the same order."""
    config = kind.__struct_config__
    fields = [
        (field.name, field.type) if field.required else (field.name, field.type, field.default)
        for field in msgspec.structs.fields(kind)
        if field.name not in left_out
    ]
    return msgspec.defstruct(kind.__name__, fields, tag=config.tag, tag_field=config.tag_field, frozen=True)


class ControlPlane:
    """The state and indexes every command reads, and the retry-key rules (see engine/state.py's Engine)."""

    state: BillingState
    # A customer's one contract itself (most customers: a tuple of one is 48 bytes more), or its contracts.
    _contracts_by_customer: dict[str, Contract | tuple[Contract, ...]]
    _grant_ids: set[str]

    def _repeat(self, key: str, command: cmd.AdminCommand, answer: Callable[[], object]) -> bytes:
        """Raises Repeated, with the first call's answer, when this same request already used `key`; else
        returns the request's fingerprint, to `_remember` once the command has succeeded. The same key from a
        different request falls through to the caller's own ALREADY_EXISTS."""
        mark = self.state.requests.get(key)
        if mark is not None and same_request(mark.fingerprint, command):
            raise Repeated(answer())
        return fingerprint(command)

    def _repeat_held(
        self, key: str, command: cmd.AdminCommand, held: bytes | None, answer: Callable[[], object]
    ) -> bytes:
        """`_repeat` for a command whose record holds its own fingerprint (`held`: that of the record already
        under the key, None if there is none): customers, contracts and grants keep it there, not in
        `requests`, which still answers for keys stored by releases before."""
        print_ = fingerprint(command)
        if held is not None and held == print_:
            raise Repeated(answer())
        return self._repeat(key, command, answer) if self.state.requests else print_

    def _held_print(self, held: Customer | Contract | Grant | None) -> bytes | None:
        """The fingerprint of the request that made `held` (None if there is no record): its own, or, when it
        keeps none, that of the request it restates (`restated_request`)."""
        if held is None:
            return None
        return held.request or fingerprint(restated_request(held))

    def _remember(self, key: str, print_: bytes, version: int = 0) -> None:
        self.state.requests[key] = RequestMark(print_, version)

    def rate_card(self, rate_card_id: str) -> RateCard:
        card = self.state.rate_cards.get(rate_card_id)
        if card is None:
            raise NotFound(f"rate card {rate_card_id!r} does not exist")
        return card

    def contract(self, contract_id: str) -> Contract:
        contract = self.state.contracts.get(contract_id)
        if contract is None:
            raise NotFound(f"contract {contract_id!r} does not exist")
        return contract

    def customer(self, customer_id: str) -> Customer:
        customer = self.state.customers.get(customer_id)
        if customer is None:
            raise NotFound(f"customer {customer_id!r} does not exist")
        return customer

    def contracts_of(self, customer_id: str) -> tuple[Contract, ...]:
        """The customer's contracts, from an index: a read never scans every customer's contracts."""
        held = self._contracts_by_customer.get(customer_id, ())
        return held if isinstance(held, tuple) else (held,)

    def _index_contract(self, contract: Contract) -> None:
        held = self.contracts_of(contract.customer_id)
        self._contracts_by_customer[contract.customer_id] = (*held, contract) if held else contract

    def _contract_at(self, customer_id: str, ts_ms: int) -> Contract | None:
        return next((c for c in self.contracts_of(customer_id) if c.covers(ts_ms)), None)

    def _rolls_over_at(self, grant: Grant) -> int | None:
        """When the grant rolls over, as the kernel's `rollover_at` reads it: the end of the billing period of the
        contract in force at its start; None when it has no rollover fraction, its start lies in no contract, or it
        expires before that end (`Grant.expires_before_rollover`: it simply expires then)."""
        if grant.rollover_fraction <= 0:
            return None
        contract = self._contract_at(grant.customer_id, grant.starts_at_ms)
        if contract is None:
            return None
        rolls_at_ms = period_containing(contract.starting_at_ms, grant.starts_at_ms)[1]
        return None if grant.expires_before_rollover(rolls_at_ms) else rolls_at_ms


def check_text_map(entries: dict[str, str], field_path: str) -> None:
    if len(entries) > EVENT_MAP_ENTRIES_MAX:
        raise InvalidArgument.field(field_path, f"at most {EVENT_MAP_ENTRIES_MAX} entries")
    for key, value in entries.items():
        key_bytes, value_bytes = len(key.encode()), len(value.encode())
        if not key:
            why = "a key must not be empty"
        elif key_bytes > TEXT_BYTES_MAX:
            why = f"a key is at most {TEXT_BYTES_MAX} bytes, not {key_bytes}"
        elif value_bytes > TEXT_BYTES_MAX:
            why = f"a value is at most {TEXT_BYTES_MAX} bytes, not {value_bytes}"
        else:
            continue
        raise InvalidArgument.field(f"{field_path}[{entry_name(key)}]", why)


def keeping_print(record: _Record, print_: bytes) -> _Record:
    """A new record (made with `request` empty) as it keeps its request's fingerprint: nothing when the request is
    the one the record restates (`restated_request`), the usual case, else the fingerprint. A fingerprint is 49
    bytes of heap (64 with the allocator's rounding), three a customer, recomputed only when the same id comes again."""
    if print_ == fingerprint(restated_request(record)):
        return record
    return msgspec.structs.replace(record, request=print_)


def restated_request(record: Customer | Contract | Grant) -> cmd.AdminCommand:
    """The request that made `record` with its defaults left out, rebuilt from the record (time and caller are
    not part of a fingerprint). Part of the stored format: a record that keeps no fingerprint is recognised by
    this restatement, so a rule changed here no longer recognises the retries of records stored before."""
    match record:
        case Customer():
            return cmd.CreateCustomer(0, "", record.id, record.name, record.attributes)
        case Contract():
            default_id = default_contract_id(record.customer_id, record.starting_at_ms)
            return cmd.CreateContract(
                0,
                "",
                "" if record.id == default_id else record.id,
                record.customer_id,
                record.rate_card_id,
                record.starting_at_ms,
                record.ending_before_ms,
                record.overage_policy,
                "" if record.overage_price == "1" else record.overage_price,
                "" if record.currency == "USD" else record.currency,
            )
    return cmd.GrantCredits(
        0,
        "",
        record.id,
        record.customer_id,
        record.contract_id,
        record.kind,
        _credits_text(record.amount),
        "" if record.paid_amount == 0 else format_decimal(record.paid_amount),
        record.priority,
        record.applicable_product_ids,
        None,
        record.expires_at_ms,
        "" if record.rollover_fraction == 0 else format_decimal(record.rollover_fraction),
    )


def _credits_text(picos: int) -> str:
    """format_picos(picos), quicker for a whole number of credits (most grants)."""
    units, fraction = divmod(picos, PICOS_PER_UNIT)
    return str(units) if fraction == 0 else format_picos(picos)


def default_contract_id(customer_id: str, starting_at_ms: int) -> str:
    """`acme-20261201` (a contract starting at midnight UTC) or `acme-1764590400000`, at most 128 characters."""
    suffix = _contract_id_suffix(starting_at_ms)
    return f"{customer_id[: 127 - len(suffix)]}-{suffix}"


def numbered_contract_id(customer_id: str, starting_at_ms: int, n: int) -> str:
    """The default id with ".n" added (`acme-20261201.2`), the customer id cut so that it keeps to 128 characters
    with the start whole: a cut start would name another day (`...-202612.2`)."""
    suffix = f"{_contract_id_suffix(starting_at_ms)}.{n}"
    return f"{customer_id[: 127 - len(suffix)]}-{suffix}"


@functools.lru_cache(maxsize=64)  # most contracts start on a few days (the first of a month): strftime is slow
def _contract_id_suffix(starting_at_ms: int) -> str:
    if starting_at_ms % DAY_MS == 0:
        return datetime.fromtimestamp(starting_at_ms / 1000, UTC).strftime("%Y%m%d")
    return str(starting_at_ms)


def latest_hour_across(hours: Iterable[int], from_ms: int, before_ms: int | None) -> int | None:
    """The latest of `hours` (each an hour's first instant, Unix ms) that ends after `from_ms` and begins before
    `before_ms` (None: unbounded), or None. Usage is kept by the hour, so usage in such an hour may be dated at or
    after `from_ms`: EndContract, EndOverride and ExpireGrant refuse a change that such an hour holds usage across."""
    bound_ms = before_ms if before_ms is not None else 2**63
    across = [hour for hour in hours if hour + HOUR_MS > from_ms and hour < bound_ms]
    return max(across) if across else None
