/*
 * The UsageSender's stream handling against an in-process fake UsageService whose misbehaviour a
 * real server does not offer on demand: a stream that never acks (the sender gives up on it after
 * ackTimeout and resends the same batches on a new one), a non-retryable status, and a full buffer
 * (send blocks while bufferEventsMax events are unacknowledged).
 */
package dev.tariff.client;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.tariff.v1.IngestAck;
import dev.tariff.v1.UsageBatch;
import dev.tariff.v1.UsageServiceGrpc;
import io.grpc.InsecureServerCredentials;
import io.grpc.Server;
import io.grpc.Status;
import io.grpc.StatusRuntimeException;
import io.grpc.netty.shaded.io.grpc.netty.NettyServerBuilder;
import io.grpc.stub.StreamObserver;
import java.io.IOException;
import java.net.InetAddress;
import java.net.InetSocketAddress;
import java.time.Duration;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.ExecutionException;
import java.util.function.BiFunction;
import org.junit.jupiter.api.Test;

class UsageSenderTest {
  /** Answers stream n (from 1) with answer(n, batch): an ack, null for none; a thrown StatusRuntimeException ends the stream. */
  static final class FakeUsage extends UsageServiceGrpc.UsageServiceImplBase {
    final BiFunction<Integer, UsageBatch, IngestAck> answer;
    final List<List<UsageBatch>> received = new ArrayList<>();

    FakeUsage(BiFunction<Integer, UsageBatch, IngestAck> answer) {
      this.answer = answer;
    }

    @Override
    public StreamObserver<UsageBatch> ingestUsage(StreamObserver<IngestAck> responses) {
      int stream;
      synchronized (received) {
        received.add(new ArrayList<>());
        stream = received.size();
      }
      return new StreamObserver<>() {
        @Override
        public void onNext(UsageBatch batch) {
          synchronized (received) {
            received.get(stream - 1).add(batch);
          }
          try {
            IngestAck ack = answer.apply(stream, batch);
            if (ack != null) {
              responses.onNext(ack);
            }
          } catch (StatusRuntimeException e) {
            responses.onError(e);
          }
        }

        @Override
        public void onError(Throwable error) {}

        @Override
        public void onCompleted() {
          responses.onCompleted();
        }
      };
    }
  }

  /** On 127.0.0.1 only, a free port. */
  static Server startFake(FakeUsage fake) throws IOException {
    return NettyServerBuilder.forAddress(new InetSocketAddress(InetAddress.getLoopbackAddress(), 0), InsecureServerCredentials.create())
        .addService(fake).build().start();
  }

  static IngestAck ackOf(UsageBatch batch) {
    return IngestAck.newBuilder().setBatchId(batch.getBatchId()).setAccepted(batch.getEventsCount()).build();
  }

  @Test
  void noAckWithinAckTimeoutResendsTheSameBatchesOnANewStream() throws Exception {
    FakeUsage fake = new FakeUsage((stream, batch) -> stream == 1 ? null : ackOf(batch)); // the first stream never acks
    Server server = startFake(fake);
    try (TariffClient client = new TariffClient("127.0.0.1:" + server.getPort())) {
      UsageSender sender = client.usageSender(new UsageSender.Options().batchEventsMax(2).ackTimeout(Duration.ofMillis(200)));
      long started = System.nanoTime();
      for (int i = 0; i < 4; i++) {
        sender.send(DemoEvents.event("ack-timeout", i, 1_700_000_000_000L));
      }
      // flush, not close: a half-close would end the first stream (unacked batches and all) before the timeout.
      sender.flush();
      assertTrue(System.nanoTime() - started >= Duration.ofMillis(200).toNanos(), "the first stream was given up before ackTimeout");
      UsageSender.Stats stats = sender.close();
      synchronized (fake.received) {
        assertEquals(2, fake.received.size(), "streams opened");
        assertEquals(fake.received.get(0), fake.received.get(1), "the same batches, ids and events, resent in order");
        assertEquals(2, fake.received.get(0).size());
      }
      assertEquals(new UsageSender.Stats(2, 2, 4, 0, 0, 1, 2, 0), stats);
    } finally {
      server.shutdownNow().awaitTermination();
    }
  }

  @Test
  void aNonRetryableStatusFailsTheSenderWithoutARetry() throws Exception {
    FakeUsage fake = new FakeUsage((stream, batch) -> {
      throw Status.INVALID_ARGUMENT.withDescription("batch_id: too long").asRuntimeException();
    });
    Server server = startFake(fake);
    try (TariffClient client = new TariffClient("127.0.0.1:" + server.getPort())) {
      UsageSender sender = client.usageSender(new UsageSender.Options());
      ExecutionException error = assertThrows(ExecutionException.class,
          () -> sender.sendBatch(List.of(DemoEvents.event("invalid", 0, 1_700_000_000_000L)), null).get());
      Status status = Status.fromThrowable(error.getCause());
      assertEquals(Status.Code.INVALID_ARGUMENT, status.getCode());
      assertTrue(status.getDescription().contains("batch_id: too long"), status.toString());
      synchronized (fake.received) {
        assertEquals(1, fake.received.size(), "streams opened");
      }
      assertEquals(Status.Code.INVALID_ARGUMENT, assertThrows(StatusRuntimeException.class, sender::close).getStatus().getCode());
    } finally {
      server.shutdownNow().awaitTermination();
    }
  }

