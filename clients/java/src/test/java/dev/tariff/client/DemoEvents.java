/* The demo catalogue's events and prices (server/demo.py) shared by the integration tests. */
package dev.tariff.client;

import dev.tariff.v1.UsageEvent;
import java.math.BigDecimal;
import java.util.List;
import java.util.Map;

final class DemoEvents {
  static final String CUSTOMER = "acme";
  static final String EVENT_TYPE = "ai_action";
  static final BigDecimal PREPAID_CREDITS = new BigDecimal("50000");

  /** Dimensions of one demo AI action and its price in credits. */
  record Kind(Map<String, String> dimensions, BigDecimal price) {}

  static final List<Kind> KINDS =
      List.of(
          new Kind(Map.of("action", "summary", "model", "gpt-4", "complexity", "complex", "data_source", "crm"), new BigDecimal("5")),
          new Kind(Map.of("action", "summary", "model", "gpt-4", "complexity", "simple", "data_source", "crm"), new BigDecimal("2.5")),
          new Kind(Map.of("action", "summary", "model", "gpt-4o-mini", "complexity", "simple", "data_source", "crm"), new BigDecimal("0.5")),
          new Kind(Map.of("action", "summary", "model", "gpt-4o-mini", "complexity", "complex", "data_source", "web"), new BigDecimal("1")));

  /** Event i of a run: kinds in rotation, so the expected total is known exactly. */
  static UsageEvent event(String runId, int i, long timestampMs) {
    return UsageEvent.newBuilder()
        .setTransactionId(runId + "-" + i)
        .setCustomerId(CUSTOMER)
        .setEventType(EVENT_TYPE)
        .setTimestampMs(timestampMs)
        .putAllDimensions(KINDS.get(i % KINDS.size()).dimensions())
        .build();
  }

  static BigDecimal price(int i) {
    return KINDS.get(i % KINDS.size()).price();
  }

  private DemoEvents() {}
}
