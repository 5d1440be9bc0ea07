/**
 * The Tariff TypeScript client: what a Node.js product backend or gateway imports.
 *
 * `TariffClient` owns one HTTP/2 connection (gRPC over @connectrpc/connect-node) and exposes:
 * - the generated service clients for every service in proto/tariff/v1 (`client.usage`,
 *   `client.balance`, `client.pricing`, `client.contracts`, `client.invoices`, `client.alerts`,
 *   `client.health`), so nothing in the contract is out of reach;
 * - `getBalance()`, the gateway helper `authorize()` (and `authorizeStreamer()` for high rates,
 *   authorize.ts) and `waitReady()`;
 * - `usageSender()`, a batching, streaming, retrying sender of usage events (usage-sender.ts).
 *
 * With an `apiKey`, every call carries `authorization: Bearer KEY` metadata.
 * Failed calls throw connect's `ConnectError` (`.code` is a `Code`, e.g. `Code.InvalidArgument`).
 */

import { Code, ConnectError, createClient, type Client, type Interceptor, type Transport } from "@connectrpc/connect";
import { Http2SessionManager, createGrpcTransport } from "@connectrpc/connect-node";

import { HealthCheckResponse_ServingStatus, Health } from "./gen/grpc/health/v1/health_pb.js";
import { AlertService } from "./gen/tariff/v1/alerts_pb.js";
import { BalanceService, type Balance } from "./gen/tariff/v1/balance_pb.js";
import { ContractService } from "./gen/tariff/v1/contracts_pb.js";
import { InvoiceService } from "./gen/tariff/v1/invoices_pb.js";
import { PricingService } from "./gen/tariff/v1/pricing_pb.js";
import { UsageService, type IngestAck, type UsageEvent } from "./gen/tariff/v1/usage_pb.js";
import { UsageSender, toEvent, type Usage, type UsageSenderOptions } from "./usage-sender.js";
import {
  AuthorizeStreamer,
  decideWithoutServer,
  newRequestId,
  toAuthorizeRequest,
  toDecision,
  type AuthorizeDecision,
  type AuthorizeInput,
  type AuthorizeOptions,
  type AuthorizeStreamerOptions,
} from "./authorize.js";

export interface TariffClientOptions {
  /** Sent as `authorization: Bearer KEY` on every call when given. */
  apiKey?: string;
  /**
   * Deadline of every unary call that passes no `timeoutMs` of its own (default 10,000): getBalance(),
   * authorize() and the generated clients' unary calls alike (`{ timeoutMs: 0 }`: none). Streams have
   * none, so the long-lived IngestUsage and AuthorizeStream streams are not cut.
   */
  unaryTimeoutMs?: number;
  /**
   * "https" for a TLS endpoint; default "http" (plaintext HTTP/2, as `tariff serve` without TLS), or "https" when
   * `tls` is given.
   */
  scheme?: "http" | "https";
  /**
   * TLS options (implies "https"): `ca`, the PEM of the CA to trust (for a server whose certificate a private CA
   * signed; default: Node's roots), and `cert` + `key`, the client's certificate chain and key for mutual TLS
   * (`tariff serve --tls-client-ca`).
   */
  tls?: TlsOptions;
  /** Extra interceptors, run after the one that adds the API key. */
  interceptors?: Interceptor[];
}

/** PEM text or bytes, as node:tls takes them. */
export interface TlsOptions {
  ca?: string | Buffer;
  cert?: string | Buffer;
  key?: string | Buffer;
}

const DEFAULT_UNARY_TIMEOUT_MS = 10_000;

/**
 * The largest reply the client reads: 64 MiB, as the Python, Go and Java clients (the server sends at most its
 * --message-mb-max, 16 MiB by default). A larger one fails with RESOURCE_EXHAUSTED; connect's own limit is 4 GiB.
 */
export const REPLY_BYTES_MAX = 64 * 1024 * 1024;

