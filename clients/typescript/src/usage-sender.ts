/**
 * UsageSender: batches usage events and streams them over the bidi IngestUsage RPC, with a bounded
 * buffer (backpressure), a bounded number of unacknowledged batches, and reconnect-and-resend.
 *
 * Why resending is safe: the server acknowledges a batch only after it is durable, and dedupes on
 * transaction_id (docs/architecture.md §5). When the stream breaks (server restart, connection
 * reset, no ack in time), every batch written but not acknowledged is written again on a new
 * stream, in order, as the same message: same batch_id, same events, same transaction ids. A
 * batch that was committed but whose ack was lost comes back with its events counted as
 * duplicates, so nothing is lost and nothing is counted twice.
 *
 *     const sender = client.usageSender({ batchEventsMax: 500, onAck: (ack) => log(ack) });
 *     await sender.send({ transactionId, customerId, eventType, timestampMs: Date.now(), dimensions });
 *     await sender.close(); // flushes and waits for every ack
 */

import { create, fromBinary } from "@bufbuild/protobuf";
import { BinaryReader, WireType } from "@bufbuild/protobuf/wire";
import { DurationSchema } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, type Client } from "@connectrpc/connect";
import { randomUUID } from "node:crypto";

import {
  UsageBatchSchema,
  UsageEventSchema,
  type IngestAck,
  type UsageBatch,
  type UsageEvent,
  type UsageService,
} from "./gen/tariff/v1/usage_pb.js";

/** One usage event as product code writes it. `transactionId` is the idempotency key. */
export interface Usage {
  transactionId: string;
  customerId: string;
  eventType: string;
  /** Unix milliseconds, UTC (an integer: `Date.now()`). */
  timestampMs: number | bigint;
  dimensions?: Record<string, string>;
  values?: Record<string, number>;
  reservationId?: string;
}

/** How the sender reconnects after its stream breaks. */
export interface RetryPolicy {
  /**
   * Give up after this many consecutive failed connections (an ack resets the count; a stream that ends with nothing
   * unacknowledged, with OK or broken after its acks, failed nothing).
   */
  attemptsMax: number;
  /**
   * ... or this long after the first of them, whichever comes first. A stream the server never answered (it
   * accepts TCP but says nothing: no response headers) failed from the moment it was opened, so its wait counts
   * here; and each stream waits for the server's response headers at most what remains of elapsedMaxMs (the first:
   * all of it), but at least minConnectMs, not ackTimeoutMs. Against a server that never answers, the sender thus
   * gives up at most elapsedMaxMs + minConnectMs after it first opened a stream in vain; a stream that was answered
   * and then fell silent is noticed after ackTimeoutMs instead. The Tariff server sends its response headers with its
   * first ack: a first ack slower than that wait ends the stream too (its batches are resent, as after any failure).
   */
  elapsedMaxMs: number;
  /** The least a stream waits for the server's response headers (default 1,000). */
  minConnectMs: number;
  initialBackoffMs: number;
  maxBackoffMs: number;
  multiplier: number;
  /** Each delay is randomised by ±jitter (a fraction) so that many senders do not reconnect in step. */
  jitter: number;
  /**
   * Statuses worth retrying; anything else (INVALID_ARGUMENT, RESOURCE_EXHAUSTED, ...) fails at once, but for a
   * status carrying a google.rpc.RetryInfo (an overloaded server's RESOURCE_EXHAUSTED, "retry after 100 ms"),
   * which is retried no sooner than the delay it names.
   */
  retryableCodes: ReadonlySet<Code>;
}

export const DEFAULT_RETRY_POLICY: Readonly<RetryPolicy> = Object.freeze({
  attemptsMax: 10,
  elapsedMaxMs: 60_000,
  minConnectMs: 1_000,
  initialBackoffMs: 100,
  maxBackoffMs: 5_000,
  multiplier: 2,
  jitter: 0.2,
  retryableCodes: new Set<Code>([
    Code.Unavailable, // connection refused or reset, server shutting down
    Code.Aborted,
    Code.Canceled, // cancelled by the server or the connection (ours never reaches the retry loop)
    Code.Internal, // e.g. RST_STREAM when a connection dies mid-message
    Code.DeadlineExceeded, // no ack within ackTimeoutMs
  ]),
});

