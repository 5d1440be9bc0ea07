"""An audit of small defects left over from earlier audits, each confirmed over the wire (a real server on its own
127.0.0.1 port, the `tariff` command as a subprocess):

- ReleaseReservation with a reservation_id over 256 bytes (no hold can have one: Authorize refuses it) answered
  NOT_FOUND quoting the whole id; now INVALID_ARGUMENT naming reservation_id, as Authorize's is. A message quoting
  a reservation_id a client sent (a release's NOT_FOUND, a usage notice) quotes its first 128 characters ("…"
  after the quote when cut), as a quoted customer_id is. A usage event's reservation_id over 256 bytes (no hold
  can have one) was accepted and rated, the ack echoing it whole; it is now INVALID_EVENT naming reservation_id
  (a batch the server marks `reservation_ids_bounded`; one journaled before replays as it was rated).
- `tariff bench --help` into a pipe whose reader has gone exited 0 (argparse swallows the failed write), where
  README's exit-status table says 141, as every other command's `--help` exits. `tariff keys new` with stdout
  closed (`>&-`) exited 0 having added a key whose secret was shown nowhere, and into a closed pipe exited 141
  with that key added too: a key nobody holds. Now a closed stdout is exit 2 before anything is written, and a
  key that could not be printed is taken out of the file again (141).
- `tariff keys new --name` took any text: "alice via ops" (the audit log's "PERSON via KEY" form, so a filter by
  actor "alice" found what the key did, as if done in alice's name), newlines and tabs (an audit table's rows
  broken), 5,000 characters. A key's name is now held to the x-actor rule, 1-128 letters, digits and ._:@-, a usage
  error (exit 2) naming --name otherwise, nothing written.
- A UNIQUE_COUNT product counted an event whose counted dimension was present but empty ("") as one more distinct
  value, where a missing one is INVALID_EVENT, and a missing pricing dimension is the same as an empty one. An
  empty value is now missing (INVALID_EVENT) for products created from now on (CreateProduct's server-set
  `empty_count_missing`); a product an earlier release created keeps counting it, so its journal replays as
  before.
- Price formula literals are not range-checked by design (pricing.proto: "The limits on a value ... hold the
  formula's value, not the numbers written in it"), but the value was checked before its rounding to 18 places:
  "999999999999999999.9999999999999999999 * 1" validated and published as a price of exactly 10^18, beyond the
  "below 10^18" limit. The rounded value is checked now (a publish the server marks `prices_rounded_in_range`;
  one journaled before keeps the older check, so its journal replays as before).

Products (card `card`, credits): `units` (event type `work`, SUM of `n`) at 1 credit a unit (the catalogue of
tests/test_audit_gateway2_wire.py)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import grpc
import msgspec
import pytest
from tariff import TariffClient, now_ms
from tariff.v1 import balance_pb2, contracts_pb2, pricing_pb2, usage_pb2

from engine import commands as cmd
from engine.billing import Billing
from engine.control import fingerprint
from engine.errors import InvalidArgument
from engine.products import Aggregation
from engine.versions import PublishResult
from server.convert import timestamp as stamp
from server.records import UsageRecord
from tests.audit_fixtures import refusal, release, serving
from tests.engine_fixtures import ACTOR, EPOCH_MS, HOUR_MS, World
from tests.engine_fixtures import rate as engine_rate
from tests.engine_fixtures import unit as engine_unit
from tests.kernel_fixtures import usage_event
from tests.serverproc import REPO_ROOT, ServerFactory, ServerProcess
from tests.test_audit_credits2_wire import CARD_FROM_MS, customer, grant
from tests.test_audit_gateway2_wire import batched, catalogue, request, work
from tests.test_cli import TARIFF
from tests.test_engine_rerate import calls_world

TEXT_BYTES_MAX = 256
QUOTED_CHARS_MAX = 128
EXIT_BROKEN_PIPE = 141


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root: Path = tmp_path_factory.mktemp("audit-leftovers")
    yield from serving(ServerProcess(root / "data", extra_args=["--close-grace", "off"]), catalogue)


@pytest.fixture(scope="module")
def holder(server: ServerProcess) -> str:
    """A customer (ALLOW) with 10 credits."""
    with server.client() as client:
        customer(client, "holder", block=False)
        grant(client, "holder", "g", "10")
    return "holder"


def test_a_release_naming_an_id_over_256_bytes_is_invalid_argument_naming_reservation_id(
    server: ServerProcess, holder: str
) -> None:
    """balance.proto: a reservation_id is "at most 256 bytes (more is INVALID_ARGUMENT naming reservation_id)", so
    no hold has a longer one; releasing one is the same malformed id, not a lookup. It answered NOT_FOUND with the
    whole id in its message (a 100,000-byte id, 100,000 bytes quoted back)."""
    with server.client() as client:
        for too_long in ("x" * (TEXT_BYTES_MAX + 1), "é" * 129, "y" * 100_000):
            code, details = refusal(lambda: release(client, holder, too_long))  # noqa: B023
            assert code == grpc.StatusCode.INVALID_ARGUMENT, (code, details[:200])
            assert details.startswith("reservation_id:"), details[:200]
            assert str(TEXT_BYTES_MAX) in details
            assert too_long[: QUOTED_CHARS_MAX + 1] not in details
        # 256 bytes exactly is an id a hold may have: a well-formed unknown one is NOT_FOUND.
        code, _ = refusal(lambda: release(client, holder, "z" * TEXT_BYTES_MAX))
        assert code == grpc.StatusCode.NOT_FOUND


def test_a_release_not_found_quotes_the_first_128_characters_of_the_id(server: ServerProcess, holder: str) -> None:
    """A quoted id is cut to its first 128 characters, "…" after the quote (contracts.proto, the id rule; balance.proto
    AuthorizeResponse.message): a 200-character unknown id is quoted as its first 128 and "…"."""
    unknown = "q" * 72 + "r" * 128
    with server.client() as client:
        code, details = refusal(lambda: release(client, holder, unknown))
    assert code == grpc.StatusCode.NOT_FOUND
    assert f"'{unknown[:QUOTED_CHARS_MAX]}'…" in details, details
    assert unknown[: QUOTED_CHARS_MAX + 1] not in details


def test_a_hold_with_an_id_over_256_bytes_is_refused_on_every_path(server: ServerProcess, holder: str) -> None:
    """Authorize: INVALID_ARGUMENT naming reservation_id; AuthorizeBatches: INVALID_REQUEST in-band, its message
    naming reservation_id and the limit, not quoting the id; nothing held either way."""
    too_long = "h" * 5_000
    with server.client() as client:
        code, details = refusal(lambda: client.balance.Authorize(request(holder, {"n": 1}, reservation_id=too_long)))
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        assert details.startswith("reservation_id:") and too_long[: QUOTED_CHARS_MAX + 1] not in details
        [answer] = batched(client, [request(holder, {"n": 1}, reservation_id=too_long, request_id="b1")])
        assert (answer.allowed, answer.reason, answer.reservation_id) == (False, "INVALID_REQUEST", "")
        assert answer.message.startswith("reservation_id:") and too_long[: QUOTED_CHARS_MAX + 1] not in answer.message
        assert str(client.get_balance(holder).credits_held) == "0"


def test_a_usage_notice_quotes_the_first_128_characters_of_the_reservation_id(
    server: ServerProcess, holder: str
) -> None:
    """usage.proto: an event naming a reservation_id that is no open hold of its customer is rated and noticed;
    the notice carries the id whole (reservation_id) and its message quotes it cut like any quoted id: a
    200-character id (within the 256 bytes an id may have) was quoted whole."""
    long_id = "n" * 72 + "m" * 128
    with server.client() as client:
        ack = client.ingest_batch([work("notice-1", holder, {"n": 1}, reservation_id=long_id)])
    assert ack.accepted == 1
    [notice] = ack.notices
    assert notice.reason == usage_pb2.NOTICE_RESERVATION_UNKNOWN
    assert notice.reservation_id == long_id
    assert f"'{long_id[:QUOTED_CHARS_MAX]}'…" in notice.message, notice.message[:300]
    assert long_id[: QUOTED_CHARS_MAX + 1] not in notice.message


def into_closed_pipe(*args: str) -> tuple[int, str]:
    """`tariff ARGS` with stdout a pipe whose reader has already gone (as after `| head -1` read its line): every
    write to stdout fails with EPIPE. The exit status and stderr."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("TARIFF_")}
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        done = subprocess.run(
            [str(TARIFF), *args], stdout=write_end, stderr=subprocess.PIPE, text=True, env=environment, cwd=REPO_ROOT
        )
    finally:
        os.close(write_end)
    return done.returncode, done.stderr


