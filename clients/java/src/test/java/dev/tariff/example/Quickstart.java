package dev.tariff.example;

import dev.tariff.client.AuthorizeDecision;
import dev.tariff.client.AuthorizeOptions;
import dev.tariff.client.TariffClient;
import dev.tariff.client.UsageSender;
import dev.tariff.v1.AuthorizeRequest;
import dev.tariff.v1.UsageEvent;
import java.time.Duration;
import java.time.LocalDate;
import java.time.ZoneOffset;
import java.util.Map;

/** The README's Java example: check credit, stream one usage event, read the balance. */
public final class Quickstart {
  public static void main(String[] args) throws InterruptedException {
    String target = System.getenv().getOrDefault("TARIFF_TARGET", "127.0.0.1:50051");
    Map<String, String> gpt4ComplexSummary = Map.of("action", "summary", "data_source", "crm", "model", "gpt-4", "complexity", "complex");
    // One example summary a day: the transaction id and the timestamp both come from today's date, so a second run
    // today resends the very same event, which the server counts once (the id is the idempotency key).
    LocalDate today = LocalDate.now(ZoneOffset.UTC);
    String transactionId = "example-java-" + today;
    try (TariffClient client = new TariffClient(target, new TariffClient.Options().apiKey(System.getenv("TARIFF_API_KEY")))) {
      // Connect first, as a gateway does before it serves: a cold JVM's first call (the connection, gRPC's classes)
      // can take a second by itself, which would leave nothing of the check's deadline for the server's answer.
      client.waitReady(Duration.ofSeconds(10));
      AuthorizeDecision decision = client.authorize( // the gateway's check
          AuthorizeRequest.newBuilder().setCustomerId("acme").setEventType("ai_action").putAllDimensions(gpt4ComplexSummary).build(),
          new AuthorizeOptions(Duration.ofSeconds(1), AuthorizeOptions.UnavailablePolicy.DENY));
      System.out.println("authorize: " + decision.reason() + " estimated cost " + decision.estimatedCost()); // OK 5
      if (decision.allowed()) {
        // Batches, streams, resends unacknowledged batches; onAck sees every ack, rejections included.
        UsageSender sender = client.usageSender(new UsageSender.Options().batchEventsMax(500).onAck((ack, batch) ->
            ack.getRejectedList().forEach(r -> System.out.println(r.getTransactionId() + " rejected: " + r.getMessage()))));
        sender.send(UsageEvent.newBuilder().setTransactionId(transactionId).setCustomerId("acme").setEventType("ai_action")
            .setTimestampMs(today.atStartOfDay(ZoneOffset.UTC).toInstant().toEpochMilli()).putAllDimensions(gpt4ComplexSummary).build());
        UsageSender.Stats stats = sender.close(); // waits for every ack: each event is durable, a duplicate, or rejected
        if (stats.eventsDuplicate() > 0) {
          System.out.println(transactionId + " already recorded: counted once, nothing charged again");
        } else if (stats.eventsAccepted() > 0) {
          System.out.println(transactionId + " recorded");
        }
      }
      // 49995 on a fresh demo, and after a rerun too
      System.out.println("credits remaining: " + client.getBalance("acme").getCreditsRemaining());
    }
  }
}
