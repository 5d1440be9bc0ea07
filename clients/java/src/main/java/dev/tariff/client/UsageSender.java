/*
 * UsageSender: batches usage events and streams them over the bidi IngestUsage RPC, with a bounded
 * buffer (send blocks while it is full), a bounded number of unacknowledged batches, and
 * reconnect-and-resend.
 *
 * Why resending is safe: the server acknowledges a batch only after it is durable, and dedupes on
 * transaction_id. When the stream breaks (server restart, connection reset, no ack in time), every
 * batch written but not acknowledged is written again on a new stream, in order, as the same
 * message: same batch_id, same events, same transaction ids. A batch that was committed but whose
 * ack was lost comes back with its events counted as duplicates, so nothing is lost and nothing is
 * counted twice. The contract is the one of the Python UsageBatcher and the TypeScript UsageSender.
 *
 * All state is guarded by the sender's monitor; gRPC callbacks and timers take it too.
 */
package dev.tariff.client;

import dev.tariff.v1.IngestAck;
import dev.tariff.v1.UsageBatch;
import dev.tariff.v1.UsageEvent;
import dev.tariff.v1.UsageServiceGrpc;
import com.google.protobuf.Any;
import com.google.protobuf.InvalidProtocolBufferException;
import com.google.rpc.RetryInfo;
import io.grpc.CallOptions;
import io.grpc.Channel;
import io.grpc.ClientCall;
import io.grpc.ClientInterceptor;
import io.grpc.ForwardingClientCall;
import io.grpc.ForwardingClientCallListener;
import io.grpc.Metadata;
import io.grpc.MethodDescriptor;
import io.grpc.Status;
import io.grpc.StatusRuntimeException;
import io.grpc.protobuf.StatusProto;
import io.grpc.stub.StreamObserver;
import java.time.Duration;
import java.util.ArrayDeque;
import java.util.ArrayList;
import java.util.EnumSet;
import java.util.List;
import java.util.Locale;
import java.util.Set;
import java.util.UUID;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.Executors;
import java.util.concurrent.ScheduledExecutorService;
import java.util.concurrent.ScheduledFuture;
import java.util.concurrent.ThreadLocalRandom;
import java.util.concurrent.TimeUnit;
import java.util.function.BiConsumer;

/** See the file comment. Create one with TariffClient.usageSender; end it with close(). */
public final class UsageSender {
  /**
   * How the sender reconnects: attemptsMax consecutive failed streams (an ack resets the count) or
   * elapsedMax since the first of them end it (a stream that ends with nothing unacknowledged, with
   * OK or after acks, failed nothing: the next failure starts the count and the clock afresh); delays grow from initialBackoff by multiplier up to
   * maxBackoff, randomised by ±jitter; statuses outside retryableCodes end it at once, but for one
   * carrying a google.rpc.RetryInfo (an overloaded server's RESOURCE_EXHAUSTED, "retry after 100
   * ms"), which is retried no sooner than the delay it names. A stream the server never answered (it
   * accepts TCP but says nothing: no response headers) failed from the moment it was opened, so its
   * wait counts in elapsedMax; and each stream waits for the server's response headers at most what
   * remains of elapsedMax (the first: all of it), but at least {@link #MIN_CONNECT}, not ackTimeout.
   * Against a server that never answers, the sender thus gives up at most elapsedMax + MIN_CONNECT
   * after it first opened a stream in vain; a stream that was answered and then fell silent is
   * noticed after ackTimeout instead. The Tariff server sends its response headers with its first
   * ack: a first ack slower than that wait ends the stream too (its batches are resent, as after any
   * failure).
   */
  public record RetryPolicy(
      int attemptsMax,
      Duration elapsedMax,
      Duration initialBackoff,
      Duration maxBackoff,
      double multiplier,
      double jitter,
      Set<Status.Code> retryableCodes) {
    /** The least a stream waits for the server's response headers. */
    public static final Duration MIN_CONNECT = Duration.ofSeconds(1);

    public static final RetryPolicy DEFAULT =
        new RetryPolicy(
            10,
            Duration.ofSeconds(60),
            Duration.ofMillis(100),
            Duration.ofSeconds(5),
            2,
            0.2,
            EnumSet.of(
                Status.Code.UNAVAILABLE, // connection refused or reset, server shutting down
                Status.Code.ABORTED,
                Status.Code.CANCELLED, // by the server or the connection (the sender's own never reaches the retry)
                Status.Code.INTERNAL, // e.g. RST_STREAM when a connection dies mid-message
                Status.Code.DEADLINE_EXCEEDED)); // no ack within ackTimeout
  }

