// @seed-a88e5317/resilience-sidecar: the Node.js client of the resilience
// sidecar. createClient connects; withLock, idempotent, publish and
// subscribe are the helpers; errors are typed (SidecarError and its
// subclasses). The generated messages and service descriptors of
// resilience.v1 are exported too.

export {
  createClient,
  DEFAULT_ADDR,
  DEFAULT_TIMEOUT_MS,
  ENV_ADDR,
  ENV_TOKEN,
  ENV_TOKEN_FILE,
  type ClientOptions,
  type SidecarClient,
} from "./client.js";
export {
  BreakerOpenError,
  ClockSkewError,
  Code,
  codeName,
  ERROR_DOMAIN,
  fromError,
  IdempotencyKeyMismatchError,
  InvalidArgumentError,
  LeaseLostError,
  LimitExceededError,
  NotAcquiredError,
  Reason,
  ShuttingDownError,
  SidecarError,
  StoreUnavailableError,
  TopicUnknownError,
  type FieldViolation,
  type SidecarErrorInit,
} from "./errors.js";
export { withLock, type Lease, type LockOptions } from "./lock.js";
export {
  fingerprint,
  idempotent,
  type Execution,
  type IdempotentOptions,
  type IdempotentResult,
  type IdempotentResultInit,
} from "./idempotent.js";

export {
  ack,
  nack,
  outboxStatus,
  publish,
  RetryAfterError,
  subscribe,
  type PublishOptions,
  type PublishResult,
  type SubscribeOptions,
} from "./events.js";

// Conversions of google.protobuf.Duration and Timestamp, for the raw API.
export { durationFromMs, durationMs, timestampDate, timestampFromDate, timestampMs } from "@bufbuild/protobuf/wkt";

export * from "./gen/resilience/v1/lock_pb.js";
export * from "./gen/resilience/v1/idempotency_pb.js";
export * from "./gen/resilience/v1/clock_pb.js";
export * from "./gen/resilience/v1/breaker_pb.js";
export * from "./gen/resilience/v1/events_pb.js";