@pytest.mark.parametrize(
    "args",
    [("bench", "--help"), ("bench", "-h"), ("keys", "new", "--help"), ("serve", "--help"), ("migrate", "--help")],
    ids=lambda args: "-".join(a.strip("-") for a in args),
)
def test_help_into_a_closed_pipe_exits_141_quietly(args: tuple[str, ...]) -> None:
    """README, exit status: "141: stdout's reader stopped reading: the command ends quietly, nothing on stderr".
    `tariff bench --help` (argparse's help, not click's) exited 0."""
    assert into_closed_pipe(*args) == (EXIT_BROKEN_PIPE, "")


def test_bench_help_still_prints_and_exits_0() -> None:
    """The help itself is unchanged: on stdout, exit 0."""
    done = subprocess.run([str(TARIFF), "bench", "--help"], capture_output=True, text=True, cwd=REPO_ROOT)
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout.startswith("usage: tariff bench")


def keys_new(key_file: Path, name: str) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("TARIFF_")}
    command = [str(TARIFF), "keys", "new", "--name", name, "--role", "admin", "--file", str(key_file)]
    return subprocess.run(command, capture_output=True, text=True, env=environment, cwd=REPO_ROOT)


@pytest.mark.parametrize(
    "name",
    ["alice via ops", "a\nb", "tab\there", "x" * 129, "café", "ops\n", " ops", "bell\x07"],
    ids=["via", "newline", "tab", "129-chars", "non-ascii", "trailing-newline", "leading-space", "control"],
)
def test_keys_new_refuses_a_name_breaking_the_actor_rule_as_a_usage_error(tmp_path: Path, name: str) -> None:
    """A key's name is the audit log's actor (README "API keys"), held to the rule an x-actor is: 1-128 letters,
    digits and ._:@-. Otherwise exit 2 naming --name, no key printed, no file written."""
    key_file = tmp_path / "keys.toml"
    done = keys_new(key_file, name)
    assert (done.returncode, done.stdout) == (2, ""), done
    assert "--name" in done.stderr and "1-128" in done.stderr, done.stderr
    assert not key_file.exists()


