"""API keys, roles and the call gate: who may call which RPC, for which customers, and how many calls at once.

Keys live in a file (`--api-keys FILE`, JSON or TOML) holding only the SHA-256 of each key, with a name (the
audit log's actor), a role and optionally the customers the key is restricted to. `tariff keys new` makes a
key, prints it once and appends its entry. A caller sends `authorization: Bearer KEY`.

`CallGate` is the grpc.aio interceptor every call passes: it authenticates (UNAUTHENTICATED), authorises by
the one method -> role table below (`RULES`, PERMISSION_DENIED naming the role or customer), limits the RPCs
running at once (RESOURCE_EXHAUSTED with RetryInfo) and publishes the caller in the `caller` context variable
for the servicers. Health checks and reflection stay open without a key: load balancers and tools use them
and they reveal no customer data. Without a key file only the concurrency limit applies.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import enum
import hashlib
import hmac
import json
import os
import re
import secrets
import tempfile
import tomllib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, TypeAlias

import grpc

from engine.audit import ACTOR_VIA
from engine.control import is_id, quoted_id
from engine.errors import EngineError, InvalidArgument
from server.errors import PermissionDenied, ResourceExhausted, Unauthenticated, abort

# grpc ships no type information: a servicer context and a method handler are typed as Any.
Context: TypeAlias = Any
Handler: TypeAlias = Any

ROLES = ("admin", "ingest", "read")
ADMIN, INGEST, READ = ROLES
CONCURRENT_RPCS_MAX_DEFAULT = 1_000
# What an overloaded server tells a caller to wait before retrying.
OVERLOAD_RETRY_AFTER_MS = 100
_BEARER = "bearer "
_OPEN_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")
_KEY_FIELDS = {"name", "sha256", "role", "customers"}


class KeyFileError(ValueError):
    """The key file cannot be used; the message names the file and the entry."""


@dataclasses.dataclass(frozen=True, slots=True)
class Identity:
    """An authenticated caller: `customers` is None for a key that may touch every customer."""

    name: str
    role: str
    customers: frozenset[str] | None = None

    def may_touch(self, customer_id: str) -> bool:
        return self.customers is None or customer_id in self.customers


# The caller of the RPC being served; None when the server runs without keys.
caller: contextvars.ContextVar[Identity | None] = contextvars.ContextVar("tariff_caller", default=None)
# The servicer context of the RPC being served, so that code deep in a servicer can check its deadline.
current_call: contextvars.ContextVar[Context | None] = contextvars.ContextVar("tariff_call", default=None)
ACTOR_ANONYMOUS = "anonymous"
# The metadata a caller may send to name the person it acts for (see `actor`).
ACTOR_HEADER = "x-actor"
ACTOR_PATTERN = re.compile(r"[A-Za-z0-9._:@-]{1,128}")
ACTOR_RULE = "1-128 characters of letters, digits and ._:@-"


def is_actor_name(text: str) -> bool:
    """The one rule for every audit log actor a caller or an operator chooses: an x-actor value, an API key's name
    (the key file, `tariff keys new --name`) and the CLI's --actor. ACTOR_RULE: no space, so "PERSON via KEY" reads
    one way only, and no newline or control character to break an audit table's rows or a log line. The whole text
    must match: a `$`-anchored match let a trailing newline through."""
    return ACTOR_PATTERN.fullmatch(text) is not None


def actor(named: str | None = None) -> str:
    """The audit log's actor for the current call. `named` is the call's x-actor metadata value, if any.

    Without keys: `named`, or "anonymous". With keys the key always shows: its name, or "PERSON via KEY" when an
    unrestricted key names someone else (a service acting for the person logged in to it). A key restricted to
    some customers may not name anyone (PERMISSION_DENIED): it could otherwise pass its changes off as another's.
    """
    identity = caller.get()
    if named is None:
        return identity.name if identity is not None else ACTOR_ANONYMOUS
    if not is_actor_name(named):
        raise InvalidArgument.field(ACTOR_HEADER, f"{named[:32]!r} must be {ACTOR_RULE}")
    if identity is None:
        return named
    if identity.customers is not None:
        raise PermissionDenied(
            f"key {identity.name!r} is restricted to some customers: it may not name an actor ({ACTOR_HEADER})"
        )
    return identity.name if named == identity.name else f"{named}{ACTOR_VIA}{identity.name}"


def actor_named(metadata: Iterable[tuple[str, str | bytes]] | None) -> str | None:
    """The x-actor metadata value of a call, None without one; INVALID_ARGUMENT when it is sent twice."""
    values = [value for name, value in metadata or () if name == ACTOR_HEADER]
    if len(values) > 1:
        raise InvalidArgument.field(ACTOR_HEADER, "is sent more than once: send one actor")
    if not values:
        return None
    value = values[0]
    return value if isinstance(value, str) else value.decode(errors="replace")


def allowed_customers() -> frozenset[str] | None:
    """The customers the current caller's key may touch; None for an unrestricted key or without keys."""
    identity = caller.get()
    return identity.customers if identity is not None else None


