package dev.tariff.example;

import dev.tariff.client.AuthorizeDecision;
import dev.tariff.client.AuthorizeOptions;
import dev.tariff.client.TariffClient;
import dev.tariff.client.UsageSender;
import dev.tariff.v1.AuthorizeRequest;
import dev.tariff.v1.UsageEvent;
import java.time.Duration;
import java.util.Map;

/** The README's Java example: check credit, stream one usage event, read the balance. */
public final class Quickstart {
  public static void main(String[] args) throws InterruptedException {
    String target = System.getenv().getOrDefault("TARIFF_TARGET", "127.0.0.1:50051");
    Map<String, String> gpt4ComplexSummary = Map.of("action", "summary", "data_source", "crm", "model", "gpt-4", "complexity", "complex");
    try (TariffClient client = new TariffClient(target, new TariffClient.Options().apiKey(System.getenv("TARIFF_API_KEY")))) {
      AuthorizeDecision decision = client.authorize( // the gateway's check
          AuthorizeRequest.newBuilder().setCustomerId("acme").setEventType("ai_action").putAllDimensions(gpt4ComplexSummary).build(),
          new AuthorizeOptions(Duration.ofSeconds(1), AuthorizeOptions.UnavailablePolicy.DENY));
      if (decision.allowed()) { // estimated cost "5", reason "OK"
        UsageSender sender = client.usageSender(new UsageSender.Options().batchEventsMax(500)); // batches, streams, resends unacked batches
        sender.send(UsageEvent.newBuilder().setTransactionId("txn-1").setCustomerId("acme").setEventType("ai_action")
            .setTimestampMs(System.currentTimeMillis()).putAllDimensions(gpt4ComplexSummary).build());
        sender.close(); // waits for every ack: each event durable, a duplicate, or rejected (see onAck)
      }
      System.out.println(decision.estimatedCost() + " " + client.getBalance("acme").getCreditsRemaining()); // 5 49995
    }
  }
}
