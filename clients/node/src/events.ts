// publish, subscribe, ack, nack and outboxStatus: the EventService, as
// Publish and Subscribe in clients/go/resilience/events.go.

import { durationFromMs } from "@bufbuild/protobuf/wkt";
import type { MessageInitShape } from "@bufbuild/protobuf";
import { Code } from "@connectrpc/connect";

import type { SidecarClient } from "./client.js";
import { describeCallError } from "./client.js";
import { fromError, makeError } from "./errors.js";
import { withTimeout } from "./lock.js";
import { StartFrom } from "./gen/resilience/v1/events_pb.js";
import type { Event, GetOutboxStatusResponse, SubscribeRequestSchema, SubscribeResponse } from "./gen/resilience/v1/events_pb.js";

export interface PublishOptions {
  /** The event's key (an order id, say; up to 512 bytes), delivered with it. */
  key?: string;
  /** Headers delivered with the event (content type, trace context...): at most 64. */
  headers?: Record<string, string>;
  /**
   * Makes retries of this publish append once (1-512 bytes): a publish with
   * a key published before (within the sidecar's events.dedup_retention,
   * default 24 h) resolves with the first event's id and `duplicate: true`.
   */
  idempotencyKey?: string;
  /** The call's deadline in ms (default: the client's). */
  timeoutMs?: number;
  signal?: AbortSignal;
}

export interface PublishResult {
  /** The event's id in its topic ("<ms>-<seq>", increasing in publish order). */
  eventId: string;
  /** True when idempotencyKey had been published before: nothing was appended and eventId is the first event's. */
  duplicate: boolean;
}

/**
 * Appends an event to `topic`. A string payload is sent as UTF-8. Rejects
 * with InvalidArgumentError for a bad topic name or an oversized event
 * (`violations` names the field), TopicUnknownError for a topic the
 * sidecar's config does not declare, StoreUnavailableError when Redis does
 * not answer.
 */
export async function publish(
  client: SidecarClient,
  topic: string,
  payload: Uint8Array | string,
  opts: PublishOptions = {},
): Promise<PublishResult> {
  const res = await client.events.publish(
    {
      topic,
      payload: typeof payload === "string" ? new TextEncoder().encode(payload) : payload,
      key: opts.key ?? "",
      headers: opts.headers ?? {},
      idempotencyKey: opts.idempotencyKey ?? "",
    },
    { timeoutMs: opts.timeoutMs, signal: opts.signal },
  );
  return { eventId: res.eventId, duplicate: res.duplicate };
}

/**
 * An error a subscribe handler throws to have its event redelivered after
 * `retryAfterMs` rather than at once (any error with a numeric
 * `retryAfterMs` property works the same).
 */
export class RetryAfterError extends Error {
  readonly retryAfterMs: number;
  constructor(retryAfterMs: number, message = `retry after ${retryAfterMs} ms`, options?: { cause?: unknown }) {
    super(message, options);
    this.name = "RetryAfterError";
    this.retryAfterMs = retryAfterMs;
  }
}

export interface SubscribeOptions {
  /** Events delivered and not yet acked or nacked (1-1000; the sidecar's default is 16). */
  maxInFlight?: number;
  /**
   * How long a delivered event may stay unacked before it is redelivered,
   * in ms (100 ms-12 h; default the sidecar's events.visibility_timeout,
   * 30 s). Choose it longer than the handler runs.
   */
  visibilityTimeoutMs?: number;
  /** Deliveries before an event moves to "<topic>.dead" (1-1000; default the sidecar's, 10). */
  maxDeliveries?: number;
  /** Where the group starts when this call creates it (default EARLIEST); an existing group keeps its position. */
  startFrom?: StartFrom | "earliest" | "latest";
  /** Delay of the redelivery of an event whose handler threw, in ms (default 0: at once). */
  nackDelayMs?: number;
  /** Called once the sidecar confirmed the subscription (events published from now on will be delivered). */
  onSubscribed?: (info: { groupCreated: boolean }) => void;
  /** Aborting it ends the subscription: subscribe then resolves. */
  signal?: AbortSignal;
}

