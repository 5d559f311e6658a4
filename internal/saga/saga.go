// Package saga keeps a durable saga log and runs compensations: an
// orchestrator starts a saga, records each step before performing it, and
// completes the saga; when it aborts the saga, or the saga passes its
// timeout, the recorded compensations run newest first, one at a time, each
// an HTTP call through the upstream caller with retries and the header
// Idempotency-Key: <saga_id>:<step>.
//
// Every transition is written to the log (the Store) before it is acted
// on. Compensating is done by an executor holding a per-saga lease in the
// log, renewed while it runs; a step's success is written, under that lease,
// before the next step starts. A recovery worker, elected among the
// sidecars of a namespace, aborts RUNNING sagas past their deadline and
// resumes COMPENSATING sagas whose executor lease expired (its sidecar
// died). So a crash at any point loses no saga, and each compensation
// completes at most once provided the upstream honours the idempotency key:
// the only repeat is a call whose success was not yet logged when its
// executor died, and it carries the same key.
package saga

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/seed-a88e5317/resilience-sidecar/internal/upstream"
)

// State is a saga's state.
type State int

// The states. The zero value means "none" (a saga that does not exist, or
// no filter in List).
const (
	Running State = iota + 1
	Completed
	Compensating
	Compensated
	CompensationFailed
)

var stateNames = map[State]string{
	Running: "RUNNING", Completed: "COMPLETED", Compensating: "COMPENSATING",
	Compensated: "COMPENSATED", CompensationFailed: "COMPENSATION_FAILED",
}

func (s State) String() string {
	if n, ok := stateNames[s]; ok {
		return n
	}
	return fmt.Sprintf("State(%d)", int(s))
}

// Terminal reports whether no transition leaves s by itself (COMPLETED,
// COMPENSATED, COMPENSATION_FAILED).
func (s State) Terminal() bool {
	return s == Completed || s == Compensated || s == CompensationFailed
}

// StepStatus is the status of one step's compensation.
type StepStatus int

// The statuses of a compensation.
const (
	StepPending StepStatus = iota + 1
	StepSucceeded
	StepFailed
)

// Errors callers switch on. Every error of the Service is one of these
// (matched with errors.Is), an upstream request error (a compensation
// refused by the upstream caller's checks: *upstream.RequestError), a store
// error (wrapping store.ErrUnavailable when the store did not answer) or
// the caller's context error.
var (
	// ErrNotFound: no saga with that id (never started, or removed after
	// its retention).
	ErrNotFound = errors.New("saga: not found")
	// ErrStateConflict matches *ConflictError: the saga's state forbids the
	// call.
	ErrStateConflict = errors.New("saga: state conflict")
	// ErrAlreadyExists matches *ConflictError with Exists set: the saga id
	// is taken by a saga of another name, or the step was recorded with
	// another compensation.
	ErrAlreadyExists = errors.New("saga: already exists with different content")
	// ErrTooManySteps: the saga has the maximum number of steps.
	ErrTooManySteps = errors.New("saga: too many steps")
	// ErrLeaseLost: the executor's lease on the saga is gone (another
	// executor took the saga over, or the saga left COMPENSATING).
	ErrLeaseLost = errors.New("saga: executor lease lost")
)

// ConflictError is a call refused because of the saga's state, or because
// it reuses an id with different content.
type ConflictError struct {
	// State is the saga's state when the call was refused.
	State State
	// Exists: a saga id reused with another name, or a step recorded with
	// another compensation (ErrAlreadyExists); else ErrStateConflict.
	Exists bool
	Msg    string
}

func (e *ConflictError) Error() string { return "saga: " + e.Msg }

// Is matches ErrAlreadyExists when Exists is set, else ErrStateConflict.
func (e *ConflictError) Is(target error) bool {
	if e.Exists {
		return target == ErrAlreadyExists
	}
	return target == ErrStateConflict
}

// Compensation is the HTTP call that undoes a step.
type Compensation struct {
	Upstream string
	// Method: POST when empty.
	Method string
	// Path and Query are escaped, as in upstream.Request.
	Path, Query string
	Headers     []upstream.Header
	Body        []byte
}

// Step is one recorded step.
type Step struct {
	Name string
	// Index is the step's position, from 1.
	Index        int
	Compensation Compensation
	Status       StepStatus
	// Attempts counts the HTTP attempts made for the compensation.
	Attempts  int
	LastError string
	// RecordTime is when the step was recorded; CompensateTime when its
	// compensation succeeded (zero otherwise).
	RecordTime, CompensateTime time.Time
	// TraceContext is the W3C trace context (traceparent, tracestate) of
	// the call that recorded the step: its compensation's request carries
	// it, so the undo sits in the trace of the work it undoes. It is not
	// part of the step's identity.
	TraceContext map[string]string
}

// Saga is a saga's log entry. Steps is filled by Get only.
type Saga struct {
	ID       string
	Name     string
	State    State
	Metadata map[string]string
	Timeout  time.Duration
	// CreateTime, UpdateTime; Deadline is when a RUNNING saga times out;
	// EndTime when it reached a terminal state; ExpireTime when a
	// COMPLETED or COMPENSATED saga is removed (zero when not scheduled).
	CreateTime, UpdateTime, Deadline, EndTime, ExpireTime time.Time
	// Reason compensation started: the abort's reason, or "timeout".
	Reason string
	// LastError says which compensation failed and why
	// (COMPENSATION_FAILED).
	LastError string
	StepCount int
	Steps     []Step

	// cursor is the index of the next step to compensate while
	// COMPENSATING (0: none left); leaseExpire is the executor lease's
	// expiry. Both are the executor's business.
	cursor      int
	leaseExpire time.Time
}

