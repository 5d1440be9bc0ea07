/**
 * The README's TypeScript example (README.md, "TypeScript"), compiled with the package so that its
 * types cannot rot; the README's own copy is run against a real server by tests/test_readme.py.
 * Run against `make run`: `npm run build && node dist/examples/quickstart.js`. Outside this
 * repository, import from "@tariff/client" instead of "../src/index.js".
 */

import { TariffClient } from "../src/index.js";

const GPT4_COMPLEX_SUMMARY = { action: "summary", data_source: "crm", model: "gpt-4", complexity: "complex" };

// One example summary a day: the transaction id and the timestamp both come from today's date, so a second run
// today resends the very same event, which the server counts once (the id is the idempotency key).
const today = new Date();
today.setUTCHours(0, 0, 0, 0);
const transactionId = `example-ts-${today.toISOString().slice(0, 10)}`;

const client = new TariffClient("127.0.0.1:50051", { apiKey: process.env["TARIFF_API_KEY"] });
const decision = await client.authorize({ customerId: "acme", eventType: "ai_action", dimensions: GPT4_COMPLEX_SUMMARY });
console.log("authorize:", decision.reason, "estimated cost", decision.estimatedCost); // OK 5
if (decision.allowed) {
  // Batches, streams, resends unacknowledged batches; onAck sees every ack, rejections included.
  const sender = client.usageSender({
    batchEventsMax: 500,
    onAck: (ack) => ack.rejected.forEach((r) => console.log(r.transactionId, "rejected:", r.message)),
  });
  await sender.send({ transactionId, customerId: "acme", eventType: "ai_action", timestampMs: today.getTime(), dimensions: GPT4_COMPLEX_SUMMARY });
  const stats = await sender.close(); // waits for every ack: each event is durable, a duplicate, or rejected
  if (stats.eventsDuplicate > 0) {
    console.log(transactionId, "already recorded: counted once, nothing charged again");
  } else if (stats.eventsAccepted > 0) {
    console.log(transactionId, "recorded");
  }
}
const balance = await client.getBalance("acme");
console.log("credits remaining:", balance.creditsRemaining); // 49995 on a fresh demo, and after a rerun too
client.close();
