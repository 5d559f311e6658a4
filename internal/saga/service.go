package saga

import (
	"context"
	crand "crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/propagation"

	"github.com/seed-a88e5317/resilience-sidecar/internal/handback"
	"github.com/seed-a88e5317/resilience-sidecar/internal/metrics"
	"github.com/seed-a88e5317/resilience-sidecar/internal/upstream"
)

// Defaults of Options.
const (
	DefaultRetention        = 7 * 24 * time.Hour
	DefaultLease            = 15 * time.Second
	DefaultRecoveryInterval = 5 * time.Second
	DefaultMaxSteps         = 1000
	DefaultMaxBodyBytes     = 64 << 10
	DefaultMaxExecutors     = 64
)

// RecoveryLockKey is the lock the recovery worker of a namespace is
// elected with. It holds a control character, which the lock API refuses,
// so no application can take it.
const RecoveryLockKey = "\x1fsaga-recovery"

// Caller makes the compensation calls: *upstream.Caller.
type Caller interface {
	Do(ctx context.Context, r upstream.Request) (*upstream.Response, error)
	// Check refuses a request Do would refuse before calling anything.
	Check(r upstream.Request) error
}

// Elector is the lease store the recovery worker is elected with: the lock
// service's store, adapted. Renew reports false when the lease is lost.
type Elector interface {
	TryAcquire(ctx context.Context, key, leaseID, owner string, ttl time.Duration) (bool, error)
	Renew(ctx context.Context, key, leaseID string, ttl time.Duration) (bool, error)
	Release(ctx context.Context, key, leaseID string) error
}

// Options configure a Service. Zero values get the defaults noted.
type Options struct {
	// Store is the saga log; required.
	Store Store
	// Caller makes the compensations; required.
	Caller Caller
	// Elector elects the namespace's recovery worker. Nil: this service
	// is always the worker (one process, e.g. the embedded store).
	Elector Elector
	// Owner labels this service's hold of the recovery lock.
	Owner string
	// Retry returns an upstream's compensation retry policy (DefaultRetry
	// for all when nil).
	Retry func(upstream string) RetryPolicy
	// Retention of COMPLETED and COMPENSATED sagas (DefaultRetention).
	Retention time.Duration
	// Lease is the executor lease, renewed every Lease/3 while
	// compensating, and the least lifetime of the recovery worker's lock
	// (DefaultLease).
	Lease time.Duration
	// RecoveryInterval is how often the worker looks for stuck sagas
	// (DefaultRecoveryInterval).
	RecoveryInterval time.Duration
	// MaxSteps bounds a saga's steps (DefaultMaxSteps); MaxBodyBytes a
	// compensation's body (DefaultMaxBodyBytes).
	MaxSteps     int
	MaxBodyBytes int
	// MaxExecutors bounds the sagas this process compensates at once
	// (DefaultMaxExecutors); beyond it sagas wait for the recovery worker.
	MaxExecutors int
	Log          *slog.Logger
	// Metrics, when set, counts transitions and the stuck sagas.
	Metrics *metrics.Metrics
	// Rand in [0,1) for the backoff jitter and Sleep for its waits; for
	// tests (default math/rand/v2 and a timer).
	Rand  func() float64
	Sleep func(ctx context.Context, d time.Duration) error
}

// Service runs sagas on a Store. It is safe for concurrent use. It owns
// the recovery worker and the executors; Close stops them.
type Service struct {
	opts  Options
	store Store
	log   *slog.Logger
	// slots bounds the executors; a claim takes a slot first.
	slots chan struct{}
	// execPrefix and execSeq make executor ids: unique per claim.
	execPrefix string
	execSeq    atomic.Uint64

	// handBack releases executor leases a claiming write may have granted
	// when its outcome is unknown, until the store confirms.
	handBack *handback.Queue

	ctx    context.Context
	cancel context.CancelFunc
	mu     sync.Mutex
	closed bool
	wg     sync.WaitGroup
}

