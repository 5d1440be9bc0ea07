/*
 * The Java client over TLS to a real server started with --tls-cert/--tls-key (a self-signed
 * certificate for 127.0.0.1 made with the JDK's keytool): credentials trusting that certificate
 * reach it, a plaintext client does not.
 */
package dev.tariff.client;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;

import io.grpc.ChannelCredentials;
import io.grpc.Status;
import io.grpc.StatusRuntimeException;
import io.grpc.TlsChannelCredentials;
import java.io.InputStream;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.security.KeyStore;
import java.time.Duration;
import java.util.Base64;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

class TlsTest {
  static String pem(String type, byte[] der) {
    return "-----BEGIN " + type + "-----\n" + Base64.getMimeEncoder(64, "\n".getBytes(StandardCharsets.US_ASCII)).encodeToString(der)
        + "\n-----END " + type + "-----\n";
  }

  /** A self-signed certificate for 127.0.0.1 and its key, made with the JDK's keytool: {cert, key} as PEM files. */
  static Path[] selfSigned(Path dir) throws Exception {
    Path keystore = dir.resolve("server.p12");
    Process keytool = new ProcessBuilder(Path.of(System.getProperty("java.home"), "bin", "keytool").toString(),
        "-genkeypair", "-keyalg", "EC", "-groupname", "secp256r1", "-alias", "server", "-dname", "CN=127.0.0.1",
        "-ext", "san=ip:127.0.0.1", "-validity", "1", "-storetype", "PKCS12", "-keystore", keystore.toString(),
        "-storepass", "changeit").redirectErrorStream(true).start();
    String output = new String(keytool.getInputStream().readAllBytes(), StandardCharsets.UTF_8);
    assertEquals(0, keytool.waitFor(), output);
    KeyStore store = KeyStore.getInstance("PKCS12");
    try (InputStream in = Files.newInputStream(keystore)) {
      store.load(in, "changeit".toCharArray());
    }
    Path cert = dir.resolve("server.pem");
    Path key = dir.resolve("server.key");
    Files.writeString(cert, pem("CERTIFICATE", store.getCertificate("server").getEncoded()));
    Files.writeString(key, pem("PRIVATE KEY", store.getKey("server", "changeit".toCharArray()).getEncoded()));
    return new Path[] {cert, key};
  }

  @Test
  void credentialsTrustingTheServersCertificateReachIt(@TempDir Path dir) throws Exception {
    Path[] files = selfSigned(dir);
    Path cert = files[0];
    Path key = files[1];

    ChannelCredentials trusting = TlsChannelCredentials.newBuilder().trustManager(cert.toFile()).build();
    try (TariffServer server = TariffServer.startDemoWith(trusting, "--tls-cert", cert.toString(), "--tls-key", key.toString());
        TariffClient secure = new TariffClient(server.target(), new TariffClient.Options().credentials(trusting));
        TariffClient plaintext = new TariffClient(server.target(), new TariffClient.Options().timeout(Duration.ofSeconds(2)))) {
      assertEquals(DemoEvents.CUSTOMER, secure.getBalance(DemoEvents.CUSTOMER).getCustomerId());
      Status.Code code = assertThrows(StatusRuntimeException.class, () -> plaintext.getBalance(DemoEvents.CUSTOMER)).getStatus().getCode();
      assertEquals(Status.Code.UNAVAILABLE, code);
    }
  }

  /** README: "TlsChannelCredentials.newBuilder().trustManager(caPem) ... plus .keyManager(certPem, keyPem) for mutual TLS". */
  @Test
  void aKeyManagersCertificateReachesAMutualTlsServerAndNoCertificateDoesNot(@TempDir Path dir) throws Exception {
    Path[] files = selfSigned(dir);
    Path cert = files[0];
    Path key = files[1];
    // The self-signed certificate is its own CA: the server trusts it for clients too.
    ChannelCredentials mutual = TlsChannelCredentials.newBuilder().trustManager(cert.toFile())
        .keyManager(cert.toFile(), key.toFile()).build();
    ChannelCredentials serverOnly = TlsChannelCredentials.newBuilder().trustManager(cert.toFile()).build();
    try (TariffServer server = TariffServer.startDemoWith(mutual, "--tls-cert", cert.toString(), "--tls-key", key.toString(),
            "--tls-client-ca", cert.toString());
        TariffClient presenting = new TariffClient(server.target(), new TariffClient.Options().credentials(mutual));
        TariffClient anonymous = new TariffClient(server.target(),
            new TariffClient.Options().credentials(serverOnly).timeout(Duration.ofSeconds(2)))) {
      assertEquals(DemoEvents.CUSTOMER, presenting.getBalance(DemoEvents.CUSTOMER).getCustomerId());
      Status.Code code = assertThrows(StatusRuntimeException.class, () -> anonymous.getBalance(DemoEvents.CUSTOMER)).getStatus().getCode();
      assertEquals(Status.Code.UNAVAILABLE, code);
    }
  }
}
