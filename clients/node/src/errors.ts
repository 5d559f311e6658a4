// Typed errors of the sidecar, decoded from the gRPC status details
// (grpc-status-details-bin: google.rpc.Status with ErrorInfo, RetryInfo and
// BadRequest), as clients/go/resilience/errors.go does for Go.

import { Code, ConnectError } from "@connectrpc/connect";
import { durationMs } from "@bufbuild/protobuf/wkt";

import { BadRequestSchema, ErrorInfoSchema, RetryInfoSchema } from "./gen/google/rpc/error_details_pb.js";

export { Code };

/** ErrorInfo domain of the sidecar's errors. */
export const ERROR_DOMAIN = "resilience.sidecar";

/**
 * The sidecar's stable ErrorInfo reasons (DESIGN.md section 3): switch on
 * `err.reason` or use the SidecarError subclasses.
 */
export const Reason = {
  LEASE_LOST: "LEASE_LOST",
  IDEMPOTENCY_KEY_MISMATCH: "IDEMPOTENCY_KEY_MISMATCH",
  BREAKER_OPEN: "BREAKER_OPEN",
  UPSTREAM_UNKNOWN: "UPSTREAM_UNKNOWN",
  STORE_UNAVAILABLE: "STORE_UNAVAILABLE",
  SAGA_NOT_FOUND: "SAGA_NOT_FOUND",
  SAGA_STATE_CONFLICT: "SAGA_STATE_CONFLICT",
  LIMIT_EXCEEDED: "LIMIT_EXCEEDED",
  CLOCK_SKEW: "CLOCK_SKEW",
  SHUTTING_DOWN: "SHUTTING_DOWN",
  PERMIT_UNKNOWN: "PERMIT_UNKNOWN",
  UPSTREAM_UNAVAILABLE: "UPSTREAM_UNAVAILABLE",
  UPSTREAM_TIMEOUT: "UPSTREAM_TIMEOUT",
  TOPIC_UNKNOWN: "TOPIC_UNKNOWN",
  // Store states that say more than STORE_UNAVAILABLE: StoreUnavailableError too.
  STORE_FULL: "STORE_FULL",
  STORE_READ_ONLY: "STORE_READ_ONLY",
  REPLICATION_SHORTFALL: "REPLICATION_SHORTFALL",
} as const;
export type Reason = (typeof Reason)[keyof typeof Reason];

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
   * For a lease lost during a HoldLock session (withLock): why, as the
   * sidecar reported it: "LEASE_LOST", "MAX_HOLD", "SHUTDOWN",
   * "STORE_UNAVAILABLE", or "STREAM_ENDED" when the session broke.
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
 * serve now; retry after retryDelayMs. Also STORE_FULL (out of memory),
 * STORE_READ_ONLY (writes refused) and REPLICATION_SHORTFALL (too few
 * replicas acknowledged the write): `reason` tells which.
 */
export class StoreUnavailableError extends SidecarError {}
/** SHUTTING_DOWN: the sidecar is stopping; retry on another instance. */
export class ShuttingDownError extends SidecarError {}
/** BREAKER_OPEN: the breaker refused the call; retry after retryDelayMs. */
export class BreakerOpenError extends SidecarError {}
/** CLOCK_SKEW: a remote clock reading was too far ahead to adopt. */
export class ClockSkewError extends SidecarError {}
/** LIMIT_EXCEEDED: a bound of the sidecar was reached. */
export class LimitExceededError extends SidecarError {}
/** NOT_FOUND/TOPIC_UNKNOWN: the sidecar's config declares topics (events.topics), and not this one. */
export class TopicUnknownError extends SidecarError {}
/** INVALID_ARGUMENT: `violations` names each refused field. */
export class InvalidArgumentError extends SidecarError {}

const byReason: Record<string, new (init: SidecarErrorInit) => SidecarError> = {
  [Reason.LEASE_LOST]: LeaseLostError,
  [Reason.IDEMPOTENCY_KEY_MISMATCH]: IdempotencyKeyMismatchError,
  [Reason.STORE_UNAVAILABLE]: StoreUnavailableError,
  [Reason.STORE_FULL]: StoreUnavailableError,
  [Reason.STORE_READ_ONLY]: StoreUnavailableError,
  [Reason.REPLICATION_SHORTFALL]: StoreUnavailableError,
  [Reason.SHUTTING_DOWN]: ShuttingDownError,
  [Reason.BREAKER_OPEN]: BreakerOpenError,
  [Reason.CLOCK_SKEW]: ClockSkewError,
  [Reason.LIMIT_EXCEEDED]: LimitExceededError,
  [Reason.TOPIC_UNKNOWN]: TopicUnknownError,
};

/** Builds the SidecarError subclass that matches the reason and code. */
export function makeError(init: SidecarErrorInit): SidecarError {
  const cls = (init.reason && byReason[init.reason]) || (init.code === Code.InvalidArgument ? InvalidArgumentError : SidecarError);
  return new cls(init);
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