# --------------------------------------------------------------------------------------------
# The method -> role table


class Scope(enum.Enum):
    """Which customers a call touches, so a restricted key can be checked."""

    # Not per customer (audit log, pricing administration, rate cards): denied to a restricted key.
    GLOBAL = "global"
    # The shared catalogue, naming no customer: allowed to a restricted key.
    SHARED = "shared"
    # The customer id in the request field `Rule.field` (dotted path); empty means "all": denied.
    FIELD = "field"
    # The customer owning the contract whose id is in `Rule.field`.
    CONTRACT = "contract"
    # GrantCredits: grant.customer_id and the owner of grant.contract_id.
    GRANT = "grant"
    # A UsageBatch (raw bytes): every event's customer_id, checked by the rating kernel before it rates anything
    # (the servicer passes it the key's customers, from `caller`).
    EVENTS = "events"
    # An AuthorizeBatch (raw bytes): every request's customer_id, checked by the rating kernel before it decides
    # anything (the servicer passes it the key's customers, from `caller`).
    REQUESTS = "requests"
    # A non-empty list of customer ids in `Rule.field`, all of them allowed.
    FIELD_LIST = "field_list"
    # The servicer filters its answer to the caller's customers (ListCustomers, ListAlertRules, WatchAlerts).
    FILTERED = "filtered"
    # The customer of the alert rule (deleted ones too) whose id is in `Rule.field`: one the key may create rules
    # for, so a rule for every customer, or an unknown id, is denied.
    ALERT_RULE = "alert_rule"


@dataclasses.dataclass(frozen=True, slots=True)
class Rule:
    roles: frozenset[str]
    scope: Scope
    field: str = ""


def _rule(roles: str, scope: Scope, field: str = "") -> Rule:
    return Rule(frozenset(roles.split()), scope, field)


