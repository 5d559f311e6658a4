package breaker_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"testing/quick"
	"time"

	"github.com/seed-a88e5317/resilience-sidecar/internal/breaker"
	"github.com/seed-a88e5317/resilience-sidecar/internal/testkit"
)

func newService(t *testing.T, clk *testkit.Clock, policies map[string]breaker.Policy, opts ...func(*breaker.Options)) *breaker.Service {
	t.Helper()
	o := breaker.Options{Policies: policies, Now: clk.Now}
	for _, f := range opts {
		f(&o)
	}
	s, err := breaker.NewService(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	return s
}

// step is one action of a state-machine scenario on breaker "b".
type step struct {
	do   string        // ok, fail, ignore, slow (ok after d), hold (allow and keep), report-held (ok), expire, advance, refused
	d    time.Duration // advance: how long; slow: the reported duration; refused: the wanted retry_after
	want breaker.State // state after the step (0: not checked)
}

func TestStateMachinePolicies(t *testing.T) {
	const open = 5 * time.Second
	tests := []struct {
		name   string
		policy breaker.Policy
		steps  []step
	}{
		{"consecutive_failures trips on the nth failure in a row",
			breaker.Policy{ConsecutiveFailures: 3, OpenDuration: open},
			[]step{{do: "fail", want: breaker.Closed}, {do: "fail", want: breaker.Closed}, {do: "fail", want: breaker.Open}}},
		{"consecutive_failures: a success resets the run",
			breaker.Policy{ConsecutiveFailures: 2, OpenDuration: open},
			[]step{{do: "fail"}, {do: "ok"}, {do: "fail", want: breaker.Closed}, {do: "fail", want: breaker.Open}}},
		{"consecutive_failures: ignored outcomes neither count nor reset",
			breaker.Policy{ConsecutiveFailures: 2, OpenDuration: open},
			[]step{{do: "fail"}, {do: "ignore", want: breaker.Closed}, {do: "fail", want: breaker.Open}}},
		{"failure_rate waits for min_calls",
			breaker.Policy{FailureRate: 0.5, MinCalls: 4, OpenDuration: open},
			[]step{{do: "ok"}, {do: "fail"}, {do: "fail", want: breaker.Closed}, {do: "ok", want: breaker.Open}}},
		{"failure_rate below the threshold stays closed",
			breaker.Policy{FailureRate: 0.5, MinCalls: 4, OpenDuration: open},
			[]step{{do: "ok"}, {do: "ok"}, {do: "ok"}, {do: "fail", want: breaker.Closed}, {do: "ok", want: breaker.Closed}}},
		{"min_calls: a rate of 1 needs min_calls calls",
			breaker.Policy{FailureRate: 1, MinCalls: 3, OpenDuration: open},
			[]step{{do: "fail"}, {do: "fail", want: breaker.Closed}, {do: "fail", want: breaker.Open}}},
		{"window: calls older than the window are forgotten",
			breaker.Policy{FailureRate: 1, MinCalls: 3, Window: time.Second, OpenDuration: open},
			[]step{{do: "fail"}, {do: "fail"}, {do: "advance", d: 1100 * time.Millisecond}, {do: "fail", want: breaker.Closed},
				{do: "fail", want: breaker.Closed}, {do: "fail", want: breaker.Open}}},
		{"window: calls inside the window still count",
			breaker.Policy{FailureRate: 1, MinCalls: 3, Window: 10 * time.Second, OpenDuration: open},
			[]step{{do: "fail"}, {do: "fail"}, {do: "advance", d: 8 * time.Second}, {do: "fail", want: breaker.Open}}},
		{"slow_call_duration and slow_call_rate trip on slow successes",
			breaker.Policy{SlowCallDuration: 100 * time.Millisecond, SlowCallRate: 0.5, MinCalls: 2, OpenDuration: open},
			[]step{{do: "slow", d: 99 * time.Millisecond, want: breaker.Closed}, {do: "slow", d: 100 * time.Millisecond, want: breaker.Open}}},
		{"slow_call: the duration defaults to the time since AllowCall",
			breaker.Policy{SlowCallDuration: 100 * time.Millisecond, SlowCallRate: 1, MinCalls: 1, OpenDuration: open},
			[]step{{do: "hold"}, {do: "advance", d: 150 * time.Millisecond}, {do: "report-held", want: breaker.Open}}},
		{"open_duration: refused with the time left, then half-open",
			breaker.Policy{ConsecutiveFailures: 1, OpenDuration: open},
			[]step{{do: "fail", want: breaker.Open}, {do: "refused", d: open}, {do: "advance", d: open - 100*time.Millisecond},
				{do: "refused", d: 100 * time.Millisecond}, {do: "advance", d: 100 * time.Millisecond}, {do: "hold", want: breaker.HalfOpen}}},
		{"half_open_max_calls: that many probes, all must succeed",
			breaker.Policy{ConsecutiveFailures: 1, OpenDuration: open, HalfOpenMaxCalls: 2},
			[]step{{do: "fail"}, {do: "advance", d: open}, {do: "hold", want: breaker.HalfOpen}, {do: "hold"}, {do: "refused"},
				{do: "report-held", want: breaker.HalfOpen}, {do: "report-held", want: breaker.Closed}}},
		{"half-open: a failed probe reopens for open_duration",
			breaker.Policy{ConsecutiveFailures: 1, OpenDuration: open, HalfOpenMaxCalls: 3},
			[]step{{do: "fail"}, {do: "advance", d: open}, {do: "ok", want: breaker.HalfOpen}, {do: "fail", want: breaker.Open},
				{do: "refused", d: open}}},
		{"half-open: a slow probe reopens when slow calls can trip",
			breaker.Policy{SlowCallDuration: time.Second, SlowCallRate: 1, MinCalls: 1, OpenDuration: open},
			[]step{{do: "slow", d: 2 * time.Second, want: breaker.Open}, {do: "advance", d: open}, {do: "slow", d: 2 * time.Second, want: breaker.Open}}},
		{"permit TTL: a dead probe counts as a failure when it expires",
			breaker.Policy{ConsecutiveFailures: 1, OpenDuration: open},
			[]step{{do: "fail"}, {do: "advance", d: open}, {do: "hold", want: breaker.HalfOpen}, {do: "refused"},
				{do: "advance", d: breaker.DefaultPermitTTL}, {do: "refused", d: open, want: breaker.Open}}},
		{"permit TTL: unreported calls in closed count as failures",
			breaker.Policy{ConsecutiveFailures: 2, OpenDuration: open},
			[]step{{do: "hold"}, {do: "hold"}, {do: "advance", d: breaker.DefaultPermitTTL - time.Millisecond}, {do: "ok", want: breaker.Closed},
				{do: "advance", d: time.Millisecond}, {do: "refused", want: breaker.Open}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			clk := testkit.NewClock()
			s := newService(t, clk, map[string]breaker.Policy{"b": tc.policy})
			var held []string
			allow := func(i int) breaker.Decision {
				d, err := s.Allow(ctx, "b", breaker.DefaultPermitTTL)
				if err != nil {
					t.Fatalf("step %d: Allow: %v", i, err)
				}
				return d
			}
			do := func(i int, o breaker.Outcome, dur time.Duration) breaker.State {
				d := allow(i)
				if !d.Allowed {
					t.Fatalf("step %d: refused in %v", i, d.State)
				}
				r, err := s.Report(ctx, d.PermitID, o, dur)
				if err != nil || !r.Counted {
					t.Fatalf("step %d: Report = %+v, %v", i, r, err)
				}
				return r.State
			}
			for i, st := range tc.steps {
				var got breaker.State
				switch st.do {
				case "ok":
					got = do(i, breaker.Success, 0)
				case "fail":
					got = do(i, breaker.Failure, 0)
				case "ignore":
					got = do(i, breaker.Ignored, 0)
				case "slow":
					got = do(i, breaker.Success, st.d)
				case "hold":
					d := allow(i)
					if !d.Allowed {
						t.Fatalf("step %d: refused in %v", i, d.State)
					}
					held = append(held, d.PermitID)
					got = d.State
				case "report-held":
					r, err := s.Report(ctx, held[0], breaker.Success, -1)
					if err != nil {
						t.Fatalf("step %d: %v", i, err)
					}
					held = held[1:]
					got = r.State
				case "advance":
					clk.Advance(st.d)
				case "refused":
					d := allow(i)
					if d.Allowed || d.RetryAfter <= 0 || (st.d > 0 && d.RetryAfter != st.d) {
						t.Fatalf("step %d: Allow = %+v, want refused with retry_after %v", i, d, st.d)
					}
					got = d.State
				default:
					t.Fatalf("bad step %q", st.do)
				}
				if st.want != 0 && got != st.want {
					info, _ := s.Get(ctx, "b")
					t.Fatalf("step %d (%s): state %v, want %v; breaker %+v", i, st.do, got, st.want, info)
				}
			}
		})
	}
}

func TestPolicyValidation(t *testing.T) {
	tests := []struct {
		p    breaker.Policy
		want string // "" valid
	}{
		{breaker.DefaultPolicy(), ""},
		{breaker.Policy{ConsecutiveFailures: 0}, "cannot trip"},
		{breaker.Policy{FailureRate: 2}, "failure_rate must be in (0,1]"},
		{breaker.Policy{FailureRate: -0.1}, "failure_rate must be in (0,1]"},
		{breaker.Policy{SlowCallRate: 0.5}, "go together"},
		{breaker.Policy{SlowCallDuration: time.Second}, "go together"},
		{breaker.Policy{ConsecutiveFailures: 1, MinReporters: 2}, "needs scope shared"},
		{breaker.Policy{Scope: breaker.Shared, ConsecutiveFailures: 1, MinReporters: 2}, ""},
		{breaker.Policy{ConsecutiveFailures: 1, HalfOpenMaxCalls: -1}, "half_open_max_calls"},
		{breaker.Policy{ConsecutiveFailures: 1, OpenDuration: 25 * time.Hour}, "open_duration"},
		{breaker.Policy{ConsecutiveFailures: 1, Window: time.Millisecond}, "window"},
	}
	for _, tc := range tests {
		err := tc.p.Validate()
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%+v: %v, want valid", tc.p, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("%+v: %v, want %q", tc.p, err, tc.want)
		}
	}
	if _, err := breaker.NewService(breaker.Options{Policies: map[string]breaker.Policy{"x": {}}}); err == nil {
		t.Error("NewService accepted a policy that cannot trip")
	}
}

