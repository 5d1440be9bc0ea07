"""Shared by the servicers: the base holding the engine and sequencer, limits and paging."""

from __future__ import annotations

import bisect
import itertools
import time
from collections.abc import Callable, Mapping
from typing import Any, TypeAlias, TypeVar

from google.protobuf.message import Message

from engine import commands as cmd
from engine.billing import Billing
from engine.errors import InvalidArgument
from server import auth, convert
from server.errors import (
    UndecodableRequest,
    check_deadline,
)
from server.sequencer import Sequencer

# grpc ships no type information: a servicer context is typed as Any.
Context: TypeAlias = Any
Result = TypeVar("Result")
BATCH_EVENTS_MAX_DEFAULT = 10_000
STREAM_BATCHES_IN_FLIGHT_MAX = 16
INTAKE_BYTES_MAX_DEFAULT = 256 * 1024 * 1024
AUTHORIZE_BATCH_REQUESTS_MAX = 10_000
USAGE_SERVICE = "tariff.v1.UsageService"
BALANCE_SERVICE = "tariff.v1.BalanceService"
PAGE_SIZE_MAX = 1_000
# A page's items take at most this many bytes: what a gRPC client reads by default (4 MiB), so that a page of large
# items (a customer's attributes reach 33 KB, an invoice's lines more) is readable by any client. A page cut short by
# it still has its next_page_token.
PAGE_BYTES_MAX = 4 * 1024 * 1024
# What a page's answer holds besides its items (its next token, counts), kept out of a lowered --message-mb-max.
PAGE_FRAME_BYTES = 64 * 1024
ACTOR_DEFAULT = auth.ACTOR_ANONYMOUS
PAGE_TOKEN_NOT_ISSUED = (
    "is not a next_page_token this list issued for this request: pass the previous page's next_page_token "
    "unchanged, with the same request fields (customer, filters) and key, or none for the first page"
)


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


def actor_of(context: Context) -> str:
    """The actor of a state-changing call: server/auth.py's interceptor put the caller (its key) in a context
    variable; the call's x-actor metadata may name the person it acts for (auth.actor says who wins)."""
    return auth.actor(auth.actor_named(context.invocation_metadata()))


def page_bytes_within(message_bytes_max: int) -> int:
    """The bytes a page's items may take under the server's message limit (--message-mb-max): PAGE_BYTES_MAX, less
    when the limit is lower, so that gRPC can always send the page (it refuses a larger message whole)."""
    return max(1, min(PAGE_BYTES_MAX, message_bytes_max - PAGE_FRAME_BYTES))


class _Base:
    # A page's items take at most this many bytes (server/app.py sets it from --message-mb-max).
    page_bytes_max = PAGE_BYTES_MAX

    def __init__(self, billing: Billing, sequencer: Sequencer, clock_ms: Callable[[], int] = wall_ms) -> None:
        self.billing = billing
        self.engine = billing.engine  # the control plane; the same object for the server's life
        self.sequencer = sequencer
        self.clock_ms = clock_ms

    def read_ms(self) -> int:
        """The instant a read counts what fell due by: now, or the time of the group the writer is applying
        (`Sequencer.read_ms`), so that a read shows what the clock records, never a breakage or expiry that a batch
        received before it and rated meanwhile undoes."""
        return self.sequencer.read_ms(self.clock_ms())

    async def _apply(self, command: cmd.AdminCommand, result_type: type[Result]) -> Result:
        """Runs a command through the writer; returns its result once journaled and committed. The ids a client
        chose in it are held to the whole id rule first (the engine checks them as earlier releases did)."""
        convert.check_chosen_ids(command, self.engine.state)
        deadline = check_deadline(auth.current_call.get())
        _, result = await self.sequencer.run(command, deadline)
        assert isinstance(result, result_type), f"{type(command).__name__} gave {type(result).__name__}"
        return result


# Up to this many keys added since the last read are inserted one by one (at a million keys, about 1 ms each, where
# sorting the list again takes about 60 ms however few were added).
SORTED_KEYS_INSERT_MAX = 32


