/*
 * The README's Java example is src/test/java/dev/tariff/example/Quickstart.java, character for
 * character (the build compiles it), and it runs: started in its own JVM against a fresh demo
 * server, it prints the decision, that its event was recorded and the balance; run again, that its
 * event was already recorded, and the same balance.
 */
package dev.tariff.client;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.Test;

class ExampleTest {
  static final Path QUICKSTART = Path.of("src/test/java/dev/tariff/example/Quickstart.java");

  /** The README's fenced block that follows the comment naming this file. */
  static String readmeBlock(String file, String language) throws Exception {
    String readme = Files.readString(TariffServer.REPO_ROOT.resolve("README.md"));
    String opening = "\n<!-- " + file + " -->\n```" + language + "\n";
    String[] parts = readme.split(java.util.regex.Pattern.quote(opening), -1);
    assertEquals(2, parts.length, "README.md holds exactly one block opened by " + opening);
    int end = parts[1].indexOf("\n```\n");
    assertEquals(true, end >= 0, "the block after " + opening + " is closed");
    return parts[1].substring(0, end + 1);
  }

  @Test
  void theReadmeJavaExampleIsQuickstart() throws Exception {
    String quickstart = Files.readString(QUICKSTART);
    assertEquals(quickstart, readmeBlock("clients/java/" + QUICKSTART, "java"), "copy " + QUICKSTART + " into README.md's ```java block");
  }

  @Test
  void quickstartRunsAgainstADemoServerAndARerunIsAlreadyRecorded() throws Exception {
    try (TariffServer server = TariffServer.startDemo()) {
      // The second run resends the very same event (its id is the day's): the server counts it once and the
      // example says so.
      List<String> transactionIds = new ArrayList<>();
      for (String outcome : List.of("recorded", "already recorded: counted once, nothing charged again")) {
        String[] lines = runQuickstart(server).split("\n", -1);
        String said = lines.length == 4 ? lines[1].substring(lines[1].indexOf(' ') + 1) : "";
        String transactionId = lines.length == 4 ? lines[1].substring(0, Math.max(0, lines[1].indexOf(' '))) : "";
        assertEquals(List.of("authorize: OK estimated cost 5", outcome, "credits remaining: 49995", ""),
            List.of(lines[0], said, lines.length == 4 ? lines[2] : "", lines[lines.length - 1]), String.join("\n", lines));
        assertTrue(transactionId.startsWith("example-java-"), transactionId);
        transactionIds.add(transactionId);
      }
      assertEquals(transactionIds.get(0), transactionIds.get(1), "a rerun must resend the same event");
    }
  }

  /**
   * A cold start: the quickstart's JVM spends its first call on connecting and on loading gRPC's and Netty's classes,
   * up to about a second on a loaded 2-core machine, which its 1 s check must not pay for (it then decided
   * UNAVAILABLE and skipped its event). It connects first, so started before the server listens (the coldest
   * start) it waits for the server and decides OK; it used to fail closed at once, and exit with getBalance's error.
   */
  @Test
  void quickstartStartedBeforeTheServerWaitsForIt() throws Exception {
    try (TariffServer server = TariffServer.startDemo()) {
      server.kill9();
      Process process = startQuickstart(server);
      try {
        // Time for the old quickstart to give up (about a second after its start); the new one waits up to 10 s, which
        // leaves the server (about 1.5 s to start here) a wide margin.
        process.waitFor(2, TimeUnit.SECONDS);
        server.start();
        String[] lines = finish(process).split("\n", -1);
        assertEquals("authorize: OK estimated cost 5", lines[0], String.join("\n", lines));
        assertEquals("credits remaining: 49995", lines.length == 4 ? lines[2] : "", String.join("\n", lines));
      } finally {
        process.destroyForcibly();
      }
    }
  }

  static String runQuickstart(TariffServer server) throws Exception {
    return finish(startQuickstart(server));
  }

  static Process startQuickstart(TariffServer server) throws Exception {
    Path java = Path.of(System.getProperty("java.home"), "bin", "java");
    ProcessBuilder builder = new ProcessBuilder(java.toString(), "-cp", System.getProperty("java.class.path"),
        "dev.tariff.example.Quickstart").redirectError(ProcessBuilder.Redirect.INHERIT);
    builder.environment().put("TARIFF_TARGET", server.target());
    builder.environment().remove("TARIFF_API_KEY");
    return builder.start();
  }

  /** The quickstart's output, once it has exited with status 0. */
  static String finish(Process process) throws Exception {
    String output = new String(process.getInputStream().readAllBytes(), StandardCharsets.UTF_8);
    assertEquals(true, process.waitFor(60, TimeUnit.SECONDS), "the example finished");
    assertEquals(0, process.exitValue(), output);
    return output;
  }
}