func TestReports(t *testing.T) {
	ctx := context.Background()
	clk := testkit.NewClock()
	s := newService(t, clk, map[string]breaker.Policy{"b": {ConsecutiveFailures: 1, OpenDuration: time.Second}})

	d, err := s.Allow(ctx, "b", time.Minute)
	if err != nil || !d.Allowed || !d.PermitExpire.Equal(clk.Now().Add(time.Minute)) {
		t.Fatalf("Allow = %+v, %v", d, err)
	}
	other, _ := s.Allow(ctx, "b", time.Minute)
	if r, err := s.Report(ctx, d.PermitID, breaker.Failure, 0); err != nil || !r.Counted || r.State != breaker.Open {
		t.Fatalf("Report = %+v, %v", r, err)
	}
	if _, err := s.Report(ctx, d.PermitID, breaker.Failure, 0); !errors.Is(err, breaker.ErrPermitUnknown) {
		// The generation moved on (open): a repeated report of a permit of
		// the old generation is stale, not unknown.
		if err != nil {
			t.Fatalf("repeat after trip: %v", err)
		}
	}
	r, err := s.Report(ctx, other.PermitID, breaker.Success, 0)
	if err != nil || r.Counted || r.State != breaker.Open {
		t.Fatalf("report of the previous generation = %+v, %v; want not counted", r, err)
	}
	if _, err := s.Report(ctx, "not-a-permit", breaker.Success, 0); !errors.Is(err, breaker.ErrPermitMalformed) {
		t.Fatalf("malformed: %v", err)
	}

	// A duplicate in the same generation is refused.
	clk.Advance(time.Second)
	p1, _ := s.Allow(ctx, "b", time.Minute)
	if _, err := s.Report(ctx, p1.PermitID, breaker.Ignored, 0); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Report(ctx, p1.PermitID, breaker.Ignored, 0); !errors.Is(err, breaker.ErrPermitUnknown) {
		t.Fatalf("duplicate report: %v, want ErrPermitUnknown", err)
	}
	// A permit of a breaker this process never saw.
	forged := breaker.Permit{Breaker: "nope", Generation: 1, Issued: clk.Now()}
	if _, err := s.Report(ctx, forged.String(), breaker.Success, 0); !errors.Is(err, breaker.ErrPermitUnknown) {
		t.Fatalf("permit of an unknown breaker: %v", err)
	}
}

