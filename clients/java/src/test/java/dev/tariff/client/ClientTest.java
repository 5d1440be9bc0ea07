/*
 * The Java client against a real Tariff server process (demo catalogue): a batch ingested and its
 * ack, the balance it leaves, authorize (charges nothing; fails open or closed, within its
 * deadline, when the server is not reached), a DUPLICATE_CONFLICT in the ack, and the API key.
 */
package dev.tariff.client;

import static dev.tariff.client.DemoEvents.CUSTOMER;
import static dev.tariff.client.DemoEvents.EVENT_TYPE;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.tariff.client.AuthorizeOptions.UnavailablePolicy;
import dev.tariff.v1.Aggregation;
import dev.tariff.v1.AuthorizeRequest;
import dev.tariff.v1.CreateDraftVersionRequest;
import dev.tariff.v1.CreateProductRequest;
import dev.tariff.v1.CreateRateCardRequest;
import dev.tariff.v1.CreateCustomerRequest;
import dev.tariff.v1.EventRejection;
import dev.tariff.v1.GetVersionRequest;
import dev.tariff.v1.IngestAck;
import dev.tariff.v1.ListRateCardsRequest;
import dev.tariff.v1.Product;
import dev.tariff.v1.Rate;
import dev.tariff.v1.RateCardVersion;
import dev.tariff.v1.RejectReason;
import dev.tariff.v1.ReleaseReservationRequest;
import dev.tariff.v1.UsageBatch;
import dev.tariff.v1.UnitPrice;
import dev.tariff.v1.UsageEvent;
import com.google.rpc.BadRequest;
import io.grpc.Status;
import io.grpc.StatusRuntimeException;
import io.grpc.protobuf.StatusProto;
import java.io.IOException;
import java.math.BigDecimal;
import java.net.InetAddress;
import java.net.ServerSocket;
import java.net.Socket;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.CopyOnWriteArrayList;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.TimeoutException;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;

class ClientTest {
  static TariffServer server;
  static TariffClient client;

  @BeforeAll
  static void start() throws Exception {
    server = TariffServer.startDemo();
    client = new TariffClient(server.target());
  }

  @AfterAll
  static void stop() throws Exception {
    if (client != null) {
      client.close();
    }
    if (server != null) {
      server.close();
    }
  }

  static BigDecimal creditsRemaining() {
    return new BigDecimal(client.getBalance(CUSTOMER).getCreditsRemaining());
  }

  static String runId(String name) {
    return name + "-" + System.nanoTime();
  }

  @Test
  void aBatchIsAckedAndTheBalanceDropsByItsExactPrice() throws Exception {
    BigDecimal before = creditsRemaining();
    String runId = runId("batch");
    List<UsageEvent> events = new ArrayList<>();
    BigDecimal price = BigDecimal.ZERO;
    for (int i = 0; i < 10; i++) {
      events.add(DemoEvents.event(runId, i, System.currentTimeMillis()));
      price = price.add(DemoEvents.price(i));
    }
    UsageSender sender = client.usageSender(new UsageSender.Options());
    IngestAck ack = sender.sendBatch(events, runId + "-b").get();
    assertEquals(runId + "-b", ack.getBatchId());
    assertEquals(List.of(10, 0, 0), List.of(ack.getAccepted(), ack.getDuplicates(), ack.getRejectedCount()));
    IngestAck again = sender.sendBatch(events, runId + "-b-again").get();
    assertEquals(List.of(0, 10), List.of(again.getAccepted(), again.getDuplicates()), "an identical resend is all duplicates");
    UsageSender.Stats stats = sender.close();
    assertEquals(new UsageSender.Stats(2, 2, 10, 10, 0, 0, 0, 0), stats);
    assertEquals(0, before.subtract(creditsRemaining()).compareTo(price), "the balance drops by the batch's price");
  }