  @Test
  void sendBlocksWhileBufferEventsMaxEventsAreUnacknowledged() throws Exception {
    FakeUsage fake = new FakeUsage((stream, batch) -> null); // takes the batches, never acks
    Server server = startFake(fake);
    try (TariffClient client = new TariffClient("127.0.0.1:" + server.getPort())) {
      UsageSender sender = client.usageSender(new UsageSender.Options().batchEventsMax(1).bufferEventsMax(2));
      sender.send(DemoEvents.event("full", 0, 1_700_000_000_000L));
      sender.send(DemoEvents.event("full", 1, 1_700_000_000_000L));
      CompletableFuture<Void> third = CompletableFuture.runAsync(() -> {
        try {
          sender.send(DemoEvents.event("full", 2, 1_700_000_000_000L));
        } catch (InterruptedException e) {
          throw new IllegalStateException(e);
        }
      });
      // Until the third send waits on the sender's monitor, or returns (what a send ignoring the bound would do).
      while (!third.isDone() && sender.stats().bufferedEvents() == 2 && !hasWaitingSender()) {
        Thread.sleep(5);
      }
      assertFalse(third.isDone(), "send returned with bufferEventsMax events unacknowledged");
      assertEquals(2, sender.stats().bufferedEvents());
      sender.abort(); // the blocked send fails with the sender's CANCELLED
      ExecutionException error = assertThrows(ExecutionException.class, third::get);
      assertEquals(Status.Code.CANCELLED, Status.fromThrowable(error.getCause()).getCode());
    } finally {
      server.shutdownNow().awaitTermination();
    }
  }

  /**
   * Stream 1 refuses the first batch (UNAVAILABLE), stream 2 acks it and then ends with nothing
   * outstanding (with OK, or with `idleEnd` when not null), stream 3 refuses the second batch,
   * stream 4 acks it: with attemptsMax 2, the sender must not count stream 1's failure with stream
   * 3's, since stream 2 acked and ended healthy in between.
   */
  private static void aStreamEndingWithNothingOutstandingStartsTheFailureCountAfresh(Status idleEnd) throws Exception {
    List<List<UsageBatch>> received = new ArrayList<>();
    UsageServiceGrpc.UsageServiceImplBase fake = new UsageServiceGrpc.UsageServiceImplBase() {
      @Override
      public StreamObserver<UsageBatch> ingestUsage(StreamObserver<IngestAck> responses) {
        int stream;
        synchronized (received) {
          received.add(new ArrayList<>());
          stream = received.size();
        }
        return new StreamObserver<>() {
          @Override
          public void onNext(UsageBatch batch) {
            synchronized (received) {
              received.get(stream - 1).add(batch);
            }
            if (stream == 1 || stream == 3) {
              responses.onError(Status.UNAVAILABLE.withDescription("stream " + stream + " refused").asRuntimeException());
              return;
            }
            responses.onNext(ackOf(batch));
            if (stream == 2) {
              if (idleEnd == null) {
                responses.onCompleted();
              } else {
                responses.onError(idleEnd.asRuntimeException());
              }
            }
          }

          @Override
          public void onError(Throwable error) {}

          @Override
          public void onCompleted() {
            responses.onCompleted();
          }
        };
      }
    };
    Server server = NettyServerBuilder.forAddress(new InetSocketAddress(InetAddress.getLoopbackAddress(), 0), InsecureServerCredentials.create())
        .addService(fake).build().start();
    try (TariffClient client = new TariffClient("127.0.0.1:" + server.getPort())) {
      UsageSender.RetryPolicy defaults = UsageSender.RetryPolicy.DEFAULT;
      UsageSender.RetryPolicy retry = new UsageSender.RetryPolicy(2, defaults.elapsedMax(), Duration.ofMillis(1),
          Duration.ofMillis(1), defaults.multiplier(), defaults.jitter(), defaults.retryableCodes());
      UsageSender sender = client.usageSender(new UsageSender.Options().retry(retry));
      assertEquals(1, sender.sendBatch(List.of(DemoEvents.event("healthy", 0, 1_700_000_000_000L)), "b-1").get().getAccepted());
      // Until stream 2 has ended (and any reconnect it scheduled has run), so that b-2 goes out on stream 3.
      while (sender.streaming()) {
        Thread.sleep(5);
      }
      assertEquals(1, sender.sendBatch(List.of(DemoEvents.event("healthy", 1, 1_700_000_000_000L)), "b-2").get().getAccepted());
      UsageSender.Stats stats = sender.close();
      synchronized (received) {
        assertEquals(4, received.size(), "streams opened");
        assertEquals(List.of(List.of("b-1"), List.of("b-1"), List.of("b-2"), List.of("b-2")),
            received.stream().map(batches -> batches.stream().map(UsageBatch::getBatchId).toList()).toList());
      }
      assertEquals(new UsageSender.Stats(2, 2, 2, 0, 0, 3, 2, 0), stats);
    } finally {
      server.shutdownNow().awaitTermination();
    }
  }

  @Test
  void aStreamEndedCleanlyStartsTheFailureCountAfresh() throws Exception {
    aStreamEndingWithNothingOutstandingStartsTheFailureCountAfresh(null);
  }

  @Test
  void aStreamBrokenWithNothingOutstandingStartsTheFailureCountAfresh() throws Exception {
    aStreamEndingWithNothingOutstandingStartsTheFailureCountAfresh(Status.UNAVAILABLE.withDescription("connection reset while idle"));
  }

  /** Whether a thread is blocked in UsageSender.send (waiting for room). */
  private static boolean hasWaitingSender() {
    return Thread.getAllStackTraces().entrySet().stream().anyMatch(entry ->
        (entry.getKey().getState() == Thread.State.WAITING || entry.getKey().getState() == Thread.State.TIMED_WAITING)
            && Arrays.stream(entry.getValue()).anyMatch(frame ->
                frame.getClassName().equals(UsageSender.class.getName()) && frame.getMethodName().equals("send")));
  }
}