_ALL = "admin ingest read"
_USE = "admin ingest"
_READ = "admin read"
# The one table of who may call what. admin: everything; ingest: usage, balances, authorize, reservations,
# alerts; read: every read-only RPC. ValidateVersion changes nothing, so read may call it.
RULES: Mapping[str, Rule] = {
    "/tariff.v1.UsageService/IngestUsage": _rule(_USE, Scope.EVENTS),
    "/tariff.v1.UsageService/IngestUsageBatch": _rule(_USE, Scope.EVENTS),
    "/tariff.v1.BalanceService/GetBalance": _rule(_ALL, Scope.FIELD, "customer_id"),
    "/tariff.v1.BalanceService/Authorize": _rule(_USE, Scope.FIELD, "customer_id"),
    "/tariff.v1.BalanceService/AuthorizeStream": _rule(_USE, Scope.FIELD, "customer_id"),
    "/tariff.v1.BalanceService/AuthorizeBatches": _rule(_USE, Scope.REQUESTS),
    "/tariff.v1.BalanceService/ReleaseReservation": _rule(_USE, Scope.FIELD, "customer_id"),
    "/tariff.v1.BalanceService/WatchBalance": _rule(_ALL, Scope.FIELD, "customer_id"),
    "/tariff.v1.PricingService/CreateProduct": _rule(ADMIN, Scope.GLOBAL),
    "/tariff.v1.PricingService/ListProducts": _rule(_READ, Scope.SHARED),
    "/tariff.v1.PricingService/CreateRateCard": _rule(ADMIN, Scope.GLOBAL),
    # Rate cards and versions may name cohort customers: not for a restricted key.
    "/tariff.v1.PricingService/GetRateCard": _rule(_READ, Scope.GLOBAL),
    "/tariff.v1.PricingService/ListRateCards": _rule(_READ, Scope.GLOBAL),
    "/tariff.v1.PricingService/CreateDraftVersion": _rule(ADMIN, Scope.GLOBAL),
    "/tariff.v1.PricingService/ValidateVersion": _rule(_READ, Scope.GLOBAL),
    "/tariff.v1.PricingService/PublishVersion": _rule(ADMIN, Scope.GLOBAL),
    "/tariff.v1.PricingService/RollbackRateCard": _rule(ADMIN, Scope.GLOBAL),
    "/tariff.v1.PricingService/ListVersions": _rule(_READ, Scope.GLOBAL),
    "/tariff.v1.PricingService/GetVersion": _rule(_READ, Scope.GLOBAL),
    "/tariff.v1.PricingService/DiffVersions": _rule(_READ, Scope.GLOBAL),
    "/tariff.v1.PricingService/SimulateVersion": _rule(_READ, Scope.FIELD_LIST, "customer_ids"),
    "/tariff.v1.PricingService/GetAuditLog": _rule(_READ, Scope.GLOBAL),
    "/tariff.v1.ContractService/CreateCustomer": _rule(ADMIN, Scope.FIELD, "id"),
    "/tariff.v1.ContractService/GetCustomer": _rule(_READ, Scope.FIELD, "id"),
    "/tariff.v1.ContractService/ListCustomers": _rule(_READ, Scope.FILTERED),
    "/tariff.v1.ContractService/CreateContract": _rule(ADMIN, Scope.FIELD, "customer_id"),
    "/tariff.v1.ContractService/GetContract": _rule(_READ, Scope.CONTRACT, "id"),
    "/tariff.v1.ContractService/AddOverride": _rule(ADMIN, Scope.CONTRACT, "contract_id"),
    "/tariff.v1.ContractService/EndContract": _rule(ADMIN, Scope.CONTRACT, "contract_id"),
    "/tariff.v1.ContractService/EndOverride": _rule(ADMIN, Scope.CONTRACT, "contract_id"),
    "/tariff.v1.ContractService/GrantCredits": _rule(ADMIN, Scope.GRANT),
    "/tariff.v1.ContractService/ExpireGrant": _rule(ADMIN, Scope.FIELD, "customer_id"),
    "/tariff.v1.ContractService/SetTopUpPolicy": _rule(ADMIN, Scope.CONTRACT, "contract_id"),
    "/tariff.v1.InvoiceService/PreviewInvoice": _rule(_READ, Scope.FIELD, "customer_id"),
    "/tariff.v1.InvoiceService/ExplainLineItem": _rule(_READ, Scope.FIELD, "customer_id"),
    "/tariff.v1.InvoiceService/ClosePeriod": _rule(ADMIN, Scope.FIELD, "customer_id"),
    # The request names an invoice number, not its customer.
    "/tariff.v1.InvoiceService/GetInvoice": _rule(_READ, Scope.GLOBAL),
    "/tariff.v1.InvoiceService/ListInvoices": _rule(_READ, Scope.FIELD, "customer_id"),
    "/tariff.v1.InvoiceService/GetRevenueReport": _rule(_READ, Scope.FIELD, "customer_id"),
    "/tariff.v1.InvoiceService/CloseDuePeriods": _rule(ADMIN, Scope.GLOBAL),
    "/tariff.v1.AlertService/CreateAlert": _rule(ADMIN, Scope.FIELD, "customer_id"),
    # Like WatchBalance, for every role; a restricted key gets its customers' alerts and the rules that watch them.
    "/tariff.v1.AlertService/WatchAlerts": _rule(_ALL, Scope.FILTERED),
    "/tariff.v1.AlertService/ListAlertRules": _rule(_ALL, Scope.FILTERED),
    "/tariff.v1.AlertService/DeleteAlertRule": _rule(ADMIN, Scope.ALERT_RULE, "id"),
}
# A Tariff method missing from the table (added to the proto later) is for admin keys only, until it is listed.
_UNLISTED = _rule(ADMIN, Scope.GLOBAL)


