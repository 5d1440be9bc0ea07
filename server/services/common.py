"""Shared by the servicers: the base holding the engine and sequencer, limits and paging."""

from __future__ import annotations

import bisect
import time
from collections.abc import Callable
from typing import Any, TypeAlias, TypeVar

from engine import commands as cmd
from engine.billing import Billing
from engine.errors import InvalidArgument
from server import auth
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
ACTOR_DEFAULT = auth.ACTOR_ANONYMOUS


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


def actor_of(context: Context) -> str:
    """The actor of a state-changing call: server/auth.py's interceptor put the caller (its key) in a context
    variable; the call's x-actor metadata may name the person it acts for (auth.actor says who wins)."""
    return auth.actor(auth.actor_named(context.invocation_metadata()))


class _Base:
    def __init__(self, billing: Billing, sequencer: Sequencer, clock_ms: Callable[[], int] = wall_ms) -> None:
        self.billing = billing
        self.engine = billing.engine  # the control plane; the same object for the server's life
        self.sequencer = sequencer
        self.clock_ms = clock_ms

    async def _apply(self, command: cmd.AdminCommand, result_type: type[Result]) -> Result:
        """Runs a command through the writer; returns its result once journaled and committed."""
        deadline = check_deadline(auth.current_call.get())
        _, result = await self.sequencer.run(command, deadline)
        assert isinstance(result, result_type), f"{type(command).__name__} gave {type(result).__name__}"
        return result


def _required(**fields: object) -> None:
    """INVALID_ARGUMENT naming every empty one of these request fields (an id, a version number)."""
    missing = [(name, "is required") for name, value in fields.items() if not value]
    if missing:
        raise InvalidArgument(missing)


def _page(ids: list[str], page_size: int, page_token: str) -> tuple[list[str], str]:
    """One page of sorted ids after `page_token` (the last id of the previous page), and the next token."""
    if page_size < 0:  # ListAlertRules' page_size is an int32: a negative slice end would pass the cap
        raise InvalidArgument.field("page_size", f"{page_size} must not be negative")
    size = min(page_size or 100, PAGE_SIZE_MAX)
    start = bisect.bisect_right(ids, page_token) if page_token else 0
    page = ids[start : start + size]
    return page, (page[-1] if page and start + size < len(ids) else "")


def _undecodable(message_type: Any, data: bytes, kernel_error: ValueError) -> UndecodableRequest:
    """The refusal of request bytes the kernel could not decode, in protobuf's words as clients always got it."""
    try:
        message_type.FromString(data)
    except Exception as exc:  # protobuf's DecodeError
        return UndecodableRequest(str(exc))
    return UndecodableRequest(str(kernel_error))  # protobuf takes what the kernel refuses: say the kernel's why
