/**
 * AuthorizeStreamer against a scripted fake BalanceService client (no server, no network): what it does with a
 * stream that neither answers nor ends, as a server or connection gone silent leaves it. The README: "each with a
 * deadline of `timeoutMs`", and "the stream ... is opened again by the next call after it breaks". A silent stream
 * did not break: it was kept for ever, every later decision was written on it and timed out too.
 */

import assert from "node:assert/strict";
import { getEventListeners } from "node:events";
import { test } from "node:test";

import type { Client } from "@connectrpc/connect";

import {
  AuthorizeResponseSchema,
  AuthorizeStreamer,
  Code,
  ConnectError,
  create,
  type AuthorizeRequest,
  type AuthorizeResponse,
  type BalanceService,
} from "../src/index.js";

type Script = "silent" | "answering";

/** A BalanceService client whose n-th AuthorizeStream behaves as scripts[n]; it records each stream's signal. */
function scriptedBalance(scripts: Script[]): { balance: Client<typeof BalanceService>; signals: AbortSignal[] } {
  const signals: AbortSignal[] = [];
  const authorizeStream = (
    requests: AsyncIterable<AuthorizeRequest>,
    options: { signal: AbortSignal },
  ): AsyncIterable<AuthorizeResponse> => {
    const script = scripts[signals.length] ?? "silent";
    const signal = options.signal;
    signals.push(signal);
    return (async function* () {
      if (script === "answering") {
        for await (const request of requests) {
          yield create(AuthorizeResponseSchema, { requestId: request.requestId, allowed: true, reason: "OK" });
        }
        return;
      }
      // Reads every request, answers none, and ends only when the client cancels it.
      void (async () => {
        for await (const _request of requests) {
          // dropped
        }
      })();
      await new Promise<never>((_, reject) => {
        const cancelled = (): void => reject(new ConnectError("the stream was cancelled", Code.Canceled));
        if (signal.aborted) {
          cancelled();
        }
        signal.addEventListener("abort", cancelled, { once: true });
      });
    })();
  };
  return { balance: { authorizeStream } as unknown as Client<typeof BalanceService>, signals };
}

async function outcome(promise: Promise<{ reason: string }>): Promise<string> {
  return promise.then(
    (decision) => decision.reason,
    (error: unknown) => (error instanceof ConnectError ? `${Code[error.code]}: ${error.rawMessage}` : String(error)),
  );
}

test("a stream that stops answering is given up, and the next decision opens a new one", async () => {
  const { balance, signals } = scriptedBalance(["silent", "answering"]);
  const streamer = new AuthorizeStreamer(balance, { timeoutMs: 200 });
  try {
    const first = await outcome(streamer.authorize({ customerId: "acme", eventType: "ai_action" }));
    assert.equal(first, "DeadlineExceeded: no answer within 200 ms");
    const second = await outcome(streamer.authorize({ customerId: "acme", eventType: "ai_action" }));
    assert.equal(second, "OK", "the decision after a silent stream's timeout went out on that stream again");
    assert.equal(streamer.streamsOpened, 2);
    assert.ok(signals[0]?.aborted, "the silent stream was left open");
  } finally {
    streamer.close();
  }
});

test("a decision with a shorter timeoutMs than the streamer's does not give up a stream still within it", async () => {
  const { balance, signals } = scriptedBalance(["silent", "answering"]);
  const streamer = new AuthorizeStreamer(balance, { timeoutMs: 60_000 });
  try {
    const first = await outcome(streamer.authorize({ customerId: "acme", eventType: "ai_action" }, { timeoutMs: 50 }));
    assert.equal(first, "DeadlineExceeded: no answer within 50 ms");
    // The stream has been silent 50 ms, far less than the streamer's 60,000: it is kept (the server may be slow).
    assert.equal(streamer.streamsOpened, 1);
    assert.equal(signals[0]?.aborted, false);
  } finally {
    streamer.close();
  }
});

test("a decision leaves no listener on the caller's signal once it is answered", async () => {
  const { balance } = scriptedBalance(["answering"]);
  const streamer = new AuthorizeStreamer(balance, { timeoutMs: 10_000 });
  const shutdown = new AbortController(); // one signal for every decision, as a server's shutdown signal is
  try {
    for (let i = 0; i < 20; i += 1) {
      const decision = await streamer.authorize({ customerId: "acme", eventType: "ai_action" }, { signal: shutdown.signal });
      assert.equal(decision.reason, "OK");
    }
    assert.equal(getEventListeners(shutdown.signal, "abort").length, 0, "answered decisions still listen on the signal");
  } finally {
    streamer.close();
  }
});

test("the caller's own signal ending a decision throws, whatever onUnavailable says", async () => {
  const { balance } = scriptedBalance(["silent"]);
  const streamer = new AuthorizeStreamer(balance, { timeoutMs: 60_000, onUnavailable: "allow" });
  try {
    const input = { customerId: "acme", eventType: "ai_action" };
    const ended = await outcome(streamer.authorize(input, { signal: AbortSignal.timeout(50) }));
    assert.match(ended, /^Canceled: /, "the caller's own deadline was answered with the fail-open fallback");
  } finally {
    streamer.close();
  }
});