# --------------------------------------------------------------------------------------------
# The key file


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _parse_entry(where: str, raw: object) -> tuple[str, Identity]:
    if not isinstance(raw, dict):
        raise KeyFileError(f"{where}: an entry must be a table/object, not {type(raw).__name__}")
    unknown = sorted(set(raw) - _KEY_FIELDS)
    if unknown:
        raise KeyFileError(
            f"{where}: unknown field(s) {', '.join(unknown)} (allowed: {', '.join(sorted(_KEY_FIELDS))})"
        )
    name, digest, role = raw.get("name"), raw.get("sha256"), raw.get("role")
    if not isinstance(name, str) or not name:
        raise KeyFileError(f"{where}: 'name' is required (a non-empty string)")
    if not is_actor_name(name):
        # Quoted and cut: the message is one line of bounded size whatever the name holds.
        raise KeyFileError(
            f"{where}: 'name' {quoted_id(name)} must be {ACTOR_RULE} (the rule an x-actor has: it is the audit log's actor)"
        )
    if not isinstance(digest, str) or len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest.lower()):
        raise KeyFileError(f"{where} ({name}): 'sha256' must be the 64 hex digits of the key's SHA-256")
    if role not in ROLES:
        raise KeyFileError(f"{where} ({name}): 'role' must be one of {', '.join(ROLES)}, not {role!r}")
    customers: frozenset[str] | None = None
    if "customers" in raw:
        listed = raw["customers"]
        if not isinstance(listed, list) or not listed or not all(isinstance(c, str) and c for c in listed):
            raise KeyFileError(
                f"{where} ({name}): 'customers' must be a non-empty list of customer ids (omit it for all customers)"
            )
        # As `tariff keys new --customers` refuses: a key restricted to an id no customer can have touches no one.
        for customer_id in listed:
            if not is_id(customer_id):
                raise KeyFileError(
                    f"{where} ({name}): 'customers' holds {quoted_id(customer_id)}, not a customer id "
                    "(1-128 letters, digits and ._:@-)"
                )
        customers = frozenset(listed)
    return digest.lower(), Identity(name, str(role), customers)


def parse_keys(text: str, fmt: str, source: str = "<keys>") -> dict[str, Identity]:
    """Parses a key file's text ("json" or "toml"): {sha256 hex: identity}. Raises KeyFileError."""
    try:
        document: object = tomllib.loads(text) if fmt == "toml" else json.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        raise KeyFileError(f"{source}: not valid {fmt.upper()}: {exc}") from None
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise KeyFileError(f"{source}: expected a top-level 'keys' list of entries (name, sha256, role, customers)")
    by_hash: dict[str, Identity] = {}
    names: set[str] = set()
    for index, raw in enumerate(document["keys"]):
        digest, identity = _parse_entry(f"{source}: keys[{index}]", raw)
        if identity.name in names:
            raise KeyFileError(f"{source}: keys[{index}]: the name {identity.name!r} is used twice")
        if digest in by_hash:
            raise KeyFileError(f"{source}: keys[{index}] ({identity.name}): same key hash as {by_hash[digest].name!r}")
        names.add(identity.name)
        by_hash[digest] = identity
    if not by_hash:
        raise KeyFileError(f"{source}: no keys: every call would be refused (add one with `tariff keys new`)")
    return by_hash


def _format_of(path: Path) -> str:
    return "toml" if path.suffix.lower() == ".toml" else "json"


def _read_key_file(path: Path) -> str:
    """The key file's text. Raises KeyFileError naming the file when it cannot be read or is not UTF-8 text."""
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot read the key file: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise KeyFileError(f"{path}: cannot read the key file: not UTF-8 text (byte {exc.start})") from None


def load_keys(path: Path) -> dict[str, Identity]:
    """Reads a key file (TOML when it ends in .toml, JSON otherwise). Raises KeyFileError."""
    return parse_keys(_read_key_file(path), _format_of(path), str(path))


def _toml_string(value: str) -> str:
    # JSON string escapes are valid TOML basic-string escapes.
    return json.dumps(value, ensure_ascii=False)


