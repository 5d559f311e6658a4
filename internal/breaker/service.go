package breaker

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/seed-a88e5317/resilience-sidecar/internal/metrics"
	"github.com/seed-a88e5317/resilience-sidecar/internal/store"
)

// Defaults of Options.
const (
	DefaultMaxBreakers       = 10_000
	DefaultPermitTTL         = time.Minute
	DefaultRecoveryInterval  = time.Second
	DefaultMaxPendingReports = 10_000
	// DefaultName is the policy name that covers undeclared breakers.
	DefaultName = "default"
)

// idleSharedEviction is how long a shared breaker's local entry must be
// unused before it may be forgotten to make room (its state is in the
// store, so nothing is lost).
const idleSharedEviction = time.Minute

// evictScanInterval rate-limits fruitless eviction scans at the limit.
const evictScanInterval = 100 * time.Millisecond

// releaseTimeout bounds handing back a grant whose caller is gone (the
// store's own timeout applies too); a release that fails is kept for
// replay like a report.
const releaseTimeout = 2 * time.Second

// Options configure a Service. Zero values get the defaults noted.
type Options struct {
	// Policies are the declared breakers by name. The one named
	// DefaultName, when present, is the policy of undeclared names instead
	// of DefaultPolicy, and is not itself a declared breaker.
	Policies map[string]Policy
	// Shared keeps the shared breakers. Nil (the embedded store: one
	// sidecar) runs shared breakers as local ones, ignoring MinReporters.
	Shared Store
	// MaxBreakers bounds the breakers this process tracks (default
	// DefaultMaxBreakers, and at least the declared ones). At the bound,
	// idle undeclared breakers are forgotten; if none is idle, a new name
	// is refused with ErrLimitExceeded.
	MaxBreakers int
	// MaxPermits bounds the outstanding permits of the in-memory breakers
	// (default DefaultMaxPermits).
	MaxPermits int
	// Now is the clock of local breakers (default time.Now).
	Now func() time.Time
	// Entropy is read for permit nonces and the reporter id (default
	// crypto/rand). It must be safe for concurrent use.
	Entropy io.Reader
	Log     *slog.Logger
	// Metrics, when set, gets breaker states and transitions.
	Metrics *metrics.Metrics
	// RecoveryInterval is how often an unreachable Shared store is probed,
	// and undelivered reports replayed (default DefaultRecoveryInterval).
	RecoveryInterval time.Duration
	// MaxPendingReports bounds the reports kept while Shared is
	// unreachable (default DefaultMaxPendingReports); beyond it the oldest
	// are dropped (their permits will expire and count as failures).
	MaxPendingReports int
}

// Decision is the answer to Allow.
type Decision struct {
	Allowed bool
	// PermitID is set when allowed.
	PermitID string
	// State the call was decided in.
	State State
	// RetryAfter is set when refused.
	RetryAfter time.Duration
	// PermitExpire is when an unreported permit counts as a failure.
	PermitExpire time.Time
	// Degraded: a shared breaker decided by the local fallback.
	Degraded bool
}

// ReportResult is the answer to Report.
type ReportResult struct {
	State State
	// Counted is false for a permit of an earlier generation, and for a
	// report kept for replay while the store is unreachable.
	Counted  bool
	Degraded bool
}

// Info describes a breaker.
type Info struct {
	Name     string
	Policy   Policy
	Declared bool
	State    State
	Counts   Counts
	// NextTransition is when an open breaker admits probes, on this
	// process's clock (zero otherwise).
	NextTransition time.Time
	// Degraded: a shared breaker shown from the local fallback because the
	// store is unreachable.
	Degraded bool
}

// Service runs named breakers: local ones in memory, shared ones in a
// Store with a local fallback while the store is unreachable. It is safe
// for concurrent use. Close stops its one background goroutine.
type Service struct {
	policies    map[string]Policy // declared, with defaults applied
	def         Policy
	shared      Store
	now         func() time.Time
	entropy     io.Reader
	log         *slog.Logger
	metrics     *metrics.Metrics
	reporter    Reporter
	maxBreakers int
	maxPermits  int64
	maxPending  int
	interval    time.Duration

	outstanding atomic.Int64 // permits of every in-memory cell

	mu       sync.RWMutex
	reg      map[string]*entry
	lastScan time.Time // last fruitless eviction scan

	down      atomic.Bool // Shared is unreachable: decide locally
	dmu       sync.Mutex
	downSince time.Time
	pending   []pendingReport
	dropped   int

	// life ends when Close is called; done is closed when the recovery
	// goroutine has returned.
	life context.Context
	stop context.CancelFunc
	done chan struct{}
}