  /** Fluent options; the defaults are those of the Go and TypeScript senders (Python's batcher cuts 1,000 events or 200 ms). */
  public static final class Options {
    int batchEventsMax = 500;
    Duration batchLinger = Duration.ofMillis(20);
    int bufferEventsMax = 10_000;
    int inflightBatchesMax = 8;
    Duration ackTimeout = Duration.ofSeconds(60);
    RetryPolicy retry = RetryPolicy.DEFAULT;
    String batchIdPrefix;
    BiConsumer<IngestAck, UsageBatch> onAck;

    /** A batch is cut when it holds this many events (the server takes up to 10,000). */
    public Options batchEventsMax(int value) {
      batchEventsMax = value;
      return this;
    }

    /** How long a partial batch waits for more events. */
    public Options batchLinger(Duration value) {
      batchLinger = value;
      return this;
    }

    /** Events held at once (buffered, in flight, awaiting their ack); send() blocks while full. */
    public Options bufferEventsMax(int value) {
      bufferEventsMax = value;
      return this;
    }

    /** Batches written and not yet acknowledged. */
    public Options inflightBatchesMax(int value) {
      inflightBatchesMax = value;
      return this;
    }

    /** Reconnect when batches are outstanding and no ack came for this long. */
    public Options ackTimeout(Duration value) {
      ackTimeout = value;
      return this;
    }

    public Options retry(RetryPolicy value) {
      retry = value;
      return this;
    }

    /** batch_id = prefix + "-" + n (default: random per sender). */
    public Options batchIdPrefix(String value) {
      batchIdPrefix = value;
      return this;
    }

    /**
     * Called once per batch, in order, when its ack arrives, on a gRPC thread: keep it short, and do
     * not call flush or close from it (they wait for acks that this thread delivers).
     */
    public Options onAck(BiConsumer<IngestAck, UsageBatch> value) {
      onAck = value;
      return this;
    }
  }

  /** Batches written for the first time, acked, events accepted / duplicate / rejected (summed over acks), reconnects, resent batch writes, events held now. */
  public record Stats(
      int batchesSent,
      int batchesAcked,
      long eventsAccepted,
      long eventsDuplicate,
      long eventsRejected,
      int reconnects,
      int resentBatches,
      int bufferedEvents) {}

  private static final class Pending {
    final UsageBatch message;
    final CompletableFuture<IngestAck> future = new CompletableFuture<>();
    int writes;

    Pending(UsageBatch message) {
      this.message = message;
    }
  }

  private final UsageServiceGrpc.UsageServiceStub stub;
  private final Runnable resetConnectBackoff;
  private final Options options;
  private final String batchIdPrefix;
  private final ScheduledExecutorService timers;
  private final CompletableFuture<Void> finished = new CompletableFuture<>();

  private List<UsageEvent> building = new ArrayList<>();
  private ScheduledFuture<?> linger;
  private final ArrayDeque<Pending> ready = new ArrayDeque<>(); // cut, not yet written to the current stream
  private final ArrayDeque<Pending> unacked = new ArrayDeque<>(); // written to the current stream, in order
  private int held;
  private boolean closing;
  private StatusRuntimeException failure;
  private int batchCounter;