def new_key(path: Path, name: str, role: str, customers: Iterable[str] = ()) -> str:
    """Makes a random key, appends its hash entry to the key file (created 0600 if missing) and returns it.

    The key itself is never stored: the caller prints it once.
    """
    wanted = sorted({c.strip() for c in customers if c.strip()})
    key = secrets.token_urlsafe(32)
    entry: dict[str, object] = {"name": name, "sha256": key_hash(key), "role": role}
    if wanted:
        entry["customers"] = wanted
    fmt = _format_of(path)
    existing = _read_key_file(path) if path.exists() else ""
    if fmt == "toml":
        lines = [
            "[[keys]]",
            *(f"{k} = {_toml_string(v) if isinstance(v, str) else _toml_list(v)}" for k, v in entry.items()),
        ]
        updated = existing + ("\n" if existing and not existing.endswith("\n") else "") + ("\n" if existing else "")
        updated += "\n".join(lines) + "\n"
    else:
        try:
            document = json.loads(existing) if existing.strip() else {"keys": []}
        except json.JSONDecodeError as exc:
            raise KeyFileError(f"{path}: not valid JSON: {exc}") from None
        if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
            raise KeyFileError(f"{path}: expected a top-level 'keys' list")
        document["keys"].append(entry)
        updated = json.dumps(document, indent=2) + "\n"
    parse_keys(updated, fmt, str(path))  # refuse to write a file the server would refuse (bad role, name reused)
    try:
        _write_private(path, updated)
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot write the key file: {exc.strerror or exc}") from None
    return key


def restore_key_file(path: Path, before: bytes | None) -> None:
    """Puts the key file back as it was before `new_key` (`before`: its bytes, None when there was none): a key
    that was never shown must not stay usable."""
    if before is None:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        return
    _write_private(path, before.decode("utf-8"))


def _toml_list(values: object) -> str:
    assert isinstance(values, list)
    return "[" + ", ".join(_toml_string(str(v)) for v in values) + "]"