  @Test
  void sendBatchesBySizeAndLingerAndCloseWaitsForEveryAck() throws Exception {
    List<IngestAck> acks = new CopyOnWriteArrayList<>();
    UsageSender sender = client.usageSender(new UsageSender.Options().batchEventsMax(4).onAck((ack, batch) -> acks.add(ack)));
    String runId = runId("send");
    for (int i = 0; i < 10; i++) {
      sender.send(DemoEvents.event(runId, i, System.currentTimeMillis()));
    }
    UsageSender.Stats stats = sender.close();
    assertEquals(3, stats.batchesSent(), "4 + 4 cut by size, the last 2 by the linger or by close");
    assertEquals(3, acks.size());
    assertEquals(10, stats.eventsAccepted());
    StatusRuntimeException closed = assertThrows(StatusRuntimeException.class, () -> sender.send(UsageEvent.getDefaultInstance()));
    assertEquals(Status.Code.FAILED_PRECONDITION, closed.getStatus().getCode());
  }

  @Test
  void aTransactionIdReusedWithOtherContentComesBackAsDuplicateConflict() throws Exception {
    String runId = runId("conflict");
    UsageEvent first = DemoEvents.event(runId, 0, System.currentTimeMillis());
    IngestAck firstAck = client.ingestBatch(UsageBatch.newBuilder().setBatchId(runId + "-1").addEvents(first).build());
    assertEquals(1, firstAck.getAccepted());
    BigDecimal before = creditsRemaining();
    UsageEvent changed = DemoEvents.event(runId, 1, first.getTimestampMs()).toBuilder()
        .setTransactionId(first.getTransactionId()).build(); // another kind, the same transaction id
    UsageSender sender = client.usageSender(new UsageSender.Options());
    IngestAck ack = sender.sendBatch(List.of(changed), runId + "-2").get();
    sender.close();
    assertEquals(0, ack.getAccepted());
    assertEquals(1, ack.getRejectedCount());
    EventRejection rejection = ack.getRejected(0);
    assertEquals(RejectReason.DUPLICATE_CONFLICT, rejection.getReason());
    assertEquals(first.getTransactionId(), rejection.getTransactionId());
    assertEquals(0, rejection.getIndex());
    assertEquals(before, creditsRemaining(), "the conflicting event changed nothing");
  }

  @Test
  void authorizePricesTheActionAndChargesNothing() {
    BigDecimal before = creditsRemaining();
    for (DemoEvents.Kind kind : DemoEvents.KINDS) {
      AuthorizeDecision decision = client.authorize(
          AuthorizeRequest.newBuilder().setCustomerId(CUSTOMER).setEventType(EVENT_TYPE).putAllDimensions(kind.dimensions()).build(),
          new AuthorizeOptions(Duration.ofSeconds(5), UnavailablePolicy.THROW));
      assertTrue(decision.allowed(), decision.toString());
      assertEquals("OK", decision.reason());
      assertFalse(decision.degraded());
      assertFalse(decision.requestId().isEmpty());
      assertEquals(0, new BigDecimal(decision.estimatedCost()).compareTo(kind.price()), "price of " + kind.dimensions());
    }
    assertEquals(before, creditsRemaining(), "authorize charged nothing");
  }

  @Test
  void waitReadyReturnsOnceTheServerIsServingAndThrowsDeadlineExceededWhenItIsNot() throws Exception {
    client.waitReady(Duration.ofSeconds(10));
    try (TariffClient nowhere = new TariffClient("127.0.0.1:" + TariffServer.freePort())) {
      assertEquals(Status.Code.DEADLINE_EXCEEDED,
          assertThrows(StatusRuntimeException.class, () -> nowhere.waitReady(Duration.ofMillis(300))).getStatus().getCode());
    }
  }