// entry is one breaker this process tracks.
type entry struct {
	name     string
	policy   Policy
	declared bool
	local    *cell // nil for a shared breaker with a store
	lastUsed atomic.Int64
	state    atomic.Int32 // last state seen, for logs and metrics

	mu            sync.Mutex
	fallback      *cell
	lastOpenUntil time.Time // shared: end of the last open state seen
	// forgotten: evicted, its metric series deleted; calls still in
	// flight on it must not make them again.
	forgotten bool
}

type pendingReport struct {
	name string
	p    Policy
	ref  PermitRef
	o    Outcome
	dur  time.Duration
	// release: hand back the grant of an Allow whose outcome is unknown
	// (Store.Release with args) instead of reporting ref.
	release bool
	args    AllowArgs
}

// NewService validates the policies and starts the service. Call Close
// when done.
func NewService(opts Options) (*Service, error) {
	s := &Service{
		policies:    map[string]Policy{},
		def:         DefaultPolicy(),
		shared:      opts.Shared,
		now:         opts.Now,
		entropy:     opts.Entropy,
		log:         opts.Log,
		metrics:     opts.Metrics,
		maxBreakers: opts.MaxBreakers,
		maxPermits:  int64(opts.MaxPermits),
		maxPending:  opts.MaxPendingReports,
		interval:    opts.RecoveryInterval,
		reg:         map[string]*entry{},
		done:        make(chan struct{}),
	}
	s.life, s.stop = context.WithCancel(context.Background())
	if s.now == nil {
		s.now = time.Now
	}
	if s.entropy == nil {
		s.entropy = rand.Reader
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	if s.maxBreakers <= 0 {
		s.maxBreakers = DefaultMaxBreakers
	}
	if s.maxPermits <= 0 {
		s.maxPermits = DefaultMaxPermits
	}
	if s.maxPending <= 0 {
		s.maxPending = DefaultMaxPendingReports
	}
	if s.interval <= 0 {
		s.interval = DefaultRecoveryInterval
	}
	if _, err := io.ReadFull(s.entropy, s.reporter[:]); err != nil {
		s.stop()
		return nil, fmt.Errorf("breaker: reporter id: %w", err)
	}
	for name, p := range opts.Policies {
		if err := p.Validate(); err != nil {
			s.stop()
			return nil, fmt.Errorf("breaker %q: %w", name, err)
		}
		if name == DefaultName {
			s.def = p.WithDefaults()
			continue
		}
		s.policies[name] = p.WithDefaults()
	}
	if len(s.policies) > s.maxBreakers {
		s.maxBreakers = len(s.policies)
	}
	now := s.now()
	for name, p := range s.policies {
		s.reg[name] = s.newEntry(name, p, true, now)
	}
	if s.shared == nil {
		close(s.done)
	} else {
		go s.recoveryLoop()
	}
	return s, nil
}

// Close stops the recovery goroutine. Reports still pending for an
// unreachable store are dropped (their permits expire as failures).
func (s *Service) Close() {
	s.stop()
	<-s.done
}

// Reporter returns this process's reporter id.
func (s *Service) Reporter() Reporter { return s.reporter }

// PolicyFor returns the policy of name and whether the config declares it.
func (s *Service) PolicyFor(name string) (Policy, bool) {
	if p, ok := s.policies[name]; ok {
		return p, true
	}
	return s.def, false
}

// runsLocal reports whether p runs in this process's memory.
func (s *Service) runsLocal(p Policy) bool { return p.Scope != Shared || s.shared == nil }

func (s *Service) newEntry(name string, p Policy, declared bool, now time.Time) *entry {
	e := &entry{name: name, policy: p, declared: declared}
	if s.runsLocal(p) {
		e.local = newCell(now, &s.outstanding)
	}
	e.lastUsed.Store(now.UnixNano())
	return e
}

func (s *Service) lookup(name string) *entry {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.reg[name]
}

// entry returns name's entry, creating it within the bound.
func (s *Service) entry(name string) (*entry, error) {
	now := s.now()
	if e := s.lookup(name); e != nil {
		e.lastUsed.Store(now.UnixNano())
		return e, nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if e := s.reg[name]; e != nil {
		return e, nil
	}
	if len(s.reg) >= s.maxBreakers && !s.evictLocked(now) {
		return nil, fmt.Errorf("%w: this sidecar already tracks %d breakers", ErrLimitExceeded, s.maxBreakers)
	}
	e := s.newEntry(name, s.def, false, now)
	s.reg[name] = e
	return e, nil
}

// evictLocked forgets every undeclared breaker indistinguishable from a
// fresh one and reports whether it found any.
func (s *Service) evictLocked(now time.Time) bool {
	if now.Sub(s.lastScan) < evictScanInterval && !s.lastScan.IsZero() {
		return false
	}
	n := 0
	for name, e := range s.reg {
		if !e.declared && s.evictable(e, now) {
			delete(s.reg, name)
			e.mu.Lock()
			e.forgotten = true
			s.metrics.ForgetBreaker(name)
			e.mu.Unlock()
			n++
		}
	}
	if n == 0 {
		s.lastScan = now
		return false
	}
	return true
}

func (s *Service) evictable(e *entry, now time.Time) bool {
	if e.local != nil {
		return e.local.idle(now, e.policy.local())
	}
	if now.Sub(time.Unix(0, e.lastUsed.Load())) < idleSharedEviction {
		return false
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.fallback == nil || e.fallback.idle(now, e.policy.local())
}

func (s *Service) nonce() (Nonce, error) {
	var n Nonce
	if _, err := io.ReadFull(s.entropy, n[:]); err != nil {
		return n, fmt.Errorf("breaker: nonce: %w", err)
	}
	return n, nil
}

// Allow asks whether a call to breaker name may go ahead; ttl (> 0) is how
// long the permit waits for its report. A refused call is not an error.
// Errors: ErrLimitExceeded, the context's, or (rarely) a store error that
// is not unavailability; an unreachable store switches shared breakers to
// the local fallback instead.
func (s *Service) Allow(ctx context.Context, name string, ttl time.Duration) (Decision, error) {
	e, err := s.entry(name)
	if err != nil {
		return Decision{}, err
	}
	nonce, err := s.nonce()
	if err != nil {
		return Decision{}, err
	}
	pm := Permit{Breaker: name, Reporter: s.reporter, Nonce: nonce}
	args := AllowArgs{Reporter: s.reporter, Nonce: nonce, TTL: ttl}
	var a Allowance
	if e.local != nil {
		if err := ctx.Err(); err != nil {
			return Decision{}, err
		}
		a, err = e.local.allow(s.now(), e.policy.local(), args, s.maxPermits)
	} else {
		pm.Shared = true
		a, pm.Fallback, err = s.sharedAllow(ctx, e, args)
	}
	if err != nil {
		return Decision{}, err
	}
	s.observe(e, a.State)
	d := Decision{Allowed: a.Allowed, State: a.State, RetryAfter: a.RetryAfter, Degraded: pm.Fallback}
	if a.Allowed {
		pm.Generation, pm.Issued = a.Generation, a.Issued
		d.PermitID = pm.String()
		d.PermitExpire = s.now().Add(ttl)
		if err := ctx.Err(); err != nil {
			// The caller is gone: its grant would only expire as a
			// failure (and hold a probe's slot until then).
			s.Release(ctx, d.PermitID)
			return Decision{}, err
		}
	}
	return d, nil
}

// Release hands back the permit permitID of a grant that cannot reach its
// caller (it is gone, or the reply could not be sent), counting nothing:
// a half-open probe's slot is free again at once, instead of when the
// permit expires as a failure. It runs even when ctx is done (bounded by
// releaseTimeout); for a shared breaker whose store does not answer it is
// kept for replay. A permit already reported, released or expired is left
// alone.
func (s *Service) Release(ctx context.Context, permitID string) {
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), releaseTimeout)
	defer cancel()
	if _, err := s.Report(rctx, permitID, Ignored, -1); err != nil && !errors.Is(err, ErrPermitUnknown) {
		s.log.Warn("breaker: handing back a permit failed; it will expire as a failure", "error", err)
	}
}

// releaseUnknown hands back whatever the shared store's Allow with args
// granted, when its outcome is unknown (an error after the request may
// have been sent). The release marks the permit so that an Allow still on
// its way grants nothing. When the store is unreachable (unavailable) the
// release is kept for replay straight away.
func (s *Service) releaseUnknown(ctx context.Context, e *entry, args AllowArgs, unavailable bool) {
	r := pendingReport{name: e.name, p: e.policy, release: true, args: args}
	if !unavailable {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), releaseTimeout)
		_, err := s.shared.Release(rctx, e.name, e.policy, args)
		cancel()
		if err == nil {
			return
		}
		s.log.Warn("breaker: handing back the grant of a failed AllowCall failed; kept for replay", "breaker", e.name, "error", err)
	}
	s.keep(r)
}