// NewService checks opts and starts the recovery worker.
func NewService(opts Options) (*Service, error) {
	if opts.Store == nil || opts.Caller == nil {
		return nil, errors.New("saga: Options.Store and Options.Caller are required")
	}
	def := func(v *time.Duration, d time.Duration) {
		if *v <= 0 {
			*v = d
		}
	}
	def(&opts.Retention, DefaultRetention)
	def(&opts.Lease, DefaultLease)
	def(&opts.RecoveryInterval, DefaultRecoveryInterval)
	if opts.MaxSteps <= 0 {
		opts.MaxSteps = DefaultMaxSteps
	}
	if opts.MaxBodyBytes <= 0 {
		opts.MaxBodyBytes = DefaultMaxBodyBytes
	}
	if opts.MaxExecutors <= 0 {
		opts.MaxExecutors = DefaultMaxExecutors
	}
	if opts.Retry == nil {
		opts.Retry = func(string) RetryPolicy { return DefaultRetry }
	}
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler)
	}
	if opts.Rand == nil {
		opts.Rand = rand.Float64
	}
	if opts.Sleep == nil {
		opts.Sleep = sleep
	}
	prefix, err := randomHex(8)
	if err != nil {
		return nil, err
	}
	s := &Service{opts: opts, store: opts.Store, log: opts.Log, slots: make(chan struct{}, opts.MaxExecutors), execPrefix: prefix}
	s.handBack = handback.New("saga", s.store.Release, releaseTimeout, s.log)
	s.ctx, s.cancel = context.WithCancel(context.Background())
	s.wg.Add(1)
	go s.recoveryLoop()
	return s, nil
}

// Close stops the recovery worker and the executors, and waits for them.
// Executors give their leases up, so another sidecar's worker resumes their
// sagas at once. Calls after Close still work, but start no executor.
func (s *Service) Close() {
	s.mu.Lock()
	s.closed = true
	s.mu.Unlock()
	s.cancel()
	s.wg.Wait()
	s.handBack.Close()
}

func randomHex(n int) (string, error) {
	b := make([]byte, n)
	if _, err := io.ReadFull(crand.Reader, b); err != nil {
		return "", fmt.Errorf("saga: random id: %w", err)
	}
	return hex.EncodeToString(b), nil
}

// params are the store parameters of a write that claims nothing: a saga
// it finds timed out is left to the recovery worker.
func (s *Service) params() Params {
	return Params{Lease: s.opts.Lease, Retention: s.opts.Retention}
}

// reserve takes an executor slot and names the executor, for a write that
// hands a saga over (Abort, RetryCompensation, the recovery worker); or
// returns ok=false when none is free (the claim is then left to the
// recovery worker).
func (s *Service) reserve() (Params, bool) {
	p := s.params()
	if s.ctx.Err() != nil {
		return p, false
	}
	select {
	case s.slots <- struct{}{}:
		p.ExecID = fmt.Sprintf("%s-%d", s.execPrefix, s.execSeq.Add(1))
		return p, true
	default:
		return p, false
	}
}

// settle acts on a write's outcome: it counts the transition and, when the
// write claimed the saga, runs its compensations; otherwise it frees the
// reserved slot.
func (s *Service) settle(out Outcome, p Params, reserved bool) {
	s.observe(out)
	if !reserved {
		return
	}
	if !out.Claimed || out.Next == nil {
		<-s.slots
		return
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		<-s.slots
		s.release(out.Saga.ID, p.ExecID)
		return
	}
	s.wg.Add(1)
	s.mu.Unlock()
	go s.execute(out.Saga.ID, p, *out.Next)
}

// handBackIfUnknown hands the executor lease of a claiming write back when
// the write failed without a definite answer (the store timed out, the
// connection broke after the script was sent, the caller's context ended):
// the store may have handed the saga to p.ExecID, and no executor will
// run it, so without this the saga would wait for the lease to run out.
// The release is by p.ExecID, so it is a no-op when nothing was claimed,
// and a claim still on its way when the release runs claims nothing
// (Store.Release). After a caller that gave up, the release is tried
// before the call returns; after a store failure, in the background (so
// the failed call does not wait for a second one). Either way it is
// retried until the store confirms, or until the lease would have run
// out anyway.
func (s *Service) handBackIfUnknown(id string, p Params, err error) {
	if err == nil || p.ExecID == "" || errors.Is(err, ErrNotFound) || errors.Is(err, ErrStateConflict) ||
		errors.Is(err, ErrAlreadyExists) || errors.Is(err, ErrLeaseLost) {
		return
	}
	s.handBack.GiveBack(id, p.ExecID, p.Lease, err)
}

// observe counts a transition.
func (s *Service) observe(out Outcome) {
	if st := out.Saga.State; st != 0 && st != out.Prev && s.opts.Metrics != nil {
		s.opts.Metrics.SagaTotal.WithLabelValues(st.String()).Inc()
	}
}