export interface UsageSenderOptions {
  /** Events per batch: a batch is cut when it holds this many (default 500; the server takes up to 10,000). */
  batchEventsMax?: number;
  /** How long a partial batch waits for more events before it is sent (default 20 ms). */
  batchLingerMs?: number;
  /**
   * Events held by the sender at once: buffered, in flight, or waiting for their ack (default
   * 10,000). `send()` waits while the buffer is full. Must be at least batchEventsMax.
   */
  bufferEventsMax?: number;
  /** Batches written to the stream and not yet acknowledged (default 8). */
  inflightBatchesMax?: number;
  /**
   * Reconnect when batches are outstanding and no ack came for this long (default 60,000), counted from the write of
   * the oldest batch not acknowledged, or the last ack if later.
   */
  ackTimeoutMs?: number;
  retry?: Partial<RetryPolicy>;
  /** batch_id = `${batchIdPrefix}-${n}` (default: a random prefix per sender). */
  batchIdPrefix?: string;
  /** Called once per batch, in order, when its ack arrives (exceptions become process warnings). */
  onAck?: (ack: IngestAck, batch: UsageBatch) => void;
}

export interface UsageSenderStats {
  /** Batches written for the first time. */
  batchesSent: number;
  batchesAcked: number;
  /** Summed over acks: events newly accepted, identical resends, and rejections. */
  eventsAccepted: number;
  eventsDuplicate: number;
  eventsRejected: number;
  /** Streams opened after the first one. */
  reconnects: number;
  /** Batch writes on a new stream because their ack had not come on the old one. */
  resentBatches: number;
  /** Events held now (buffered, in flight, or awaiting their ack). */
  bufferedEvents: number;
}

interface PendingBatch {
  message: UsageBatch;
  eventCount: number;
  writes: number;
  promise: Promise<IngestAck>;
  resolve: (ack: IngestAck) => void;
  reject: (error: ConnectError) => void;
}

interface RoomWaiter {
  eventCount: number;
  resolve: () => void;
  reject: (error: ConnectError) => void;
}

/** The UsageEvent message of a `Usage` (a UsageEvent message is taken as it is). */
export function toEvent(usage: Usage | UsageEvent): UsageEvent {
  if ("$typeName" in usage) {
    return usage;
  }
  return create(UsageEventSchema, {
    transactionId: usage.transactionId,
    customerId: usage.customerId,
    eventType: usage.eventType,
    // BigInt() refuses a fractional number, so a bad timestamp fails here, in the caller's send().
    timestampMs: BigInt(usage.timestampMs),
    dimensions: usage.dimensions ?? {},
    values: usage.values ?? {},
    reservationId: usage.reservationId ?? "",
  });
}

/**
 * The delay of the status's google.rpc.RetryInfo in milliseconds, when it carries one: the server says waiting that
 * long helps. RetryInfo is `{ google.protobuf.Duration retry_delay = 1; }` (google/rpc/error_details.proto), read
 * here by hand since the package generates no google.rpc types.
 */
export function serverRetryDelayMs(error: ConnectError): number | undefined {
  for (const detail of error.details) {
    if ("desc" in detail || detail.type !== "google.rpc.RetryInfo") {
      continue;
    }
    const reader = new BinaryReader(detail.value);
    let delayMs = 0;
    while (reader.pos < reader.len) {
      const [field, wireType] = reader.tag();
      if (field === 1 && wireType === WireType.LengthDelimited) {
        const delay = fromBinary(DurationSchema, reader.bytes());
        delayMs = Number(delay.seconds) * 1000 + delay.nanos / 1_000_000;
      } else {
        reader.skip(wireType, field);
      }
    }
    return delayMs;
  }
  return undefined;
}

function positiveInteger(name: string, value: number): number {
  if (!Number.isInteger(value) || value < 1) {
    throw new RangeError(`${name} must be a positive integer, got ${value}`);
  }
  return value;
}

