/** The demo catalogue's events and prices (server/demo.py) shared by the integration tests. */

import type { Usage } from "../../src/index.js";

export const CUSTOMER = "acme";
export const EVENT_TYPE = "ai_action";
export const PREPAID_CREDITS = "50000";

/** Dimensions of one demo AI action and its price in credits (a decimal string). */
export interface EventKind {
  dimensions: Record<string, string>;
  price: string;
}

export const EVENT_KINDS: readonly EventKind[] = [
  { dimensions: { action: "summary", model: "gpt-4", complexity: "complex", data_source: "crm" }, price: "5" },
  { dimensions: { action: "summary", model: "gpt-4", complexity: "simple", data_source: "crm" }, price: "2.5" },
  { dimensions: { action: "summary", model: "gpt-4o-mini", complexity: "simple", data_source: "crm" }, price: "0.5" },
  { dimensions: { action: "summary", model: "gpt-4o-mini", complexity: "complex", data_source: "web" }, price: "1" },
];

/** Event i of a run: kinds in rotation, so the expected total is known exactly. */
export function demoEvent(runId: string, i: number, timestampMs: number): { usage: Usage; kind: EventKind } {
  const kind = EVENT_KINDS[i % EVENT_KINDS.length]!;
  return {
    usage: {
      transactionId: `${runId}-${i}`,
      customerId: CUSTOMER,
      eventType: EVENT_TYPE,
      timestampMs,
      dimensions: kind.dimensions,
    },
    kind,
  };
}