class SortedKeys:
    """The sorted keys of a dict that only grows (customers; alert rules, whose dict a deletion replaces, which
    starts the keys over), kept from one page of a list to the next. Sorting every key for each page made paging through a million customers cost
    about 0.6 s of the event loop a page (ids in no order); the keys added since are inserted in place, or, when
    more than a few, appended and the list sorted again. The list is shared: read it."""

    def __init__(self) -> None:
        self._source: object = None  # the dict the keys are of, by identity
        self._keys: list[str] = []

    def of(self, source: Mapping[str, object]) -> list[str]:
        if source is not self._source or len(source) < len(self._keys):  # another state (a restore): start over
            self._source, self._keys = source, sorted(source)
        elif len(source) > len(self._keys):
            added = list(itertools.islice(source, len(self._keys), None))
            if len(added) <= SORTED_KEYS_INSERT_MAX:  # each put in its place: a move of the list, no compare of all
                for key in added:
                    bisect.insort(self._keys, key)
            else:
                self._keys.extend(added)
                self._keys.sort()
        return self._keys


def _required(**fields: object) -> None:
    """INVALID_ARGUMENT naming every empty one of these request fields (an id, a version number)."""
    missing = [(name, "is required") for name, value in fields.items() if not value]
    if missing:
        raise InvalidArgument(missing)


def _page(
    ids: list[str],
    page_size: int,
    page_token: str,
    keep: Callable[[str], bool] | None = None,
    gone: Callable[[str], bool] | None = None,
) -> tuple[list[str], str]:
    """One page of sorted ids after `page_token` (the last id of the previous page), and the next token. A negative
    page_size (ListAlertRules' is an int32) is refused: it would answer an empty page with no next token. With
    `keep`, the ids the request lists are those it keeps: a page walks on from the token until it has page_size of
    them (one more tells whether there are more), so paging through a filtered list costs about what it lists,
    not the whole list a page.

    The ids listed are the caller's, within its filters, and no listed item is ever deleted but an alert rule, so a
    token this list issued for the same request is one of them, or (`gone`) names a rule the caller could list that
    was deleted since: a position still. Anything else (made up, another RPC's, another customer's, outside the
    filters) is INVALID_ARGUMENT: read as a position it would answer a silently shortened or empty list. The refusal
    does not echo the token, nor say whether it names anything."""
    if page_size < 0:
        raise InvalidArgument.field(
            "page_size", f"must not be negative (0: 100, at most {PAGE_SIZE_MAX}), not {page_size}"
        )
    size = min(page_size or 100, PAGE_SIZE_MAX)
    start = bisect.bisect_right(ids, page_token) if page_token else 0
    issued = start > 0 and ids[start - 1] == page_token and (keep is None or keep(page_token))
    issued = issued or (bool(page_token) and gone is not None and gone(page_token))
    if page_token and not issued:
        raise InvalidArgument.field("page_token", PAGE_TOKEN_NOT_ISSUED)
    if keep is None:
        page = ids[start : start + size]
        return page, (page[-1] if page and start + size < len(ids) else "")
    page = []
    for listed in itertools.islice(ids, start, None):
        if keep(listed):
            if len(page) == size:
                return page, page[-1]
            page.append(listed)
    return page, ""


Item = TypeVar("Item", bound=Message)


def _fitting(items: list[Item], bytes_max: int) -> int:
    """How many of a page's messages, from the first, fit `bytes_max` (at least one)."""
    total_bytes = 0
    for count, item in enumerate(items):
        total_bytes += item.ByteSize() + 8  # the field's tag and length prefix take at most 8 more
        if total_bytes > bytes_max and count > 0:
            return count
    return len(items)


def _fitted(items: list[Item], page: list[str], next_token: str, bytes_max: int) -> tuple[list[Item], str]:
    """A page's messages cut to the first that fit `bytes_max` (at least one), and the token to go on from: the
    last one kept's id (`page` holds each item's id) when cut, else `next_token`."""
    count = _fitting(items, bytes_max)
    if count < len(items):
        return items[:count], page[count - 1]
    return items, next_token


def _undecodable(message_type: Any, data: bytes, kernel_error: ValueError) -> UndecodableRequest:
    """The refusal of request bytes the kernel could not decode, in protobuf's words as clients always got it."""
    try:
        message_type.FromString(data)
    except Exception as exc:  # protobuf's DecodeError
        return UndecodableRequest(str(exc))
    return UndecodableRequest(str(kernel_error))  # protobuf takes what the kernel refuses: say the kernel's why
