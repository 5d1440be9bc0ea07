/**
 * The TypeScript client against a real Tariff server process (demo catalogue): streaming usage
 * with UsageSender, balances, the gateway's authorize(), and the API-key metadata; a sender waiting
 * out an overloaded server (RESOURCE_EXHAUSTED with RetryInfo).
 */

import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { rmSync } from "node:fs";
import http2 from "node:http2";
import path from "node:path";
import { after, before, describe, test } from "node:test";

import { AuthorizeError, Code, ConnectError, TariffClient, fieldViolations, type IngestAck } from "../src/index.js";
import { micros } from "./support/money.js";
import { CUSTOMER, EVENT_KINDS, EVENT_TYPE, PREPAID_CREDITS, demoEvent } from "./support/events.js";
import { TariffServer, freePort, startDemoServer, tempDir } from "./support/server.js";

describe("against a demo server", () => {
  let server: TariffServer;
  let cleanup: () => Promise<void>;
  let client: TariffClient;

  before(async () => {
    ({ server, cleanup } = await startDemoServer("client"));
    client = new TariffClient(server.target);
  });

  after(async () => {
    client?.close();
    await cleanup?.();
  });

  test("authorize prices the described usage as ingestion would, without charging", async () => {
    const before = micros((await client.getBalance(CUSTOMER)).creditsRemaining);
    for (const kind of EVENT_KINDS) {
      const decision = await client.authorize({ customerId: CUSTOMER, eventType: EVENT_TYPE, dimensions: kind.dimensions });
      assert.equal(decision.allowed, true);
      assert.equal(decision.degraded, false);
      assert.equal(micros(decision.estimatedCost), micros(kind.price), `price of ${JSON.stringify(kind.dimensions)}`);
      assert.match(decision.requestId, /^auth-/);
    }
    // Unary Authorize answers a caller's mistake with a status (NOT_FOUND), and onUnavailable
    // (a policy for an unreachable server) never turns it into a decision.
    await assert.rejects(
      client.authorize(
        { customerId: "nobody", eventType: EVENT_TYPE, dimensions: EVENT_KINDS[0]!.dimensions },
        { onUnavailable: "allow" },
      ),
      (error: unknown) => error instanceof ConnectError && error.code === Code.NotFound,
    );
    assert.equal(micros((await client.getBalance(CUSTOMER)).creditsRemaining), before, "authorize charged nothing");
    // A hold asked for without an id goes by the id the client chose before the call.
    const hold = await client.authorize({ customerId: CUSTOMER, eventType: EVENT_TYPE, dimensions: EVENT_KINDS[0]!.dimensions, reserve: true });
    assert.deepEqual([hold.allowed, hold.reservationId.startsWith("ts-r-")], [true, true], JSON.stringify(hold));
    await client.balance.releaseReservation({ customerId: CUSTOMER, reservationId: hold.reservationId });
  });

  test("a hold whose call failed, retried with the reservation id its error names, is held once", async () => {
    const kind = EVENT_KINDS[0]!;
    const input = { customerId: CUSTOMER, eventType: EVENT_TYPE, dimensions: kind.dimensions, reserve: true };
    const heldBefore = micros((await client.getBalance(CUSTOMER)).creditsHeld);
    // A deadline too short for an answer: the call fails whether or not the server made the hold before it ran out
    // (should an answer come in time, its decision names the id instead).
    const first = await client.authorize(input, { timeoutMs: 1 }).then(
      (decision) => decision.reservationId,
      (error: unknown) => (error instanceof AuthorizeError ? error.reservationId : `not an AuthorizeError: ${error}`),
    );
    assert.ok(first.startsWith("ts-r-"), first);
    const retried = await client.authorize({ ...input, reservationId: first });
    assert.deepEqual([retried.allowed, retried.reservationId], [true, first], JSON.stringify(retried));
    // The first call, should it reach the server after the retry, finds the hold made: one hold either way.
    const again = await client.authorize({ ...input, reservationId: first });
    assert.equal(again.reservationId, first);
    const heldAfter = micros((await client.getBalance(CUSTOMER)).creditsHeld);
    assert.equal(heldAfter - heldBefore, micros(kind.price), "held once");
    await client.balance.releaseReservation({ customerId: CUSTOMER, reservationId: first });
  });

  test("fieldViolations reads the google.rpc.BadRequest of an INVALID_ARGUMENT: the field the server names", async () => {
    const error = await client.contracts
      .createCustomer({ id: `named-${randomUUID()}`, name: "n".repeat(300) })
      .then(
        () => assert.fail("a 300-byte name was accepted"),
        (e: unknown) => ConnectError.from(e),
      );
    assert.equal(error.code, Code.InvalidArgument);
    const violations = fieldViolations(error);
    assert.deepEqual(
      violations.map((v) => v.field),
      ["name"],
    );
    assert.match(violations[0]!.description, /256 bytes/);
    assert.deepEqual(fieldViolations(new ConnectError("no details", Code.InvalidArgument)), []);
    // authorize() throws an AuthorizeError, which keeps the status's details.
    const refused = await client
      .authorize({ customerId: CUSTOMER, eventType: EVENT_TYPE, reserve: true, reservationTtlMs: -1 })
      .then(
        () => assert.fail("a negative reservation TTL was accepted"),
        (e: unknown) => e,
      );
    assert.ok(refused instanceof AuthorizeError && refused.code === Code.InvalidArgument, String(refused));
    assert.ok(!(new ConnectError("not from authorize()") instanceof AuthorizeError), "any ConnectError passed for one");
    assert.deepEqual(
      fieldViolations(refused).map((v) => v.field),
      ["reservation_ttl"],
    );
  });

  test("an authorize streamer answers many concurrent decisions over one stream, matched by request_id", async () => {
    const streamer = client.authorizeStreamer({ timeoutMs: 10_000 });
    try {
      const inputs = Array.from({ length: 200 }, (_, i) => ({
        requestId: `gw-${i}`,
        customerId: i % 50 === 49 ? "nobody" : CUSTOMER,
        eventType: EVENT_TYPE,
        dimensions: EVENT_KINDS[i % EVENT_KINDS.length]!.dimensions,
      }));
      const decisions = await Promise.all(inputs.map((input) => streamer.authorize(input)));
      decisions.forEach((decision, i) => {
        assert.equal(decision.requestId, `gw-${i}`);
        if (inputs[i]!.customerId === CUSTOMER) {
          assert.deepEqual([decision.allowed, decision.reason], [true, "OK"], `decision ${i}`);
          assert.equal(micros(decision.estimatedCost), micros(EVENT_KINDS[i % EVENT_KINDS.length]!.price));
        } else {
          // On the stream an unknown customer is answered in-band, not with a status.
          assert.deepEqual([decision.allowed, decision.reason], [false, "UNKNOWN_CUSTOMER"], `decision ${i}`);
        }
      });
      assert.equal(streamer.streamsOpened, 1);
      assert.equal(streamer.inFlight, 0);

      const first = streamer.authorize({ ...inputs[0]!, requestId: "same" });
      await assert.rejects(
        streamer.authorize({ ...inputs[0]!, requestId: "same" }),
        (error: unknown) => error instanceof ConnectError && error.code === Code.InvalidArgument,
      );
      assert.equal((await first).allowed, true);
    } finally {
      streamer.close();
    }
  });

  test("a usage sender streams batches; every event is acked once and the balance drops by their exact price", async () => {
    const runId = `stream-${randomUUID()}`;
    const eventCount = 1_000;
    const before = await client.getBalance(CUSTOMER);
    const acks: IngestAck[] = [];
    const sender = client.usageSender({ batchEventsMax: 64, inflightBatchesMax: 4, onAck: (ack) => acks.push(ack) });
    let expectedMicros = 0n;
    const nowMs = Date.now();
    for (let i = 0; i < eventCount; i += 1) {
      const { usage, kind } = demoEvent(runId, i, nowMs);
      expectedMicros += micros(kind.price);
      await sender.send(usage);
    }
    const stats = await sender.close();

    assert.equal(stats.eventsAccepted, eventCount);
    assert.equal(stats.eventsDuplicate, 0);
    assert.equal(stats.eventsRejected, 0);
    assert.equal(stats.reconnects, 0);
    assert.equal(stats.bufferedEvents, 0);
    assert.equal(acks.length, Math.ceil(eventCount / 64), "one ack per batch of 64");
    assert.equal(new Set(acks.map((ack) => ack.batchId)).size, acks.length, "batch ids are unique");
    const seqs = acks.map((ack) => ack.journalSeq);
    assert.deepEqual([...seqs].sort((a, b) => (a < b ? -1 : a > b ? 1 : 0)), seqs, "acks come in journal order");

    const afterBalance = await client.getBalance(CUSTOMER);
    assert.equal(micros(before.creditsRemaining) - micros(afterBalance.creditsRemaining), expectedMicros);
    assert.ok(afterBalance.asOfSeq >= seqs[seqs.length - 1]!, "the balance reflects the last acked batch");
  });

  test("ingestBatch (unary) returns the ack once durable; a retry of the same batch is all duplicates", async () => {
    const runId = `unary-${randomUUID()}`;
    const before = micros((await client.getBalance(CUSTOMER)).creditsRemaining);
    const events = [0, 1, 2].map((i) => demoEvent(runId, i, Date.now()));
    const ack = await client.ingestBatch(events.map((e) => e.usage), `${runId}-b`);
    assert.deepEqual([ack.batchId, ack.accepted, ack.duplicates, ack.rejected.length], [`${runId}-b`, 3, 0, 0]);
    const retry = await client.ingestBatch(events.map((e) => e.usage), `${runId}-b`);
    assert.deepEqual([retry.accepted, retry.duplicates], [0, 3]);
    const price = events.reduce((sum, e) => sum + micros(e.kind.price), 0n);
    assert.equal(before - micros((await client.getBalance(CUSTOMER)).creditsRemaining), price, "charged once");
  });

  test("sendBatch resolves with the ack; an identical resend is all duplicates and charges nothing", async () => {
    const runId = `resend-${randomUUID()}`;
    const events = Array.from({ length: 10 }, (_, i) => demoEvent(runId, i, Date.now()).usage);
    const sender = client.usageSender();
    const first = await sender.sendBatch(events, `${runId}-b`);
    const balance = micros((await client.getBalance(CUSTOMER)).creditsRemaining);
    const second = await sender.sendBatch(events, `${runId}-b-again`);
    await sender.close();

    assert.equal(first.batchId, `${runId}-b`);
    assert.deepEqual([first.accepted, first.duplicates, first.rejected.length], [10, 0, 0]);
    assert.equal(second.batchId, `${runId}-b-again`);
    assert.deepEqual([second.accepted, second.duplicates, second.rejected.length], [0, 10, 0]);
    assert.equal(micros((await client.getBalance(CUSTOMER)).creditsRemaining), balance);
  });

  test("per-event rejections come back in the ack and do not sink the batch", async () => {
    const runId = `reject-${randomUUID()}`;
    const good = demoEvent(runId, 0, Date.now()).usage;
    const unknownCustomer = { ...demoEvent(runId, 1, Date.now()).usage, customerId: "nobody" };
    const sender = client.usageSender();
    const ack = await sender.sendBatch([good, unknownCustomer]);
    await sender.close();
    assert.equal(ack.accepted, 1);
    assert.equal(ack.rejected.length, 1);
    assert.equal(ack.rejected[0]!.index, 1);
    assert.equal(ack.rejected[0]!.transactionId, unknownCustomer.transactionId);
  });

  test("the buffer is bounded: send() waits while bufferEventsMax events are unacknowledged", async () => {
    const runId = `bounded-${randomUUID()}`;
    const bufferEventsMax = 40;
    const sender = client.usageSender({ batchEventsMax: 10, bufferEventsMax, inflightBatchesMax: 2 });
    let highWater = 0;
    for (let i = 0; i < 400; i += 1) {
      await sender.send(demoEvent(runId, i, Date.now()).usage);
      highWater = Math.max(highWater, sender.stats.bufferedEvents);
      assert.ok(sender.stats.bufferedEvents <= bufferEventsMax, `held ${sender.stats.bufferedEvents} events`);
    }
    const stats = await sender.close();
    assert.equal(highWater, bufferEventsMax, "the producer outran the server and was held at the bound");
    assert.equal(stats.eventsAccepted, 400);
  });

  test("a status retrying cannot fix fails the sender with that status", async () => {
    const sender = client.usageSender({ batchEventsMax: 20_000, bufferEventsMax: 20_000 });
    const events = Array.from({ length: 10_001 }, (_, i) => demoEvent(`too-big-${randomUUID()}`, i, Date.now()).usage);
    await assert.rejects(sender.sendBatch(events), (error: unknown) => {
      assert.ok(error instanceof ConnectError);
      assert.equal(error.code, Code.ResourceExhausted);
      return true;
    });
    await assert.rejects(sender.close(), (error: unknown) => error instanceof ConnectError && error.code === Code.ResourceExhausted);
    assert.equal(sender.stats.reconnects, 0, "not retried");
  });
});

