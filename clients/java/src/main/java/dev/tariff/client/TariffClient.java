/*
 * The Tariff Java client: what a JVM product backend or gateway uses.
 *
 * TariffClient owns one gRPC channel and exposes the generated stubs for the services in
 * proto/tariff/v1 (generated at build time into dev.tariff.v1), plus a few helpers where they pay:
 * getBalance and ingestBatch with the client's default deadline, authorize (the gateway's check,
 * with a deadline and a fail-open / fail-closed policy) and usageSender (batching, streaming,
 * resending every unacknowledged batch after a reconnect). Every unary call without a deadline of its own
 * gets the client's timeout (default 10 s), on the generated stubs too; streams have none. With an API key every call carries
 * `authorization: Bearer KEY` metadata, streams included. Failed calls throw grpc-java's
 * StatusRuntimeException (getStatus().getCode() is the status code).
 */
package dev.tariff.client;

import dev.tariff.v1.AlertServiceGrpc;
import dev.tariff.v1.AuthorizeRequest;
import dev.tariff.v1.AuthorizeResponse;
import dev.tariff.v1.Balance;
import dev.tariff.v1.BalanceServiceGrpc;
import dev.tariff.v1.ContractServiceGrpc;
import dev.tariff.v1.GetBalanceRequest;
import dev.tariff.v1.IngestAck;
import dev.tariff.v1.InvoiceServiceGrpc;
import dev.tariff.v1.PricingServiceGrpc;
import dev.tariff.v1.UsageBatch;
import dev.tariff.v1.UsageServiceGrpc;
import io.grpc.CallOptions;
import io.grpc.Channel;
import io.grpc.ChannelCredentials;
import io.grpc.ClientCall;
import io.grpc.ClientInterceptor;
import io.grpc.ClientInterceptors;
import io.grpc.Context;
import io.grpc.ForwardingClientCall;
import io.grpc.Grpc;
import io.grpc.InsecureChannelCredentials;
import io.grpc.ManagedChannel;
import io.grpc.Metadata;
import io.grpc.MethodDescriptor;
import io.grpc.Status;
import io.grpc.StatusRuntimeException;
import io.grpc.stub.ClientCalls;
import java.time.Duration;
import java.util.Objects;
import java.util.UUID;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicLong;

/** See the file comment. Thread-safe; close it when done. */
public final class TariffClient implements AutoCloseable {
  /** How to connect. */
  public static final class Options {
    private String apiKey = "";
    private ChannelCredentials credentials = InsecureChannelCredentials.create();
    private Duration timeout = Duration.ofSeconds(10);

    /** Sent as `authorization: Bearer KEY` on every call ("" or null: none). */
    public Options apiKey(String apiKey) {
      this.apiKey = apiKey == null ? "" : apiKey;
      return this;
    }

    /**
     * Transport credentials (default: plaintext, for a loopback server). For TLS:
     * {@code TlsChannelCredentials.create()} (system roots) or
     * {@code TlsChannelCredentials.newBuilder().trustManager(caPem).keyManager(certPem, keyPem).build()}.
     */
    public Options credentials(ChannelCredentials credentials) {
      this.credentials = Objects.requireNonNull(credentials);
      return this;
    }

    /**
     * Deadline of every unary call without one of its own (default 10 s): getBalance, ingestBatch, authorize
     * and the generated stubs' unary calls alike. Streams have none.
     */
    public Options timeout(Duration timeout) {
      this.timeout = Objects.requireNonNull(timeout);
      return this;
    }
  }

  /** The largest reply the client reads: 64 MiB, as the Python and Go clients (the server sends at most 16 MiB by default). */
  public static final int REPLY_BYTES_MAX = 64 << 20;

  private static final Metadata.Key<String> AUTHORIZATION =
      Metadata.Key.of("authorization", Metadata.ASCII_STRING_MARSHALLER);
  private static final AtomicLong REQUEST_COUNTER = new AtomicLong();
  private static final String REQUEST_PREFIX = "java-" + UUID.randomUUID().toString().substring(0, 8);

  private final ManagedChannel managedChannel;
  private final Channel channel;
  private final Duration timeout;