def test_a_key_named_by_the_rule_is_the_audit_logs_actor(tmp_path: Path, server_factory: ServerFactory) -> None:
    """The longest name the rule allows, every punctuation it allows in it, names the key's changes in the audit
    log, and a filter by it finds them."""
    name = ("ops.team_1:eu@acme-" * 7)[:128]
    key_file = tmp_path / "keys.toml"
    made = keys_new(key_file, name)
    assert made.returncode == 0, made.stderr
    server = server_factory(extra_args=["--api-keys", str(key_file)], api_key=made.stdout.strip())
    with server.client() as client:
        create_customer(client, "named-1")
        entries = client.pricing.GetAuditLog(pricing_pb2.GetAuditLogRequest(actor=name)).entries
    assert [(e.actor, e.target) for e in entries] == [(name, "customer/named-1")]


def create_customer(client: TariffClient, customer_id: str) -> None:
    client.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id=customer_id, name=customer_id))


def seats_catalogue(client: TariffClient) -> None:
    """`seats` (event type `seat`, UNIQUE_COUNT of dimensions[user]) at 1 credit a distinct user, on card
    `seats-card`."""
    pricing = client.pricing
    product = pricing_pb2.Product(id="seats", event_type="seat", aggregation=pricing_pb2.UNIQUE_COUNT, value_key="user")
    pricing.CreateProduct(pricing_pb2.CreateProductRequest(product=product))
    pricing.CreateRateCard(pricing_pb2.CreateRateCardRequest(id="seats-card", pricing_unit="credits"))
    rates = [pricing_pb2.Rate(product_id="seats", unit=pricing_pb2.UnitPrice(price="1"))]
    pricing.CreateDraftVersion(pricing_pb2.CreateDraftVersionRequest(rate_card_id="seats-card", upsert_rates=rates))
    when = stamp(CARD_FROM_MS)
    pricing.PublishVersion(pricing_pb2.PublishVersionRequest(rate_card_id="seats-card", version=1, effective_from=when))


