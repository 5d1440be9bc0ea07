/*
 * TariffClient.authorize and the caller's gRPC Context, against a port that accepts connections and never answers
 * (only a deadline ends a call there). Its javadoc: onUnavailable decides "when the server is not reached within the
 * deadline" (AuthorizeOptions.timeout, or the client's), and "the caller's cancellation always throw[s]". grpc-java
 * also ends the call at the caller's Context deadline, and a Context whose deadline passed is a cancelled Context:
 * the caller's own decision, as in the Go client (its ctx's deadline) and the TypeScript one (its signal). It was
 * answered with the fallback instead: a fail-open gateway allowed a request its caller had already given up.
 */
package dev.tariff.client;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;

import dev.tariff.client.AuthorizeOptions.UnavailablePolicy;
import dev.tariff.v1.AuthorizeRequest;
import io.grpc.Context;
import io.grpc.Status;
import java.io.IOException;
import java.net.InetAddress;
import java.net.ServerSocket;
import java.net.Socket;
import java.time.Duration;
import java.util.List;
import java.util.concurrent.CopyOnWriteArrayList;
import java.util.concurrent.Executors;
import java.util.concurrent.ScheduledExecutorService;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;

class AuthorizeContextTest {
  private static final AuthorizeRequest REQUEST =
      AuthorizeRequest.newBuilder().setRequestId("r-ctx").setCustomerId("acme").setEventType("ai_action").build();
  private static final List<Socket> ACCEPTED = new CopyOnWriteArrayList<>();
  private static ServerSocket silent;
  private static TariffClient client;
  private static ScheduledExecutorService timers;

  @BeforeAll
  static void listen() throws IOException {
    silent = new ServerSocket(0, 50, InetAddress.getLoopbackAddress());
    Thread acceptor = new Thread(() -> {
      try {
        for (; ; ) {
          ACCEPTED.add(silent.accept());
        }
      } catch (IOException e) {
        // closed at the end
      }
    });
    acceptor.setDaemon(true);
    acceptor.start();
    client = new TariffClient("127.0.0.1:" + silent.getLocalPort());
    timers = Executors.newSingleThreadScheduledExecutor();
  }

  @AfterAll
  static void stop() throws IOException {
    client.close();
    timers.shutdownNow();
    silent.close();
    for (Socket socket : ACCEPTED) {
      socket.close();
    }
  }

  /** authorize(ALLOW) run in a Context with this deadline (null: none). */
  private static AuthorizeDecision inContext(Duration contextDeadline, Duration timeout) throws Exception {
    Context.CancellableContext context = contextDeadline == null
        ? Context.current().withCancellation()
        : Context.current().withDeadlineAfter(contextDeadline.toMillis(), TimeUnit.MILLISECONDS, timers);
    try {
      return context.call(() -> client.authorize(REQUEST, new AuthorizeOptions(timeout, UnavailablePolicy.ALLOW)));
    } finally {
      context.cancel(null);
    }
  }

  @Test
  void theCallersContextDeadlineEndsTheCheckWithAnErrorNotTheFallback() {
    AuthorizeException e = assertThrows(AuthorizeException.class,
        () -> inContext(Duration.ofMillis(200), Duration.ofSeconds(30)),
        "the caller's own Context deadline was answered with the fail-open fallback");
    assertEquals(Status.Code.DEADLINE_EXCEEDED, e.getStatus().getCode());
    assertEquals("r-ctx", e.requestId());
  }

  @Test
  void theChecksOwnTimeoutWithinALaterOrNoContextDeadlineGetsTheFallback() throws Exception {
    for (Duration contextDeadline : new Duration[] {Duration.ofSeconds(30), null}) {
      AuthorizeDecision decision = inContext(contextDeadline, Duration.ofMillis(200));
      assertEquals(List.of(true, true, "UNAVAILABLE"), List.of(decision.allowed(), decision.degraded(), decision.reason()),
          "context deadline " + contextDeadline);
    }
  }
}