  public TariffClient(String target, Options options) {
    // A reply may be as large as the server's --message-mb-max (16 MiB by default): a ListCustomers or
    // ListInvoices page can exceed gRPC's 4 MiB default.
    this.managedChannel =
        Grpc.newChannelBuilder(target, options.credentials).maxInboundMessageSize(REPLY_BYTES_MAX).build();
    Channel withDeadline = ClientInterceptors.intercept(managedChannel, defaultDeadline(options.timeout));
    this.channel =
        options.apiKey.isEmpty() ? withDeadline : ClientInterceptors.intercept(withDeadline, bearer(options.apiKey));
    this.timeout = options.timeout;
  }

  /**
   * Gives a unary call without a deadline of its own the client's timeout, so that a call on a generated stub
   * cannot wait for ever on a server that does not answer. Streams are left alone.
   */
  private static ClientInterceptor defaultDeadline(Duration timeout) {
    return new ClientInterceptor() {
      @Override
      public <Q, R> ClientCall<Q, R> interceptCall(MethodDescriptor<Q, R> method, CallOptions callOptions, Channel next) {
        if (method.getType() == MethodDescriptor.MethodType.UNARY && callOptions.getDeadline() == null) {
          callOptions = callOptions.withDeadlineAfter(timeout.toNanos(), TimeUnit.NANOSECONDS);
        }
        return next.newCall(method, callOptions);
      }
    };
  }

  public TariffClient(String target) {
    this(target, new Options());
  }

  private static ClientInterceptor bearer(String apiKey) {
    String value = "Bearer " + apiKey;
    return new ClientInterceptor() {
      @Override
      public <Q, R> ClientCall<Q, R> interceptCall(MethodDescriptor<Q, R> method, CallOptions callOptions, Channel next) {
        return new ForwardingClientCall.SimpleForwardingClientCall<>(next.newCall(method, callOptions)) {
          @Override
          public void start(Listener<R> listener, Metadata headers) {
            headers.put(AUTHORIZATION, value);
            super.start(listener, headers);
          }
        };
      }
    };
  }

  /** The channel with the API key applied: build any generated stub on it. */
  public Channel channel() {
    return channel;
  }

  public UsageServiceGrpc.UsageServiceStub usage() {
    return UsageServiceGrpc.newStub(channel);
  }

  public BalanceServiceGrpc.BalanceServiceBlockingStub balance() {
    return BalanceServiceGrpc.newBlockingStub(channel);
  }

  public PricingServiceGrpc.PricingServiceBlockingStub pricing() {
    return PricingServiceGrpc.newBlockingStub(channel);
  }

  public ContractServiceGrpc.ContractServiceBlockingStub contracts() {
    return ContractServiceGrpc.newBlockingStub(channel);
  }

  public InvoiceServiceGrpc.InvoiceServiceBlockingStub invoices() {
    return InvoiceServiceGrpc.newBlockingStub(channel);
  }

  public AlertServiceGrpc.AlertServiceBlockingStub alerts() {
    return AlertServiceGrpc.newBlockingStub(channel);
  }

  /** The customer's grants, credits and period charges (decimal strings). */
  public Balance getBalance(String customerId) {
    return balance()
        .withDeadlineAfter(timeout.toNanos(), TimeUnit.NANOSECONDS)
        .getBalance(GetBalanceRequest.newBuilder().setCustomerId(customerId).build());
  }

  /**
   * One batch by the unary IngestUsageBatch; returns its ack once the batch is durable. Per-event
   * rejections (DUPLICATE_CONFLICT, UNKNOWN_CUSTOMER, ...) are in the ack, not an exception. Safe
   * to retry with the same batch: events already counted come back as duplicates.
   */
  public IngestAck ingestBatch(UsageBatch batch) {
    return UsageServiceGrpc.newBlockingStub(channel)
        .withDeadlineAfter(timeout.toNanos(), TimeUnit.NANOSECONDS)
        .ingestUsageBatch(batch);
  }