def seat(transaction_id: str, customer_id: str, dimensions: dict[str, str]) -> usage_pb2.UsageEvent:
    return usage_pb2.UsageEvent(
        transaction_id=transaction_id, customer_id=customer_id, event_type="seat", timestamp_ms=now_ms(),
        dimensions=dimensions,
    )  # fmt: skip


def test_a_unique_count_event_with_its_dimension_empty_is_invalid_like_one_without_it(
    server_factory: ServerFactory,
) -> None:
    """README: INVALID_EVENT for "a value the product needs missing, or for UNIQUE_COUNT the dimension it counts".
    An empty dimensions[user] is that dimension missing, as a missing pricing dimension is the empty one: refused
    alike, naming it; nothing charged. Users a and b then count 2 (2 credits), and the restart's replay keeps it."""
    server = server_factory()
    with server.client() as client:
        seats_catalogue(client)
        customer(client, "seater", block=False, rate_card_id="seats-card")
        ack = client.ingest_batch([seat("e-empty", "seater", {"user": ""}), seat("e-none", "seater", {})])
        assert ack.accepted == 0
        rejected = [(r.index, usage_pb2.RejectReason.Name(r.reason), r.message) for r in ack.rejected]
        needs = "dimensions['user'] is required by product 'seats'"
        assert rejected == [(0, "INVALID_EVENT", needs), (1, "INVALID_EVENT", needs)]

        # Authorize prices the event as ingestion would: the same answer for "" as for no user.
        def authorize(dimensions: dict[str, str]) -> object:
            request = balance_pb2.AuthorizeRequest(customer_id="seater", event_type="seat", dimensions=dimensions)
            return client.balance.Authorize(request)

        answers = [refusal(lambda: authorize({"user": ""})), refusal(lambda: authorize({}))]
        assert answers[0] == answers[1] and answers[0][0] == grpc.StatusCode.INVALID_ARGUMENT, answers
        ack = client.ingest_batch([seat("e-a", "seater", {"user": "a"}), seat("e-b", "seater", {"user": "b"})])
        assert ack.accepted == 2
        assert str(client.get_balance("seater").period_charges) == "2"
    server.restart()
    with server.client() as client:
        assert str(client.get_balance("seater").period_charges) == "2"


def test_a_unique_count_product_journaled_without_empty_count_missing_counts_an_empty_value_as_before() -> None:
    """A CreateProduct an earlier release journaled has no empty_count_missing: decoded, it reads False, and its
    product counts "" as a distinct value as it did (users "" and a: 2 units, 2 credits), so its journal replays to
    the same state. The field is the server's: in neither the retry fingerprint nor the audit entry."""
    made = cmd.CreateProduct(EPOCH_MS, ACTOR, "seats", "seats", "ai", Aggregation.UNIQUE_COUNT, "user", {}, (), "u")
    stored = msgspec.json.encode(made)
    assert b"empty_count_missing" in stored
    old = msgspec.json.decode(stored.replace(b',"empty_count_missing":false', b""), type=cmd.CreateProduct)
    assert old.empty_count_missing is False
    assert fingerprint(old) == fingerprint(msgspec.structs.replace(old, empty_count_missing=True))
    world = World()
    world.apply(old)
    world.rate_card()
    world.version([engine_rate("seats", engine_unit("1"))])
    world.customer()
    world.contract()
    billing = Billing(engine=world.engine)
    events = [
        usage_event(name, EPOCH_MS + HOUR_MS, {}, dimensions={"user": user}) for name, user in (("e1", ""), ("e2", "a"))
    ]
    ack = billing.ingest(usage_pb2.UsageBatch(events=events).SerializeToString(), EPOCH_MS + 2 * HOUR_MS)
    assert (ack.accepted, list(ack.rejected)) == (2, [])
    entries = [e for e in world.engine.state.audit if e.action == "CreateProduct"]
    assert entries and all("empty_count_missing" not in e.diff for e in entries)


ROUNDS_TO_LIMIT = "999999999999999999.9999999999999999999 * 1"


