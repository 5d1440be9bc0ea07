/**
 * The gateway's credit check: the request and decision types shared by `TariffClient.authorize()`
 * (one unary call per decision) and `AuthorizeStreamer` (many decisions over one bidi
 * AuthorizeStream, correlated by request_id: what to use at high rates, since a unary
 * call costs the server ~0.3 ms of CPU).
 */

import { create } from "@bufbuild/protobuf";
import { DurationSchema } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, type Client } from "@connectrpc/connect";
import { randomUUID } from "node:crypto";

import {
  AuthorizeRequestSchema,
  type AuthorizeRequest,
  type AuthorizeResponse,
  type BalanceService,
} from "./gen/tariff/v1/balance_pb.js";

/** What a gateway asks before serving a request: may this customer consume this usage now? */
export interface AuthorizeInput {
  customerId: string;
  eventType: string;
  dimensions?: Record<string, string>;
  /** Measured quantities, as an event would carry them (tokens, seconds, ...). */
  values?: Record<string, number>;
  /** Echoed in the decision; generated when empty. */
  requestId?: string;
  /** Hold the estimated cost until an event carrying `reservationId` settles it. */
  reserve?: boolean;
  reservationTtlMs?: number;
  /**
   * The hold's id; with `reserve` and none given, the client chooses one before the call, so the decision carries
   * it whatever happens (a degraded one too, and the AuthorizeError of a failed call: the server may have made the
   * hold). To retry, send the same id: the server holds once.
   */
  reservationId?: string;
}

/** What to answer when the server cannot be reached in time; see AuthorizeOptions.onUnavailable. */
export type UnavailablePolicy = "throw" | "allow" | "deny";

export interface AuthorizeOptions {
  /** Deadline for this decision (default: the client's). Gateways use a short one. */
  timeoutMs?: number;
  /**
   * When the server cannot be reached in time (UNAVAILABLE or DEADLINE_EXCEEDED): "throw"
   * (default) raises the error (an AuthorizeError); "allow" fails open and "deny" fails closed, both with
   * `degraded: true` and reason "UNAVAILABLE", so a gateway picks its policy in one place. Other
   * statuses (NOT_FOUND for an unknown customer, INVALID_ARGUMENT, ...) are always thrown.
   */
  onUnavailable?: UnavailablePolicy;
  /**
   * The caller's own end of the decision: once it is aborted (an `AbortSignal.timeout()` too), the decision throws
   * whatever onUnavailable says, since that is the caller's choice and not the server's absence.
   */
  signal?: AbortSignal;
}

/** The server's decision (or, when `degraded`, the caller's fallback policy). */
export interface AuthorizeDecision {
  requestId: string;
  allowed: boolean;
  /** OK, OVERAGE_ALLOWED, INSUFFICIENT_CREDIT, NO_ACTIVE_CONTRACT, ... or UNAVAILABLE when degraded. */
  reason: string;
  /** Decimal string, in the rate card's pricing unit ("" when degraded). */
  estimatedCost: string;
  /** Decimal string ("" when degraded). */
  creditsAvailable: string;
  /** With `reserve`: the hold's id, the server's answer or, when degraded, the request's (the hold may exist). */
  reservationId: string;
  message: string;
  /** True when the server was not reached and onUnavailable decided. */
  degraded: boolean;
}

let requestCounter = 0;

/** A request id unique within this process and very likely across processes. */
export function newRequestId(prefix = "req"): string {
  requestCounter += 1;
  return `${prefix}-${process.pid.toString(36)}-${Date.now().toString(36)}-${requestCounter.toString(36)}`;
}

/** A reservation id: random (122 bits), so two gateways never share a hold by choosing the same id. */
export function newReservationId(): string {
  return `ts-r-${randomUUID()}`;
}

export function toAuthorizeRequest(input: AuthorizeInput, requestId: string): AuthorizeRequest {
  const reserve = input.reserve ?? false;
  const request = create(AuthorizeRequestSchema, {
    requestId,
    customerId: input.customerId,
    eventType: input.eventType,
    dimensions: input.dimensions ?? {},
    values: input.values ?? {},
    reserve,
    reservationId: input.reservationId || (reserve ? newReservationId() : ""),
  });
  if (input.reservationTtlMs !== undefined) {
    const ttlMs = Math.round(input.reservationTtlMs);
    request.reservationTtl = create(DurationSchema, {
      seconds: BigInt(Math.floor(ttlMs / 1000)),
      nanos: (ttlMs % 1000) * 1_000_000,
    });
  }
  return request;
}

export function toDecision(response: AuthorizeResponse, requestId: string): AuthorizeDecision {
  return {
    requestId: response.requestId || requestId,
    allowed: response.allowed,
    reason: response.reason,
    estimatedCost: response.estimatedCost,
    creditsAvailable: response.creditsAvailable,
    reservationId: response.reservationId,
    message: response.message,
    degraded: false,
  };
}