  @Test
  void aReplyOverFourMiBWithinTheServersMessageLimitIsRead() {
    // A draft of 10,000 rates (the most a version holds), each matching two 256-byte dimension values: about 5.5 MB,
    // which CreateDraftVersion and GetVersion answer whole (paged lists keep a page within 4 MiB), within the
    // server's 16 MiB --message-mb-max.
    String run = runId("wide");
    client.pricing().createProduct(CreateProductRequest.newBuilder().setProduct(Product.newBuilder()
        .setId(run).setEventType(run).setAggregation(Aggregation.SUM).setValueKey("n")
        .addPricingDimensions("a").addPricingDimensions("b")).build());
    client.pricing().createRateCard(CreateRateCardRequest.newBuilder().setId(run).setName(run).setPricingUnit("credits").build());
    CreateDraftVersionRequest.Builder draft = CreateDraftVersionRequest.newBuilder().setRateCardId(run);
    for (int i = 0; i < 10_000; i++) {
      draft.addUpsertRates(Rate.newBuilder().setProductId(run)
          .putMatch("a", String.format("%05d", i) + "a".repeat(251)).putMatch("b", "b".repeat(256))
          .setUnit(UnitPrice.newBuilder().setPrice("1")));
    }
    RateCardVersion created = client.pricing().createDraftVersion(draft.build());
    RateCardVersion version = client.pricing().getVersion(
        GetVersionRequest.newBuilder().setRateCardId(run).setVersion(created.getVersion()).build());
    assertTrue(version.getRatesCount() == 10_000 && version.getSerializedSize() > 4 << 20,
        version.getRatesCount() + " rates in " + version.getSerializedSize() + " bytes");
  }

  @Test
  void anInvalidArgumentNamesItsFieldInABadRequestAsTheReadmeShows() throws Exception {
    StatusRuntimeException error = assertThrows(StatusRuntimeException.class, () -> client.contracts().createCustomer(
        CreateCustomerRequest.newBuilder().setId(runId("named")).setName("n".repeat(300)).build()));
    List<String> fields = new ArrayList<>();
    for (com.google.protobuf.Any detail : StatusProto.fromThrowable(error).getDetailsList()) {
      if (detail.is(BadRequest.class)) {
        detail.unpack(BadRequest.class).getFieldViolationsList().forEach(violation -> fields.add(violation.getField()));
      }
    }
    assertEquals(Status.Code.INVALID_ARGUMENT, error.getStatus().getCode());
    assertEquals(List.of("name"), fields);
    // authorize throws an AuthorizeException, which keeps the status's details.
    StatusRuntimeException refused = assertThrows(StatusRuntimeException.class, () -> client.authorize(
        AuthorizeRequest.newBuilder().setCustomerId(CUSTOMER).setEventType(EVENT_TYPE).setReserve(true)
            .setReservationTtl(com.google.protobuf.Duration.newBuilder().setSeconds(-1)).build()));
    assertEquals(List.of("reservation_ttl"), badRequestFields(refused));
  }

  static List<String> badRequestFields(StatusRuntimeException error) throws Exception {
    List<String> fields = new ArrayList<>();
    for (com.google.protobuf.Any detail : StatusProto.fromThrowable(error).getDetailsList()) {
      if (detail.is(BadRequest.class)) {
        detail.unpack(BadRequest.class).getFieldViolationsList().forEach(violation -> fields.add(violation.getField()));
      }
    }
    return fields;
  }

  @Test
  void aHoldAskedForWithoutAnIdGoesByTheIdTheClientChoseBeforeTheCall() {
    AuthorizeDecision hold = client.authorize(
        AuthorizeRequest.newBuilder().setCustomerId(CUSTOMER).setEventType(EVENT_TYPE)
            .putAllDimensions(DemoEvents.KINDS.get(0).dimensions()).setReserve(true).build(),
        new AuthorizeOptions(Duration.ofSeconds(5), UnavailablePolicy.THROW));
    assertTrue(hold.allowed() && hold.reservationId().startsWith("java-r-"), hold.toString());
    client.balance().releaseReservation(
        ReleaseReservationRequest.newBuilder().setCustomerId(CUSTOMER).setReservationId(hold.reservationId()).build());
  }

