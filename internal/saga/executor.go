package saga

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/propagation"

	"github.com/seed-a88e5317/resilience-sidecar/internal/backoff"
	"github.com/seed-a88e5317/resilience-sidecar/internal/breaker"
	"github.com/seed-a88e5317/resilience-sidecar/internal/upstream"
)

// releaseTimeout bounds giving a lease up at shutdown.
const releaseTimeout = 2 * time.Second

// execute compensates a claimed saga, starting with step next, until it is
// COMPENSATED or COMPENSATION_FAILED, or the lease is lost, or the service
// closes (the lease is then given up). A background renewal keeps the
// lease; when it cannot, the call in flight is cancelled before the lease
// runs out, so that two executors do not call at once.
func (s *Service) execute(id string, p Params, next Step) {
	defer s.wg.Done()
	defer func() { <-s.slots }()
	ctx, cancel := context.WithCancel(s.ctx)
	renewed := make(chan struct{})
	go func() {
		defer close(renewed)
		s.renewLoop(ctx, cancel, id, p.ExecID)
	}()
	defer func() {
		cancel()
		<-renewed
	}()

	log := s.log.With("saga_id", id)
	for {
		out, err := s.compensateStep(ctx, id, p, next)
		if err != nil {
			switch {
			case s.ctx.Err() != nil:
				s.release(id, p.ExecID)
			case errors.Is(err, ErrLeaseLost), errors.Is(err, context.Canceled):
				log.Warn("saga: executor lease lost; another executor or the recovery worker carries on", "error", err)
			default:
				// The log could not be written: stop, and let the lease
				// expire so that the recovery worker resumes (repeating at
				// most this step, with the same idempotency key).
				log.Warn("saga: executor stopped: could not write the saga log; the recovery worker resumes it after the lease", "error", err)
			}
			return
		}
		s.observe(out)
		switch out.Saga.State {
		case Compensated:
			log.Info("saga: compensated", "steps", out.Saga.StepCount)
			return
		case CompensationFailed:
			log.Error("saga: COMPENSATION_FAILED: a person must resolve it (RetryCompensation once fixed)", "error", out.Saga.LastError)
			return
		}
		if out.Next == nil {
			return
		}
		next = *out.Next
	}
}

// compensateStep runs one step's compensation with the upstream's retry
// policy and reports every try to the log, returning the outcome of the
// report that settled the step.
//
// A call the upstream's circuit breaker refuses sent nothing, so it is no
// try: it neither counts against the retry policy's MaxAttempts nor adds
// to the step's attempts. The executor waits for the breaker instead (the
// breaker's retry-after, see breakerWait) and calls again, for as long as
// it holds the lease: the background renewal keeps the lease during the
// wait, and the wait ends with the executor's context (lease lost,
// renewals failing, shutdown, which hands the lease over). The first
// refusal of a run is written to the log (the step's last error, with no
// attempt), so GetSaga says why the saga waits.
func (s *Service) compensateStep(ctx context.Context, id string, p Params, st Step) (Outcome, error) {
	pol := s.opts.Retry(st.Compensation.Upstream)
	req := request(id, st.Name, st.Compensation)
	// The request joins the trace of the call that recorded the step.
	traced := otel.GetTextMapPropagator().Extract(ctx, propagation.MapCarrier(st.TraceContext))
	refusals := 0 // breaker refusals in a row
	for try := 1; ; {
		res := s.call(traced, req)
		if err := ctx.Err(); err != nil {
			return Outcome{}, err
		}
		if res.refused {
			if refusals == 0 {
				a := Attempt{Index: st.Index, Name: st.Name, Result: StepPending, Error: res.err}
				if _, err := s.store.Report(ctx, id, a, p); err != nil {
					return Outcome{}, err
				}
			}
			refusals++
			wait := s.breakerWait(res)
			s.log.Debug("saga: compensation refused by the upstream's circuit breaker; waiting for it (not counted as a try)",
				"saga_id", id, "step_index", st.Index, "refusals", refusals, "wait", wait.String(), "error", res.err)
			if err := s.opts.Sleep(ctx, wait); err != nil {
				return Outcome{}, err
			}
			continue
		}
		refusals = 0
		a := Attempt{Index: st.Index, Name: st.Name, Attempts: res.attempts, Result: StepSucceeded}
		if !res.ok {
			a.Result, a.Error = StepPending, res.err
			if res.permanent || try >= pol.MaxAttempts {
				a.Result = StepFailed
				if !res.permanent {
					a.Error = fmt.Sprintf("%s (after %d tries)", res.err, try)
				}
			}
		}
		out, err := s.store.Report(ctx, id, a, p)
		if err != nil {
			return Outcome{}, err
		}
		if a.Result != StepPending {
			return out, nil
		}
		s.log.Debug("saga: compensation failed, retrying", "saga_id", id, "step_index", st.Index, "try", try, "error", res.err)
		if err := s.opts.Sleep(ctx, s.backoff(pol, try)); err != nil {
			return Outcome{}, err
		}
		try++
	}
}

