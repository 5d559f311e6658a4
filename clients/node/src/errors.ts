// Typed errors of the sidecar, decoded from the gRPC status details
// (grpc-status-details-bin: google.rpc.Status with ErrorInfo, RetryInfo and
// BadRequest), as clients/go/resilience/errors.go does for Go.

import { Code, ConnectError } from "@connectrpc/connect";
import { durationMs } from "@bufbuild/protobuf/wkt";

import { BadRequestSchema, ErrorInfoSchema, RetryInfoSchema } from "./gen/google/rpc/error_details_pb.js";

export { Code };

/** ErrorInfo domain of the sidecar's errors. */
export const ERROR_DOMAIN = "resilience.sidecar";

import { ALL_REASONS, Reason } from "./reasons.js";

export { ALL_REASONS, Reason };

/**
 * Why a lease was lost (LeaseLostError.lostReason). The first four come
 * from the sidecar's HoldLock `lost` event; STREAM_ENDED means the session
 * broke without one; RENEWAL_OVERDUE means no grant or renewal confirmation
 * arrived before the lease's local deadline (see withLock).
 */
export const LostReason = {
  LEASE_LOST: "LEASE_LOST",
  MAX_HOLD: "MAX_HOLD",
  SHUTDOWN: "SHUTDOWN",
  STORE_UNAVAILABLE: "STORE_UNAVAILABLE",
  STREAM_ENDED: "STREAM_ENDED",
  RENEWAL_OVERDUE: "RENEWAL_OVERDUE",
} as const;
export type LostReason = (typeof LostReason)[keyof typeof LostReason];

/** One field of a request that the sidecar refused (google.rpc.BadRequest). */
export interface FieldViolation {
  /** The field, as named in the proto: "key", "ttl", "acquire.key", ... */
  field: string;
  description: string;
}

const codeNames: Record<number, string> = {
  0: "OK",
  1: "CANCELLED",
  2: "UNKNOWN",
  3: "INVALID_ARGUMENT",
  4: "DEADLINE_EXCEEDED",
  5: "NOT_FOUND",
  6: "ALREADY_EXISTS",
  7: "PERMISSION_DENIED",
  8: "RESOURCE_EXHAUSTED",
  9: "FAILED_PRECONDITION",
  10: "ABORTED",
  11: "OUT_OF_RANGE",
  12: "UNIMPLEMENTED",
  13: "INTERNAL",
  14: "UNAVAILABLE",
  15: "DATA_LOSS",
  16: "UNAUTHENTICATED",
};

/** The gRPC name of a status code ("FAILED_PRECONDITION"). */
export function codeName(code: Code): string {
  return codeNames[code] ?? `CODE_${code}`;
}

/** The fields a SidecarError is built from. */
export interface SidecarErrorInit {
  code: Code;
  message: string;
  reason?: string;
  metadata?: Record<string, string>;
  retryDelayMs?: number;
  violations?: FieldViolation[];
  cause?: unknown;
}

/**
 * An error of the sidecar (or of the call to it) with its decoded details.
 * Every error the helpers and the client's calls reject with is a
 * SidecarError (or one of its subclasses) unless it is the application's
 * own error or a NotAcquiredError.
 */
export class SidecarError extends Error {
  /** The gRPC status code (numeric; compare with `Code.FailedPrecondition`, ...). */
  readonly code: Code;
  /** The ErrorInfo reason in domain resilience.sidecar ("" when none). */
  readonly reason: string;
  /** ErrorInfo metadata (e.g. breaker, state for BREAKER_OPEN). */
  readonly metadata: Record<string, string>;
  /** The server's RetryInfo hint in milliseconds, undefined when none. */
  readonly retryDelayMs: number | undefined;
  /** BadRequest field violations (INVALID_ARGUMENT); empty when none. */
  readonly violations: FieldViolation[];
  /** The message as the server sent it, without the code prefix. */
  readonly rawMessage: string;

  constructor(init: SidecarErrorInit) {
    const prefix = init.reason ? `${codeName(init.code)} ${init.reason}` : codeName(init.code);
    super(`resilience: ${prefix}: ${init.message}`, init.cause !== undefined ? { cause: init.cause } : undefined);
    this.name = new.target.name;
    this.code = init.code;
    this.reason = init.reason ?? "";
    this.metadata = init.metadata ?? {};
    this.retryDelayMs = init.retryDelayMs;
    this.violations = init.violations ?? [];
    this.rawMessage = init.message;
  }

  /** The gRPC name of the code, e.g. "FAILED_PRECONDITION". */
  get codeName(): string {
    return codeName(this.code);
  }

  /** The description of the violation of field, if any. */
  violation(field: string): string | undefined {
    return this.violations.find((v) => v.field === field)?.description;
  }
}

/**
 * LEASE_LOST: a lock's lease expired or is someone else's, or an idempotency
 * key was taken over. The critical section may have run without exclusion
 * (or the operation may have run twice): the caller must know.
 */