func (s *Service) sharedAllow(ctx context.Context, e *entry, args AllowArgs) (Allowance, bool, error) {
	if !s.down.Load() {
		a, err := s.shared.Allow(ctx, e.name, e.policy, args)
		if err != nil && !errors.Is(err, ErrLimitExceeded) {
			// The script may have run and granted a permit nobody will
			// get: hand it back.
			s.releaseUnknown(ctx, e, args, errors.Is(err, store.ErrUnavailable))
		}
		if err == nil {
			e.mu.Lock()
			if a.State == Open && !a.Allowed {
				e.lastOpenUntil = s.now().Add(a.RetryAfter)
			} else {
				e.lastOpenUntil = time.Time{}
			}
			e.mu.Unlock()
			return a, false, nil
		}
		if !errors.Is(err, store.ErrUnavailable) {
			return Allowance{}, false, err
		}
		s.markDown(err)
	}
	a, err := s.fallbackCell(e).allow(s.now(), e.policy.local(), args, s.maxPermits)
	return a, true, err
}

// fallbackCell returns e's local fallback, made on first use from the
// state last seen in the store: open until the same time, else closed.
func (s *Service) fallbackCell(e *entry) *cell {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.fallback == nil {
		now := s.now()
		e.fallback = newCell(now, &s.outstanding)
		if e.lastOpenUntil.After(now) {
			e.fallback.m.seedOpen(ms(e.lastOpenUntil))
		}
	}
	return e.fallback
}