  @Test
  void errorsCarryTheStatusAndAreNeverDegradedIntoADecision() {
    AuthorizeRequest unknown = AuthorizeRequest.newBuilder().setCustomerId("nobody").setEventType(EVENT_TYPE).build();
    StatusRuntimeException error = assertThrows(StatusRuntimeException.class,
        () -> client.authorize(unknown, new AuthorizeOptions(null, UnavailablePolicy.ALLOW)));
    assertEquals(Status.Code.NOT_FOUND, error.getStatus().getCode());
    assertEquals(Status.Code.NOT_FOUND,
        assertThrows(StatusRuntimeException.class, () -> client.getBalance("nobody")).getStatus().getCode());
  }

  @Test
  void authorizeFailsOpenOrClosedWhenTheServerIsNotReached() throws Exception {
    AuthorizeRequest request = AuthorizeRequest.newBuilder().setRequestId("r-1").setCustomerId(CUSTOMER).setEventType(EVENT_TYPE).build();
    Duration deadline = Duration.ofMillis(300);
    List<Socket> accepted = new CopyOnWriteArrayList<>();
    // One port where nothing listens (UNAVAILABLE at once), one that accepts and never answers (the deadline decides).
    try (ServerSocket silent = new ServerSocket(0, 50, InetAddress.getLoopbackAddress());
        TariffClient closedPort = new TariffClient("127.0.0.1:" + TariffServer.freePort());
        TariffClient hanging = new TariffClient("127.0.0.1:" + silent.getLocalPort())) {
      Thread acceptor = new Thread(() -> {
        try {
          for (; ; ) {
            accepted.add(silent.accept());
          }
        } catch (IOException e) {
          // closed at the end of the test
        }
      });
      acceptor.setDaemon(true);
      acceptor.start();
      for (TariffClient unreachable : List.of(closedPort, hanging)) {
        long started = System.nanoTime();
        Status.Code code = assertThrows(StatusRuntimeException.class,
            () -> unreachable.authorize(request, new AuthorizeOptions(deadline, UnavailablePolicy.THROW))).getStatus().getCode();
        assertTrue(code == Status.Code.UNAVAILABLE || code == Status.Code.DEADLINE_EXCEEDED, code.toString());
        AuthorizeDecision open = unreachable.authorize(request, new AuthorizeOptions(deadline, UnavailablePolicy.ALLOW));
        assertEquals(List.of(true, true, "UNAVAILABLE", "r-1"), List.of(open.allowed(), open.degraded(), open.reason(), open.requestId()));
        AuthorizeDecision shut = unreachable.authorize(request, new AuthorizeOptions(deadline, UnavailablePolicy.DENY));
        assertEquals(List.of(false, true, "UNAVAILABLE"), List.of(shut.allowed(), shut.degraded(), shut.reason()));
        // A hold asked for without an id: the degraded decision names the id the client chose before the call,
        // since the server may have made the hold before the deadline ran out (the usage event settles it by that id).
        AuthorizeDecision held = unreachable.authorize(request.toBuilder().setReserve(true).build(),
            new AuthorizeOptions(deadline, UnavailablePolicy.ALLOW));
        assertTrue(held.degraded() && held.reservationId().startsWith("java-r-"), held.toString());
        // Three calls, each bounded by its 300 ms deadline (generous margin for a loaded machine).
        assertTrue(System.nanoTime() - started < Duration.ofSeconds(5).toNanos());
        // With THROW the exception names the ids instead: without them a retry would choose another reservation id
        // and hold the credit twice.
        StatusRuntimeException failed = assertThrows(StatusRuntimeException.class, () -> unreachable.authorize(
            request.toBuilder().setReserve(true).build(), new AuthorizeOptions(deadline, UnavailablePolicy.THROW)));
        assertTrue(failed instanceof AuthorizeException, failed.toString());
        AuthorizeException named = (AuthorizeException) failed;
        assertEquals("r-1", named.requestId());
        assertTrue(named.reservationId().startsWith("java-r-"), named.reservationId());
        assertTrue(named.getStatus().getCode() == Status.Code.UNAVAILABLE
            || named.getStatus().getCode() == Status.Code.DEADLINE_EXCEEDED, named.getStatus().toString());
      }
    } finally {
      for (Socket socket : accepted) {
        socket.close();
      }
    }
  }

