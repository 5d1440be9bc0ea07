/*
 * The README's Java example is src/test/java/dev/tariff/example/Quickstart.java, character for
 * character (the build compiles it), and it runs: started in its own JVM against a fresh demo
 * server, it prints the estimated cost and the balance it shows.
 */
package dev.tariff.client;

import static org.junit.jupiter.api.Assertions.assertEquals;

import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
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
  void quickstartRunsAgainstADemoServer() throws Exception {
    try (TariffServer server = TariffServer.startDemo()) {
      Path java = Path.of(System.getProperty("java.home"), "bin", "java");
      ProcessBuilder builder = new ProcessBuilder(java.toString(), "-cp", System.getProperty("java.class.path"),
          "dev.tariff.example.Quickstart").redirectError(ProcessBuilder.Redirect.INHERIT);
      builder.environment().put("TARIFF_TARGET", server.target());
      builder.environment().remove("TARIFF_API_KEY");
      Process process = builder.start();
      String output = new String(process.getInputStream().readAllBytes(), StandardCharsets.UTF_8);
      assertEquals(true, process.waitFor(60, TimeUnit.SECONDS), "the example finished");
      assertEquals(0, process.exitValue());
      assertEquals("5 49995\n", output);
    }
  }
}