// Report records the outcome of the call permitID allowed. dur < 0 means
// unknown (the time since Allow is used). Errors: ErrPermitMalformed,
// ErrPermitUnknown, the context's.
func (s *Service) Report(ctx context.Context, permitID string, o Outcome, dur time.Duration) (ReportResult, error) {
	pm, err := ParsePermit(permitID)
	if err != nil {
		return ReportResult{}, err
	}
	if err := ctx.Err(); err != nil {
		return ReportResult{}, err
	}
	p, _ := s.PolicyFor(pm.Breaker)
	e := s.lookup(pm.Breaker)
	switch {
	case pm.Fallback:
		var c *cell
		if e != nil {
			e.mu.Lock()
			c = e.fallback
			e.mu.Unlock()
		}
		if c == nil {
			// The fallback ended when the store came back: stale.
			return ReportResult{State: s.lastState(e), Degraded: true}, nil
		}
		rec, err := c.report(s.now(), p.local(), pm.ref(), o, dur)
		s.observe(e, rec.State)
		return ReportResult{State: rec.State, Counted: rec.Counted, Degraded: true}, err
	case pm.Shared:
		if s.shared == nil {
			return ReportResult{}, ErrPermitUnknown
		}
		if !s.down.Load() {
			rec, err := s.shared.Report(ctx, pm.Breaker, p, pm.ref(), o, dur)
			if err == nil || errors.Is(err, ErrPermitUnknown) {
				if e != nil {
					s.observe(e, rec.State)
				}
				return ReportResult{State: rec.State, Counted: rec.Counted}, err
			}
			if !errors.Is(err, store.ErrUnavailable) {
				return ReportResult{}, err
			}
			s.markDown(err)
		}
		s.keep(pendingReport{name: pm.Breaker, p: p, ref: pm.ref(), o: o, dur: dur})
		return ReportResult{State: s.lastState(e), Degraded: true}, nil
	default:
		if e == nil || e.local == nil {
			return ReportResult{State: Closed}, ErrPermitUnknown
		}
		rec, err := e.local.report(s.now(), p.local(), pm.ref(), o, dur)
		s.observe(e, rec.State)
		return ReportResult{State: rec.State, Counted: rec.Counted}, err
	}
}