function apiKeyInterceptor(apiKey: string): Interceptor {
  const value = `Bearer ${apiKey}`;
  return (next) => async (request) => {
    request.header.set("authorization", value);
    return next(request);
  };
}

function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) {
      reject(ConnectError.from(signal.reason, Code.Canceled));
      return;
    }
    const timer = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    const onAbort = (): void => {
      clearTimeout(timer);
      reject(ConnectError.from(signal?.reason, Code.Canceled));
    };
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}

/**
 * The transport with `timeoutMs` as the deadline of every unary call that sets none, so that a call on a generated
 * client cannot wait for ever on a server that does not answer. Streams are left alone (a transport-wide
 * defaultTimeoutMs would end them too).
 */
function withUnaryTimeout(transport: Transport, timeoutMs: number): Transport {
  return {
    unary: (method, signal, callTimeoutMs, header, input, contextValues) =>
      transport.unary(method, signal, callTimeoutMs ?? timeoutMs, header, input, contextValues),
    stream: (method, signal, callTimeoutMs, header, input, contextValues) =>
      transport.stream(method, signal, callTimeoutMs, header, input, contextValues),
  };
}

/** A client for one Tariff server, e.g. `new TariffClient("127.0.0.1:50051", { apiKey })`. */
export class TariffClient {
  readonly target: string;
  readonly transport: Transport;
  readonly usage: Client<typeof UsageService>;
  readonly balance: Client<typeof BalanceService>;
  readonly pricing: Client<typeof PricingService>;
  readonly contracts: Client<typeof ContractService>;
  readonly invoices: Client<typeof InvoiceService>;
  readonly alerts: Client<typeof AlertService>;
  readonly health: Client<typeof Health>;
  private readonly sessionManager: Http2SessionManager;
  private readonly unaryTimeoutMs: number;
  private readonly senders = new Set<UsageSender>();
  private readonly streamers = new Set<AuthorizeStreamer>();

  /** `target` is HOST:PORT (or a full http:// / https:// URL). */
  constructor(target: string, options: TariffClientOptions = {}) {
    this.target = target;
    this.unaryTimeoutMs = options.unaryTimeoutMs ?? DEFAULT_UNARY_TIMEOUT_MS;
    const scheme = options.scheme ?? (options.tls ? "https" : "http");
    const baseUrl = /^https?:\/\//.test(target) ? target : `${scheme}://${target}`;
    // One session manager we hold on to, so that close() can end the HTTP/2 connection instead of
    // leaving it to keep the process alive until its idle timeout.
    this.sessionManager = new Http2SessionManager(
      baseUrl,
      { pingIntervalMs: 30_000, idleConnectionTimeoutMs: 60_000 },
      options.tls ? { ca: options.tls.ca, cert: options.tls.cert, key: options.tls.key } : undefined,
    );
    const interceptors: Interceptor[] = [];
    if (options.apiKey) {
      interceptors.push(apiKeyInterceptor(options.apiKey));
    }
    interceptors.push(...(options.interceptors ?? []));
    this.transport = withUnaryTimeout(
      createGrpcTransport({
        baseUrl,
        sessionManager: this.sessionManager,
        interceptors,
        // The server sends uncompressed replies; asking for none saves it from considering them.
        acceptCompression: [],
        readMaxBytes: REPLY_BYTES_MAX,
      }),
      this.unaryTimeoutMs,
    );
    this.usage = createClient(UsageService, this.transport);
    this.balance = createClient(BalanceService, this.transport);
    this.pricing = createClient(PricingService, this.transport);
    this.contracts = createClient(ContractService, this.transport);
    this.invoices = createClient(InvoiceService, this.transport);
    this.alerts = createClient(AlertService, this.transport);
    this.health = createClient(Health, this.transport);
  }

  /** The customer's credit balance now (amounts are decimal strings). */
  async getBalance(customerId: string, options: { timeoutMs?: number; signal?: AbortSignal } = {}): Promise<Balance> {
    return this.balance.getBalance(
      { customerId },
      { timeoutMs: options.timeoutMs ?? this.unaryTimeoutMs, signal: options.signal },
    );
  }