// NewSaga is what Start records.
type NewSaga struct {
	ID, Name string
	Timeout  time.Duration
	Metadata map[string]string
}

// Params are the settings every store write receives.
type Params struct {
	// ExecID is the executor a transition to COMPENSATING (or a takeover)
	// hands the saga to. Empty: leave it unclaimed, for the recovery worker.
	ExecID string
	// Lease is the executor lease's lifetime.
	Lease time.Duration
	// Retention is how long a COMPLETED or COMPENSATED saga is kept.
	Retention time.Duration
}

// Outcome is the result of a store write.
type Outcome struct {
	// Saga after the write, without Steps.
	Saga Saga
	// Prev is the state before the write (0 when the saga was created).
	Prev State
	// Claimed: the saga was handed to Params.ExecID, which must now run
	// its compensations starting with Next.
	Claimed bool
	// Next is the step to compensate next, with its compensation, when the
	// saga is COMPENSATING (nil when none is left).
	Next *Step
}

// Attempt is an executor's report on one try of a compensation.
type Attempt struct {
	// Index and Name of the step tried.
	Index int
	Name  string
	// Attempts is the number of HTTP attempts the try made.
	Attempts int
	// Result: StepSucceeded, StepPending (failed, will be retried) or
	// StepFailed (the saga becomes COMPENSATION_FAILED).
	Result StepStatus
	// Error describes the failure (empty on success).
	Error string
}

// Store keeps the saga log. Every write is atomic and returns the saga's
// state after it; time (deadlines, leases, retention) is the store's clock.
//
// A write on a RUNNING saga past its deadline first moves the saga to
// COMPENSATING with reason "timeout" (claimed by Params.ExecID), and then
// answers on that state: so RecordStep and Complete refuse a timed-out saga
// even before the recovery worker has seen it.
type Store interface {
	// Start creates a RUNNING saga, or returns the existing one with
	// created=false (whatever its name: the caller compares).
	Start(ctx context.Context, s NewSaga, p Params) (out Outcome, created bool, err error)
	// RecordStep appends step to a RUNNING saga and returns its index. An
	// existing step of that name with the same compensation gives its index
	// and created=false; with another, a *ConflictError with Exists. Other
	// errors: ErrNotFound, *ConflictError (not RUNNING), ErrTooManySteps
	// (maxSteps reached).
	RecordStep(ctx context.Context, id string, step Step, maxSteps int, p Params) (out Outcome, index int, created bool, err error)
	// Complete moves a RUNNING saga to COMPLETED; a COMPLETED one is left
	// as it is. Errors: ErrNotFound, *ConflictError.
	Complete(ctx context.Context, id string, p Params) (Outcome, error)
	// Abort moves a RUNNING saga to COMPENSATING (claimed), or straight to
	// COMPENSATED when it has no steps. A saga already COMPENSATING,
	// COMPENSATED or COMPENSATION_FAILED is left as it is, except that a
	// COMPENSATING saga whose executor lease expired is claimed. Errors:
	// ErrNotFound, *ConflictError (COMPLETED).
	Abort(ctx context.Context, id, reason string, p Params) (Outcome, error)
	// Retry moves a COMPENSATION_FAILED saga back to COMPENSATING
	// (claimed), its failed step pending again. Errors: ErrNotFound,
	// *ConflictError.
	Retry(ctx context.Context, id string, p Params) (Outcome, error)
	// Recover is the recovery worker's visit: a RUNNING saga past its
	// deadline moves to COMPENSATING, and a COMPENSATING saga whose
	// executor lease expired is claimed. ErrNotFound when the saga is
	// gone. It also repairs the saga's index entries.
	Recover(ctx context.Context, id string, p Params) (Outcome, error)
	// Renew extends the executor lease of execID to now+lease.
	// ErrLeaseLost when execID no longer holds the saga.
	Renew(ctx context.Context, id, execID string, lease time.Duration) error
	// Report records an executor's attempt under its lease (and renews
	// it): on success the step is done and the cursor moves on (the saga
	// becomes COMPENSATED after the last step); StepFailed makes the saga
	// COMPENSATION_FAILED. ErrLeaseLost when p.ExecID no longer holds it.
	Report(ctx context.Context, id string, a Attempt, p Params) (Outcome, error)
	// Release gives up execID's lease (at shutdown, or when the claiming
	// write's outcome is unknown) so that another executor may take the
	// saga over at once. Not holding it is no error; a claim for execID
	// that the store performs after the Release (a write its caller gave
	// up on, still on its way) then claims nothing, leaving the saga to
	// the recovery worker.
	Release(ctx context.Context, id, execID string) error
	// Get returns the saga with its steps. ErrNotFound when absent.
	Get(ctx context.Context, id string) (Saga, error)
	// List returns up to limit sagas (without steps) with ids greater than
	// after, in id order, only those in state unless it is 0, and whether
	// more may follow.
	List(ctx context.Context, state State, after string, limit int) (sagas []Saga, more bool, err error)
	// Due returns up to limit sagas the recovery worker should visit now:
	// RUNNING past their deadline, COMPENSATING with an expired executor
	// lease, and whatever needs its index repaired or its retention ended.
	Due(ctx context.Context, limit int) ([]string, error)
	// CountFailed counts the COMPENSATION_FAILED sagas.
	CountFailed(ctx context.Context) (int, error)
}
