/**
 * The README's TypeScript example, compiled with the package so that it cannot rot: a gateway
 * check, one usage event streamed, the balance read. Run against `make run`:
 * `npm run build && node dist/examples/quickstart.js`. Outside this repository, import from
 * "@tariff/client" instead of "../src/index.js".
 */

import { TariffClient } from "../src/index.js";

const GPT4_COMPLEX_SUMMARY = { action: "summary", data_source: "crm", model: "gpt-4", complexity: "complex" };

const client = new TariffClient("127.0.0.1:50051", { apiKey: process.env["TARIFF_API_KEY"] });
const decision = await client.authorize({ customerId: "acme", eventType: "ai_action", dimensions: GPT4_COMPLEX_SUMMARY });
if (decision.allowed) {
  const sender = client.usageSender({ batchEventsMax: 500 }); // batches, streams, resends unacked batches
  await sender.send({ transactionId: "txn-1", customerId: "acme", eventType: "ai_action", timestampMs: Date.now(), dimensions: GPT4_COMPLEX_SUMMARY });
  await sender.close(); // waits until every event is durable
}
const balance = await client.getBalance("acme");
console.log(decision.estimatedCost, balance.creditsRemaining); // 5 49995
client.close();