def test_a_formula_whose_price_rounds_to_10_18_is_refused_naming_the_field(server_factory: ServerFactory) -> None:
    """pricing.proto: a price field's value is below 10^18 and "the price is that value rounded half-even to 18
    decimal places": 999999999999999999.9999999999999999999 (19 places) rounds to 10^18, out of range. ValidateVersion
    lists it as an error naming the field; PublishVersion refuses it (INVALID_ARGUMENT naming
    version.rates[0].unit.price); nothing is published. The largest price, 999999999999999999.999999999999999999 (as
    a formula: "... * 1"), is still valid."""
    server = server_factory()
    with server.client() as client:
        pricing = client.pricing
        product = pricing_pb2.Product(id="big", event_type="big", aggregation=pricing_pb2.SUM, value_key="n")
        pricing.CreateProduct(pricing_pb2.CreateProductRequest(product=product))
        pricing.CreateRateCard(pricing_pb2.CreateRateCardRequest(id="big-card", pricing_unit="credits"))
        for price in (ROUNDS_TO_LIMIT, "999999999999999999.999999999999999999 * 1"):
            rates = [pricing_pb2.Rate(product_id="big", unit=pricing_pb2.UnitPrice(price=price))]
            pricing.CreateDraftVersion(
                pricing_pb2.CreateDraftVersionRequest(rate_card_id="big-card", upsert_rates=rates)
            )
        check = pricing.ValidateVersion(pricing_pb2.ValidateVersionRequest(rate_card_id="big-card", version=1))
        errors = [(f.path, f.message) for f in check.findings if f.severity == pricing_pb2.ERROR]
        assert not check.ok and [path for path, _ in errors] == ["rates[0].unit.price"], check
        assert "10^18" in errors[0][1]
        publish = pricing_pb2.PublishVersionRequest(
            rate_card_id="big-card", version=1, effective_from=stamp(CARD_FROM_MS)
        )
        code, details = refusal(lambda: pricing.PublishVersion(publish))
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        assert details.startswith("version.rates[0].unit.price:") and "10^18" in details, details
        versions = pricing.ListVersions(pricing_pb2.ListVersionsRequest(rate_card_id="big-card")).versions
        assert [v.state for v in versions] == [pricing_pb2.DRAFT, pricing_pb2.DRAFT]
        check = pricing.ValidateVersion(pricing_pb2.ValidateVersionRequest(rate_card_id="big-card", version=2))
        assert check.ok, check


def test_a_publish_journaled_without_prices_rounded_in_range_publishes_and_prices_as_before() -> None:
    """A PublishVersion an earlier release journaled has no prices_rounded_in_range: decoded, it reads False and
    publishes a version whose price rounds to 10^18 as it did, and the version compiles and prices an event, so its
    journal replays to the same state; the server's publish of the same draft is refused. The field is the
    server's: in neither the retry fingerprint nor the audit entry."""
    world = World()
    world.product("big", value_key="n", dimensions=())
    world.rate_card()
    number = world.draft([engine_rate("big", engine_unit(ROUNDS_TO_LIMIT))]).number
    stored = msgspec.json.encode(cmd.PublishVersion(EPOCH_MS, ACTOR, "card", number, EPOCH_MS))
    old = msgspec.json.decode(stored.replace(b',"prices_rounded_in_range":false', b""), type=cmd.PublishVersion)
    assert b"prices_rounded_in_range" in stored and old.prices_rounded_in_range is False
    asked = msgspec.structs.replace(old, prices_rounded_in_range=True)
    assert fingerprint(old) == fingerprint(asked)
    with pytest.raises(InvalidArgument, match="10\\^18"):
        world.engine.apply(asked, world.seq + 1)
    assert isinstance(world.apply(old), PublishResult)
    world.customer()
    world.contract()
    billing = Billing(engine=world.engine)
    batch = usage_pb2.UsageBatch(events=[usage_event("e1", EPOCH_MS + HOUR_MS, {"n": 1.0}, event_type="ai")])
    assert billing.ingest(batch.SerializeToString(), EPOCH_MS + 2 * HOUR_MS).accepted == 1
    entries = [e for e in world.engine.state.audit if e.action == "PublishVersion"]
    assert entries and all("prices_rounded_in_range" not in e.diff for e in entries)