func TestResetGetList(t *testing.T) {
	ctx := context.Background()
	clk := testkit.NewClock()
	s := newService(t, clk, map[string]breaker.Policy{
		"declared": {ConsecutiveFailures: 1},
		"default":  {ConsecutiveFailures: 2, OpenDuration: time.Minute},
	})
	info, err := s.Get(ctx, "fresh")
	if err != nil || info.State != breaker.Closed || info.Declared || info.Policy.ConsecutiveFailures != 2 {
		t.Fatalf("Get(fresh) = %+v, %v", info, err)
	}
	if list, _, _ := s.List(ctx, "", 100); len(list) != 1 || list[0].Name != "declared" || !list[0].Declared {
		t.Fatalf("Get created a breaker, or the declared one is missing: %+v", list)
	}
	for range 2 {
		d, _ := s.Allow(ctx, "fresh", time.Minute)
		if _, err := s.Report(ctx, d.PermitID, breaker.Failure, 0); err != nil {
			t.Fatal(err)
		}
	}
	info, _ = s.Get(ctx, "fresh")
	if info.State != breaker.Open || !info.NextTransition.Equal(clk.Now().Add(time.Minute)) {
		t.Fatalf("after 2 failures: %+v", info)
	}
	info, err = s.Reset(ctx, "fresh", "test")
	if err != nil || info.State != breaker.Closed {
		t.Fatalf("Reset = %+v, %v", info, err)
	}
	if d, _ := s.Allow(ctx, "fresh", time.Minute); !d.Allowed {
		t.Fatal("refused after reset")
	}
	for i := range 5 {
		if _, err := s.Allow(ctx, fmt.Sprintf("n%d", i), time.Minute); err != nil {
			t.Fatal(err)
		}
	}
	var names []string
	after := ""
	for {
		page, more, err := s.List(ctx, after, 3)
		if err != nil {
			t.Fatal(err)
		}
		for _, b := range page {
			names = append(names, b.Name)
		}
		if !more {
			break
		}
		after = page[len(page)-1].Name
	}
	if got := strings.Join(names, ","); got != "declared,fresh,n0,n1,n2,n3,n4" {
		t.Fatalf("paged list = %s", got)
	}
}