  private StreamObserver<UsageBatch> stream;
  private int generation;
  private int streamsOpened;
  private boolean halfClosed;
  private boolean reconnectScheduled;
  private boolean progressed;
  private int failures;
  private long firstFailureNanos;
  private ScheduledFuture<?> ackTimer;
  private int ackTimedOutGeneration = -1;
  private boolean answered; // the current stream's response headers arrived
  private boolean retrying; // the last stream failed and nothing was acked since: the retry budget runs
  private long openedNanos;
  private ScheduledFuture<?> answerTimer;
  private int unansweredGeneration = -1;
  private Duration answerWithin = Duration.ZERO;

  private int batchesSent;
  private int batchesAcked;
  private long eventsAccepted;
  private long eventsDuplicate;
  private long eventsRejected;
  private int reconnects;
  private int resentBatches;

  UsageSender(UsageServiceGrpc.UsageServiceStub stub, Runnable resetConnectBackoff, Options options) {
    if (options.batchEventsMax < 1 || options.bufferEventsMax < options.batchEventsMax || options.inflightBatchesMax < 1) {
      throw new IllegalArgumentException("need 0 < batchEventsMax <= bufferEventsMax and inflightBatchesMax > 0");
    }
    this.stub = stub;
    this.resetConnectBackoff = resetConnectBackoff;
    this.options = options;
    this.batchIdPrefix =
        options.batchIdPrefix == null || options.batchIdPrefix.isEmpty()
            ? "java-" + UUID.randomUUID().toString().substring(0, 12)
            : options.batchIdPrefix;
    this.timers =
        Executors.newSingleThreadScheduledExecutor(
            runnable -> {
              Thread thread = new Thread(runnable, "tariff-usage-sender");
              thread.setDaemon(true);
              return thread;
            });
  }

  /** Buffers one event, blocking while the buffer is full. Its ack comes later: see onAck, flush, close. */
  public synchronized void send(UsageEvent event) throws InterruptedException {
    reserve(1);
    building.add(event);
    if (building.size() >= options.batchEventsMax) {
      cut();
    } else if (linger == null) {
      long token = batchCounter;
      linger =
          timers.schedule(
              () -> {
                synchronized (this) {
                  if (batchCounter == token) { // not already cut by a full batch, flush or close
                    cut();
                  }
                }
              },
              options.batchLinger.toNanos(),
              TimeUnit.NANOSECONDS);
    }
  }

  /**
   * Sends these events as one batch (after any partial batch already buffered); blocks while the
   * buffer has no room for them; the future completes with the ack once the batch is durable.
   * batchId null or "" takes the sender's next id.
   */
  public synchronized CompletableFuture<IngestAck> sendBatch(List<UsageEvent> events, String batchId)
      throws InterruptedException {
    if (events.size() > options.bufferEventsMax) {
      throw new IllegalArgumentException(
          "a batch of " + events.size() + " events exceeds bufferEventsMax (" + options.bufferEventsMax + ")");
    }
    cut();
    reserve(events.size());
    return enqueue(List.copyOf(events), batchId).future;
  }

  /** Sends the partial batch now and waits for the ack of everything sent so far. */
  public void flush() throws InterruptedException {
    List<CompletableFuture<IngestAck>> outstanding = new ArrayList<>();
    synchronized (this) {
      cut();
      unacked.forEach(batch -> outstanding.add(batch.future));
      ready.forEach(batch -> outstanding.add(batch.future));
    }
    for (CompletableFuture<IngestAck> future : outstanding) {
      try {
        future.get();
      } catch (ExecutionException e) {
        // the sender's failure, thrown below
      }
    }
    throwIfFailed();
  }

  /** Flushes, waits for every ack and ends the stream; throws the error that stopped the sender, if any. */
  public Stats close() throws InterruptedException {
    synchronized (this) {
      closing = true;
      cut();
      pump();
    }
    try {
      finished.get();
    } catch (ExecutionException e) {
      throw new IllegalStateException(e); // finished never completes exceptionally
    }
    throwIfFailed();
    return stats();
  }

  /** Stops at once: every unacknowledged batch and blocked send fails with CANCELLED. */
  public synchronized void abort() {
    fail(Status.CANCELLED.withDescription("usage sender aborted").asRuntimeException());
  }

