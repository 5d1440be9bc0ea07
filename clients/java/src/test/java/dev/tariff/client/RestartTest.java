/*
 * kill -9 the server while usage batches are in flight, start it again on the same port and data
 * directory, and check that the UsageSender's reconnect-and-resend loses nothing acknowledged and
 * counts nothing twice (the Java side of tests/test_crash.py).
 */
package dev.tariff.client;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.tariff.v1.IngestAck;
import dev.tariff.v1.UsageBatch;
import dev.tariff.v1.UsageEvent;
import java.math.BigDecimal;
import java.time.Duration;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.concurrent.CompletableFuture;
import org.junit.jupiter.api.Test;

class RestartTest {
  static final int EVENT_COUNT = 4_000;
  static final int BATCH_EVENTS_MAX = 50;
  static final int KILL_AFTER_ACKS = 5;

  @Test
  void kill9MidStreamCountsEveryEventOnce() throws Exception {
    try (TariffServer server = TariffServer.startDemo(); TariffClient client = new TariffClient(server.target())) {
      Map<String, Integer> ackedBatchIds = new HashMap<>();
      int[] ackedEvents = {0};
      int[] inFlightAtKill = {-1};
      long[] acceptedBeforeKill = {-1};
      CompletableFuture<Void> restarted = new CompletableFuture<>();
      UsageSender[] holder = new UsageSender[1];
      UsageSender.RetryPolicy retry = new UsageSender.RetryPolicy(200, Duration.ofSeconds(30), Duration.ofMillis(50),
          Duration.ofMillis(250), 2, 0.2, UsageSender.RetryPolicy.DEFAULT.retryableCodes());
      UsageSender sender = client.usageSender(new UsageSender.Options().batchEventsMax(BATCH_EVENTS_MAX).bufferEventsMax(1_000)
          .retry(retry).onAck((IngestAck ack, UsageBatch batch) -> {
            synchronized (ackedBatchIds) {
              ackedBatchIds.merge(ack.getBatchId(), 1, Integer::sum);
              ackedEvents[0] += batch.getEventsCount();
              if (ackedBatchIds.size() == KILL_AFTER_ACKS && inFlightAtKill[0] < 0) {
                // From inside the ack: the producer is ahead, so batches are in flight.
                UsageSender.Stats stats = holder[0].stats();
                inFlightAtKill[0] = stats.batchesSent() - stats.batchesAcked();
                acceptedBeforeKill[0] = stats.eventsAccepted();
                try {
                  server.kill9();
                } catch (InterruptedException e) {
                  Thread.currentThread().interrupt();
                }
                CompletableFuture.runAsync(() -> {
                  try {
                    server.start();
                    restarted.complete(null);
                  } catch (Exception e) {
                    restarted.completeExceptionally(e);
                  }
                });
              }
            }
          }));
      holder[0] = sender;
      String runId = "crash-" + System.nanoTime();
      long nowMs = System.currentTimeMillis();
      BigDecimal expected = BigDecimal.ZERO;
      List<UsageEvent> events = new ArrayList<>();
      try {
        for (int i = 0; i < EVENT_COUNT; i++) {
          UsageEvent event = DemoEvents.event(runId, i, nowMs);
          events.add(event);
          expected = expected.add(DemoEvents.price(i));
          sender.send(event);
        }
        sender.close();
        restarted.get(); // the restart succeeded (and happened: the sender could not finish without it)
      } catch (Exception e) {
        sender.abort();
        throw e;
      }
      UsageSender.Stats stats = sender.stats();
      synchronized (ackedBatchIds) {
        assertEquals(2, server.starts);
        assertTrue(inFlightAtKill[0] > 0, "batches in flight at the kill: " + inFlightAtKill[0]);
        assertTrue(stats.reconnects() >= 1 && stats.resentBatches() >= 1, "reconnected and resent: " + stats);
        // Every batch acked exactly once; accepted + duplicates covers every event, none rejected.
        assertTrue(ackedBatchIds.values().stream().allMatch(n -> n == 1), "no batch acked twice");
        assertEquals(EVENT_COUNT, ackedEvents[0]);
        assertEquals(EVENT_COUNT, stats.eventsAccepted() + stats.eventsDuplicate(), stats.toString());
        assertEquals(0, stats.eventsRejected());
        // Duplicates can only come from resent batches (committed before the kill, ack lost).
        assertTrue(stats.eventsDuplicate() <= (long) stats.resentBatches() * BATCH_EVENTS_MAX, stats.toString());
        assertTrue(acceptedBeforeKill[0] > 0 && acceptedBeforeKill[0] < EVENT_COUNT);
      }
      // The balance counts every event exactly once: nothing acknowledged lost, nothing doubled.
      BigDecimal remaining = new BigDecimal(client.getBalance(DemoEvents.CUSTOMER).getCreditsRemaining());
      assertEquals(0, remaining.compareTo(DemoEvents.PREPAID_CREDITS.subtract(expected)), "credits remaining " + remaining);
      // And all of them are durable: resending everything is all duplicates.
      IngestAck check = client.ingestBatch(UsageBatch.newBuilder().setBatchId(runId + "-check").addAllEvents(events).build());
      assertEquals(List.of(0, EVENT_COUNT), List.of(check.getAccepted(), check.getDuplicates()));
    }
  }
}