func (s *Service) lastState(e *entry) State {
	if e == nil || e.state.Load() == 0 {
		return Closed
	}
	return State(e.state.Load())
}

// Get describes breaker name without creating it.
func (s *Service) Get(ctx context.Context, name string) (Info, error) {
	if err := ctx.Err(); err != nil {
		return Info{}, err
	}
	p, declared := s.PolicyFor(name)
	e := s.lookup(name)
	info := Info{Name: name, Policy: p, Declared: declared}
	var snap Snapshot
	now := s.now()
	switch {
	case s.runsLocal(p) && e == nil:
		snap = pristine(now)
	case s.runsLocal(p):
		snap = e.local.snapshot(now, p.local())
	default:
		var err error
		snap, info.Degraded, err = s.sharedView(ctx, name, p, e, false)
		if err != nil {
			return Info{}, err
		}
	}
	return s.info(info, snap, now), nil
}

// sharedView reads a shared breaker from the store, or from its local
// fallback while the store is unreachable. reset forces it closed first
// (and fails while the store is unreachable: a reset must reach the
// fleet).
func (s *Service) sharedView(ctx context.Context, name string, p Policy, e *entry, reset bool) (Snapshot, bool, error) {
	if !s.down.Load() {
		var snap Snapshot
		var err error
		if reset {
			snap, err = s.shared.Reset(ctx, name, p)
		} else {
			snap, err = s.shared.Get(ctx, name, p)
		}
		if err == nil {
			return snap, false, nil
		}
		if !errors.Is(err, store.ErrUnavailable) {
			return Snapshot{}, false, err
		}
		s.markDown(err)
	}
	if reset {
		return Snapshot{}, true, fmt.Errorf("breaker: reset of shared breaker %q: %w", name, store.ErrUnavailable)
	}
	if e == nil {
		return pristine(s.now()), true, nil
	}
	return s.fallbackCell(e).snapshot(s.now(), p.local()), true, nil
}

func (s *Service) info(info Info, snap Snapshot, now time.Time) Info {
	info.State, info.Counts = snap.State, snap.Counts
	if !snap.OpenUntil.IsZero() {
		// The store's clock may differ from ours: carry the remaining time.
		info.NextTransition = now.Add(snap.OpenUntil.Sub(snap.Now))
	}
	return info
}

// Reset forces breaker name closed with empty counts, everywhere it lives
// (for a shared breaker: in the store, and this process's fallback), and
// logs it with reason.
func (s *Service) Reset(ctx context.Context, name, reason string) (Info, error) {
	if err := ctx.Err(); err != nil {
		return Info{}, err
	}
	p, declared := s.PolicyFor(name)
	e := s.lookup(name)
	info := Info{Name: name, Policy: p, Declared: declared}
	now := s.now()
	var snap Snapshot
	switch {
	case s.runsLocal(p) && e == nil:
		snap = pristine(now)
	case s.runsLocal(p):
		snap = e.local.reset(now, p.local())
	default:
		var err error
		if snap, _, err = s.sharedView(ctx, name, p, e, true); err != nil {
			return Info{}, err
		}
		if e != nil {
			e.mu.Lock()
			if e.fallback != nil {
				e.fallback.discard()
				e.fallback = nil
			}
			e.lastOpenUntil = time.Time{}
			e.mu.Unlock()
		}
	}
	if e != nil {
		s.observe(e, snap.State)
	}
	s.log.WarnContext(ctx, "breaker reset by an operator: forced closed", "breaker", name, "scope", p.Scope.String(), "reason", reason)
	return s.info(info, snap, now), nil
}

// List returns up to limit breakers this process tracks whose names sort
// after `after`, by name, and whether more follow.
func (s *Service) List(ctx context.Context, after string, limit int) ([]Info, bool, error) {
	s.mu.RLock()
	names := make([]string, 0, len(s.reg))
	for name := range s.reg {
		if name > after {
			names = append(names, name)
		}
	}
	s.mu.RUnlock()
	slices.Sort(names)
	more := len(names) > limit
	if more {
		names = names[:limit]
	}
	out := make([]Info, 0, len(names))
	for _, name := range names {
		info, err := s.Get(ctx, name)
		if err != nil {
			return nil, false, err
		}
		out = append(out, info)
	}
	return out, more, nil
}

