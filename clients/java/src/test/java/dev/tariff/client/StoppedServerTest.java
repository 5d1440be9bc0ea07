/*
 * A UsageSender against a server that accepts TCP connections but never answers (a SIGSTOPped
 * process: the kernel still completes the handshake into the listen backlog) gives up within about
 * its RetryPolicy.elapsedMax, with UNAVAILABLE. It took the ack timeout (60 s) per stream: 120 s
 * for an elapsedMax of 2 s, with DEADLINE_EXCEEDED.
 */
package dev.tariff.client;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assertions.fail;

import dev.tariff.v1.UsageEvent;
import io.grpc.Status;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.List;
import java.util.Locale;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.TimeoutException;
import java.util.stream.Stream;
import org.junit.jupiter.api.Test;

class StoppedServerTest {
  static void signal(long pid, String signal) throws Exception {
    Process kill = new ProcessBuilder("kill", "-" + signal, Long.toString(pid)).inheritIO().start();
    assertEquals(0, kill.waitFor(), "kill -" + signal + " " + pid);
  }

  /** Whether every thread of the process is in state T (stopped): kill(2) returns before they all are. */
  static boolean allStopped(long pid) throws Exception {
    try (Stream<Path> tasks = Files.list(Path.of("/proc", Long.toString(pid), "task"))) {
      for (Path task : tasks.toList()) {
        String stat;
        try {
          stat = Files.readString(task.resolve("stat"));
        } catch (java.io.IOException e) {
          return false; // a thread that just exited
        }
        // pid (comm) state ...: comm may hold spaces and parentheses, the state follows the last ")".
        if (!stat.substring(stat.lastIndexOf(')') + 1).trim().startsWith("T")) {
          return false;
        }
      }
    }
    return true;
  }

  @Test
  void aSenderGivesUpWithinAboutElapsedMaxOnAServerThatNeverAnswers() throws Exception {
    // Under a German default locale too: the message's seconds are written "2.0 s", never "2,0 s".
    Locale locale = Locale.getDefault();
    Locale.setDefault(Locale.GERMANY);
    try {
      givesUpWithinAboutElapsedMax();
    } finally {
      Locale.setDefault(locale);
    }
  }

  private void givesUpWithinAboutElapsedMax() throws Exception {
    try (TariffServer server = TariffServer.startDemo()) {
      long pid = server.pid();
      signal(pid, "STOP");
      try (TariffClient client = new TariffClient(server.target())) {
        long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(10);
        while (!allStopped(pid)) {
          assertTrue(System.nanoTime() < deadline, "server " + pid + " not stopped 10 s after SIGSTOP");
          Thread.sleep(10);
        }
        UsageSender.RetryPolicy defaults = UsageSender.RetryPolicy.DEFAULT;
        UsageSender.RetryPolicy retry = new UsageSender.RetryPolicy(1_000, Duration.ofSeconds(2), defaults.initialBackoff(),
            defaults.maxBackoff(), defaults.multiplier(), defaults.jitter(), defaults.retryableCodes());
        UsageSender sender = client.usageSender(new UsageSender.Options().retry(retry));
        UsageEvent event = DemoEvents.event("stopped-" + System.nanoTime(), 0, System.currentTimeMillis());
        long started = System.nanoTime();
        Throwable failure = null;
        try {
          // Bounds the test, far above both the fixed and the broken behaviour.
          sender.sendBatch(List.of(event), null).get(150, TimeUnit.SECONDS);
          fail("acknowledged by a stopped server");
        } catch (ExecutionException e) {
          failure = e.getCause();
        } catch (TimeoutException e) {
          fail("the sender had not given up after 150 s (elapsedMax 2 s)");
        }
        double elapsedS = (System.nanoTime() - started) / 1e9;
        System.out.printf("gave up after %.1f s: %s%n", elapsedS, failure);
        assertEquals(Status.Code.UNAVAILABLE, Status.fromThrowable(failure).getCode(), String.valueOf(failure));
        // A bound on a failure mode, not a speed measurement: at most elapsedMax + MIN_CONNECT (3 s) is promised.
        assertTrue(elapsedS < 6, "gave up after " + elapsedS + " s with elapsedMax 2 s: " + failure);
        String description = String.valueOf(Status.fromThrowable(failure).getDescription());
        assertTrue(description.matches(".*no answer from the server within \\d+\\.\\d s"), description);
      } finally {
        signal(pid, "CONT"); // before the server's close: a stopped process takes no SIGTERM
      }
    }
  }

