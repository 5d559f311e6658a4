package ratelimit

import (
	"fmt"
	"math"
	"slices"
	"time"

	"github.com/seed-a88e5317/resilience-sidecar/internal/config/field"
)

// Algorithm is how a limiter counts.
type Algorithm string

// The algorithms. See docs/ratelimits.md for what each guarantees.
const (
	// GCRA is a token bucket: Rate tokens per Period, at most Burst held.
	// In any interval of length t it admits at most Burst + Rate*t/Period.
	GCRA Algorithm = "gcra"
	// SlidingWindow admits at most Limit in any window of length Window
	// (a log of the admitted costs: no 2x burst at a window edge).
	SlidingWindow Algorithm = "sliding_window"
	// FixedWindow admits at most Limit per window aligned to multiples of
	// Window since the Unix epoch (envoyproxy/ratelimit's counting): up
	// to 2*Limit across a window edge.
	FixedWindow Algorithm = "fixed_window"
)

// UnmarshalText reads an algorithm as the config file writes it.
func (a *Algorithm) UnmarshalText(b []byte) error {
	switch x := Algorithm(b); x {
	case GCRA, SlidingWindow, FixedWindow:
		*a = x
		return nil
	}
	return fmt.Errorf("must be one of gcra, sliding_window, fixed_window, got %s", field.Quote(string(b)))
}

// StoreDown is what a limiter answers while the shared store (Redis) is
// unreachable.
type StoreDown string

// The store-down modes.
const (
	// FailOpen allows every call (degraded), like envoyproxy/ratelimit.
	FailOpen StoreDown = "fail_open"
	// FailClosed refuses every call (degraded), retry_after 1s.
	FailClosed StoreDown = "fail_closed"
	// Local enforces the limiter in this sidecar's memory with its
	// capacity divided by ExpectedSidecars (Limiter.Local).
	Local StoreDown = "local"
)

// UnmarshalText reads a store-down mode as the config file writes it.
func (s *StoreDown) UnmarshalText(b []byte) error {
	switch x := StoreDown(b); x {
	case FailOpen, FailClosed, Local:
		*s = x
		return nil
	}
	return fmt.Errorf("must be one of fail_open, fail_closed, local, got %s", field.Quote(string(b)))
}

// Bounds of a limiter's settings.
const (
	MaxRate             = 1e9
	MinPeriod           = time.Millisecond
	MaxPeriod           = 7 * 24 * time.Hour
	MaxBurst            = int64(1e9)
	MaxFixedLimit       = int64(1e9)
	MaxSlidingLimit     = int64(100000) // a sliding window keeps one entry per admitted take
	MaxExpectedSidecars = 10000
	DefaultPeriod       = time.Second
	DefaultStoreDown    = FailOpen
)

// Limiter is one declared limiter (an entry of the config file's
// `ratelimits` section). Its zero fields mean: algorithm gcra, period 1s,
// burst ceil(rate) (one period's worth, at least 1), max_cost the
// capacity, store_down fail_open, expected_sidecars 1 (WithDefaults).
type Limiter struct {
	// Algorithm is gcra, sliding_window or fixed_window.
	Algorithm Algorithm `yaml:"algorithm"`
	// Rate is the tokens GCRA adds per Period (required for gcra, > 0).
	Rate float64 `yaml:"rate"`
	// Period is GCRA's rate unit (1ms-7d).
	Period time.Duration `yaml:"period"`
	// Burst is GCRA's capacity: the most taken at once from a full bucket.
	Burst int64 `yaml:"burst"`
	// Limit is the windows' capacity per Window (required for them).
	Limit int64 `yaml:"limit"`
	// Window is the windows' length (required for them, 1ms-7d).
	Window time.Duration `yaml:"window"`
	// MaxCost bounds the cost of one Take (1 to the capacity).
	MaxCost int64 `yaml:"max_cost"`
	// MaxRate, MaxBurst (gcra) and MaxLimit (windows) bound what a Take
	// may ask for instead of Rate, Burst and Limit (Override); each
	// defaults to the declared value, so a request may only lower it.
	MaxRate  float64 `yaml:"max_rate"`
	MaxBurst int64   `yaml:"max_burst"`
	MaxLimit int64   `yaml:"max_limit"`
	// StoreDown is what to answer while the store is unreachable.
	StoreDown StoreDown `yaml:"store_down"`
	// ExpectedSidecars divides the capacity in store_down local.
	ExpectedSidecars int `yaml:"expected_sidecars"`
	// Lease, when its Batch is set, lets a sidecar take a batch of tokens
	// in one store call and answer from it locally.
	Lease Lease `yaml:"lease"`
}