// observe records the state seen for e: logs and metrics on a change.
func (s *Service) observe(e *entry, st State) {
	if e == nil || st == 0 {
		return
	}
	old := State(e.state.Swap(int32(st)))
	if old == st {
		return
	}
	// first sight of a closed breaker: nothing changed
	changed := old != 0 || st != Closed
	if s.metrics != nil {
		// Under e.mu, so that a breaker being forgotten (evictLocked)
		// does not get its series back from a call still in flight.
		e.mu.Lock()
		if !e.forgotten {
			s.metrics.BreakerState.WithLabelValues(e.name).Set(metricState(st))
			if changed {
				s.metrics.BreakerTransitions.WithLabelValues(e.name, st.String()).Inc()
			}
		}
		e.mu.Unlock()
	}
	if !changed {
		return
	}
	from := old.String()
	if old == 0 {
		from = "unseen"
	}
	s.log.Info("breaker state changed", "breaker", e.name, "from", from, "to", st.String(), "scope", e.policy.Scope.String())
}

// metricState is the gauge value of resilience_breaker_state.
func metricState(st State) float64 {
	switch st {
	case HalfOpen:
		return 1
	case Open:
		return 2
	}
	return 0
}

// markDown switches shared breakers to the local fallback.
func (s *Service) markDown(err error) {
	if s.down.CompareAndSwap(false, true) {
		s.dmu.Lock()
		s.downSince = s.now()
		s.dmu.Unlock()
		s.log.Error("shared breakers DEGRADED: the store is unreachable, each sidecar now decides alone with a local breaker; reports are kept for replay",
			"error", err)
	}
}

// keep queues a report for replay when the store is back.
func (s *Service) keep(r pendingReport) {
	s.dmu.Lock()
	defer s.dmu.Unlock()
	if len(s.pending) >= s.maxPending {
		s.pending = s.pending[1:]
		s.dropped++
	}
	s.pending = append(s.pending, r)
}

// recoveryLoop probes an unreachable store and replays kept reports. It
// is the Service's one goroutine; Close ends it.
func (s *Service) recoveryLoop() {
	defer close(s.done)
	t := time.NewTicker(s.interval)
	defer t.Stop()
	for {
		select {
		case <-s.life.Done():
			return
		case <-t.C:
		}
		s.recover(s.life)
	}
}

// recover replays kept reports and, once the store answers and nothing is
// left to replay, ends the degraded mode: fallbacks are dropped and shared
// breakers are decided by the store again.
func (s *Service) recover(ctx context.Context) {
	s.dmu.Lock()
	idle := !s.down.Load() && len(s.pending) == 0
	s.dmu.Unlock()
	if idle {
		return
	}
	if s.down.Load() {
		if err := s.shared.Ping(ctx); err != nil {
			return
		}
	}
	replayed := 0
	for {
		s.dmu.Lock()
		if len(s.pending) == 0 {
			if s.down.Load() {
				s.endDegradedLocked(replayed)
			}
			s.dmu.Unlock()
			return
		}
		r := s.pending[0]
		s.dmu.Unlock()
		var err error
		if r.release {
			_, err = s.shared.Release(ctx, r.name, r.p, r.args)
		} else {
			_, err = s.shared.Report(ctx, r.name, r.p, r.ref, r.o, r.dur)
		}
		if errors.Is(err, store.ErrUnavailable) || ctx.Err() != nil {
			return
		}
		s.dmu.Lock()
		if len(s.pending) > 0 && s.pending[0] == r {
			s.pending = s.pending[1:]
		}
		s.dmu.Unlock()
		replayed++
	}
}

func (s *Service) endDegradedLocked(replayed int) {
	s.down.Store(false)
	s.log.Warn("shared breakers recovered: the store answers again and decides for the fleet",
		"degraded_for", s.now().Sub(s.downSince).String(), "reports_replayed", replayed, "reports_dropped", s.dropped)
	s.dropped = 0
	s.mu.RLock()
	defer s.mu.RUnlock()
	for _, e := range s.reg {
		e.mu.Lock()
		if e.fallback != nil {
			e.fallback.discard()
			e.fallback = nil
		}
		e.mu.Unlock()
	}
}

// Degraded reports whether shared breakers run on local fallbacks now.
func (s *Service) Degraded() bool { return s.down.Load() }
