// Package admission holds the sidecar's admission limits: how many unary
// calls run at once, how many callers wait (for a lock or an idempotency
// key), how many Hold* sessions and Subscribe streams are open, and how
// many upstream response bytes are held in memory at once. A call past a
// limit is refused before it does anything (a *LimitError, which the API
// maps to RESOURCE_EXHAUSTED/LIMIT_EXCEEDED); what was admitted is never
// disturbed by a later refusal.
//
// Each limit is a counter checked and bumped atomically: no caller queues
// for a slot, so a refusal costs about as little as the call it refuses.
package admission

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/seed-a88e5317/resilience-sidecar/internal/metrics"
)

// The limits' names: the settings that set them, the ErrorInfo metadata
// "limit" of a refusal and the limit label of
// resilience_limit_rejections_total.
const (
	Calls         = "max_concurrent_calls"
	Waiters       = "max_waiters"
	Sessions      = "max_sessions"
	Subscriptions = "max_subscriptions"
	ResponseBytes = "max_response_bytes_in_flight"
)

// Names are every limit's name, in the order the README lists them.
var Names = []string{Calls, Waiters, Sessions, Subscriptions, ResponseBytes}

// ErrLimitExceeded matches every *LimitError.
var ErrLimitExceeded = errors.New("admission: limit exceeded")

// LimitError is a refusal: admitting the call would pass Limit.
type LimitError struct {
	Limit string // one of Names
	Max   int64  // the limit's value
	// RetryAfter is a hint for the retry: how soon a slot is likely free.
	RetryAfter time.Duration
}

func (e *LimitError) Error() string {
	return fmt.Sprintf("admission: %s (%d) reached: the sidecar is at capacity, retry later", e.Limit, e.Max)
}

// Is matches ErrLimitExceeded.
func (e *LimitError) Is(target error) bool { return target == ErrLimitExceeded }

// Retry hints: calls and response bytes free up within a call's time,
// waits and streams take longer.
const (
	shortRetry = 100 * time.Millisecond
	longRetry  = time.Second
)

// Config are the limits' values; each must be positive.
type Config struct {
	Calls, Waiters, Sessions, Subscriptions int
	ResponseBytes                           int64
}

// Limits are the sidecar's admission limits. A nil *Limits admits
// everything. It is safe for concurrent use.
type Limits struct {
	calls, waiters, sessions, subscriptions, bytes gate
	metrics                                        *metrics.Metrics
}

// New returns limits with cfg's values, counting refusals in m (nil: not counted).
func New(cfg Config, m *metrics.Metrics) *Limits {
	m.InitLimits(Names...)
	return &Limits{
		calls:         gate{name: Calls, max: int64(cfg.Calls), retry: shortRetry},
		waiters:       gate{name: Waiters, max: int64(cfg.Waiters), retry: longRetry},
		sessions:      gate{name: Sessions, max: int64(cfg.Sessions), retry: longRetry},
		subscriptions: gate{name: Subscriptions, max: int64(cfg.Subscriptions), retry: longRetry},
		bytes:         gate{name: ResponseBytes, max: cfg.ResponseBytes, retry: shortRetry},
		metrics:       m,
	}
}

// gate counts what is admitted under one limit.
type gate struct {
	name  string
	max   int64
	retry time.Duration
	n     atomic.Int64
}

// take admits n more units if that stays within max. It never lets the
// count pass max, even transiently, so a refusal is never spurious.
func (g *gate) take(n int64) bool {
	for {
		cur := g.n.Load()
		if cur+n > g.max {
			return false
		}
		if g.n.CompareAndSwap(cur, cur+n) {
			return true
		}
	}
}

func (g *gate) give(n int64) { g.n.Add(-n) }

// refuse counts a refusal by g and returns its error.
func (l *Limits) refuse(g *gate) error {
	l.metrics.ObserveLimitRejection(g.name)
	return &LimitError{Limit: g.name, Max: g.max, RetryAfter: g.retry}
}

// InUse reports how much of limit name is taken (for tests and the bench).
func (l *Limits) InUse(name string) int64 {
	for _, g := range []*gate{&l.calls, &l.waiters, &l.sessions, &l.subscriptions, &l.bytes} {
		if g.name == name {
			return g.n.Load()
		}
	}
	return 0
}

// ticketKey is the context key of a *Ticket.
type ticketKey struct{}