  /** The error that stopped the sender, or null. */
  public synchronized StatusRuntimeException error() {
    return failure;
  }

  public synchronized Stats stats() {
    return new Stats(
        batchesSent, batchesAcked, eventsAccepted, eventsDuplicate, eventsRejected, reconnects, resentBatches, held);
  }

  /** Whether a stream is open or a reconnect is scheduled (for the tests). */
  synchronized boolean streaming() {
    return stream != null || reconnectScheduled;
  }

  private synchronized void throwIfFailed() {
    if (failure != null) {
      throw failure;
    }
  }

  // -- buffering ------------------------------------------------------------------------

  private void reserve(int count) throws InterruptedException {
    for (; ; ) {
      if (failure != null) {
        throw failure;
      }
      if (closing) {
        throw Status.FAILED_PRECONDITION.withDescription("usage sender is closed").asRuntimeException();
      }
      if (held + count <= options.bufferEventsMax) {
        held += count;
        return;
      }
      cut(); // the buffer is full: a partial batch lingering now would only delay the acks that free room
      wait();
    }
  }

  private void cut() {
    if (linger != null) {
      linger.cancel(false);
      linger = null;
    }
    if (building.isEmpty() || failure != null) {
      return;
    }
    List<UsageEvent> events = building;
    building = new ArrayList<>();
    enqueue(events, null);
  }

  private Pending enqueue(List<UsageEvent> events, String batchId) {
    batchCounter += 1;
    String id = batchId == null || batchId.isEmpty() ? batchIdPrefix + "-" + batchCounter : batchId;
    Pending batch = new Pending(UsageBatch.newBuilder().setBatchId(id).addAllEvents(events).build());
    ready.add(batch);
    pump();
    return batch;
  }

  // -- the stream ---------------------------------------------------------------------------

  /** Opens a stream when batches wait, writes what the window allows, half-closes when drained. */
  private void pump() {
    if (failure != null || finished.isDone()) {
      return;
    }
    if (stream == null) {
      if (reconnectScheduled) {
        return;
      }
      if (ready.isEmpty()) {
        if (closing && building.isEmpty()) {
          finish();
        }
        return;
      }
      open();
    }
    while (!ready.isEmpty() && unacked.size() < options.inflightBatchesMax) {
      Pending batch = ready.poll();
      unacked.add(batch);
      if (batch.writes == 0) {
        batchesSent += 1;
      } else {
        resentBatches += 1;
      }
      batch.writes += 1;
      if (unacked.size() == 1) {
        armAckTimer();
      }
      stream.onNext(batch.message);
    }
    if (closing && ready.isEmpty() && building.isEmpty() && !halfClosed) {
      halfClosed = true; // the server acks what is outstanding, then ends the stream
      stream.onCompleted();
    }
  }

