// @seed-a88e5317/resilience-sidecar: the Node.js client of the resilience
// sidecar. createClient connects; withLock, acquireLock, take, rateLimited,
// withPermit, idempotent, idempotentJson, guard, CircuitBreaker,
// executeCall, startSaga, runSaga, LamportClock, publish and subscribe are
// the helpers; errors are typed
// (SidecarError and its subclasses, one per ErrorInfo reason). The
// generated messages, enums and service descriptors of resilience.v1 are
// exported too, so every type a user handles comes from this root.

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
  ALL_REASONS,
  BreakerOpenError,
  ClockSkewError,
  Code,
  codeName,
  DeadlineExceededError,
  ERROR_CLASSES,
  ERROR_DOMAIN,
  fromError,
  IdempotencyKeyMismatchError,
  InvalidArgumentError,
  LeaseLostError,
  LimitExceededError,
  LimiterUnknownError,
  LostReason,
  NotAcquiredError,
  PermitUnknownError,
  Reason,
  ReleaseUnconfirmedError,
  ReplicationShortfallError,
  SagaNotFoundError,
  SagaStateConflictError,
  ShuttingDownError,
  SidecarError,
  SidecarUnreachableError,
  StoreFullError,
  StoreReadOnlyError,
  StoreUnavailableError,
  TopicUnknownError,
  UpstreamTimeoutError,
  UpstreamUnavailableError,
  UpstreamUnknownError,
  type FieldViolation,
  type SidecarErrorInit,
} from "./errors.js";
export {
  acquireLock,
  DEFAULT_LOCK_TTL_MS,
  leaseMarginMs,
  Lock,
  withLock,
  type AcquireLockOptions,
  type Lease,
  type LockOptions,
} from "./lock.js";
export { rateLimited, RateLimitedError, take, type RateDecision, type TakeOptions } from "./ratelimit.js";
export { BulkheadFullError, withPermit, type BulkheadPermit, type PermitOptions } from "./bulkhead.js";
export {
  fingerprint,
  idempotent,
  idempotentJson,
  type Execution,
  type IdempotentOptions,
  type IdempotentResult,
  type IdempotentResultInit,
} from "./idempotent.js";
export { CircuitBreaker, executeCall, guard, type GuardOptions, type UpstreamRequest, type UpstreamResponse } from "./breaker.js";
export { runSaga, Saga, startSaga, type CompensationInit, type StartSagaOptions } from "./saga.js";
export { LamportClock } from "./clock.js";

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

// The generated messages, enums (SagaState, CompensationStatus, BreakerState,
// CallOutcome, StartFrom, ...) and service descriptors. The saga log's
// message is exported as SagaRecord, since Saga is the helper class.
export * from "./gen/resilience/v1/lock_pb.js";
export * from "./gen/resilience/v1/idempotency_pb.js";
export * from "./gen/resilience/v1/clock_pb.js";
export * from "./gen/resilience/v1/breaker_pb.js";
export * from "./gen/resilience/v1/events_pb.js";
export * from "./gen/resilience/v1/ratelimit_pb.js";
export * from "./gen/resilience/v1/semaphore_pb.js";
export {
  AbortSagaRequestSchema,
  AbortSagaResponseSchema,
  CompensationSchema,
  CompensationStatus,
  CompensationStatusSchema,
  CompleteSagaRequestSchema,
  CompleteSagaResponseSchema,
  file_resilience_v1_saga,
  GetSagaRequestSchema,
  GetSagaResponseSchema,
  ListSagasRequestSchema,
  ListSagasResponseSchema,
  RecordStepRequestSchema,
  RecordStepResponseSchema,
  RetryCompensationRequestSchema,
  RetryCompensationResponseSchema,
  SagaSchema as SagaRecordSchema,
  SagaService,
  SagaState,
  SagaStateSchema,
  SagaStepSchema,
  StartSagaRequestSchema,
  StartSagaResponseSchema,
  type AbortSagaRequest,
  type AbortSagaResponse,
  type Compensation,
  type CompleteSagaRequest,
  type CompleteSagaResponse,
  type GetSagaRequest,
  type GetSagaResponse,
  type ListSagasRequest,
  type ListSagasResponse,
  type RecordStepRequest,
  type RecordStepResponse,
  type RetryCompensationRequest,
  type RetryCompensationResponse,
  type Saga as SagaRecord,
  type SagaStep,
  type StartSagaRequest,
  type StartSagaResponse,
} from "./gen/resilience/v1/saga_pb.js";
// google.rpc error details, as decoded into SidecarError.
export {
  BadRequestSchema,
  ErrorInfoSchema,
  RetryInfoSchema,
  type BadRequest,
  type BadRequest_FieldViolation,
  type ErrorInfo,
  type RetryInfo,
} from "./gen/google/rpc/error_details_pb.js";