// Lease is a limiter's token leasing: a Take that goes to the store takes
// up to Batch (its own cost included) and keeps the rest in this sidecar
// for later Takes of the key, answered without a round trip, for at most
// TTL. The store records every lease's unused part until it is used up or
// its TTL ends, and grants no more than Tolerance unused tokens per key
// across all sidecars: in any interval, at most Tolerance more than the
// algorithm's own bound is admitted. Unused tokens are not given back;
// they lapse with their lease after TTL. The zero Lease is off.
type Lease struct {
	// Batch is the most one store call takes (2 to the capacity).
	Batch int64 `yaml:"batch"`
	// Tolerance is the most leased, unused tokens of one key across all
	// sidecars (1 to the capacity; default (Batch-1)*ExpectedSidecars,
	// capped to the capacity).
	Tolerance int64 `yaml:"tolerance"`
	// TTL is how long a sidecar may answer from a lease (1ms-1m, default
	// DefaultLeaseTTL).
	TTL time.Duration `yaml:"ttl"`
}

// Bounds and defaults of a limiter's lease.
const (
	DefaultLeaseTTL = time.Second
	MaxLeaseTTL     = time.Minute
)

// On reports whether leasing is on.
func (l Lease) On() bool { return l.Batch > 0 }

// WithDefaults returns l with its zero (or negative) fields defaulted.
func (l Limiter) WithDefaults() Limiter {
	if l.Algorithm == "" {
		l.Algorithm = GCRA
	}
	if l.Algorithm == GCRA {
		if l.Period <= 0 {
			l.Period = DefaultPeriod
		}
		if l.Burst <= 0 && l.Rate > 0 && l.Rate <= MaxRate {
			l.Burst = max(1, int64(math.Ceil(l.Rate)))
		}
		if l.MaxRate <= 0 {
			l.MaxRate = l.Rate
		}
		if l.MaxBurst <= 0 {
			l.MaxBurst = l.Burst
		}
	} else if l.MaxLimit <= 0 {
		l.MaxLimit = l.Limit
	}
	if l.MaxCost <= 0 {
		l.MaxCost = l.Capacity()
	}
	if l.StoreDown == "" {
		l.StoreDown = DefaultStoreDown
	}
	if l.ExpectedSidecars <= 0 {
		l.ExpectedSidecars = 1
	}
	if l.Lease.On() {
		if l.Lease.TTL <= 0 {
			l.Lease.TTL = DefaultLeaseTTL
		}
		if l.Lease.Tolerance <= 0 && l.Lease.Batch > 1 {
			l.Lease.Tolerance = min((l.Lease.Batch-1)*int64(l.ExpectedSidecars), max(l.Capacity(), 1))
		}
	}
	return l
}

// Capacity is the most one key holds: Burst for gcra, else Limit.
func (l Limiter) Capacity() int64 {
	if l.Algorithm == GCRA || l.Algorithm == "" {
		return l.Burst
	}
	return l.Limit
}

// Local is the limiter one sidecar enforces in store_down local: the rate,
// burst or limit divided by ExpectedSidecars, each at least 1 (burst and
// limit rounded down), MaxCost capped to the new capacity, no lease.
func (l Limiter) Local() Limiter {
	n := int64(max(l.ExpectedSidecars, 1))
	l.Rate /= float64(n)
	if l.Burst > 0 {
		l.Burst = max(1, l.Burst/n)
	}
	if l.Limit > 0 {
		l.Limit = max(1, l.Limit/n)
	}
	l.MaxCost = min(l.MaxCost, l.Capacity())
	l.MaxRate, l.MaxBurst, l.MaxLimit = min(l.MaxRate, l.Rate), min(l.MaxBurst, l.Burst), min(l.MaxLimit, l.Limit)
	l.Lease = Lease{} // the local count is in this sidecar: nothing to lease
	return l
}