  /**
   * May the customer consume this usage now? Charges nothing (with reserve, holds the estimated
   * cost). A request without request_id gets a generated one. When the server is not reached
   * within the deadline (UNAVAILABLE or DEADLINE_EXCEEDED), options.onUnavailable decides: THROW
   * (default), ALLOW (fail open) or DENY (fail closed), the latter two with degraded() true. Other
   * statuses (NOT_FOUND for an unknown customer, ...) and the caller's cancellation always throw, the caller's gRPC
   * Context deadline included: grpc-java ends the call at the earlier of it and this deadline, and a Context whose
   * deadline passed is cancelled, the caller's decision and not the server's absence. A reserve
   * request without reservation_id gets one chosen here, before the call, so the hold's id is known whatever
   * happens: a degraded decision carries it too (the server may have made the hold before the deadline ran out;
   * an event naming an id never held is charged as usual, with a notice). To retry, send the same id: one hold.
   * What it throws is an AuthorizeException (a StatusRuntimeException) naming the request's ids, that id included.
   */
  public AuthorizeDecision authorize(AuthorizeRequest request, AuthorizeOptions options) {
    if (request.getRequestId().isEmpty()) {
      request = request.toBuilder().setRequestId(REQUEST_PREFIX + "-" + REQUEST_COUNTER.incrementAndGet()).build();
    }
    if (request.getReserve() && request.getReservationId().isEmpty()) {
      // Random, so two gateways never share a hold by choosing the same id.
      request = request.toBuilder().setReservationId("java-r-" + UUID.randomUUID()).build();
    }
    Duration deadline = options.timeout() == null ? timeout : options.timeout();
    try {
      AuthorizeResponse response =
          balance().withDeadlineAfter(deadline.toNanos(), TimeUnit.NANOSECONDS).authorize(request);
      return AuthorizeDecision.of(response, request.getRequestId());
    } catch (StatusRuntimeException e) {
      Status.Code code = e.getStatus().getCode();
      boolean unreachable = code == Status.Code.UNAVAILABLE || code == Status.Code.DEADLINE_EXCEEDED;
      // The caller's Context cancelled, or past its deadline (which grpc-java applies too): its own decision.
      boolean callerGaveUp = Context.current().isCancelled();
      if (options.onUnavailable() == AuthorizeOptions.UnavailablePolicy.THROW || !unreachable || callerGaveUp) {
        throw new AuthorizeException(e, request);
      }
      return AuthorizeDecision.degraded(request, options.onUnavailable(), e.getStatus());
    }
  }

  public AuthorizeDecision authorize(AuthorizeRequest request) {
    return authorize(request, AuthorizeOptions.defaults());
  }

  /**
   * Waits until the server's grpc.health.v1 Check("") answers SERVING, retrying while it is starting or not yet
   * reachable; throws DEADLINE_EXCEEDED after timeout, and any other status (UNAUTHENTICATED, ...) at once.
   */
  public void waitReady(Duration timeout) throws InterruptedException {
    long deadline = System.nanoTime() + timeout.toNanos();
    String last = "no answer";
    for (; ; ) {
      long remaining = deadline - System.nanoTime();
      if (remaining <= 0) {
        throw Status.DEADLINE_EXCEEDED.withDescription("server not SERVING (last: " + last + ")").asRuntimeException();
      }
      CallOptions attempt =
          CallOptions.DEFAULT.withWaitForReady().withDeadlineAfter(Math.min(remaining, 1_000_000_000L), TimeUnit.NANOSECONDS);
      try {
        int servingStatus = HealthCheck.status(ClientCalls.blockingUnaryCall(channel, HealthCheck.METHOD, attempt, new byte[0]));
        if (servingStatus == HealthCheck.SERVING) {
          return;
        }
        last = "serving status " + servingStatus;
      } catch (StatusRuntimeException e) {
        Status.Code code = e.getStatus().getCode();
        if (code != Status.Code.UNAVAILABLE && code != Status.Code.DEADLINE_EXCEEDED) {
          throw e;
        }
        last = code.toString();
      }
      Thread.sleep(Math.max(0, Math.min(50, TimeUnit.NANOSECONDS.toMillis(deadline - System.nanoTime()))));
    }
  }

  /** A batching, streaming sender of usage events; see UsageSender. */
  public UsageSender usageSender(UsageSender.Options options) {
    return new UsageSender(usage(), managedChannel::resetConnectBackoff, options);
  }

  /** Closes the channel, waiting up to 5 s for calls in flight. */
  @Override
  public void close() {
    managedChannel.shutdown();
    try {
      if (!managedChannel.awaitTermination(5, TimeUnit.SECONDS)) {
        managedChannel.shutdownNow();
      }
    } catch (InterruptedException e) {
      managedChannel.shutdownNow();
      Thread.currentThread().interrupt();
    }
  }
}