func TestBreakerLimit(t *testing.T) {
	ctx := context.Background()
	clk := testkit.NewClock()
	s := newService(t, clk, map[string]breaker.Policy{"declared": {ConsecutiveFailures: 1}},
		func(o *breaker.Options) { o.MaxBreakers = 3 })
	// a holds a permit; b had a call in its window: neither is idle.
	held, err := s.Allow(ctx, "a", 10*time.Minute)
	if err != nil || !held.Allowed {
		t.Fatal(err)
	}
	d, _ := s.Allow(ctx, "b", time.Minute)
	if _, err := s.Report(ctx, d.PermitID, breaker.Success, 0); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Allow(ctx, "c", time.Minute); !errors.Is(err, breaker.ErrLimitExceeded) {
		t.Fatalf("4th breaker with a limit of 3: %v, want ErrLimitExceeded", err)
	}
	// Once b's window is empty, b is forgotten to make room; a is not.
	clk.Advance(breaker.DefaultWindow + time.Second)
	if d, err := s.Allow(ctx, "c", time.Minute); err != nil || !d.Allowed {
		t.Fatalf("after b went idle: %+v, %v", d, err)
	}
	if r, err := s.Report(ctx, held.PermitID, breaker.Success, 0); err != nil || !r.Counted {
		t.Fatalf("a's permit after the eviction: %+v, %v", r, err)
	}
	if _, err := s.Allow(ctx, "declared", time.Minute); err != nil {
		t.Fatalf("declared breaker refused: %v", err)
	}
	list, _, _ := s.List(ctx, "", 10)
	if len(list) != 3 {
		t.Fatalf("tracked %d breakers, want 3: %+v", len(list), list)
	}
}