/** See the module comment. Create one with `TariffClient.usageSender()`. */
export class UsageSender {
  readonly batchEventsMax: number;
  readonly batchLingerMs: number;
  readonly bufferEventsMax: number;
  readonly inflightBatchesMax: number;
  readonly ackTimeoutMs: number;
  readonly retry: RetryPolicy;
  /** Settles (never rejects) when the sender has finished: closed, failed or aborted. */
  readonly closed: Promise<void>;

  private readonly usage: Client<typeof UsageService>;
  private readonly onAck: ((ack: IngestAck, batch: UsageBatch) => void) | undefined;
  private readonly batchIdPrefix: string;
  private batchCounter = 0;

  private building: UsageEvent[] = [];
  private lingerTimer: NodeJS.Timeout | undefined;
  /** Cut batches not yet written to the current stream, in order. */
  private readonly ready: PendingBatch[] = [];
  /** Batches written to the current stream, awaiting their acks, in order. */
  private unacked: PendingBatch[] = [];
  private readonly roomWaiters: RoomWaiter[] = [];
  private heldEvents = 0;

  private closing = false;
  private failure: ConnectError | undefined;
  private generation = 0;
  private streamsOpened = 0;
  /** Streams that have ended (read by the tests, which wait for a stream's end before sending what goes on the next). */
  private streamsEnded = 0;
  private progressed = false;
  private answered = false; // the current stream's response headers arrived
  private streamAbort: AbortController | undefined;
  private ackTimer: NodeJS.Timeout | undefined;
  private ackTimedOut = false;
  private readonly stopSignal = new AbortController();
  private wake!: () => void;
  private wakeup: Promise<void>;
  private readonly counters = {
    batchesSent: 0,
    batchesAcked: 0,
    eventsAccepted: 0,
    eventsDuplicate: 0,
    eventsRejected: 0,
    reconnects: 0,
    resentBatches: 0,
  };

  constructor(usage: Client<typeof UsageService>, options: UsageSenderOptions = {}) {
    this.usage = usage;
    this.batchEventsMax = positiveInteger("batchEventsMax", options.batchEventsMax ?? 500);
    this.batchLingerMs = Math.max(0, options.batchLingerMs ?? 20);
    this.bufferEventsMax = positiveInteger("bufferEventsMax", options.bufferEventsMax ?? 10_000);
    if (this.bufferEventsMax < this.batchEventsMax) {
      throw new RangeError(`bufferEventsMax (${this.bufferEventsMax}) must be >= batchEventsMax (${this.batchEventsMax})`);
    }
    this.inflightBatchesMax = positiveInteger("inflightBatchesMax", options.inflightBatchesMax ?? 8);
    this.ackTimeoutMs = positiveInteger("ackTimeoutMs", options.ackTimeoutMs ?? 60_000);
    this.retry = { ...DEFAULT_RETRY_POLICY, ...options.retry };
    this.onAck = options.onAck;
    this.batchIdPrefix = options.batchIdPrefix ?? `ts-${randomUUID().slice(0, 12)}`;
    this.wakeup = this.newWakeup();
    this.closed = this.pump().catch((error: unknown) => {
      this.fail(ConnectError.from(error, Code.Internal));
    });
  }

  /** The error that stopped the sender, if one did. */
  get error(): ConnectError | undefined {
    return this.failure;
  }

  get stats(): UsageSenderStats {
    return { ...this.counters, bufferedEvents: this.heldEvents };
  }

  /**
   * Buffers one event; resolves once it is in the buffer (waits while the buffer is full). The
   * ack comes later: see onAck, flush() and close().
   */
  async send(usage: Usage | UsageEvent): Promise<void> {
    const event = toEvent(usage);
    await this.reserveRoom(1);
    this.building.push(event);
    if (this.building.length >= this.batchEventsMax) {
      this.cut();
    } else if (this.lingerTimer === undefined) {
      this.lingerTimer = setTimeout(() => this.cut(), this.batchLingerMs);
    }
  }

