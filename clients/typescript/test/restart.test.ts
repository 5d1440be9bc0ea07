/**
 * kill -9 the server while usage batches are in flight, restart it on the same port and data
 * directory, and check that the UsageSender's reconnect-and-resend loses nothing acknowledged and
 * counts nothing twice (the TypeScript side of tests/test_crash.py).
 */

import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { after, before, test } from "node:test";

import { TariffClient, type IngestAck, type UsageBatch } from "../src/index.js";
import { micros } from "./support/money.js";
import { CUSTOMER, PREPAID_CREDITS, demoEvent } from "./support/events.js";
import { startDemoServer, type TariffServer } from "./support/server.js";

const EVENT_COUNT = 4_000;
const BATCH_EVENTS_MAX = 50;
const KILL_AFTER_ACKS = 5;

let server: TariffServer;
let cleanup: () => Promise<void>;

before(async () => {
  ({ server, cleanup } = await startDemoServer("restart"));
});

after(async () => {
  await cleanup?.();
});

test("kill -9 mid-stream and restart: every event is counted exactly once", async (t) => {
  const runId = `crash-${randomUUID()}`;
  const client = new TariffClient(server.target);
  const acked: Array<{ ack: IngestAck; eventCount: number }> = [];
  let restarted: Promise<void> | undefined;
  let inFlightAtKill = -1;
  let ackedBeforeKill = 0;
  const sender = client.usageSender({
    batchEventsMax: BATCH_EVENTS_MAX,
    inflightBatchesMax: 8,
    bufferEventsMax: 1_000,
    retry: { initialBackoffMs: 50, maxBackoffMs: 250, attemptsMax: 200, elapsedMaxMs: 30_000 },
    onAck: (ack: IngestAck, batch: UsageBatch) => {
      acked.push({ ack, eventCount: batch.events.length });
      if (acked.length === KILL_AFTER_ACKS && restarted === undefined) {
        // Synchronously, from inside the ack: the producer is ahead, so batches are in flight.
        const stats = sender.stats;
        inFlightAtKill = stats.batchesSent - stats.batchesAcked;
        ackedBeforeKill = stats.eventsAccepted;
        restarted = server.restart();
      }
    },
  });

  // A gateway's authorize stream, open across the crash: the first call after the restart reopens it.
  const streamer = client.authorizeStreamer({ timeoutMs: 10_000 });
  const gatewayCheck = { customerId: CUSTOMER, eventType: "ai_action", dimensions: { action: "summary" } };
  assert.equal((await streamer.authorize(gatewayCheck)).allowed, true);

  let expectedMicros = 0n;
  const events = [];
  const nowMs = Date.now();
  try {
    for (let i = 0; i < EVENT_COUNT; i += 1) {
      const { usage, kind } = demoEvent(runId, i, nowMs);
      events.push(usage);
      expectedMicros += micros(kind.price);
      await sender.send(usage);
    }
    const stats = await sender.close();
    await restarted;
    t.diagnostic(`sender after the restart: ${JSON.stringify(stats)}; batches in flight at the kill: ${inFlightAtKill}`);

    assert.ok(restarted !== undefined, "the server was killed mid-stream");
    assert.equal(server.starts, 2);
    assert.ok(inFlightAtKill > 0, `batches were in flight at the kill (${inFlightAtKill})`);
    assert.ok(stats.reconnects >= 1, "the sender reconnected");
    assert.ok(stats.resentBatches >= 1, "unacknowledged batches were resent");

    // Every batch acked exactly once; accepted + duplicates covers every event, none rejected.
    const batchIds = acked.map(({ ack }) => ack.batchId);
    assert.equal(new Set(batchIds).size, batchIds.length, "no batch acked twice");
    assert.equal(acked.reduce((n, { eventCount }) => n + eventCount, 0), EVENT_COUNT);
    assert.equal(stats.eventsAccepted + stats.eventsDuplicate, EVENT_COUNT);
    assert.equal(stats.eventsRejected, 0);
    // Duplicates can only come from resent batches (committed before the kill, ack lost).
    assert.ok(stats.eventsDuplicate <= stats.resentBatches * BATCH_EVENTS_MAX);
    assert.ok(ackedBeforeKill > 0 && ackedBeforeKill < EVENT_COUNT);

    // The balance counts every event exactly once: nothing acknowledged lost, nothing doubled.
    const balance = await client.getBalance(CUSTOMER);
    assert.equal(micros(balance.creditsRemaining), micros(PREPAID_CREDITS) - expectedMicros);

    const afterRestart = await streamer.authorize(gatewayCheck);
    assert.equal(afterRestart.allowed, true);
    assert.equal(micros(afterRestart.creditsAvailable), micros(balance.creditsAvailable));
    assert.equal(streamer.streamsOpened, 2, "the broken stream was replaced by one new stream");

    // And all of them are durable: resending everything is all duplicates.
    const check = client.usageSender({ batchEventsMax: 1_000, bufferEventsMax: EVENT_COUNT });
    const resent = await check.sendBatch(events);
    await check.close();
    assert.deepEqual([resent.accepted, resent.duplicates, resent.rejected.length], [0, EVENT_COUNT, 0]);
    assert.equal(micros((await client.getBalance(CUSTOMER)).creditsRemaining), micros(balance.creditsRemaining));
  } finally {
    sender.abort();
    streamer.close();
    client.close();
  }
});