/**
 * The error a failed authorize() throws: a ConnectError (code, details, fieldViolations() all as usual) that also
 * names the request's ids. With `reserve`, `reservationId` is the id the hold may go by (the server may have made it
 * before the deadline ran out): retry with it and the server holds once; a usage event settles the hold by it.
 */
export class AuthorizeError extends ConnectError {
  readonly requestId: string;
  /** The request's reservation id, the client's choice when the input gave none ("" without `reserve`). */
  readonly reservationId: string;

  constructor(error: ConnectError, request: AuthorizeRequest) {
    super(error.rawMessage, error.code, error.metadata, undefined, error.cause);
    this.details = error.details;
    this.requestId = request.requestId;
    this.reservationId = request.reservationId;
  }

  /** By the prototype chain: ConnectError's own test, which this class would inherit, takes any ConnectError. */
  static override [Symbol.hasInstance](value: unknown): boolean {
    return Function.prototype[Symbol.hasInstance].call(this, value);
  }
}

/**
 * The fallback decision for an unreachable server, or the error itself (an AuthorizeError) when the policy says so.
 * Both carry the request's reservation id: the server may have made the hold before the deadline ran out.
 */
export function decideWithoutServer(
  error: unknown,
  request: AuthorizeRequest,
  policy: UnavailablePolicy,
  signal: AbortSignal | undefined,
): AuthorizeDecision {
  const connectError = ConnectError.from(error);
  const unreachable = connectError.code === Code.Unavailable || connectError.code === Code.DeadlineExceeded;
  if (policy === "throw" || !unreachable || signal?.aborted) {
    throw new AuthorizeError(connectError, request);
  }
  return {
    requestId: request.requestId,
    allowed: policy === "allow",
    reason: "UNAVAILABLE",
    estimatedCost: "",
    creditsAvailable: "",
    reservationId: request.reservationId,
    message: `Tariff server not reached (${Code[connectError.code]}: ${connectError.rawMessage}); policy: ${policy}`,
    degraded: true,
  };
}

export interface AuthorizeStreamerOptions {
  /** Deadline per decision unless the call passes its own (default 1,000 ms). */
  timeoutMs?: number;
  /** Default policy when the server cannot be reached (default "throw"). */
  onUnavailable?: UnavailablePolicy;
}

interface PendingDecision {
  resolve: (response: AuthorizeResponse) => void;
  reject: (error: ConnectError) => void;
  timer: NodeJS.Timeout;
  /** Removes the decision's listener from the caller's signal, which may outlive it (a server's shutdown signal). */
  detach: () => void;
}

interface OpenStream {
  controller: AbortController;
  /** Requests queued for this stream and not answered yet, oldest first: request_id -> performance.now() then. */
  unanswered: Map<string, number>;
}

/**
 * Many Authorize decisions over one AuthorizeStream. `authorize()` may be called concurrently from
 * every request handler; answers are matched by request_id. The stream opens on first use and is
 * opened again by the next call after it breaks; decisions in flight on a broken stream fail with
 * its error (or get the onUnavailable fallback). A stream whose oldest request has had no answer for the
 * streamer's `timeoutMs` (a server or connection that stopped answering without ending the stream) is given up
 * the same way when a decision times out on it: its decisions fail with DEADLINE_EXCEEDED, it is cancelled, and
 * the next call opens a new one. Create it with `TariffClient.authorizeStreamer()`.
 */
export class AuthorizeStreamer {
  /** Streams opened so far (1 while the first one lasts). */
  streamsOpened = 0;
  private readonly balance: Client<typeof BalanceService>;
  private readonly timeoutMs: number;
  private readonly onUnavailable: UnavailablePolicy;
  private readonly pending = new Map<string, PendingDecision>();
  private outbox: AuthorizeRequest[] = [];
  private wake!: () => void;
  private wakeup: Promise<void>;
  private stream: OpenStream | undefined;
  private closed = false;

  constructor(balance: Client<typeof BalanceService>, options: AuthorizeStreamerOptions = {}) {
    this.balance = balance;
    this.timeoutMs = options.timeoutMs ?? 1_000;
    this.onUnavailable = options.onUnavailable ?? "throw";
    this.wakeup = this.newWakeup();
  }

  /** Decisions waiting for their answer. */
  get inFlight(): number {
    return this.pending.size;
  }