// Waits on an upstream's circuit breaker that refused a compensation.
const (
	// minBreakerWait is the least wait, so that a breaker that keeps
	// refusing (a retry-after of zero, a breaker forced open) does not
	// turn the executor into a busy loop.
	minBreakerWait = 100 * time.Millisecond
	// maxHalfOpenWait bounds a wait on a half-open breaker: its
	// retry-after is when the probe's permit would expire, but the probe
	// usually settles much sooner (and closes the breaker).
	maxHalfOpenWait = time.Second
)

// breakerWait is how long to wait after a breaker refusal: the breaker's
// retry-after (the time until an open breaker turns half-open), at least
// minBreakerWait, plus up to a tenth more of jitter so that the sagas
// waiting on one breaker do not all call at the same instant.
func (s *Service) breakerWait(res callResult) time.Duration {
	d := res.retryAfter
	if res.halfOpen {
		d = min(d, maxHalfOpenWait)
	}
	d = max(d, minBreakerWait)
	return d + time.Duration(s.opts.Rand()*float64(d)/10)
}

// backoff is the full-jitter wait after the try-th try.
func (s *Service) backoff(pol RetryPolicy, try int) time.Duration {
	return time.Duration(s.opts.Rand() * float64(backoff.Ceiling(pol.InitialBackoff, pol.MaxBackoff, try)))
}

// callResult is one try of a compensation.
type callResult struct {
	ok        bool
	attempts  int
	err       string
	permanent bool
	// refused: the upstream's circuit breaker refused the call before
	// anything was sent; retryAfter is the breaker's, halfOpen its state.
	refused    bool
	retryAfter time.Duration
	halfOpen   bool
}

// call makes one try. 2xx succeeds. A request the caller refuses, a 3xx
// (redirects are not followed), a response too large to read and a 4xx
// other than 408, 409, 425 and 429 fail for good: retrying cannot change
// them. Everything else (no response, 5xx) is retried; a call refused by
// the upstream's circuit breaker is marked refused (no try was made).
func (s *Service) call(ctx context.Context, req upstream.Request) callResult {
	resp, err := s.opts.Caller.Do(ctx, req)
	if err == nil {
		r := callResult{attempts: resp.Attempts, ok: resp.Status >= 200 && resp.Status < 300}
		if !r.ok {
			r.err = fmt.Sprintf("HTTP %d %s", resp.Status, http.StatusText(resp.Status))
			switch resp.Status {
			case http.StatusRequestTimeout, http.StatusConflict, http.StatusTooEarly, http.StatusTooManyRequests:
			default:
				r.permanent = resp.Status < 500
			}
		}
		return r
	}
	var ce *upstream.CallError
	var oe *breaker.OpenError
	switch {
	case errors.As(err, &oe):
		return callResult{err: err.Error(), refused: true, retryAfter: oe.RetryAfter, halfOpen: oe.State == breaker.HalfOpen}
	case errors.As(err, &ce):
		return callResult{attempts: ce.Attempts, err: ce.Error()}
	case errors.Is(err, upstream.ErrInvalidRequest):
		return callResult{err: err.Error(), permanent: true}
	case errors.Is(err, upstream.ErrResponseTooLarge):
		return callResult{attempts: 1, err: err.Error(), permanent: true}
	}
	return callResult{err: err.Error()}
}

// renewLoop renews the executor lease every Lease/3. It cancels the
// executor when the lease is lost, or when renewals have failed for 2/3 of
// the lease (the store is unreachable: the lease may run out meanwhile).
func (s *Service) renewLoop(ctx context.Context, cancel context.CancelFunc, id, execID string) {
	t := time.NewTicker(s.opts.Lease / 3)
	defer t.Stop()
	last := time.Now()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		err := s.store.Renew(ctx, id, execID, s.opts.Lease)
		switch {
		case err == nil:
			last = time.Now()
		case errors.Is(err, ErrLeaseLost):
			cancel()
			return
		case time.Since(last) > s.opts.Lease*2/3:
			s.log.Warn("saga: cannot renew the executor lease; stopping before it runs out", "saga_id", id, "error", err)
			cancel()
			return
		}
	}
}

// release gives a lease up at shutdown, so that another sidecar's worker
// takes the saga over without waiting for the lease to run out.
func (s *Service) release(id, execID string) {
	ctx, cancel := context.WithTimeout(context.Background(), releaseTimeout)
	defer cancel()
	if err := s.store.Release(ctx, id, execID); err != nil {
		s.log.Warn("saga: could not give the executor lease up; it runs out by itself", "saga_id", id, "error", err)
	}
}