  @Test
  void aSenderWithAlmostNoRetryBudgetStillSendsToAServerThatAnswers() throws Exception {
    // Waiting for a live server's answer is not a failure, and waits at least MIN_CONNECT.
    try (TariffServer server = TariffServer.startDemo(); TariffClient client = new TariffClient(server.target())) {
      UsageSender.RetryPolicy defaults = UsageSender.RetryPolicy.DEFAULT;
      UsageSender.RetryPolicy retry = new UsageSender.RetryPolicy(defaults.attemptsMax(), Duration.ofNanos(1),
          defaults.initialBackoff(), defaults.maxBackoff(), defaults.multiplier(), defaults.jitter(), defaults.retryableCodes());
      UsageSender sender = client.usageSender(new UsageSender.Options().retry(retry));
      UsageEvent event = DemoEvents.event("live-" + System.nanoTime(), 0, System.currentTimeMillis());
      assertEquals(1, sender.sendBatch(List.of(event), null).get(60, TimeUnit.SECONDS).getAccepted());
      sender.close();
    }
  }

  @Test
  void aSenderWhoseServerStopsMidStreamGivesUpAfterTheAckTimeoutPlusTheRetryBudget() throws Exception {
    // The stopped server's connection stays open (no keepalive): each stream after the ack timeout waits for the
    // server's response headers within what remains of elapsedMax, not for another ackTimeout (README, Java).
    Duration ackTimeout = Duration.ofSeconds(8);
    try (TariffServer server = TariffServer.startDemo(); TariffClient client = new TariffClient(server.target())) {
      UsageSender.RetryPolicy defaults = UsageSender.RetryPolicy.DEFAULT;
      UsageSender.RetryPolicy retry = new UsageSender.RetryPolicy(defaults.attemptsMax(), Duration.ofSeconds(1),
          defaults.initialBackoff(), defaults.maxBackoff(), defaults.multiplier(), defaults.jitter(), defaults.retryableCodes());
      UsageSender sender = client.usageSender(new UsageSender.Options().ackTimeout(ackTimeout).retry(retry));
      String runId = "midstop-" + System.nanoTime();
      assertEquals(1, sender.sendBatch(List.of(DemoEvents.event(runId, 0, System.currentTimeMillis())), null)
          .get(60, TimeUnit.SECONDS).getAccepted());
      long pid = server.pid();
      signal(pid, "STOP");
      try {
        long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(10);
        while (!allStopped(pid)) {
          assertTrue(System.nanoTime() < deadline, "server " + pid + " not stopped 10 s after SIGSTOP");
          Thread.sleep(10);
        }
        long started = System.nanoTime();
        Throwable failure = null;
        try {
          // Bounds the test, far above what is promised.
          sender.sendBatch(List.of(DemoEvents.event(runId, 1, System.currentTimeMillis())), null).get(60, TimeUnit.SECONDS);
          fail("acknowledged by a stopped server");
        } catch (ExecutionException e) {
          failure = e.getCause();
        } catch (TimeoutException e) {
          fail("the sender had not given up after 60 s (ackTimeout 8 s, elapsedMax 1 s)");
        }
        double elapsedS = (System.nanoTime() - started) / 1e9;
        System.out.printf("gave up after %.1f s: %s%n", elapsedS, failure);
        assertEquals(Status.Code.UNAVAILABLE, Status.fromThrowable(failure).getCode(), String.valueOf(failure));
        // A bound on a failure mode, not a speed measurement: ackTimeout + elapsedMax + MIN_CONNECT (10 s) is promised.
        assertTrue(elapsedS < 12, "gave up after " + elapsedS + " s with ackTimeout 8 s, elapsedMax 1 s: " + failure);
      } finally {
        signal(pid, "CONT");
      }
    }
  }
}
