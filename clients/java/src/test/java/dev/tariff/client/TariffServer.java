/*
 * Runs a real Tariff server process on 127.0.0.1 for the integration tests (the Java twin of
 * tests/serverproc.py): free port, `python -m server.cli serve ... --demo`, wait until it answers,
 * kill -9, start again on the same port and data directory, stop. The Python interpreter is
 * $TARIFF_PYTHON, by default the repository's .venv/bin/python; the server's output goes to
 * <dataDir>.server.log.
 */
package dev.tariff.client;

import dev.tariff.v1.BalanceServiceGrpc;
import dev.tariff.v1.GetBalanceRequest;
import io.grpc.ChannelCredentials;
import io.grpc.Grpc;
import io.grpc.InsecureChannelCredentials;
import io.grpc.ManagedChannel;
import io.grpc.StatusRuntimeException;
import java.io.IOException;
import java.net.InetAddress;
import java.net.ServerSocket;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Comparator;
import java.util.List;
import java.util.concurrent.TimeUnit;
import java.util.stream.Stream;

final class TariffServer implements AutoCloseable {
  static final Path REPO_ROOT = Path.of("../..").toAbsolutePath().normalize();

  final Path dir;
  final Path dataDir;
  final Path logPath;
  final int port;
  final List<String> extraArgs;
  final ChannelCredentials credentials; // how the readiness check reaches the server
  int starts;
  private Process process;

  private TariffServer(ChannelCredentials credentials, List<String> extraArgs) throws IOException {
    this.credentials = credentials;
    this.dir = Files.createTempDirectory("tariff-java-");
    this.dataDir = dir.resolve("data");
    this.logPath = dir.resolve("server.log");
    this.port = freePort();
    this.extraArgs = extraArgs;
  }

  /** A demo server (plus extraArgs) in a fresh temporary directory, answering calls. */
  static TariffServer startDemo(String... extraArgs) throws Exception {
    return startDemoWith(InsecureChannelCredentials.create(), extraArgs);
  }

  /** startDemo for a server that the readiness check reaches with these credentials (TLS). */
  static TariffServer startDemoWith(ChannelCredentials credentials, String... extraArgs) throws Exception {
    TariffServer server = new TariffServer(credentials, List.of(extraArgs));
    try {
      server.start();
    } catch (Exception e) {
      server.close();
      throw e;
    }
    return server;
  }

  static String python() {
    String python = System.getenv("TARIFF_PYTHON");
    Path path = python == null || python.isEmpty() ? REPO_ROOT.resolve(".venv/bin/python") : Path.of(python);
    if (!Files.isExecutable(path)) {
      throw new IllegalStateException("no Python at " + path + ": run `make install` or set TARIFF_PYTHON");
    }
    return path.toString();
  }

  static int freePort() throws IOException {
    try (ServerSocket socket = new ServerSocket(0, 1, InetAddress.getLoopbackAddress())) {
      return socket.getLocalPort();
    }
  }

  String target() {
    return "127.0.0.1:" + port;
  }

  /** Spawns the server and waits until GetBalance("acme") answers (or the process exits, or 30 s pass). */
  synchronized void start() throws Exception {
    List<String> command = new ArrayList<>(List.of(python(), "-m", "server.cli", "serve", "--listen", target(),
        "--data-dir", dataDir.toString(), "--demo"));
    command.addAll(extraArgs);
    ProcessBuilder builder = new ProcessBuilder(command).directory(REPO_ROOT.toFile()).redirectErrorStream(true)
        .redirectOutput(ProcessBuilder.Redirect.appendTo(logPath.toFile()));
    builder.environment().put("PYTHONUNBUFFERED", "1");
    process = builder.start();
    starts += 1;
    ManagedChannel channel = Grpc.newChannelBuilder(target(), credentials).build();
    try {
      long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(30);
      for (; ; ) {
        try {
          // With --api-keys the answer is UNAUTHENTICATED: the server is up all the same.
          BalanceServiceGrpc.newBlockingStub(channel).withWaitForReady().withDeadlineAfter(1, TimeUnit.SECONDS)
              .getBalance(GetBalanceRequest.newBuilder().setCustomerId("acme").build());
          return;
        } catch (StatusRuntimeException e) {
          if (e.getStatus().getCode() == io.grpc.Status.Code.UNAUTHENTICATED) {
            return;
          }
          if (!process.isAlive() || System.nanoTime() > deadline) {
            kill9();
            throw new IllegalStateException("server not answering on " + target() + ": " + e.getStatus()
                + "\nlog tail:\n" + logTail(), e);
          }
        }
      }
    } finally {
      channel.shutdownNow();
    }
  }

  /** SIGKILL, and wait for the exit: a crash, nothing gets to flush. */
  synchronized void kill9() throws InterruptedException {
    if (process != null) {
      process.destroyForcibly();
      process.waitFor();
    }
  }

  /** The server process's pid. */
  synchronized long pid() {
    return process.pid();
  }

  String logTail() {
    try {
      List<String> lines = Files.readAllLines(logPath);
      return String.join("\n", lines.subList(Math.max(0, lines.size() - 40), lines.size()));
    } catch (IOException e) {
      return "(no log)";
    }
  }

  /** SIGTERM (SIGKILL after 10 s), then removes the temporary directory. */
  @Override
  public synchronized void close() throws IOException {
    if (process != null) {
      process.destroy();
      try {
        if (!process.waitFor(10, TimeUnit.SECONDS)) {
          process.destroyForcibly().waitFor();
        }
      } catch (InterruptedException e) {
        process.destroyForcibly();
        Thread.currentThread().interrupt();
      }
    }
    try (Stream<Path> paths = Files.walk(dir)) {
      for (Path path : paths.sorted(Comparator.reverseOrder()).toList()) {
        Files.deleteIfExists(path);
      }
    }
  }
}
