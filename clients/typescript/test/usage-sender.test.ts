/**
 * The UsageSender against an in-process fake UsageService (a connect-node gRPC server) whose behaviour a real server
 * does not offer on demand: a stream that acks and then ends with nothing outstanding (retry accounting), a stream
 * that takes batches and never acks them (the ack timeout).
 */

import assert from "node:assert/strict";
import http2 from "node:http2";
import type { AddressInfo } from "node:net";
import { test } from "node:test";

import { Code, ConnectError, type ConnectRouter } from "@connectrpc/connect";
import { connectNodeAdapter } from "@connectrpc/connect-node";

import { TariffClient, UsageService, create, IngestAckSchema, type UsageBatch } from "../src/index.js";
import { demoEvent } from "./support/events.js";

/** Serves UsageService.IngestUsage: stream n (from 1) answers each batch with answer(n, batch). */
async function startFake(
  answer: (stream: number, batch: UsageBatch) => "refuse" | "ack" | "ack-then-end" | "ack-then-break" | "silent",
): Promise<{ target: string; received: string[][]; openedAt: number[]; receivedAt: number[][]; stop: () => Promise<void> }> {
  const received: string[][] = [];
  const openedAt: number[] = []; // performance.now() of each stream's opening
  const receivedAt: number[][] = [];
  const routes = (router: ConnectRouter): void => {
    router.service(UsageService, {
      async *ingestUsage(requests) {
        received.push([]);
        receivedAt.push([]);
        openedAt.push(performance.now());
        const stream = received.length;
        for await (const batch of requests) {
          received[stream - 1]!.push(batch.batchId);
          receivedAt[stream - 1]!.push(performance.now());
          const what = answer(stream, batch);
          if (what === "silent") {
            continue;
          }
          if (what === "refuse") {
            throw new ConnectError(`stream ${stream} refused`, Code.Unavailable);
          }
          yield create(IngestAckSchema, { batchId: batch.batchId, accepted: batch.events.length });
          if (what === "ack-then-end") {
            return;
          }
          if (what === "ack-then-break") {
            throw new ConnectError("connection reset while idle", Code.Unavailable);
          }
        }
      },
    });
  };
  const server = http2.createServer(connectNodeAdapter({ routes }));
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as AddressInfo;
  return {
    target: `127.0.0.1:${port}`,
    received,
    openedAt,
    receivedAt,
    stop: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}

// Stream 1 refuses the first batch, stream 2 acks it and then ends with nothing outstanding (with OK, or broken: the
// connection lost while idle), stream 3 refuses the second batch, stream 4 acks it. With attemptsMax 2 the sender
// must not add stream 3's failure to stream 1's: stream 2 acked and ended with nothing lost in between.
for (const idleEnd of ["ack-then-end", "ack-then-break"] as const) {
  test(`a stream that ends with nothing outstanding (${idleEnd}) starts the failure count afresh`, async () => {
    const fake = await startFake((stream) => (stream === 1 || stream === 3 ? "refuse" : stream === 2 ? idleEnd : "ack"));
    const client = new TariffClient(fake.target);
    try {
      const sender = client.usageSender({ retry: { attemptsMax: 2, initialBackoffMs: 1, maxBackoffMs: 1 } });
      const ended = (): number => (sender as unknown as { streamsEnded: number }).streamsEnded;
      assert.equal((await sender.sendBatch([demoEvent("healthy", 0, 1_700_000_000_000).usage], "b-1")).accepted, 1);
      // Until stream 2 has ended, so that b-2 goes out on stream 3.
      while (ended() < 2) {
        await new Promise((resolve) => setTimeout(resolve, 5));
      }
      assert.equal((await sender.sendBatch([demoEvent("healthy", 1, 1_700_000_000_000).usage], "b-2")).accepted, 1);
      const stats = await sender.close();
      assert.deepEqual(fake.received, [["b-1"], ["b-1"], ["b-2"], ["b-2"]]);
      assert.deepEqual(
        { reconnects: stats.reconnects, resentBatches: stats.resentBatches, batchesAcked: stats.batchesAcked },
        { reconnects: 3, resentBatches: 2, batchesAcked: 2 },
      );
    } finally {
      client.close();
      await fake.stop();
    }
  });
}

// "Reconnect when batches are outstanding and no ack came for ackTimeoutMs": counted from the oldest batch not
// acknowledged (or the last ack), as the Go, Python and Java senders count it. Every write restarted it, so batches
// written now and then to a server that had fallen silent pushed the reconnect back by ackTimeoutMs each.
test("the ack timeout counts from the oldest unacknowledged batch, not from the latest write", async () => {
  const ackTimeoutMs = 2_000;
  const fake = await startFake((stream) => (stream === 1 ? "silent" : "ack"));
  const client = new TariffClient(fake.target);
  try {
    const sender = client.usageSender({ ackTimeoutMs });
    const first = sender.sendBatch([demoEvent("silent", 0, 1_700_000_000_000).usage], "b-1");
    while (fake.receivedAt[0]?.length !== 1) {
      await new Promise((resolve) => setTimeout(resolve, 5));
    }
    await new Promise((resolve) => setTimeout(resolve, ackTimeoutMs * 0.9));
    const second = sender.sendBatch([demoEvent("silent", 1, 1_700_000_000_000).usage], "b-2");
    await Promise.all([first, second]);
    await sender.close();
    assert.deepEqual(fake.received, [["b-1", "b-2"], ["b-1", "b-2"]]);
    const sinceOldestMs = fake.openedAt[1]! - fake.receivedAt[0]![0]!;
    // A bound on a failure mode, not a speed measurement: about ackTimeoutMs after b-1 (2,000), where restarting the
    // timer at b-2's write made it about 3,800.
    assert.ok(sinceOldestMs < ackTimeoutMs * 1.45, `the second stream opened ${sinceOldestMs} ms after b-1 was written`);
  } finally {
    client.close();
    await fake.stop();
  }
});