export class LeaseLostError extends SidecarError {
  /**
   * For a lease held by withLock or acquireLock: why it was lost
   * (LostReason): "LEASE_LOST", "MAX_HOLD", "SHUTDOWN" or
   * "STORE_UNAVAILABLE" as the sidecar reported it, "STREAM_ENDED" when the
   * session broke, "RENEWAL_OVERDUE" when no renewal confirmation arrived
   * before the lease's local deadline. "LEASE_LOST" for a call that failed
   * with the reason.
   */
  readonly lostReason: string;
  constructor(init: SidecarErrorInit & { lostReason?: string }) {
    super(init);
    this.lostReason = init.lostReason ?? Reason.LEASE_LOST;
  }
}

/** IDEMPOTENCY_KEY_MISMATCH: the key was first used with another fingerprint. */
export class IdempotencyKeyMismatchError extends SidecarError {}
/**
 * STORE_UNAVAILABLE: the sidecar's store (Redis) did not answer, or cannot
 * serve now; retry after retryDelayMs. StoreFullError, StoreReadOnlyError
 * and ReplicationShortfallError are StoreUnavailableErrors that say more.
 */
export class StoreUnavailableError extends SidecarError {}
/** STORE_FULL: the store is out of memory (Redis maxmemory with noeviction); retry after retryDelayMs. */
export class StoreFullError extends StoreUnavailableError {}
/** STORE_READ_ONLY: the store refuses writes (a read-only replica, or a failed RDB save); retry after retryDelayMs. */
export class StoreReadOnlyError extends StoreUnavailableError {}
/** REPLICATION_SHORTFALL: too few replicas acknowledged the write; retry after retryDelayMs. */
export class ReplicationShortfallError extends StoreUnavailableError {}
/** SHUTTING_DOWN: the sidecar is stopping; retry on another instance. */
export class ShuttingDownError extends SidecarError {}
/**
 * BREAKER_OPEN: the breaker refused the call, which was not made; retry
 * after retryDelayMs (the time until the breaker lets a probe through).
 * metadata.breaker names the breaker.
 */
export class BreakerOpenError extends SidecarError {}
/** CLOCK_SKEW: a remote clock reading was too far ahead to adopt. */
export class ClockSkewError extends SidecarError {}
/** LIMIT_EXCEEDED: a bound of the sidecar was reached (RESOURCE_EXHAUSTED). */
export class LimitExceededError extends SidecarError {}
/** NOT_FOUND/TOPIC_UNKNOWN: the sidecar's config declares topics (events.topics), and not this one. */
export class TopicUnknownError extends SidecarError {}
/** NOT_FOUND/LIMITER_UNKNOWN: the sidecar's config declares its rate limiters (ratelimits), and not this one. */
export class LimiterUnknownError extends SidecarError {}
/** NOT_FOUND/SAGA_NOT_FOUND: no saga with this id (never started, or removed after its retention). */
export class SagaNotFoundError extends SidecarError {}
/**
 * SAGA_STATE_CONFLICT: the saga's state forbids the call (metadata.state
 * tells it), or a saga id or step was reused with other content.
 */
export class SagaStateConflictError extends SidecarError {}
/** INVALID_ARGUMENT/UPSTREAM_UNKNOWN: no such upstream in the sidecar's config, or a path leaving its base URL. */
export class UpstreamUnknownError extends SidecarError {}
/** PERMIT_UNKNOWN: a breaker report for a permit that is not outstanding (expired, or reported already). */
export class PermitUnknownError extends SidecarError {}
/** UNAVAILABLE/UPSTREAM_UNAVAILABLE: no connection to the upstream after the last attempt. */
export class UpstreamUnavailableError extends SidecarError {}
/** DEADLINE_EXCEEDED/UPSTREAM_TIMEOUT: the upstream gave no response in time (it may have processed the request). */
export class UpstreamTimeoutError extends SidecarError {}
/** INVALID_ARGUMENT: `violations` names each refused field. */
export class InvalidArgumentError extends SidecarError {}
/**
 * UNAVAILABLE without a reason: the sidecar could not be reached (not
 * running, wrong SIDECAR_ADDR) or the connection to it broke. Safe to retry
 * once it is back; the client reconnects on the next call.
 */
export class SidecarUnreachableError extends SidecarError {}
/**
 * DEADLINE_EXCEEDED without a reason: no answer from the sidecar within the
 * call's deadline (the client's default timeoutMs, or the call's own), e.g.
 * a frozen sidecar. The call may or may not have taken effect.
 */
export class DeadlineExceededError extends SidecarError {}

/**
 * The typed error of every ErrorInfo reason the sidecar sends (the
 * generated ALL_REASONS): a reason added to the sidecar without a class
 * here does not compile.
 */