// Override is what one Take asks for instead of the declared rate, burst
// or limit; zero fields keep the declared value.
type Override struct {
	Rate  float64
	Burst int64
	Limit int64
}

// With returns l with o applied, or the field of o that l does not allow:
// "rate" or "burst" on a window, "limit" on gcra, or a value outside
// (0, max_rate], [1, max_burst], [1, max_limit].
func (l Limiter) With(o Override) (Limiter, error) {
	gcra := l.Algorithm == GCRA
	switch {
	case o.Rate != 0 && !gcra:
		return l, field.Errorf("rate", "%s has no rate (it has limit)", l.Algorithm)
	case o.Burst != 0 && !gcra:
		return l, field.Errorf("burst", "%s has no burst (it has limit)", l.Algorithm)
	case o.Limit != 0 && gcra:
		return l, field.Errorf("limit", "gcra has no limit (it has rate and burst)")
	case o.Rate != 0 && !(o.Rate > 0 && o.Rate <= l.MaxRate):
		return l, field.Errorf("rate", "must be in (0, %v] (the limiter's max_rate), got %v", l.MaxRate, o.Rate)
	case o.Burst != 0 && (o.Burst < 1 || o.Burst > l.MaxBurst):
		return l, field.Errorf("burst", "must be between 1 and %d (the limiter's max_burst), got %d", l.MaxBurst, o.Burst)
	case o.Limit != 0 && (o.Limit < 1 || o.Limit > l.MaxLimit):
		return l, field.Errorf("limit", "must be between 1 and %d (the limiter's max_limit), got %d", l.MaxLimit, o.Limit)
	}
	if o.Rate != 0 {
		l.Rate = o.Rate
	}
	if o.Burst != 0 {
		l.Burst = o.Burst
	}
	if o.Limit != 0 {
		l.Limit = o.Limit
	}
	return l, nil
}