  private void open() {
    generation += 1;
    if (streamsOpened > 0) {
      reconnects += 1;
    }
    streamsOpened += 1;
    progressed = false;
    halfClosed = false;
    answered = false;
    int streamGeneration = generation;
    openedNanos = System.nanoTime();
    long budgetLeftNanos =
        options.retry.elapsedMax().toNanos() - (retrying ? openedNanos - firstFailureNanos : 0);
    answerWithin = Duration.ofNanos(Math.max(budgetLeftNanos, RetryPolicy.MIN_CONNECT.toNanos()));
    // Response headers say the server answered: the connection came up and the server is alive.
    ClientInterceptor onHeaders =
        new ClientInterceptor() {
          @Override
          public <ReqT, RespT> ClientCall<ReqT, RespT> interceptCall(
              MethodDescriptor<ReqT, RespT> method, CallOptions callOptions, Channel next) {
            return new ForwardingClientCall.SimpleForwardingClientCall<>(next.newCall(method, callOptions)) {
              @Override
              public void start(Listener<RespT> listener, Metadata headers) {
                super.start(
                    new ForwardingClientCallListener.SimpleForwardingClientCallListener<>(listener) {
                      @Override
                      public void onHeaders(Metadata responseHeaders) {
                        answered(streamGeneration);
                        super.onHeaders(responseHeaders);
                      }
                    },
                    headers);
              }
            };
          }
        };
    stream =
        stub.withInterceptors(onHeaders).ingestUsage(
            new StreamObserver<>() {
              @Override
              public void onNext(IngestAck ack) {
                receive(streamGeneration, ack);
              }

              @Override
              public void onError(Throwable error) {
                streamEnded(streamGeneration, Status.fromThrowable(error), serverRetryDelay(error));
              }

              @Override
              public void onCompleted() {
                streamEnded(streamGeneration, null, null);
              }
            });
    // Without this bound a server that accepts TCP but never answers holds the stream until the ack timeout.
    StreamObserver<UsageBatch> current = stream;
    answerTimer =
        timers.schedule(
            () -> {
              synchronized (this) {
                if (streamGeneration == generation && !answered && stream == current) {
                  unansweredGeneration = streamGeneration;
                  current.onError(Status.UNAVAILABLE.withDescription("no answer").asRuntimeException());
                }
              }
            },
            answerWithin.toNanos(),
            TimeUnit.NANOSECONDS);
  }

  private synchronized void answered(int streamGeneration) {
    if (streamGeneration == generation) {
      answered = true;
      cancelAnswerTimer();
    }
  }

  private void cancelAnswerTimer() {
    if (answerTimer != null) {
      answerTimer.cancel(false);
      answerTimer = null;
    }
  }

  private void receive(int streamGeneration, IngestAck ack) {
    Pending batch;
    synchronized (this) {
      if (streamGeneration != generation || failure != null) {
        return;
      }
      batch = unacked.peek();
      if (batch == null || !batch.message.getBatchId().equals(ack.getBatchId())) {
        // Acks come one per batch, in order: anything else means the stream cannot be trusted.
        String expected = batch == null ? "no ack" : "the ack of " + batch.message.getBatchId();
        fail(Status.INTERNAL.withDescription("expected " + expected + ", got an ack for " + ack.getBatchId()).asRuntimeException());
        return;
      }
      unacked.poll();
      progressed = true;
      retrying = false;
      batchesAcked += 1;
      eventsAccepted += ack.getAccepted();
      eventsDuplicate += ack.getDuplicates();
      eventsRejected += ack.getRejectedCount();
      held -= batch.message.getEventsCount();
      armAckTimer();
      notifyAll();
      pump();
    }
    batch.future.complete(ack);
    if (options.onAck != null) {
      options.onAck.accept(ack, batch.message);
    }
  }

  /** The delay of the status's google.rpc.RetryInfo, when it carries one: the server says waiting that long helps. */
  private static Duration serverRetryDelay(Throwable error) {
    com.google.rpc.Status status = StatusProto.fromThrowable(error);
    if (status == null) {
      return null;
    }
    for (Any detail : status.getDetailsList()) {
      if (detail.is(RetryInfo.class)) {
        try {
          com.google.protobuf.Duration delay = detail.unpack(RetryInfo.class).getRetryDelay();
          return Duration.ofSeconds(delay.getSeconds(), delay.getNanos());
        } catch (InvalidProtocolBufferException e) {
          return null;
        }
      }
    }
    return null;
  }