  @Test
  void theClientTimeoutBoundsEveryUnaryCallTheGeneratedStubsIncluded() throws Exception {
    List<Socket> accepted = new CopyOnWriteArrayList<>();
    ExecutorService caller = Executors.newSingleThreadExecutor();
    // A port that accepts connections and never answers: only a deadline ends a call there.
    try (ServerSocket silent = new ServerSocket(0, 50, InetAddress.getLoopbackAddress());
        TariffClient hanging = new TariffClient("127.0.0.1:" + silent.getLocalPort(),
            new TariffClient.Options().timeout(Duration.ofMillis(300)))) {
      Thread acceptor = new Thread(() -> {
        try {
          for (; ; ) {
            accepted.add(silent.accept());
          }
        } catch (IOException e) {
          // closed at the end of the test
        }
      });
      acceptor.setDaemon(true);
      acceptor.start();
      Future<Status.Code> outcome = caller.submit(() -> assertThrows(StatusRuntimeException.class,
          () -> hanging.contracts().createCustomer(CreateCustomerRequest.newBuilder().setId("acme-2").build()))
          .getStatus().getCode());
      try {
        assertEquals(Status.Code.DEADLINE_EXCEEDED, outcome.get(20, TimeUnit.SECONDS));
      } catch (TimeoutException e) {
        outcome.cancel(true);
        throw new AssertionError("createCustomer on a silent server still waits: the client's timeout was not applied", e);
      }
      // A stub's own deadline wins over the client's.
      assertEquals(Status.Code.DEADLINE_EXCEEDED, assertThrows(StatusRuntimeException.class,
          () -> hanging.pricing().withDeadlineAfter(50, TimeUnit.MILLISECONDS).listRateCards(ListRateCardsRequest.getDefaultInstance()))
          .getStatus().getCode());
    } finally {
      caller.shutdownNow();
      for (Socket socket : accepted) {
        socket.close();
      }
    }
  }

  @Test
  void anApiKeyIsSentOnEveryCallStreamsIncluded() throws Exception {
    Path keys = Files.createTempFile("tariff-keys-", ".toml");
    Files.delete(keys);
    Process keysNew = new ProcessBuilder(TariffServer.python(), "-m", "server.cli", "keys", "new", "--name", "java-client",
        "--role", "admin", "--file", keys.toString()).directory(TariffServer.REPO_ROOT.toFile()).start();
    String key = new String(keysNew.getInputStream().readAllBytes(), StandardCharsets.UTF_8).strip();
    assertEquals(0, keysNew.waitFor());
    UsageEvent event = DemoEvents.event(runId("key"), 0, System.currentTimeMillis());
    try (TariffServer withKeys = TariffServer.startDemo("--api-keys", keys.toString());
        TariffClient withKey = new TariffClient(withKeys.target(), new TariffClient.Options().apiKey(key))) {
      assertEquals(CUSTOMER, withKey.getBalance(CUSTOMER).getCustomerId());
      assertTrue(withKey.authorize(AuthorizeRequest.newBuilder().setCustomerId(CUSTOMER).setEventType(EVENT_TYPE).build()).allowed());
      UsageSender sender = withKey.usageSender(new UsageSender.Options());
      assertEquals(1, sender.sendBatch(List.of(event), null).get().getAccepted(), "a stream with the key");
      sender.close();
      for (String wrong : new String[] {"", key + "x"}) {
        try (TariffClient other = new TariffClient(withKeys.target(), new TariffClient.Options().apiKey(wrong))) {
          assertEquals(Status.Code.UNAUTHENTICATED,
              assertThrows(StatusRuntimeException.class, () -> other.getBalance(CUSTOMER)).getStatus().getCode());
          UsageSender refused = other.usageSender(new UsageSender.Options());
          ExecutionException streamError = assertThrows(ExecutionException.class, () -> refused.sendBatch(List.of(event), null).get());
          assertEquals(Status.Code.UNAUTHENTICATED, Status.fromThrowable(streamError.getCause()).getCode(), "not retried");
          refused.abort();
        }
      }
    } finally {
      Files.deleteIfExists(keys);
    }
  }
}