// Ticket is one admitted call or stream, carried in its context: waits
// and response bytes taken under it are found there.
type Ticket struct {
	l     *Limits
	slot  atomic.Bool  // holds a max_concurrent_calls slot
	bytes atomic.Int64 // response bytes released at End
	end   *gate        // the stream gate released at End; nil for a unary call
}

// BeginCall admits a unary call under max_concurrent_calls. The returned
// context carries the ticket; End must be called when the call returns.
func (l *Limits) BeginCall(ctx context.Context) (context.Context, *Ticket, error) {
	if !l.calls.take(1) {
		return ctx, nil, l.refuse(&l.calls)
	}
	t := &Ticket{l: l}
	t.slot.Store(true)
	return context.WithValue(ctx, ticketKey{}, t), t, nil
}

// BeginSession admits a Hold* session under max_sessions; End it when the
// stream ends.
func (l *Limits) BeginSession(ctx context.Context) (context.Context, *Ticket, error) {
	return l.beginStream(ctx, &l.sessions)
}

// BeginSubscription admits a Subscribe stream under max_subscriptions;
// End it when the stream ends.
func (l *Limits) BeginSubscription(ctx context.Context) (context.Context, *Ticket, error) {
	return l.beginStream(ctx, &l.subscriptions)
}

func (l *Limits) beginStream(ctx context.Context, g *gate) (context.Context, *Ticket, error) {
	if !g.take(1) {
		return ctx, nil, l.refuse(g)
	}
	t := &Ticket{l: l, end: g}
	return context.WithValue(ctx, ticketKey{}, t), t, nil
}

// End gives back everything t holds. Call it once, when the call or
// stream has returned.
func (t *Ticket) End() {
	if t.slot.Swap(false) {
		t.l.calls.give(1)
	}
	if t.end != nil {
		t.end.give(1)
	}
	if n := t.bytes.Swap(0); n > 0 {
		t.l.bytes.give(n)
	}
}

// TakeBytes hands the response bytes t holds to the caller, who must
// Release them to the Budget (when the response is written): End no
// longer does.
func (t *Ticket) TakeBytes() int64 { return t.bytes.Swap(0) }

func ticketFrom(ctx context.Context) *Ticket {
	t, _ := ctx.Value(ticketKey{}).(*Ticket)
	return t
}

// BeginWait admits a caller about to wait (for a lock, or for an
// idempotency key in progress) under max_waiters, when ctx carries a
// ticket; without one (no limits configured, or a call made inside the
// sidecar) it admits. A waiting unary call gives its max_concurrent_calls
// slot back: waits are bounded by max_waiters, and the call keeps running
// when its wait ends. done must be called when the wait ends.
func BeginWait(ctx context.Context) (done func(), err error) {
	t := ticketFrom(ctx)
	if t == nil {
		return func() {}, nil
	}
	l := t.l
	if !l.waiters.take(1) {
		return nil, l.refuse(&l.waiters)
	}
	if t.slot.Swap(false) {
		l.calls.give(1)
	}
	var once atomic.Bool
	return func() {
		if once.CompareAndSwap(false, true) {
			l.waiters.give(1)
		}
	}, nil
}

// Budget is the byte budget of upstream responses held in memory,
// shared by every call (max_response_bytes_in_flight). A nil *Budget
// admits everything.
type Budget struct{ l *Limits }

// Budget returns l's response byte budget (nil for nil l).
func (l *Limits) Budget() *Budget {
	if l == nil {
		return nil
	}
	return &Budget{l: l}
}

// Reserve takes n bytes of the budget, or refuses with a *LimitError
// when they are not free. Release or Keep them.
func (b *Budget) Reserve(n int64) error {
	if b == nil || n <= 0 {
		return nil
	}
	if !b.l.bytes.take(n) {
		return b.l.refuse(&b.l.bytes)
	}
	return nil
}

// Release gives back n reserved bytes.
func (b *Budget) Release(n int64) {
	if b == nil || n <= 0 {
		return
	}
	b.l.bytes.give(n)
}

// Keep hands n reserved bytes to the call of ctx, which gives them back
// when it ends (the response is in memory until then). It reports false
// when ctx carries no call of b's limits: the caller then releases them
// itself when it drops the bytes.
func (b *Budget) Keep(ctx context.Context, n int64) bool {
	if b == nil {
		return true
	}
	t := ticketFrom(ctx)
	if t == nil || t.l != b.l {
		return false
	}
	t.bytes.Add(n)
	return true
}
