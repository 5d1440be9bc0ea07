/**
 * A UsageSender against a server that accepts TCP connections but never answers (a SIGSTOPped process: the kernel
 * still completes the handshake into the listen backlog) gives up within about its retry.elapsedMaxMs, with
 * UNAVAILABLE. It took the ack timeout (60 s) and more: 90 s for an elapsedMaxMs of 2,000.
 */

import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { readFileSync, readdirSync } from "node:fs";
import { createServer, type AddressInfo } from "node:net";
import { setTimeout as sleep } from "node:timers/promises";
import { after, before, test } from "node:test";

import { Code, ConnectError } from "@connectrpc/connect";

import { TariffClient } from "../src/index.js";
import { demoEvent } from "./support/events.js";
import { startDemoServer, type TariffServer } from "./support/server.js";

let server: TariffServer;
let cleanup: () => Promise<void>;

before(async () => {
  ({ server, cleanup } = await startDemoServer("stopped"));
});

after(async () => {
  if (server?.pid !== undefined) {
    process.kill(server.pid, "SIGCONT"); // before the cleanup's SIGTERM, which a stopped process would not take
  }
  await cleanup?.();
});

/** Whether every thread of the process is in state T (stopped): kill(2) returns before they all are. */
function allStopped(pid: number): boolean {
  return readdirSync(`/proc/${pid}/task`).every((task) => {
    try {
      const stat = readFileSync(`/proc/${pid}/task/${task}/stat`, "utf8");
      // pid (comm) state ...: comm may hold spaces and parentheses, the state follows the last ")".
      return stat.slice(stat.lastIndexOf(")") + 1).trim().startsWith("T");
    } catch {
      return false; // a thread that just exited
    }
  });
}

async function stopServer(pid: number): Promise<void> {
  process.kill(pid, "SIGSTOP");
  for (const deadline = Date.now() + 10_000; !allStopped(pid); await sleep(10)) {
    assert.ok(Date.now() < deadline, `server ${pid} not stopped 10 s after SIGSTOP`);
  }
}

test("a sender gives up within about elapsedMaxMs on a server that never answers", async () => {
  assert.ok(server.pid !== undefined);
  await stopServer(server.pid);
  const client = new TariffClient(server.target);
  const sender = client.usageSender({ retry: { attemptsMax: 1_000, elapsedMaxMs: 2_000 } });
  try {
    const { usage } = demoEvent(`stopped-${randomUUID()}`, 0, Date.now());
    const started = performance.now();
    // Bounds the test, far above both the fixed and the broken behaviour.
    const outcome = await Promise.race([
      sender.sendBatch([usage]).then(
        () => "acknowledged",
        (error: unknown) => error,
      ),
      sleep(150_000, "still waiting", { ref: false }),
    ]);
    const elapsedMs = performance.now() - started;
    assert.ok(outcome instanceof ConnectError, `after ${elapsedMs} ms: ${String(outcome)}`);
    assert.equal(outcome.code, Code.Unavailable, String(outcome));
    // A bound on a failure mode, not a speed measurement: at most elapsedMaxMs + minConnectMs (3 s) is promised.
    assert.ok(elapsedMs < 6_000, `gave up after ${elapsedMs} ms with elapsedMaxMs 2,000: ${String(outcome)}`);
    console.log(`gave up after ${elapsedMs} ms: ${String(outcome)}`);
  } finally {
    sender.abort();
    client.close();
  }
});

test("a sender with almost no retry budget still sends to a server that answers", async () => {
  // Waiting for a live server's answer is not a failure, and waits at least minConnectMs.
  const { server: live, cleanup: stopLive } = await startDemoServer("live");
  const client = new TariffClient(live.target);
  try {
    const sender = client.usageSender({ retry: { elapsedMaxMs: 1 } });
    const { usage } = demoEvent(`live-${randomUUID()}`, 0, Date.now());
    const ack = await sender.sendBatch([usage]);
    assert.equal(ack.accepted, 1);
    await sender.close();
  } finally {
    client.close();
    await stopLive();
  }
});

test("by default a sender gives up after 10 failed streams in a row (attemptsMax), before elapsedMaxMs", async () => {
  // README: "for up to retry.elapsedMaxMs (60,000 by default) or retry.attemptsMax failed streams in a row (10)":
  // against a port nobody listens on, with the delays cut to 1 ms, the ten refusals end it long before 60 s.
  const port = await new Promise<number>((resolve) => {
    const probe = createServer().listen(0, "127.0.0.1", () => {
      const { port } = probe.address() as AddressInfo;
      probe.close(() => resolve(port));
    });
  });
  const client = new TariffClient(`127.0.0.1:${port}`);
  const sender = client.usageSender({ retry: { initialBackoffMs: 1, maxBackoffMs: 1 } });
  try {
    const { usage } = demoEvent(`refused-${randomUUID()}`, 0, Date.now());
    const error = await sender.sendBatch([usage]).then(
      () => undefined,
      (failure: unknown) => failure,
    );
    assert.ok(error instanceof ConnectError, String(error));
    assert.equal(error.code, Code.Unavailable, String(error));
    assert.equal(sender.stats.reconnects, 9, "ten streams: the first and nine reconnects");
  } finally {
    sender.abort();
    client.close();
  }
});

test("an authorize streamer's decision waits 1,000 ms by default (its timeoutMs), not the client's unaryTimeoutMs", async () => {
  // A listener that takes the TCP connection and never answers: the decision's own deadline is all that ends it.
  const silent = createServer(() => undefined);
  const port = await new Promise<number>((resolve) => {
    silent.listen(0, "127.0.0.1", () => resolve((silent.address() as AddressInfo).port));
  });
  const client = new TariffClient(`127.0.0.1:${port}`);
  const streamer = client.authorizeStreamer();
  try {
    const outcome = await streamer
      .authorize({ customerId: "acme", eventType: "ai_action" })
      .then(
        (decision) => decision,
        (error: unknown) => error,
      );
    assert.ok(outcome instanceof ConnectError, String(outcome));
    assert.equal(outcome.code, Code.DeadlineExceeded, String(outcome));
    assert.match(outcome.rawMessage, /no answer within 1000 ms/);
  } finally {
    streamer.close();
    client.close();
    silent.close();
  }
});
