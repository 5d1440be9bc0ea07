"""Cohorts of a published version: which customers a `PublishVersion.cohort` names, checked when it is published.

A cohort is a conjunction of its criteria: listed customer ids (if any), attribute values that must all match
(if any), and a creation time customers must be strictly after (if set); an empty criterion does not restrict.
A version without a cohort is for everyone. The kernel never evaluates a cohort per event: engine/tables.py
compiles each customer's timeline of versions (the versions whose cohort contains it) when the tables are
compiled, and again for a customer created later. Customers are immutable once created, so membership decided
then is membership decided at publication. Sans-I/O like the rest of engine/.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Mapping

from engine.contracts import Customer
from engine.errors import InvalidArgument
from engine.ratecard import Cohort

# Customer ids a refusal names before it says "and N more".
_UNKNOWN_NAMED_MAX = 20


def checked_cohort(cohort: Cohort | None, customers: Mapping[str, Customer]) -> Cohort | None:
    """The cohort as stored (ids sorted, duplicates dropped; None for one with no criterion, which is everyone),
    or InvalidArgument naming every bad field: an id of no customer (a cohort names customers that exist: one
    created later joins through attributes or customers_created_after, not by id), an empty id, an empty
    attribute key or value."""
    if cohort is None:
        return None
    violations: list[tuple[str, str]] = []
    ids = sorted(set(cohort.customer_ids))
    if "" in ids:
        violations.append(("cohort.customer_ids", "an id must not be empty"))
    unknown = [i for i in ids if i and i not in customers]
    if unknown:
        named = ", ".join(repr(i) for i in unknown[:_UNKNOWN_NAMED_MAX])
        more = f" and {len(unknown) - _UNKNOWN_NAMED_MAX} more" if len(unknown) > _UNKNOWN_NAMED_MAX else ""
        violations.append(("cohort.customer_ids", f"no such customer: {named}{more}"))
    for key, value in sorted(cohort.attributes.items()):
        if not key:
            violations.append(("cohort.attributes", "an attribute key must not be empty"))
        elif not value:
            violations.append((f"cohort.attributes[{key}]", "an attribute match needs a value"))
    if violations:
        raise InvalidArgument(violations)
    if not ids and not cohort.attributes and cohort.customers_created_after_ms is None:
        return None
    return Cohort(tuple(ids), dict(sorted(cohort.attributes.items())), cohort.customers_created_after_ms)


def contains(cohort: Cohort | None, customer: Customer) -> bool:
    """Whether the cohort (as stored: ids sorted) holds the customer (every criterion met); None holds everyone."""
    if cohort is None:
        return True
    ids = cohort.customer_ids
    if ids:
        # Sorted as checked_cohort stores them: a binary search, since the tables ask for every customer.
        at = bisect.bisect_left(ids, customer.id)
        if at == len(ids) or ids[at] != customer.id:
            return False
    if any(customer.attributes.get(key) != value for key, value in cohort.attributes.items()):
        return False
    after = cohort.customers_created_after_ms
    return after is None or customer.created_at_ms > after


def members(cohort: Cohort | None, customer_ids: Iterable[str], customers: Mapping[str, Customer]) -> list[str]:
    """Those of `customer_ids` (in their order) the cohort holds."""
    return [i for i in customer_ids if i in customers and contains(cohort, customers[i])]
