/**
 * The TypeScript client over TLS to a real server started with --tls-cert/--tls-key/--tls-client-ca (a throw-away
 * CA, server and client certificates made with the openssl CLI, as tests/test_server_auth.py makes them): the
 * client's `tls` option (the CA to trust, the certificate to present) reaches it; without a client certificate the
 * mutual-TLS server refuses the call.
 */

import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { readFileSync, rmSync, writeFileSync } from "node:fs";
import path from "node:path";
import { test } from "node:test";

import { ConnectError, TariffClient } from "../src/index.js";
import { CUSTOMER } from "./support/events.js";
import { TariffServer, tempDir } from "./support/server.js";

function openssl(dir: string, ...args: string[]): void {
  execFileSync("openssl", args, { cwd: dir, stdio: "pipe", timeout: 60_000 });
}

/** ca.pem, server.pem/.key (for 127.0.0.1) and client.pem/.key (clientAuth), all signed by a fresh CA. */
function makePki(dir: string): void {
  openssl(dir, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
    "-subj", "/CN=tariff test CA");
  writeFileSync(path.join(dir, "server.ext"), "subjectAltName=IP:127.0.0.1,DNS:localhost\n");
  writeFileSync(path.join(dir, "client.ext"), "extendedKeyUsage=clientAuth\n");
  for (const name of ["server", "client"]) {
    openssl(dir, "req", "-newkey", "rsa:2048", "-nodes", "-keyout", `${name}.key`, "-out", `${name}.csr`,
      "-subj", `/CN=tariff ${name}`);
    openssl(dir, "x509", "-req", "-in", `${name}.csr`, "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
      "-out", `${name}.pem`, "-days", "2", "-extfile", `${name}.ext`);
  }
}

test("tls: the CA to trust and the client certificate reach a mutual-TLS server; no certificate is refused", async () => {
  const dir = tempDir("tls");
  makePki(dir);
  const file = (name: string): string => path.join(dir, name);
  const tls = { ca: readFileSync(file("ca.pem")), cert: readFileSync(file("client.pem")), key: readFileSync(file("client.key")) };
  const server = new TariffServer(file("data"), {
    demo: true,
    extraArgs: ["--tls-cert", file("server.pem"), "--tls-key", file("server.key"), "--tls-client-ca", file("ca.pem")],
    clientOptions: { tls },
  });
  let secure: TariffClient | undefined;
  let anonymous: TariffClient | undefined;
  try {
    await server.start();
    secure = new TariffClient(server.target, { tls });
    assert.equal((await secure.getBalance(CUSTOMER)).customerId, CUSTOMER);
    anonymous = new TariffClient(server.target, { tls: { ca: tls.ca }, unaryTimeoutMs: 5_000 });
    await assert.rejects(anonymous.getBalance(CUSTOMER), (e: unknown) => e instanceof ConnectError);
  } finally {
    secure?.close();
    anonymous?.close();
    await server.stop();
    rmSync(dir, { recursive: true, force: true });
  }
});
