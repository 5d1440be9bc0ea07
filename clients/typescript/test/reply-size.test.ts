/**
 * README "Clients": every client "reads replies of up to 64 MiB (gRPC's default is 4 MiB; the server sends up to its
 * --message-mb-max, 16 MiB by default)", as the Python, Go and Java clients do. The TypeScript client read up to
 * connect's own limit, 4 GiB: a reply larger than 64 MiB was read whole. An in-process fake BalanceService answers
 * with a Balance of the size asked for.
 */

import assert from "node:assert/strict";
import http2 from "node:http2";
import type { AddressInfo } from "node:net";
import { after, before, test } from "node:test";

import { type ConnectRouter } from "@connectrpc/connect";
import { connectNodeAdapter } from "@connectrpc/connect-node";

import { BalanceService, BalanceSchema, Code, ConnectError, TariffClient, create } from "../src/index.js";

const MIB = 1 << 20;
let server: http2.Http2Server;
let client: TariffClient;
const sessions = new Set<http2.ServerHttp2Session>();

before(async () => {
  // getBalance(customerId "<n>") answers with a customer id of n MiB.
  const routes = (router: ConnectRouter): void => {
    router.service(BalanceService, {
      getBalance: (request) => create(BalanceSchema, { customerId: "x".repeat(Number(request.customerId) * MIB) }),
    });
  };
  server = http2.createServer(connectNodeAdapter({ routes }));
  server.on("session", (session) => sessions.add(session));
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  client = new TariffClient(`127.0.0.1:${(server.address() as AddressInfo).port}`);
});

after(async () => {
  client.close();
  // The refused reply's writes may still be queued on its session: end it rather than wait for it.
  sessions.forEach((session) => session.destroy());
  await new Promise<void>((resolve) => server.close(() => resolve()));
});

test("a reply over gRPC's 4 MiB default and under 64 MiB is read", async () => {
  const balance = await client.getBalance("5");
  assert.equal(balance.customerId.length, 5 * MIB);
});

test("a reply over 64 MiB is refused with RESOURCE_EXHAUSTED, as the other clients refuse it", async () => {
  // No deadline: the client clears its own deadline timer when it refuses the reply, but the fake server's connect
  // handler keeps the deadline timer it made from grpc-timeout while its unsent reply is abandoned, which would hold
  // the test file's process until then.
  const error = await client.getBalance("65", { timeoutMs: 0 }).then(
    (balance) => `read ${balance.customerId.length} bytes`,
    (failure: unknown) => failure,
  );
  assert.ok(error instanceof ConnectError, String(error));
  assert.equal(error.code, Code.ResourceExhausted, String(error));
});