def test_a_usage_event_naming_a_reservation_id_over_256_bytes_is_invalid_event(
    server: ServerProcess, holder: str
) -> None:
    """usage.proto: UsageEvent.reservation_id settles a hold, and no hold has an id over 256 bytes (balance.proto):
    such an event is INVALID_EVENT naming reservation_id, as one whose transaction_id is over 256 bytes, and charges
    nothing; the message does not quote the id. One of exactly 256 bytes is rated and noticed."""
    too_long = "v" * (TEXT_BYTES_MAX + 1)
    with server.client() as client:
        before = str(client.get_balance(holder).period_charges)
        ack = client.ingest_batch([work("long-res-1", holder, {"n": 1}, reservation_id=too_long)])
        assert ack.accepted == 0
        [rejected] = ack.rejected
        assert usage_pb2.RejectReason.Name(rejected.reason) == "INVALID_EVENT"
        assert rejected.message == f"reservation_id is longer than {TEXT_BYTES_MAX} bytes"
        assert str(client.get_balance(holder).period_charges) == before
        ack = client.ingest_batch([work("long-res-2", holder, {"n": 1}, reservation_id="w" * TEXT_BYTES_MAX)])
        assert ack.accepted == 1
        assert [usage_pb2.NoticeReason.Name(n.reason) for n in ack.notices] == ["NOTICE_RESERVATION_UNKNOWN"]


def test_a_batch_journaled_without_reservation_ids_bounded_rates_a_long_reservation_id_as_before() -> None:
    """A usage record an earlier release journaled has no reservation_ids_bounded: decoded, it reads False, and its
    batch replays as it was rated, the event with a 300-byte reservation_id accepted (and charged); the server's
    batches are rated with it, the event INVALID_EVENT."""
    stored = msgspec.msgpack.encode(UsageRecord(b"", 1, b"", 0, 0, 0, True, None, True))
    assert msgspec.msgpack.decode(stored, type=UsageRecord).reservation_ids_bounded is False
    event = usage_event("e1", EPOCH_MS + HOUR_MS, {"n": 1.0}, event_type="ai")
    event.reservation_id = "r" * 300
    batch = usage_pb2.UsageBatch(events=[event]).SerializeToString()
    received_ms = EPOCH_MS + 2 * HOUR_MS
    bounded = Billing(engine=contracted_calls().engine).ingest(batch, received_ms, reservation_ids_bounded=True)
    assert (bounded.accepted, bounded.rejected) == (0, ["INVALID_EVENT"])
    assert Billing(engine=contracted_calls().engine).ingest(batch, received_ms).accepted == 1


def contracted_calls() -> World:
    """tests/test_engine_rerate.py's calls world (`calls`, SUM of `n`, event type `ai`, 1 a unit) with acme's
    contract."""
    world = calls_world()
    world.contract()
    return world


def test_keys_new_with_stdout_closed_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    """README, exit status 2: "a client command whose stdout is closed (`>&-`): nothing is sent"; `keys new` prints
    the key once, on stdout: with nowhere to print it, it adds nothing (it exited 0 with the key in the file)."""
    key_file = tmp_path / "keys.toml"
    environment = {k: v for k, v in os.environ.items() if not k.startswith("TARIFF_")}
    command = [str(TARIFF), "keys", "new", "--name", "ops", "--role", "admin", "--file", str(key_file)]
    done = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=environment)
    assert done.returncode == 0 and key_file.exists()  # /dev/null is a place to print to: the key is made
    key_file.unlink()
    done = subprocess.run(
        [*command[:-1], str(key_file)], stderr=subprocess.PIPE, text=True, env=environment, close_fds=True,
        preexec_fn=lambda: os.close(1),
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "stdout is closed" in done.stderr
    assert not key_file.exists()


def test_keys_new_into_a_closed_pipe_exits_141_and_leaves_the_file_as_it_was(tmp_path: Path) -> None:
    """README, exit status 141; "no key printed, the file left as it was": a key that could not be printed is
    taken out again (it stayed in the file, held by nobody). An existing file keeps exactly its entries."""
    key_file = tmp_path / "keys.toml"
    assert into_closed_pipe("keys", "new", "--name", "ops", "--role", "admin", "--file", str(key_file)) == (141, "")
    assert not key_file.exists()
    made = keys_new(key_file, "first")
    assert made.returncode == 0, made.stderr
    before = key_file.read_bytes()
    assert into_closed_pipe("keys", "new", "--name", "second", "--role", "read", "--file", str(key_file)) == (141, "")
    assert key_file.read_bytes() == before