type SubscribeRequestInit = MessageInitShape<typeof SubscribeRequestSchema>;

/**
 * Joins the consumer group `group` of `topic` as `consumer` and calls
 * `handler` for each event delivered to it, one at a time, in delivery
 * order. When the handler resolves, the event is acked; when it throws, the
 * event is nacked and the sidecar redelivers it (to any consumer of the
 * group) with `deliveryCount` increased — at once, or after
 * `opts.nackDelayMs` or the error's `retryAfterMs` (RetryAfterError) — until
 * the group's max deliveries move it to "<topic>.dead". Delivery is at
 * least once: make the handler idempotent, keyed by `event.eventId`
 * (`idempotent` does that).
 *
 * The handler gets an AbortSignal that aborts when the subscription ends.
 * The ack or nack of the event being handled is still sent after
 * `opts.signal` aborted, so a finished event is not delivered again.
 *
 * Resolves when `opts.signal` aborts (events delivered and not yet handled
 * are redelivered later). Rejects with the sidecar's error when it refuses
 * the subscription (InvalidArgumentError naming the field, TopicUnknownError)
 * or ends it (ShuttingDownError when it stops, UNAVAILABLE when the
 * connection breaks), or when an ack or nack fails. Call it again to
 * resubscribe.
 */
export async function subscribe(
  client: SidecarClient,
  topic: string,
  group: string,
  consumer: string,
  handler: (event: Event, signal: AbortSignal) => Promise<void> | void,
  opts: SubscribeOptions = {},
): Promise<void> {
  if (opts.signal?.aborted) return;
  const req: SubscribeRequestInit = {
    topic,
    group,
    consumer,
    maxInFlight: opts.maxInFlight ?? 0,
    maxDeliveries: opts.maxDeliveries ?? 0,
    startFrom: startFrom(opts.startFrom),
  };
  if (opts.visibilityTimeoutMs !== undefined) req.visibilityTimeout = durationFromMs(opts.visibilityTimeoutMs);

  const ctl = new AbortController();
  const onAbort = () => ctl.abort(opts.signal?.reason);
  opts.signal?.addEventListener("abort", onAbort, { once: true });
  const stream = client.events.subscribe(req, { signal: ctl.signal })[Symbol.asyncIterator]();
  const ended = (e: unknown): unknown => describeCallError(fromError(e), client.addr, undefined, false);
  try {
    // The confirmation comes at once: bound it, so that a frozen sidecar is
    // an error, not a hang. Later, the HTTP/2 pings of the open stream
    // notice a sidecar that stopped answering.
    let first: IteratorResult<SubscribeResponse>;
    try {
      first = await withTimeout(stream.next(), client.timeoutMs, () => {
        ctl.abort();
        return makeError({
          code: Code.DeadlineExceeded,
          message: `no answer from the sidecar at ${client.addr} to Subscribe within ${client.timeoutMs} ms (is it running? frozen?)`,
        });
      });
    } catch (e) {
      if (opts.signal?.aborted) return;
      throw ended(e);
    }
    if (first.done) {
      if (opts.signal?.aborted) return;
      throw makeError({ code: Code.Unavailable, message: `the subscription to ${JSON.stringify(topic)} ended without an answer` });
    }
    if (first.value.kind.case !== "subscribed") {
      throw makeError({ code: Code.Internal, message: `unexpected first Subscribe message ${String(first.value.kind.case)}` });
    }
    opts.onSubscribed?.({ groupCreated: first.value.kind.value.groupCreated });

    for (;;) {
      let r: IteratorResult<SubscribeResponse>;
      try {
        r = await stream.next();
      } catch (e) {
        if (opts.signal?.aborted) return;
        throw ended(e);
      }
      if (r.done) {
        if (opts.signal?.aborted) return;
        throw makeError({ code: Code.Unavailable, message: `the sidecar at ${client.addr} ended the subscription to ${JSON.stringify(topic)}` });
      }
      if (r.value.kind.case !== "event") continue; // a kind this client does not know
      const ev = r.value.kind.value;
      let failed = false;
      let err: unknown;
      try {
        await handler(ev, ctl.signal);
      } catch (e) {
        failed = true;
        err = e;
      }
      // Settled even when the subscription was aborted meanwhile; the calls
      // get the client's default deadline. An aborted subscription's
      // RST_STREAM goes out first: Node's HTTP/2 defers a cancel to its next
      // write (a native immediate), so a nack sent at once could reach the
      // sidecar while the stream still looks open there, and the sidecar
      // would hand the nacked event to this ending stream again, where it
      // waits out the visibility timeout instead of coming again at once.
      if (ctl.signal.aborted) await afterPendingResets();
      try {
        if (!failed) {
          await client.events.ack({ topic, group, eventId: ev.eventId });
        } else {
          const delay = retryDelay(err) ?? opts.nackDelayMs ?? 0;
          await client.events.nack({ topic, group, eventId: ev.eventId, retryAfter: delay > 0 ? durationFromMs(delay) : undefined });
        }
      } catch (e) {
        const se = fromError(e);
        if (se instanceof Error) {
          se.message = `${se.message} (${failed ? "nack" : "ack"} of event ${ev.eventId} of ${JSON.stringify(topic)})`;
        }
        throw se;
      }
      if (opts.signal?.aborted) return;
    }
  } finally {
    opts.signal?.removeEventListener("abort", onAbort);
    ctl.abort();
  }
}