  /**
   * Sends these events as one batch (after any partial batch already buffered) and resolves with
   * its ack, once the server has made it durable. Rejects if the sender fails before the ack.
   */
  async sendBatch(events: ReadonlyArray<Usage | UsageEvent>, batchId?: string): Promise<IngestAck> {
    const messages = events.map(toEvent);
    if (messages.length > this.bufferEventsMax) {
      throw new RangeError(`a batch of ${messages.length} events exceeds bufferEventsMax (${this.bufferEventsMax})`);
    }
    this.cut();
    await this.reserveRoom(messages.length);
    return this.enqueue(messages, batchId).promise;
  }

  /** Sends the partial batch now and waits for the ack of everything sent so far. */
  async flush(): Promise<void> {
    this.cut();
    await Promise.allSettled([...this.unacked, ...this.ready].map((batch) => batch.promise));
    if (this.failure) {
      throw this.failure;
    }
  }

  /** Flushes, waits for every ack, ends the stream. Throws the error that stopped the sender, if any. */
  async close(): Promise<UsageSenderStats> {
    this.closing = true;
    this.cut();
    this.notify();
    await this.closed;
    if (this.failure) {
      throw this.failure;
    }
    return this.stats;
  }

  /** Stops at once: every unacknowledged batch and waiting send() fails with `reason`. */
  abort(reason?: unknown): void {
    this.fail(ConnectError.from(reason ?? new ConnectError("sender aborted", Code.Canceled), Code.Canceled));
  }

  // -- buffering -------------------------------------------------------------------

  private async reserveRoom(eventCount: number): Promise<void> {
    if (this.failure) {
      throw this.failure;
    }
    if (this.closing) {
      throw new ConnectError("usage sender is closed", Code.FailedPrecondition);
    }
    if (this.roomWaiters.length === 0 && this.heldEvents + eventCount <= this.bufferEventsMax) {
      this.heldEvents += eventCount;
      return;
    }
    // The buffer is full: a partial batch lingering now would only delay the acks that free room.
    this.cut();
    await new Promise<void>((resolve, reject) => {
      this.roomWaiters.push({ eventCount, resolve, reject });
    });
  }

  /** Hands freed room to waiting senders in arrival order (FIFO, so none starves). */
  private admitWaiters(): void {
    for (;;) {
      const waiter = this.roomWaiters[0];
      if (waiter === undefined || this.heldEvents + waiter.eventCount > this.bufferEventsMax) {
        return;
      }
      this.roomWaiters.shift();
      this.heldEvents += waiter.eventCount;
      waiter.resolve();
    }
  }

  /** Turns the events buffered so far into a batch ready to be written. */
  private cut(): void {
    if (this.lingerTimer !== undefined) {
      clearTimeout(this.lingerTimer);
      this.lingerTimer = undefined;
    }
    if (this.building.length === 0 || this.failure) {
      return;
    }
    const events = this.building;
    this.building = [];
    this.enqueue(events, undefined);
  }

  private enqueue(events: UsageEvent[], batchId: string | undefined): PendingBatch {
    this.batchCounter += 1;
    const message = create(UsageBatchSchema, { batchId: batchId || `${this.batchIdPrefix}-${this.batchCounter}`, events });
    let resolve!: (ack: IngestAck) => void;
    let reject!: (error: ConnectError) => void;
    const promise = new Promise<IngestAck>((res, rej) => {
      resolve = res;
      reject = rej;
    });
    // Batches cut by send() have no caller awaiting them; their failure surfaces in flush()/close().
    promise.catch(() => undefined);
    const batch: PendingBatch = { message, eventCount: events.length, writes: 0, promise, resolve, reject };
    this.ready.push(batch);
    this.notify();
    return batch;
  }

  // -- the stream --------------------------------------------------------------------

  private newWakeup(): Promise<void> {
    return new Promise<void>((resolve) => {
      this.wake = resolve;
    });
  }

  /** Wakes the pump and the request generator: something changed. */
  private notify(): void {
    const wake = this.wake;
    this.wakeup = this.newWakeup();
    wake();
  }