func TestPermitLimit(t *testing.T) {
	ctx := context.Background()
	clk := testkit.NewClock()
	s := newService(t, clk, nil, func(o *breaker.Options) { o.MaxPermits = 3 })
	for i := range 3 {
		if _, err := s.Allow(ctx, fmt.Sprint("b", i%2), time.Minute); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.Allow(ctx, "b0", time.Minute); !errors.Is(err, breaker.ErrLimitExceeded) {
		t.Fatalf("4th outstanding permit with a bound of 3: %v", err)
	}
	clk.Advance(time.Minute)
	if d, err := s.Allow(ctx, "b0", time.Minute); err != nil || !d.Allowed {
		t.Fatalf("after the permits expired: %+v, %v", d, err)
	}
}

func TestSharedWithoutStoreRunsLocally(t *testing.T) {
	ctx := context.Background()
	clk := testkit.NewClock()
	s := newService(t, clk, map[string]breaker.Policy{"s": {Scope: breaker.Shared, ConsecutiveFailures: 1, MinReporters: 3}})
	d, _ := s.Allow(ctx, "s", time.Minute)
	if r, err := s.Report(ctx, d.PermitID, breaker.Failure, 0); err != nil || r.State != breaker.Open {
		t.Fatalf("on the embedded store min_reporters is moot (one sidecar): %+v %v", r, err)
	}
}

func TestPermitRoundTrip(t *testing.T) {
	f := func(name string, shared, fallback bool, gen uint64, issued int64, rep breaker.Reporter, n breaker.Nonce) bool {
		if name == "" || len(name) > 512 || !utf8Valid(name) {
			return true
		}
		issued %= 1 << 50
		if issued < 0 {
			issued = -issued
		}
		p := breaker.Permit{Breaker: name, Shared: shared, Fallback: fallback, Generation: gen,
			Issued: time.UnixMilli(issued), Reporter: rep, Nonce: n}
		got, err := breaker.ParsePermit(p.String())
		return err == nil && got.Breaker == p.Breaker && got.Shared == shared && got.Fallback == fallback &&
			got.Generation == gen && got.Issued.Equal(p.Issued) && got.Reporter == rep && got.Nonce == n &&
			len(p.String()) <= breaker.MaxPermitIDLen
	}
	if err := quick.Check(f, nil); err != nil {
		t.Fatal(err)
	}
	for _, bad := range []string{"", "AA", "!!!", strings.Repeat("A", breaker.MaxPermitIDLen+1)} {
		if _, err := breaker.ParsePermit(bad); !errors.Is(err, breaker.ErrPermitMalformed) {
			t.Errorf("ParsePermit(%q) = %v", bad, err)
		}
	}
}

func utf8Valid(s string) bool { return strings.ToValidUTF8(s, "\uFFFD") == s }