  async authorize(input: AuthorizeInput, options: AuthorizeOptions = {}): Promise<AuthorizeDecision> {
    const requestId = input.requestId || newRequestId("auth");
    const request = toAuthorizeRequest(input, requestId);
    const policy = options.onUnavailable ?? this.onUnavailable;
    try {
      if (this.closed) {
        throw new ConnectError("authorize streamer is closed", Code.FailedPrecondition);
      }
      if (options.signal?.aborted) {
        throw ConnectError.from(options.signal.reason, Code.Canceled);
      }
      if (this.pending.has(requestId)) {
        // request_id is what correlates answers: two in flight at once could not be told apart.
        throw new ConnectError(`request_id ${requestId} is already in flight`, Code.InvalidArgument);
      }
      const response = await new Promise<AuthorizeResponse>((resolve, reject) => {
        const timeoutMs = options.timeoutMs ?? this.timeoutMs;
        const timer = setTimeout(() => {
          this.settle(requestId);
          reject(new ConnectError(`no answer within ${timeoutMs} ms`, Code.DeadlineExceeded));
          this.giveUpIfSilent(requestId, timeoutMs);
        }, timeoutMs);
        const signal = options.signal;
        const onAbort = (): void => {
          this.settle(requestId)?.reject(ConnectError.from(signal?.reason, Code.Canceled));
        };
        signal?.addEventListener("abort", onAbort, { once: true });
        const detach = (): void => signal?.removeEventListener("abort", onAbort);
        this.pending.set(requestId, { resolve, reject, timer, detach });
        this.outbox.push(request);
        const unanswered = this.ensureStream().unanswered;
        unanswered.delete(requestId); // an id reused after its timeout: its place is now, at the end
        unanswered.set(requestId, performance.now());
        this.notify();
      });
      return toDecision(response, requestId);
    } catch (error) {
      return decideWithoutServer(error, request, policy, options.signal);
    }
  }

  /** Ends the stream; decisions still in flight fail with CANCELED. */
  close(): void {
    this.closed = true;
    const closedError = new ConnectError("authorize streamer closed", Code.Canceled);
    if (this.stream !== undefined) {
      this.endStream(this.stream, closedError);
    }
    this.failAll(closedError);
    this.notify();
  }

  private newWakeup(): Promise<void> {
    return new Promise<void>((resolve) => {
      this.wake = resolve;
    });
  }

  /** Wakes every request generator: there is something to send, or a stream ended. */
  private notify(): void {
    const wake = this.wake;
    this.wakeup = this.newWakeup();
    wake();
  }

  private settle(requestId: string): PendingDecision | undefined {
    const entry = this.pending.get(requestId);
    if (entry !== undefined) {
      clearTimeout(entry.timer);
      entry.detach();
      this.pending.delete(requestId);
    }
    return entry;
  }

  private failAll(error: ConnectError): void {
    for (const requestId of [...this.pending.keys()]) {
      this.settle(requestId)?.reject(error);
    }
  }

  private ensureStream(): OpenStream {
    if (this.stream !== undefined) {
      return this.stream;
    }
    const stream: OpenStream = { controller: new AbortController(), unanswered: new Map() };
    this.stream = stream;
    this.streamsOpened += 1;
    this.run(stream).catch((error: unknown) => this.endStream(stream, ConnectError.from(error)));
    return stream;
  }

  /**
   * Called when a decision timed out. Answers come in request order, so a stream whose oldest request has waited
   * the streamer's timeoutMs has answered nothing since: without this every later decision would be written on it
   * and time out too, for ever (nothing ends a stream the server or the connection silently dropped). The decision
   * that timed out was queued no earlier than that oldest one, so the stream has been silent its timeoutMs at least
   * (measured by its timer, which may fire a little before performance.now() says that much has passed).
   */
  private giveUpIfSilent(requestId: string, timeoutMs: number): void {
    const stream = this.stream;
    if (stream === undefined || !stream.unanswered.has(requestId)) {
      return;
    }
    const oldestAtMs = stream.unanswered.values().next().value ?? performance.now();
    const silentMs = Math.max(timeoutMs, performance.now() - oldestAtMs);
    if (silentMs >= this.timeoutMs) {
      const error = new ConnectError(`the AuthorizeStream answered nothing for ${this.timeoutMs} ms`, Code.DeadlineExceeded);
      this.endStream(stream, error);
    }
  }

  /** Cancels the stream; if it is still the current one, its decisions fail with `error` and the next call opens a new one. */
  private endStream(stream: OpenStream, error: ConnectError): void {
    stream.controller.abort(); // its request generator stops taking from the outbox
    if (this.stream !== stream) {
      return; // already ended (given up or closed): what is pending now belongs to its successor
    }
    this.stream = undefined;
    // Requests queued for the ended stream fail with it rather than go out late on the next one.
    this.outbox = [];
    this.failAll(error);
    this.notify();
  }

  private async run(stream: OpenStream): Promise<void> {
    const signal = stream.controller.signal;
    const responses = this.balance.authorizeStream(this.requests(signal), { signal });
    for await (const response of responses) {
      stream.unanswered.delete(response.requestId);
      this.settle(response.requestId)?.resolve(response); // a late answer after its timeout is dropped
    }
    throw new ConnectError("AuthorizeStream ended", Code.Unavailable);
  }

  private async *requests(signal: AbortSignal): AsyncGenerator<AuthorizeRequest> {
    while (!signal.aborted && !this.closed) {
      if (this.outbox.length > 0) {
        const batch = this.outbox;
        this.outbox = [];
        yield* batch;
        continue;
      }
      await this.wakeup;
    }
  }
}