export const ERROR_CLASSES: { readonly [R in Reason]: new (init: SidecarErrorInit) => SidecarError } = {
  LEASE_LOST: LeaseLostError,
  STORE_UNAVAILABLE: StoreUnavailableError,
  LIMIT_EXCEEDED: LimitExceededError,
  SHUTTING_DOWN: ShuttingDownError,
  IDEMPOTENCY_KEY_MISMATCH: IdempotencyKeyMismatchError,
  CLOCK_SKEW: ClockSkewError,
  SAGA_NOT_FOUND: SagaNotFoundError,
  SAGA_STATE_CONFLICT: SagaStateConflictError,
  TOPIC_UNKNOWN: TopicUnknownError,
  LIMITER_UNKNOWN: LimiterUnknownError,
  BREAKER_OPEN: BreakerOpenError,
  UPSTREAM_UNKNOWN: UpstreamUnknownError,
  PERMIT_UNKNOWN: PermitUnknownError,
  UPSTREAM_UNAVAILABLE: UpstreamUnavailableError,
  UPSTREAM_TIMEOUT: UpstreamTimeoutError,
  STORE_FULL: StoreFullError,
  STORE_READ_ONLY: StoreReadOnlyError,
  REPLICATION_SHORTFALL: ReplicationShortfallError,
};

const knownReasons: ReadonlySet<string> = new Set(ALL_REASONS);

/**
 * Builds the SidecarError subclass that matches the reason and code: the
 * reason's class (ERROR_CLASSES); for an error without a known reason,
 * InvalidArgumentError (INVALID_ARGUMENT), SidecarUnreachableError
 * (UNAVAILABLE), DeadlineExceededError (DEADLINE_EXCEEDED), else SidecarError.
 */
export function makeError(init: SidecarErrorInit): SidecarError {
  if (init.reason && knownReasons.has(init.reason)) {
    return new ERROR_CLASSES[init.reason as Reason](init);
  }
  switch (init.code) {
    case Code.InvalidArgument:
      return new InvalidArgumentError(init);
    case Code.Unavailable:
      return new SidecarUnreachableError(init);
    case Code.DeadlineExceeded:
      return new DeadlineExceededError(init);
    default:
      return new SidecarError(init);
  }
}

/**
 * Decodes an error of a call to the sidecar into a SidecarError. Errors that
 * are already SidecarErrors, and errors that are not call errors (the
 * application's own), are returned unchanged.
 */
export function fromError(err: unknown): unknown {
  if (err instanceof SidecarError || !(err instanceof ConnectError)) {
    return err;
  }
  let reason = "";
  let metadata: Record<string, string> = {};
  let retryDelayMs: number | undefined;
  let violations: FieldViolation[] = [];
  try {
    for (const info of err.findDetails(ErrorInfoSchema)) {
      if (info.domain === ERROR_DOMAIN) {
        reason = info.reason;
        metadata = { ...info.metadata };
      }
    }
    for (const retry of err.findDetails(RetryInfoSchema)) {
      retryDelayMs = retry.retryDelay ? durationMs(retry.retryDelay) : undefined;
    }
    for (const br of err.findDetails(BadRequestSchema)) {
      violations = violations.concat(br.fieldViolations.map((v) => ({ field: v.field, description: v.description })));
    }
  } catch {
    // Undecodable details: keep the code and message.
  }
  return makeError({ code: err.code, message: err.rawMessage, reason, metadata, retryDelayMs, violations, cause: err });
}

/**
 * NotAcquiredError: withLock's wait ended without the lock. An expected
 * outcome, not a failure of the sidecar, so it is not a SidecarError.
 */
export class NotAcquiredError extends Error {
  readonly key: string;
  /** The current holder's owner label ("" when unknown or none). */
  readonly holder: string;
  /** The current holder's fencing token (0n when unknown). */
  readonly fencingToken: bigint;
  constructor(key: string, holder: string, fencingToken: bigint) {
    super(`resilience: lock ${JSON.stringify(key)} not acquired: held by ${JSON.stringify(holder)}`);
    this.name = "NotAcquiredError";
    this.key = key;
    this.holder = holder;
    this.fencingToken = fencingToken;
  }
}

/**
 * ReleaseUnconfirmedError: a lock's release was sent but not confirmed
 * before the lease's local deadline or the client's call deadline (a frozen
 * or unreachable sidecar): the lock expires on its own at the latest when
 * its TTL passes. withLock rejects with it after fn succeeded (`result` is
 * fn's result: the critical section ran under the lock); Lock.release()
 * rejects with it. Not a loss of exclusion, but not a silent success either.
 */
export class ReleaseUnconfirmedError extends SidecarError {
  readonly key: string;
  /** withLock: what fn resolved with (undefined for Lock.release()). */
  readonly result: unknown;
  constructor(init: SidecarErrorInit & { key: string; result?: unknown }) {
    super(init);
    this.key = init.key;
    this.result = init.result;
  }
}