/**
 * Yields two turns of the event loop, so that an RST_STREAM Node deferred to
 * a native immediate is submitted before the next request's HEADERS (30 of
 * 30 runs of the abort test passed with it, about 1 in 6 failed without).
 */
async function afterPendingResets(): Promise<void> {
  for (let i = 0; i < 2; i++) await new Promise((resolve) => setImmediate(resolve));
}

function retryDelay(err: unknown): number | undefined {
  const ms = (err as { retryAfterMs?: unknown } | undefined)?.retryAfterMs;
  return typeof ms === "number" && Number.isFinite(ms) && ms >= 0 ? ms : undefined;
}

function startFrom(s: SubscribeOptions["startFrom"]): StartFrom {
  if (s === undefined) return StartFrom.UNSPECIFIED;
  if (s === "earliest") return StartFrom.EARLIEST;
  if (s === "latest") return StartFrom.LATEST;
  return s;
}

/**
 * Acknowledges an event received outside `subscribe` (from the raw
 * `client.events.subscribe` stream). Resolves with false when the event was
 * not pending in the group (already acked, or dead-lettered): harmless.
 */
export async function ack(client: SidecarClient, topic: string, group: string, eventId: string): Promise<boolean> {
  return (await client.events.ack({ topic, group, eventId })).acked;
}

/**
 * Gives an event back to the group: it is redelivered after `retryAfterMs`
 * (default 0: at once), counting one more delivery. Resolves with false
 * when the event was not pending in the group.
 */
export async function nack(client: SidecarClient, topic: string, group: string, eventId: string, opts: { retryAfterMs?: number } = {}): Promise<boolean> {
  const retryAfter = opts.retryAfterMs ? durationFromMs(opts.retryAfterMs) : undefined;
  return (await client.events.nack({ topic, group, eventId, retryAfter })).requeued;
}

/** The sidecar's Postgres outbox relay: enabled, healthy, backlog, lag (see GetOutboxStatusResponse). */
export async function outboxStatus(client: SidecarClient): Promise<GetOutboxStatusResponse> {
  return client.events.getOutboxStatus({});
}
