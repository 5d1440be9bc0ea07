/*
 * An overloaded server (--max-concurrent-rpcs) refuses new calls with RESOURCE_EXHAUSTED and a
 * google.rpc.RetryInfo ("retry after 100 ms"): the UsageSender waits that long and resends, as it
 * does after any other break, instead of failing and dropping its unacknowledged events.
 */
package dev.tariff.client;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.tariff.v1.Balance;
import dev.tariff.v1.WatchBalanceRequest;
import io.grpc.Context;
import java.math.BigDecimal;
import java.util.Iterator;
import org.junit.jupiter.api.Test;

class OverloadTest {
  @Test
  void theUsageSenderWaitsOutAnOverloadedServerAndDeliversEveryEvent() throws Exception {
    try (TariffServer server = TariffServer.startDemo("--max-concurrent-rpcs", "1");
        TariffClient holder = new TariffClient(server.target());
        TariffClient client = new TariffClient(server.target())) {
      // The one call the server runs: every other call is refused, with RetryInfo, while it lasts.
      Context.CancellableContext watching = Context.current().withCancellation();
      Iterator<Balance> watch =
          watching.call(() -> holder.balance().watchBalance(WatchBalanceRequest.newBuilder().setCustomerId(DemoEvents.CUSTOMER).build()));
      watch.next();

      UsageSender sender = client.usageSender(new UsageSender.Options().batchEventsMax(1));
      sender.send(DemoEvents.event("busy-" + System.nanoTime(), 0, System.currentTimeMillis()));
      // Until the sender's stream was refused and reopened, or the sender failed (what it did before).
      long safety = System.nanoTime() + 20_000_000_000L;
      while (sender.stats().reconnects() < 1 && sender.error() == null) {
        assertTrue(System.nanoTime() < safety, "the sender neither reconnected nor failed");
        Thread.sleep(10);
      }
      assertNull(sender.error(), "the sender gave up on a busy server");
      watching.cancel(null); // the server has room again
      UsageSender.Stats stats = sender.close();
      assertEquals(1, stats.eventsAccepted());
      assertTrue(stats.reconnects() >= 1, stats.toString());
      BigDecimal remaining = new BigDecimal(client.getBalance(DemoEvents.CUSTOMER).getCreditsRemaining());
      assertEquals(0, DemoEvents.PREPAID_CREDITS.subtract(DemoEvents.price(0)).compareTo(remaining), remaining.toString());
    }
  }
}