  private async pump(): Promise<void> {
    let failures = 0;
    let firstFailureAtMs = 0;
    for (;;) {
      if (this.failure) {
        return;
      }
      if (this.ready.length === 0 && this.unacked.length === 0) {
        if (this.closing && this.building.length === 0) {
          return;
        }
        await this.wakeup; // the stream is opened lazily, when there is something to send
        continue;
      }
      this.generation += 1;
      if (this.streamsOpened > 0) {
        this.counters.reconnects += 1;
      }
      this.streamsOpened += 1;
      this.progressed = false;
      this.answered = false;
      const openedAtMs = Date.now();
      const budgetLeftMs = this.retry.elapsedMaxMs - (failures > 0 ? openedAtMs - firstFailureAtMs : 0);
      try {
        await this.runStream(this.generation, Math.max(budgetLeftMs, this.retry.minConnectMs));
        failures = 0;
      } catch (error) {
        const timedOut = this.ackTimedOut;
        this.endStream();
        if (this.failure) {
          return;
        }
        if (this.progressed && this.unacked.length === 0) {
          // Broken after its acks with nothing unacknowledged (a connection lost while idle): nothing was lost, and
          // no failed stream: the next failure is the first of a new run, its elapsedMaxMs counted from then.
          failures = 0;
          continue;
        }
        const cause = timedOut
          ? new ConnectError(`no ack within ${this.ackTimeoutMs} ms`, Code.DeadlineExceeded)
          : ConnectError.from(error);
        if (this.progressed) {
          failures = 0;
        }
        failures += 1;
        if (failures === 1) {
          // A stream the server never answered failed when it was opened: its wait counts.
          firstFailureAtMs = this.answered ? Date.now() : openedAtMs;
        }
        this.requeueUnacked();
        const exhausted =
          failures >= this.retry.attemptsMax || Date.now() - firstFailureAtMs >= this.retry.elapsedMaxMs;
        const serverDelayMs = timedOut ? undefined : serverRetryDelayMs(cause);
        if ((serverDelayMs === undefined && !this.retry.retryableCodes.has(cause.code)) || exhausted) {
          this.fail(cause);
          return;
        }
        try {
          await this.backoff(failures, serverDelayMs ?? 0);
        } catch {
          return; // aborted while waiting
        }
      }
    }
  }

  /** Runs one stream until it ends; UNAVAILABLE when the server sent no response headers within answerWithinMs. */
  private async runStream(generation: number, answerWithinMs: number): Promise<void> {
    const controller = new AbortController();
    this.streamAbort = controller;
    // Without this bound a server that accepts TCP but never answers holds the stream until the ack timeout.
    let unanswered: ConnectError | undefined;
    const answerTimer = setTimeout(() => {
      unanswered = new ConnectError(
        `no answer from the server within ${(answerWithinMs / 1000).toFixed(1)} s`,
        Code.Unavailable,
      );
      controller.abort(unanswered);
    }, answerWithinMs);
    const onHeader = (): void => {
      this.answered = true;
      clearTimeout(answerTimer);
    };
    try {
      const responses = this.usage.ingestUsage(this.requests(generation), { signal: controller.signal, onHeader });
      for await (const ack of responses) {
        onHeader(); // headers come first: this only guards against a transport that did not report them
        this.receiveAck(ack);
      }
    } catch (error) {
      throw unanswered ?? error;
    } finally {
      clearTimeout(answerTimer);
      this.streamsEnded += 1;
    }
    this.endStream();
    if (this.unacked.length > 0) {
      throw new ConnectError(`stream ended with ${this.unacked.length} batches unacknowledged`, Code.Unavailable);
    }
  }

  /** The request side of one stream: writes ready batches while fewer than inflightBatchesMax are unacked. */
  private async *requests(generation: number): AsyncGenerator<UsageBatch> {
    for (;;) {
      if (generation !== this.generation || this.failure) {
        return;
      }
      const batch = this.unacked.length < this.inflightBatchesMax ? this.ready.shift() : undefined;
      if (batch !== undefined) {
        this.unacked.push(batch);
        if (batch.writes === 0) {
          this.counters.batchesSent += 1;
        } else {
          this.counters.resentBatches += 1;
        }
        batch.writes += 1;
        if (this.unacked.length === 1) {
          this.armAckTimer(); // counted from the oldest batch not acknowledged (or the last ack), not each write
        }
        yield batch.message;
        continue;
      }
      if (this.closing && this.ready.length === 0 && this.building.length === 0) {
        return; // half-close: the server acks what is outstanding, then ends the stream
      }
      await this.wakeup;
    }
  }