// Start creates a RUNNING saga, or returns the existing one with
// created=false when a saga of that id and name exists (in any state).
// Errors: *ConflictError (ErrAlreadyExists) when the id belongs to a saga
// of another name.
func (s *Service) Start(ctx context.Context, n NewSaga) (Saga, bool, error) {
	out, created, err := s.store.Start(ctx, n, s.params())
	s.observe(out)
	if err != nil {
		return Saga{}, false, err
	}
	if !created && out.Saga.Name != n.Name {
		return out.Saga, false, &ConflictError{State: out.Saga.State, Exists: true,
			Msg: fmt.Sprintf("saga id is taken by a saga named %q", out.Saga.Name)}
	}
	return out.Saga, created, nil
}

// RecordStep appends a step to a RUNNING saga and returns its index, and
// created=false when the same step was already recorded. The compensation
// is checked now as the upstream caller will check it (a POST when Method
// is empty). Errors: ErrNotFound, *ConflictError, ErrTooManySteps, and a
// *upstream.RequestError for a compensation the caller would refuse (its
// Field prefixed with "compensation.").
func (s *Service) RecordStep(ctx context.Context, id, step string, c Compensation) (int, bool, error) {
	if c.Method == "" {
		c.Method = http.MethodPost
	}
	if len(c.Body) > s.opts.MaxBodyBytes {
		return 0, false, &upstream.RequestError{Field: "compensation.body",
			Msg: fmt.Sprintf("must be at most %d bytes (saga_max_body_bytes), got %d", s.opts.MaxBodyBytes, len(c.Body))}
	}
	if err := s.opts.Caller.Check(request(id, step, c)); err != nil {
		var re *upstream.RequestError
		if errors.As(err, &re) {
			cp := *re
			cp.Field = "compensation." + cp.Field
			return 0, false, &cp
		}
		return 0, false, err
	}
	tc := propagation.MapCarrier{}
	otel.GetTextMapPropagator().Inject(ctx, tc)
	out, idx, created, err := s.store.RecordStep(ctx, id, Step{Name: step, Compensation: c, TraceContext: tc}, s.opts.MaxSteps, s.params())
	s.observe(out)
	return idx, created, err
}

// request is the upstream call of a step's compensation.
func request(sagaID, step string, c Compensation) upstream.Request {
	return upstream.Request{
		Upstream: c.Upstream, Method: c.Method, Path: c.Path, Query: c.Query,
		Headers: c.Headers, Body: c.Body, IdempotencyKey: IdempotencyKey(sagaID, step),
	}
}

// Complete ends a RUNNING saga successfully (a COMPLETED one is left
// alone). Errors: ErrNotFound, *ConflictError (aborted or timed out).
func (s *Service) Complete(ctx context.Context, id string) (Saga, error) {
	out, err := s.store.Complete(ctx, id, s.params())
	s.observe(out)
	return out.Saga, err
}

// Abort starts compensating a RUNNING saga and returns; the compensations
// run in the background. A saga already compensating, compensated or
// failed is returned as it is. Errors: ErrNotFound, *ConflictError
// (COMPLETED).
func (s *Service) Abort(ctx context.Context, id, reason string) (Saga, error) {
	p, reserved := s.reserve()
	out, err := s.store.Abort(ctx, id, reason, p)
	s.handBackIfUnknown(id, p, err)
	s.settle(out, p, reserved)
	return out.Saga, err
}

// RetryCompensation re-runs the compensations of a COMPENSATION_FAILED
// saga from the step that failed, with a fresh retry budget. Errors:
// ErrNotFound, *ConflictError.
func (s *Service) RetryCompensation(ctx context.Context, id string) (Saga, error) {
	p, reserved := s.reserve()
	out, err := s.store.Retry(ctx, id, p)
	s.handBackIfUnknown(id, p, err)
	s.settle(out, p, reserved)
	return out.Saga, err
}

// Get returns the saga with its steps. ErrNotFound when absent.
func (s *Service) Get(ctx context.Context, id string) (Saga, error) {
	return s.store.Get(ctx, id)
}

// List returns up to limit sagas (without steps) with ids after after, in
// id order, only those in state unless it is 0, and whether more may
// follow.
func (s *Service) List(ctx context.Context, state State, after string, limit int) ([]Saga, bool, error) {
	return s.store.List(ctx, state, after, limit)
}

func sleep(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