// Validate reports the first problem of l as a *field.Error naming the
// setting. l is checked as it is (validate l.WithDefaults() for a limiter
// the file declared).
func (l Limiter) Validate() error {
	switch l.Algorithm {
	case GCRA:
		switch {
		case math.IsNaN(l.Rate) || l.Rate <= 0 || l.Rate > MaxRate:
			return field.Errorf("rate", "must be a number in (0, %g] (tokens per period), got %v", MaxRate, l.Rate)
		case l.Period < MinPeriod || l.Period > MaxPeriod:
			return field.Errorf("period", "must be between %v and %v, got %v", MinPeriod, MaxPeriod, l.Period)
		case l.Burst < 1 || l.Burst > MaxBurst:
			return field.Errorf("burst", "must be between 1 and %d, got %d", MaxBurst, l.Burst)
		case l.Limit != 0:
			return field.Errorf("limit", "is for sliding_window and fixed_window; gcra has rate, period and burst")
		case l.Window != 0:
			return field.Errorf("window", "is for sliding_window and fixed_window; gcra has rate, period and burst")
		case l.Period/time.Microsecond < 1 || float64(l.Period/time.Microsecond)/l.Rate < 1e-3:
			return field.Errorf("rate", "%v per %v is more than one token per nanosecond", l.Rate, l.Period)
		case math.IsNaN(l.MaxRate) || l.MaxRate < l.Rate || l.MaxRate > MaxRate || float64(l.Period/time.Microsecond)/l.MaxRate < 1e-3:
			return field.Errorf("max_rate", "must be between the rate %v and %g (and at most one token per nanosecond), got %v", l.Rate, MaxRate, l.MaxRate)
		case l.MaxBurst < l.Burst || l.MaxBurst > MaxBurst:
			return field.Errorf("max_burst", "must be between the burst %d and %d, got %d", l.Burst, MaxBurst, l.MaxBurst)
		case l.MaxLimit != 0:
			return field.Errorf("max_limit", "is for sliding_window and fixed_window; gcra has max_rate and max_burst")
		}
	case SlidingWindow, FixedWindow:
		hi := MaxFixedLimit
		if l.Algorithm == SlidingWindow {
			hi = MaxSlidingLimit
		}
		switch {
		case l.Limit < 1 || l.Limit > hi:
			return field.Errorf("limit", "must be between 1 and %d for %s, got %d", hi, l.Algorithm, l.Limit)
		case l.Window < MinPeriod || l.Window > MaxPeriod:
			return field.Errorf("window", "must be between %v and %v, got %v", MinPeriod, MaxPeriod, l.Window)
		case l.Rate != 0:
			return field.Errorf("rate", "is for gcra; %s has limit and window", l.Algorithm)
		case l.Period != 0:
			return field.Errorf("period", "is for gcra; %s has limit and window", l.Algorithm)
		case l.Burst != 0:
			return field.Errorf("burst", "is for gcra; %s has limit and window", l.Algorithm)
		case l.MaxLimit < l.Limit || l.MaxLimit > hi:
			return field.Errorf("max_limit", "must be between the limit %d and %d, got %d", l.Limit, hi, l.MaxLimit)
		case l.MaxRate != 0 || l.MaxBurst != 0:
			return field.Errorf(map[bool]string{true: "max_rate", false: "max_burst"}[l.MaxRate != 0], "is for gcra; %s has max_limit", l.Algorithm)
		}
	default:
		return field.Errorf("algorithm", "must be one of gcra, sliding_window, fixed_window, got %s", field.Quote(string(l.Algorithm)))
	}
	if l.MaxCost < 1 || l.MaxCost > l.Capacity() {
		return field.Errorf("max_cost", "must be between 1 and the capacity %d, got %d", l.Capacity(), l.MaxCost)
	}
	switch l.StoreDown {
	case FailOpen, FailClosed, Local:
	default:
		return field.Errorf("store_down", "must be one of fail_open, fail_closed, local, got %s", field.Quote(string(l.StoreDown)))
	}
	if l.ExpectedSidecars < 1 || l.ExpectedSidecars > MaxExpectedSidecars {
		return field.Errorf("expected_sidecars", "must be between 1 and %d, got %d", MaxExpectedSidecars, l.ExpectedSidecars)
	}
	if le := l.Lease; le != (Lease{}) {
		switch {
		case le.Batch < 2 || le.Batch > l.Capacity():
			return field.Errorf("lease.batch", "must be between 2 and the capacity %d, got %d", l.Capacity(), le.Batch)
		case le.Tolerance < 1 || le.Tolerance > l.Capacity():
			return field.Errorf("lease.tolerance", "must be between 1 and the capacity %d, got %d", l.Capacity(), le.Tolerance)
		case le.TTL < MinPeriod || le.TTL > MaxLeaseTTL:
			return field.Errorf("lease.ttl", "must be between %v and %v, got %v", MinPeriod, MaxLeaseTTL, le.TTL)
		}
	}
	return nil
}

// Config is the `ratelimits` section of the config file: the declared
// limiters by name. A Take naming any other limiter is LIMITER_UNKNOWN.
type Config map[string]Limiter

// WithDefaults returns a copy of c with every limiter's defaults.
func (c Config) WithDefaults() Config {
	if c == nil {
		return nil
	}
	out := make(Config, len(c))
	for name, l := range c {
		out[name] = l.WithDefaults()
	}
	return out
}

// Validate reports the first problem of c, in the order of the names, as
// a *field.Error with path "<name>.<key>".
func (c Config) Validate() error {
	names := make([]string, 0, len(c))
	for name := range c {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		if err := field.CheckName(name); err != nil {
			return err
		}
		if err := c[name].Validate(); err != nil {
			return field.Within(field.Key(name), err)
		}
	}
	return nil
}