  /**
   * One batch by the unary IngestUsageBatch; resolves with its ack once the batch is durable. Per-event rejections
   * (DUPLICATE_CONFLICT, UNKNOWN_CUSTOMER, ...) are in the ack, not an error. Safe to retry with the same events:
   * those already counted come back as duplicates. For a steady flow of events, usageSender() streams them.
   */
  async ingestBatch(
    events: ReadonlyArray<Usage | UsageEvent>,
    batchId = "",
    options: { timeoutMs?: number; signal?: AbortSignal } = {},
  ): Promise<IngestAck> {
    return this.usage.ingestUsageBatch(
      { batchId, events: events.map(toEvent) },
      { timeoutMs: options.timeoutMs ?? this.unaryTimeoutMs, signal: options.signal },
    );
  }

  /**
   * The gateway's credit check: would this usage be allowed now, and what would it cost? The
   * server prices it exactly as ingesting it now would. See AuthorizeOptions.onUnavailable for
   * what happens when the server cannot be reached.
   */
  async authorize(input: AuthorizeInput, options: AuthorizeOptions = {}): Promise<AuthorizeDecision> {
    const requestId = input.requestId || newRequestId("auth");
    const request = toAuthorizeRequest(input, requestId);
    try {
      const response = await this.balance.authorize(request, {
        timeoutMs: options.timeoutMs ?? this.unaryTimeoutMs,
        signal: options.signal,
      });
      return toDecision(response, requestId);
    } catch (error) {
      return decideWithoutServer(error, request, options.onUnavailable ?? "throw", options.signal);
    }
  }

  /**
   * Many authorize() decisions over one AuthorizeStream (for gateways at high rates): call
   * `streamer.authorize(input)` concurrently from every request handler; `streamer.close()` at the end.
   */
  authorizeStreamer(options: AuthorizeStreamerOptions = {}): AuthorizeStreamer {
    const streamer = new AuthorizeStreamer(this.balance, options);
    this.streamers.add(streamer);
    return streamer;
  }

  /**
   * Waits until grpc.health.v1 Check("") answers SERVING, retrying while the server is starting.
   * Throws the last error (or DEADLINE_EXCEEDED) after `timeoutMs` (default 30,000).
   */
  async waitReady(timeoutMs = 30_000, pollIntervalMs = 50): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    let last: unknown = new ConnectError("server not SERVING yet", Code.DeadlineExceeded);
    for (;;) {
      const remainingMs = deadline - Date.now();
      if (remainingMs <= 0) {
        throw ConnectError.from(last, Code.DeadlineExceeded);
      }
      try {
        const reply = await this.health.check({ service: "" }, { timeoutMs: Math.min(remainingMs, 1_000) });
        if (reply.status === HealthCheckResponse_ServingStatus.SERVING) {
          return;
        }
        last = new ConnectError(
          `health status ${HealthCheckResponse_ServingStatus[reply.status]}`,
          Code.Unavailable,
        );
      } catch (error) {
        last = error;
      }
      await sleep(Math.min(pollIntervalMs, Math.max(0, deadline - Date.now())));
    }
  }

  /**
   * A UsageSender streaming over IngestUsage on this client's connection: `await sender.send(e)`
   * per event (waits while the buffer is full), `await sender.close()` to flush and finish.
   */
  usageSender(options: UsageSenderOptions = {}): UsageSender {
    const sender = new UsageSender(this.usage, options);
    this.senders.add(sender);
    sender.closed.finally(() => this.senders.delete(sender)).catch(() => undefined);
    return sender;
  }

  /**
   * Ends the connection. Senders still open are aborted (their unacknowledged batches fail with
   * CANCELED): close them first to deliver everything. Authorize streamers are closed.
   */
  close(): void {
    for (const sender of this.senders) {
      sender.abort(new ConnectError("client closed", Code.Canceled));
    }
    for (const streamer of this.streamers) {
      streamer.close();
    }
    this.sessionManager.abort();
  }
}