describe("against an overloaded server", () => {
  let server: TariffServer;
  let dir: string;

  before(async () => {
    dir = tempDir("busy");
    server = new TariffServer(path.join(dir, "data"), { demo: true, extraArgs: ["--max-concurrent-rpcs", "1"] });
    await server.start();
  });

  after(async () => {
    await server?.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  test("a usage sender waits out RESOURCE_EXHAUSTED with RetryInfo and delivers every event", async () => {
    const holder = new TariffClient(server.target);
    const client = new TariffClient(server.target);
    try {
      // The one call the server runs: every other call is refused, with RetryInfo, while it lasts.
      const watching = new AbortController();
      const watch = holder.balance.watchBalance({ customerId: CUSTOMER }, { signal: watching.signal })[Symbol.asyncIterator]();
      await watch.next();
      const sender = client.usageSender({ batchEventsMax: 1 });
      const { usage, kind } = demoEvent(`busy-${randomUUID()}`, 0, Date.now());
      await sender.send(usage);
      // Until the sender's stream was refused and reopened, or the sender failed (what it did before).
      const safety = Date.now() + 20_000;
      while (sender.stats.reconnects < 1 && sender.error === undefined) {
        assert.ok(Date.now() < safety, "the sender neither reconnected nor failed");
        await new Promise((resolve) => setTimeout(resolve, 10));
      }
      assert.equal(sender.error, undefined, `the sender gave up on a busy server: ${String(sender.error)}`);
      watching.abort(); // the server has room again
      await watch.next().catch(() => undefined);
      const stats = await sender.close();
      assert.equal(stats.eventsAccepted, 1);
      assert.ok(stats.reconnects >= 1, JSON.stringify(stats));
      const balance = await client.getBalance(CUSTOMER);
      assert.equal(micros(balance.creditsRemaining), micros(PREPAID_CREDITS) - micros(kind.price));
    } finally {
      holder.close();
      client.close();
    }
  });
});

describe("without a server", () => {
  test("authorize's onUnavailable policy decides when the server cannot be reached", async () => {
    const client = new TariffClient(`127.0.0.1:${await freePort()}`);
    try {
      const input = { customerId: CUSTOMER, eventType: EVENT_TYPE };
      const open = await client.authorize(input, { onUnavailable: "allow", timeoutMs: 2_000 });
      assert.deepEqual([open.allowed, open.degraded, open.reason], [true, true, "UNAVAILABLE"]);
      const closed = await client.authorize(input, { onUnavailable: "deny", timeoutMs: 2_000 });
      assert.deepEqual([closed.allowed, closed.degraded, closed.reason], [false, true, "UNAVAILABLE"]);
      await assert.rejects(
        client.authorize(input, { timeoutMs: 2_000 }),
        (error: unknown) => error instanceof ConnectError && error.code === Code.Unavailable,
      );
      const streamer = client.authorizeStreamer({ onUnavailable: "deny" });
      const streamed = await streamer.authorize(input);
      assert.deepEqual([streamed.allowed, streamed.degraded, streamed.reason], [false, true, "UNAVAILABLE"]);
      // A hold asked for without an id gets one chosen by the client before the call: a degraded decision carries
      // it, since the server may have journaled the hold before the deadline (the usage event settles it by that id).
      const reserve = { ...input, reserve: true };
      const held = await client.authorize(reserve, { onUnavailable: "allow", timeoutMs: 2_000 });
      assert.deepEqual([held.degraded, held.reservationId.startsWith("ts-r-")], [true, true], JSON.stringify(held));
      const streamedHold = await streamer.authorize(reserve, { onUnavailable: "allow" });
      assert.ok(streamedHold.reservationId.startsWith("ts-r-"), JSON.stringify(streamedHold));
      assert.notEqual(streamedHold.reservationId, held.reservationId);
      // With the default policy ("throw") the error names the ids instead: without them a retry would choose another
      // reservation id and hold the credit twice.
      for (const decide of [client.authorize.bind(client), streamer.authorize.bind(streamer)]) {
        await assert.rejects(
          decide({ ...reserve, requestId: "r-hold" }, { onUnavailable: "throw", timeoutMs: 2_000 }),
          (error: unknown) => {
            assert.ok(error instanceof AuthorizeError && error instanceof ConnectError, String(error));
            assert.equal(error.code, Code.Unavailable);
            assert.equal(error.requestId, "r-hold");
            assert.ok(error.reservationId.startsWith("ts-r-"), `reservationId ${error.reservationId}`);
            return true;
          },
        );
      }
      streamer.close();
    } finally {
      client.close();
    }
  });

  test("unaryTimeoutMs bounds every unary call without a timeout of its own, the generated clients' included", async () => {
    // A bare HTTP/2 server that takes each request and never answers it.
    const silent = http2.createServer();
    // The client's close() ends its connection with GOAWAY(CANCEL): an error for the server's session and streams.
    silent.on("session", (session) => session.on("error", () => undefined));
    silent.on("stream", (stream) => stream.on("error", () => undefined));
    await new Promise<void>((resolve) => silent.listen(0, "127.0.0.1", resolve));
    const address = silent.address();
    assert.ok(address !== null && typeof address === "object");
    const client = new TariffClient(`127.0.0.1:${address.port}`, { unaryTimeoutMs: 300 });
    let safety: NodeJS.Timeout | undefined;
    try {
      const gaveUp = new Promise<string>((resolve) => {
        safety = setTimeout(() => resolve("still waiting after 20 s"), 20_000);
      });
      const outcome = await Promise.race([
        client.contracts.createCustomer({ id: "acme-2" }).then(
          () => "answered",
          (e: unknown) => ConnectError.from(e).code,
        ),
        gaveUp,
      ]);
      assert.equal(outcome, Code.DeadlineExceeded, "a generated unary call on a silent server");
      // The caller's own timeoutMs wins over the client's.
      await assert.rejects(
        client.pricing.listRateCards({}, { timeoutMs: 50 }),
        (e: unknown) => ConnectError.from(e).code === Code.DeadlineExceeded,
      );
    } finally {
      clearTimeout(safety);
      client.close();
      await new Promise<void>((resolve) => silent.close(() => resolve()));
    }
  });

  test("an apiKey is sent as `authorization: Bearer KEY` metadata on every call", async () => {
    // A bare HTTP/2 server that records each request's headers and answers UNAUTHENTICATED.
    const seen: http2.IncomingHttpHeaders[] = [];
    const fake = http2.createServer();
    fake.on("stream", (stream, headers) => {
      seen.push(headers);
      stream.respond({ ":status": 200, "content-type": "application/grpc" }, { waitForTrailers: true });
      stream.on("wantTrailers", () => stream.sendTrailers({ "grpc-status": "16", "grpc-message": "no key" }));
      stream.end();
    });
    await new Promise<void>((resolve) => fake.listen(0, "127.0.0.1", resolve));
    const address = fake.address();
    assert.ok(address !== null && typeof address === "object");
    const withKey = new TariffClient(`127.0.0.1:${address.port}`, { apiKey: "k-123" });
    const withoutKey = new TariffClient(`127.0.0.1:${address.port}`);
    try {
      await assert.rejects(withKey.getBalance(CUSTOMER), (e: unknown) => ConnectError.from(e).code === Code.Unauthenticated);
      await assert.rejects(withKey.authorize({ customerId: CUSTOMER, eventType: EVENT_TYPE }));
      await assert.rejects(withoutKey.getBalance(CUSTOMER));
      assert.equal(seen.length, 3);
      assert.equal(seen[0]![":path"], "/tariff.v1.BalanceService/GetBalance");
      assert.equal(seen[0]!["authorization"], "Bearer k-123");
      assert.equal(seen[1]![":path"], "/tariff.v1.BalanceService/Authorize");
      assert.equal(seen[1]!["authorization"], "Bearer k-123");
      assert.equal(seen[2]!["authorization"], undefined);
    } finally {
      withKey.close();
      withoutKey.close();
      await new Promise<void>((resolve) => fake.close(() => resolve()));
    }
  });
});