def _write_private(path: Path, text: str) -> None:
    """Replaces the file atomically, readable by its owner only (it guards every key)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


# --------------------------------------------------------------------------------------------
# The interceptor


class Keyring:
    """Presented key -> identity: SHA-256 then a dict lookup, the answer cached per valid key."""

    def __init__(self, by_hash: Mapping[str, Identity]) -> None:
        self._by_hash = {digest: (digest, identity) for digest, identity in by_hash.items()}
        # Only valid keys are cached, so the cache is as small as the key file whatever callers send.
        self._cache: dict[str, Identity] = {}

    def __len__(self) -> int:
        return len(self._by_hash)

    def identify(self, key: str) -> Identity | None:
        identity = self._cache.get(key)
        if identity is not None:
            return identity
        digest = key_hash(key)
        found = self._by_hash.get(digest)
        # The final word is a constant-time comparison of the digests, not the dict's own equality test.
        if found is None or not hmac.compare_digest(found[0], digest):
            return None
        self._cache[key] = found[1]
        return found[1]


def _bearer(metadata: Iterable[tuple[str, str | bytes]] | None) -> str | None:
    for name, value in metadata or ():
        if name == "authorization" and isinstance(value, str):
            return value[len(_BEARER) :].strip() if value[: len(_BEARER)].lower() == _BEARER else ""
    return None


def _field(request: Any, path: str) -> Any:
    for part in path.split("."):
        request = getattr(request, part)
    return request


CustomerOfContract: TypeAlias = Callable[[str], "str | None"]
# The customer an alert rule (deleted ones too) watches: "" for every customer, None for an unknown id.
CustomerOfAlertRule: TypeAlias = Callable[[str], "str | None"]


def _no_alert_rule(rule_id: str) -> str | None:
    return None


class CallGate(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Authenticates, authorises and counts every call (see the module docstring)."""

    def __init__(
        self,
        keyring: Keyring | None,
        customer_of_contract: CustomerOfContract,
        concurrent_rpcs_max: int = CONCURRENT_RPCS_MAX_DEFAULT,
        customer_of_alert_rule: CustomerOfAlertRule = _no_alert_rule,
    ) -> None:
        self.keyring = keyring
        self.customer_of_contract = customer_of_contract
        self.customer_of_alert_rule = customer_of_alert_rule
        self.concurrent_rpcs_max = concurrent_rpcs_max
        self.rpcs_running = 0
        # (method, identity) -> the wrapped handler: the wrappers depend on nothing else, so they are built once
        # (at most RPCs x (keys + 1) entries). This assumes one handler per method: CallGate is the innermost
        # interceptor.
        self._wrapped: dict[tuple[str, Identity | None], Handler] = {}
        self._admitted: dict[tuple[str, str | None], Handler] = {}

    async def intercept_service(self, continuation: Callable[[Any], Awaitable[Handler]], details: Any) -> Handler:
        handler = await continuation(details)
        method: str = details.method
        if handler is None or method.startswith(_OPEN_PREFIXES):
            return handler
        if self.keyring is None:
            return self._wrapped_for(method, handler, None, None)
        presented = _bearer(details.invocation_metadata)
        # A key allowed this method before is allowed again: one dict lookup on the hot path.
        admitted = self._admitted.get((method, presented))
        if admitted is not None:
            return admitted
        return self._authorise(method, handler, presented)

    def _authorise(self, method: str, handler: Handler, presented: str | None) -> Handler:
        """The wrapped handler of an allowed call (cached per method and key), or one answering the refusal."""
        assert self.keyring is not None
        if presented is None:
            return _refusal(handler, Unauthenticated("missing API key: send 'authorization: Bearer KEY'"))
        identity = self.keyring.identify(presented) if presented else None
        if identity is None:
            return _refusal(handler, Unauthenticated("invalid API key"))
        rule = RULES.get(method, _UNLISTED)
        name = method.rsplit("/", 1)[-1]
        if identity.role not in rule.roles:
            allowed = ", ".join(r for r in ROLES if r in rule.roles)
            return _refusal(
                handler, PermissionDenied(f"key {identity.name!r} has role {identity.role!r}; {name} needs {allowed}")
            )
        if identity.customers is not None and rule.scope is Scope.GLOBAL:
            return _refusal(
                handler,
                PermissionDenied(
                    f"key {identity.name!r} is restricted to some customers; {name} is not about one customer"
                ),
            )
        checked = identity.customers is not None and rule.scope not in (
            Scope.SHARED,
            Scope.FILTERED,
            Scope.EVENTS,
            Scope.REQUESTS,
        )
        wrapped = self._wrapped_for(method, handler, identity, rule if checked else None)
        # Only valid keys get here, so this cache holds at most (RPCs x keys) entries whatever callers send.
        self._admitted[method, presented] = wrapped
        return wrapped

    def _wrapped_for(self, method: str, handler: Handler, identity: Identity | None, rule: Rule | None) -> Handler:
        wrapped = self._wrapped.get((method, identity))
        if wrapped is None:
            wrapped = self._wrapped[method, identity] = self._wrap(handler, identity, rule)
        return wrapped

    # -- checks of a restricted key's requests ----------------------------------------------

    def _check(self, identity: Identity, rule: Rule, request: Any) -> None:
        """Raises PermissionDenied when the request touches a customer the key may not touch."""
        scope = rule.scope
        if scope is Scope.FIELD:
            self._require(identity, _field(request, rule.field), rule.field)
        elif scope is Scope.FIELD_LIST:
            listed = list(_field(request, rule.field))
            if not listed:
                raise PermissionDenied(f"key {identity.name!r} is restricted: {rule.field} must list its customers")
            for customer_id in listed:
                self._require(identity, customer_id, rule.field)
        elif scope is Scope.CONTRACT:
            self._require_contract(identity, _field(request, rule.field), rule.field)
        elif scope is Scope.ALERT_RULE:
            self._require_alert_rule(identity, _field(request, rule.field), rule.field)
        elif scope is Scope.GRANT:
            grant = request.grant
            if not grant.customer_id and not grant.contract_id:
                raise PermissionDenied(f"key {identity.name!r} is restricted: name the grant's customer")
            if grant.customer_id:
                self._require(identity, grant.customer_id, "grant.customer_id")
            if grant.contract_id:
                self._require_contract(identity, grant.contract_id, "grant.contract_id")

    @staticmethod
    def _require(identity: Identity, customer_id: str, field: str) -> None:
        if not customer_id:
            raise PermissionDenied(f"key {identity.name!r} is restricted to some customers: {field} is required")
        if not identity.may_touch(customer_id):
            raise PermissionDenied(f"{field}: key {identity.name!r} may not touch customer {quoted_id(customer_id)}")

    def _require_contract(self, identity: Identity, contract_id: str, field: str) -> None:
        owner = self.customer_of_contract(contract_id) if contract_id else None
        # An unknown contract is refused like a foreign one: a restricted key learns nothing of what exists.
        if owner is None or not identity.may_touch(owner):
            raise PermissionDenied(f"{field}: key {identity.name!r} may not touch contract {quoted_id(contract_id)}")

    def _require_alert_rule(self, identity: Identity, rule_id: str, field: str) -> None:
        if not rule_id:
            raise PermissionDenied(f"key {identity.name!r} is restricted to some customers: {field} is required")
        watched = self.customer_of_alert_rule(rule_id)
        # As CreateAlert: only a rule for one of the key's customers. An unknown rule is refused like a foreign one.
        if not watched or not identity.may_touch(watched):
            raise PermissionDenied(f"{field}: key {identity.name!r} may not touch alert rule {quoted_id(rule_id)}")

    # -- handler wrapping --------------------------------------------------------------------

    def _admit(self, identity: Identity | None, rule: Rule | None, request: Any, context: Context) -> None:
        """Checks a restricted key's request, then takes a place among the running calls (freed when it ends)."""
        if rule is not None and request is not None:
            assert identity is not None
            self._check(identity, rule, request)
        if self.rpcs_running >= self.concurrent_rpcs_max:
            raise ResourceExhausted(
                f"the server is running its maximum of {self.concurrent_rpcs_max} calls (--max-concurrent-rpcs; "
                "every open stream counts, watches too); retry shortly",
                retry_after_ms=OVERLOAD_RETRY_AFTER_MS,
            )
        self.rpcs_running += 1
        # The place is freed when the call's task ends, not through `context.add_done_callback`: grpc.aio keeps
        # that callback (bound to the context) in the call's state for good, a cycle (state -> callbacks -> partial
        # -> context -> state) that left every call's state and context to a collection of an older generation,
        # which freed hundreds of calls at once, holding the GIL for up to 11 ms on whichever thread ran it. A task
        # drops its callbacks once it has run them, so each call is freed by reference counting at its end.
        task = asyncio.current_task()
        if task is not None:
            task.add_done_callback(self._left)
        else:  # called outside a task (the server's calls reach here from UndecodableRequests' coroutines, in it)
            context.add_done_callback(self._left)
        caller.set(identity)
        current_call.set(context)

    def _left(self, _ended: object) -> None:
        self.rpcs_running -= 1

    def _wrap(self, handler: Handler, identity: Identity | None, rule: Rule | None) -> Handler:
        """The handler with admission in front. The wrappers are plain functions returning what the servicer
        returns (a coroutine or an async generator), so a stream's messages pass through no extra layer."""
        gate = self

        def checked(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
            if rule is None:
                return requests  # nothing to check per message: no extra layer on the hot path
            assert identity is not None

            async def each() -> AsyncIterator[Any]:
                # A refused message ends the call: the servicer sees the error where it reads, before applying it.
                async for request in requests:
                    gate._check(identity, rule, request)
                    yield request

            return each()

        if not handler.request_streaming:
            kind = "unary_stream" if handler.response_streaming else "unary_unary"
            behavior = getattr(handler, kind)

            def unary_request(request: Any, context: Context) -> Any:
                try:
                    gate._admit(identity, rule, request, context)
                except (PermissionDenied, ResourceExhausted) as exc:
                    return _aborting(exc, context, handler.response_streaming)
                return behavior(request, context)

            return handler._replace(**{kind: unary_request})

        kind = "stream_stream" if handler.response_streaming else "stream_unary"
        behavior = getattr(handler, kind)

        def stream_request(requests: AsyncIterator[Any], context: Context) -> Any:
            try:
                gate._admit(identity, None, None, context)
            except ResourceExhausted as exc:
                return _aborting(exc, context, handler.response_streaming)
            return behavior(checked(requests), context)

        return handler._replace(**{kind: stream_request})


def _aborting(exc: EngineError, context: Context, streaming: bool) -> Any:
    """What a refused call's handler returns: a coroutine, or an async generator for a streaming answer."""
    if not streaming:
        return abort(context, exc)

    async def answer() -> AsyncIterator[Any]:
        await abort(context, exc)
        yield  # pragma: no cover - makes this an async generator, as grpc expects of a streaming handler

    return answer()


def _refusal(handler: Handler, exc: Unauthenticated | PermissionDenied) -> Handler:
    """A handler of the same kind as `handler` that answers `exc` and reads nothing: not even the request's bytes
    are parsed (no deserializer, so grpc hands over the raw bytes), so a caller without a key or the role is told
    that, not what the server would make of its request (UndecodableRequests, outside, sees no bad parse)."""
    kind = ("stream_" if handler.request_streaming else "unary_") + (
        "stream" if handler.response_streaming else "unary"
    )

    def refuse(request: Any, context: Context) -> Any:
        return _aborting(exc, context, handler.response_streaming)

    return handler._replace(request_deserializer=None, **{kind: refuse})