  private receiveAck(ack: IngestAck): void {
    const batch = this.unacked.shift();
    if (batch === undefined || ack.batchId !== batch.message.batchId) {
      // Acks come one per batch, in order (docs/architecture.md §5): anything else means the stream cannot be trusted.
      const expected = batch === undefined ? "no ack" : `the ack of ${batch.message.batchId}`;
      this.fail(new ConnectError(`expected ${expected}, got an ack for ${JSON.stringify(ack.batchId)}`, Code.Internal));
      throw this.failure;
    }
    this.progressed = true;
    this.counters.batchesAcked += 1;
    this.counters.eventsAccepted += ack.accepted;
    this.counters.eventsDuplicate += ack.duplicates;
    this.counters.eventsRejected += ack.rejected.length;
    this.heldEvents -= batch.eventCount;
    batch.resolve(ack);
    if (this.onAck !== undefined) {
      try {
        this.onAck(ack, batch.message);
      } catch (error) {
        process.emitWarning(`UsageSender onAck threw: ${String(error)}`);
      }
    }
    this.armAckTimer();
    this.admitWaiters();
    this.notify();
  }

  private armAckTimer(): void {
    if (this.ackTimer !== undefined) {
      clearTimeout(this.ackTimer);
      this.ackTimer = undefined;
    }
    if (this.unacked.length === 0) {
      return;
    }
    const controller = this.streamAbort;
    this.ackTimer = setTimeout(() => {
      this.ackTimedOut = true;
      controller?.abort();
    }, this.ackTimeoutMs);
  }

  /** Retires the current stream: its request generator returns, its timer stops. */
  private endStream(): void {
    this.generation += 1;
    this.ackTimedOut = false;
    if (this.ackTimer !== undefined) {
      clearTimeout(this.ackTimer);
      this.ackTimer = undefined;
    }
    this.notify();
  }

  /** Puts every unacknowledged batch back at the front of the queue, in order, to be written again. */
  private requeueUnacked(): void {
    this.ready.unshift(...this.unacked);
    this.unacked = [];
  }

  /** Waits before the next stream: the policy's backoff, and at least `minimumMs` (the server's RetryInfo delay). */
  private backoff(failures: number, minimumMs: number): Promise<void> {
    const { initialBackoffMs, maxBackoffMs, multiplier, jitter } = this.retry;
    const baseMs = Math.min(maxBackoffMs, initialBackoffMs * multiplier ** Math.max(0, failures - 1));
    const delayMs = Math.max(minimumMs, baseMs * (1 + (Math.random() * 2 - 1) * jitter));
    const signal = this.stopSignal.signal;
    return new Promise<void>((resolve, reject) => {
      if (signal.aborted) {
        reject(signal.reason);
        return;
      }
      const onAbort = (): void => {
        clearTimeout(timer);
        reject(signal.reason);
      };
      const timer = setTimeout(() => {
        signal.removeEventListener("abort", onAbort);
        resolve();
      }, delayMs);
      signal.addEventListener("abort", onAbort, { once: true });
    });
  }

  /** Stops the sender for good: every pending batch and waiting send() fails with `error`. */
  private fail(error: ConnectError): void {
    if (this.failure) {
      return;
    }
    this.failure = error;
    if (this.lingerTimer !== undefined) {
      clearTimeout(this.lingerTimer);
      this.lingerTimer = undefined;
    }
    for (const batch of [...this.unacked, ...this.ready.splice(0)]) {
      batch.reject(error);
    }
    this.unacked = [];
    this.building = [];
    for (const waiter of this.roomWaiters.splice(0)) {
      waiter.reject(error);
    }
    this.heldEvents = 0;
    this.streamAbort?.abort(error);
    this.stopSignal.abort(error);
    this.endStream();
  }
}