  private synchronized void streamEnded(int streamGeneration, Status status, Duration serverDelay) {
    if (streamGeneration != generation || failure != null) {
      return;
    }
    stream = null;
    cancelAckTimer();
    cancelAnswerTimer();
    if (unacked.isEmpty() && (status == null || progressed)) {
      // Nothing outstanding, and the stream ended cleanly or after its acks (a connection lost while idle): no
      // failed stream, so the next failure is the first of a new run, its elapsedMax counted from then.
      failures = 0;
      retrying = false;
      pump(); // drained (closing), or a new stream for batches cut meanwhile
      return;
    }
    if (unansweredGeneration == streamGeneration) {
      status =
          Status.UNAVAILABLE.withDescription(
              // Locale.ROOT: "2.0 s" under any default locale (a German one wrote "2,0 s").
              String.format(Locale.ROOT, "no answer from the server within %.1f s", answerWithin.toMillis() / 1000.0));
    } else if (ackTimedOutGeneration == streamGeneration) {
      status = Status.DEADLINE_EXCEEDED.withDescription("no ack within " + options.ackTimeout);
    } else if (status == null) {
      status = Status.UNAVAILABLE.withDescription("stream ended with " + unacked.size() + " batches unacknowledged");
    }
    generation += 1;
    // Every unacknowledged batch goes back to the front of the queue, in order, to be written again.
    while (!unacked.isEmpty()) {
      ready.addFirst(unacked.pollLast());
    }
    failures = progressed ? 1 : failures + 1;
    if (failures == 1) {
      // A stream the server never answered failed when it was opened: its wait counts.
      firstFailureNanos = answered ? System.nanoTime() : openedNanos;
    }
    RetryPolicy retry = options.retry;
    boolean exhausted =
        failures >= retry.attemptsMax() || System.nanoTime() - firstFailureNanos >= retry.elapsedMax().toNanos();
    if (exhausted || (serverDelay == null && !retry.retryableCodes().contains(status.getCode()))) {
      fail(status.withDescription("after " + failures + " failed streams: " + status.getDescription()).asRuntimeException());
      return;
    }
    reconnectScheduled = true;
    retrying = true;
    long delayNanos = Math.max(backoffNanos(failures), serverDelay == null ? 0 : serverDelay.toNanos());
    timers.schedule(this::reconnect, delayNanos, TimeUnit.NANOSECONDS);
  }

  private synchronized void reconnect() {
    reconnectScheduled = false;
    // The channel backs off its own reconnects (up to 2 minutes); the sender's policy decides instead.
    resetConnectBackoff.run();
    pump();
  }

  private long backoffNanos(int failureCount) {
    RetryPolicy retry = options.retry;
    double base =
        Math.min(
            retry.maxBackoff().toNanos(),
            retry.initialBackoff().toNanos() * Math.pow(retry.multiplier(), failureCount - 1));
    double jitter = (ThreadLocalRandom.current().nextDouble() * 2 - 1) * retry.jitter();
    return (long) Math.max(0, base * (1 + jitter));
  }

  private void armAckTimer() {
    cancelAckTimer();
    if (unacked.isEmpty()) {
      return;
    }
    int streamGeneration = generation;
    StreamObserver<UsageBatch> current = stream;
    ackTimer =
        timers.schedule(
            () -> {
              synchronized (this) {
                if (streamGeneration == generation && !unacked.isEmpty()) {
                  ackTimedOutGeneration = streamGeneration;
                  current.onError(Status.DEADLINE_EXCEEDED.withDescription("no ack").asRuntimeException());
                }
              }
            },
            options.ackTimeout.toNanos(),
            TimeUnit.NANOSECONDS);
  }

  private void cancelAckTimer() {
    if (ackTimer != null) {
      ackTimer.cancel(false);
      ackTimer = null;
    }
  }

  /** Stops the sender for good: every pending batch and blocked send fails with error. */
  private void fail(StatusRuntimeException error) {
    if (failure != null) {
      return;
    }
    failure = error;
    if (linger != null) {
      linger.cancel(false);
      linger = null;
    }
    cancelAckTimer();
    for (Pending batch : unacked) {
      batch.future.completeExceptionally(error);
    }
    for (Pending batch : ready) {
      batch.future.completeExceptionally(error);
    }
    unacked.clear();
    ready.clear();
    building = new ArrayList<>();
    held = 0;
    if (stream != null) {
      StreamObserver<UsageBatch> current = stream;
      stream = null;
      generation += 1;
      current.onError(error); // cancels the call
    }
    notifyAll();
    finish();
  }

  private void finish() {
    timers.shutdown();
    finished.complete(null);
  }
}
