package clock_test

import (
	"errors"
	"math"
	"strings"
	"sync"
	"testing"
	"testing/quick"
	"time"

	"github.com/seed-a88e5317/resilience-sidecar/internal/clock"
	"github.com/seed-a88e5317/resilience-sidecar/internal/testkit"
)

func ms(c *testkit.Clock) int64 { return c.Now().UnixMilli() }

func TestHLCNowFollowsWallClock(t *testing.T) {
	wall := testkit.NewClock()
	h := clock.NewHLC(wall.Now, 0)
	a := h.Now()
	if a.WallTime != ms(wall) || a.Logical != 0 {
		t.Fatalf("first Now = %+v, want wall %d logical 0", a, ms(wall))
	}
	b := h.Now() // same millisecond
	if b.WallTime != a.WallTime || b.Logical != 1 {
		t.Fatalf("second Now in the same ms = %+v", b)
	}
	wall.Advance(3 * time.Millisecond)
	c := h.Now()
	if c.WallTime != ms(wall) || c.Logical != 0 {
		t.Fatalf("Now after the wall clock moved = %+v", c)
	}
}

func TestHLCNeverGoesBackWithTheWallClock(t *testing.T) {
	wall := testkit.NewClock()
	h := clock.NewHLC(wall.Now, 0)
	a := h.Now()
	wall.Advance(-10 * time.Second)
	b := h.Now()
	if b.Compare(a) <= 0 || b.WallTime != a.WallTime {
		t.Fatalf("after the wall clock stepped back: %+v then %+v", a, b)
	}
}

func TestHLCLogicalCarriesIntoNextMillisecond(t *testing.T) {
	wall := testkit.NewClock()
	h := clock.NewHLC(wall.Now, 0)
	prev := h.Now()
	for range 70_000 {
		ts := h.Now()
		if ts.Compare(prev) <= 0 {
			t.Fatalf("%v after %v", ts, prev)
		}
		prev = ts
	}
	if prev.WallTime != ms(wall)+1 {
		t.Fatalf("after 70001 reads in one ms: %+v, want carried into the next ms", prev)
	}
}

func TestHLCUpdateReceiveRule(t *testing.T) {
	wall := testkit.NewClock()
	now := ms(wall)
	tests := []struct {
		name         string
		local        int // Now calls before the update (in the frozen ms)
		remote, want clock.Timestamp
	}{
		{"remote behind: wall clock wins", 0,
			clock.Timestamp{WallTime: now - 100, Logical: 7}, clock.Timestamp{WallTime: now}},
		{"remote ahead within offset: adopted plus one", 1,
			clock.Timestamp{WallTime: now + 200, Logical: 7}, clock.Timestamp{WallTime: now + 200, Logical: 8}},
		{"same ms: max logical plus one", 3,
			clock.Timestamp{WallTime: now, Logical: 1}, clock.Timestamp{WallTime: now, Logical: 3}},
		{"same ms, remote logical higher", 1,
			clock.Timestamp{WallTime: now, Logical: 40}, clock.Timestamp{WallTime: now, Logical: 41}},
		{"exactly max offset ahead is accepted", 0,
			clock.Timestamp{WallTime: now + 500}, clock.Timestamp{WallTime: now + 500, Logical: 1}},
		{"remote logical at the maximum carries", 0,
			clock.Timestamp{WallTime: now + 1, Logical: math.MaxUint16}, clock.Timestamp{WallTime: now + 2}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := clock.NewHLC(wall.Now, 500*time.Millisecond)
			var last clock.Timestamp
			for range tc.local {
				last = h.Now()
			}
			got, err := h.Update(tc.remote)
			if err != nil {
				t.Fatal(err)
			}
			if got != tc.want {
				t.Fatalf("Update(%+v) = %+v, want %+v", tc.remote, got, tc.want)
			}
			if got.Compare(tc.remote) <= 0 || got.Compare(last) <= 0 {
				t.Fatalf("Update result %+v not above remote %+v and local %+v", got, tc.remote, last)
			}
			if n := h.Now(); n.Compare(got) <= 0 {
				t.Fatalf("Now after Update = %+v, not above %+v", n, got)
			}
		})
	}
}

func TestHLCRefusesSkewAndDoesNotAdoptIt(t *testing.T) {
	wall := testkit.NewClock()
	h := clock.NewHLC(wall.Now, 500*time.Millisecond)
	before := h.Now()
	_, err := h.Update(clock.Timestamp{WallTime: ms(wall) + 501})
	var skew *clock.SkewError
	if !errors.Is(err, clock.ErrClockSkew) || !errors.As(err, &skew) {
		t.Fatalf("Update 501ms ahead: %v, want ErrClockSkew", err)
	}
	if skew.Ahead != 501*time.Millisecond || skew.MaxOffset != 500*time.Millisecond {
		t.Fatalf("skew = %+v", skew)
	}
	if n := h.SkewRejections(); n != 1 {
		t.Fatalf("SkewRejections = %d, want 1", n)
	}
	if !strings.Contains(err.Error(), "501ms ahead") {
		t.Fatalf("message %q does not say by how much", err)
	}
	after := h.Now()
	if after.WallTime != before.WallTime || after.Logical != before.Logical+1 {
		t.Fatalf("skewed timestamp was adopted: %+v then %+v", before, after)
	}
	// The far future is refused too, not wrapped into the past.
	if _, err := h.Update(clock.Timestamp{WallTime: clock.MaxWallTime, Logical: math.MaxUint16}); !errors.Is(err, clock.ErrClockSkew) {
		t.Fatalf("Update at MaxWallTime: %v, want ErrClockSkew", err)
	}
	// Once the wall clock has caught up, the same timestamp is fine.
	wall.Advance(time.Second)
	if _, err := h.Update(clock.Timestamp{WallTime: ms(wall) - 499}); err != nil {
		t.Fatal(err)
	}
}

func TestHLCConcurrentReadsStrictlyIncrease(t *testing.T) {
	wall := testkit.NewClock()
	h := clock.NewHLC(wall.Now, 0)
	var wg sync.WaitGroup
	var mu sync.Mutex
	seen := map[clock.Timestamp]bool{}
	for g := range 16 {
		wg.Go(func() {
			var prev clock.Timestamp
			for i := range 500 {
				var ts clock.Timestamp
				if i%4 == 0 {
					var err error
					ts, err = h.Update(clock.Timestamp{WallTime: ms(wall), Logical: uint16(g * i)})
					if err != nil {
						t.Error(err)
						return
					}
				} else {
					ts = h.Now()
				}
				if i%50 == 0 {
					wall.Advance(time.Duration(g%3-1) * time.Millisecond) // back and forth
				}
				if ts.Compare(prev) <= 0 {
					t.Errorf("caller %d: %v after %v", g, ts, prev)
				}
				prev = ts
				mu.Lock()
				if seen[ts] {
					t.Errorf("timestamp %v returned twice", ts)
				}
				seen[ts] = true
				mu.Unlock()
			}
		})
	}
	wg.Wait()
}

func TestTimestampEncodingKeepsOrder(t *testing.T) {
	gen := func(w uint64, l uint16) clock.Timestamp {
		return clock.Timestamp{WallTime: int64(w % (clock.MaxWallTime + 1)), Logical: l}
	}
	roundTrip := func(w uint64, l uint16) bool {
		ts := gen(w, l)
		p, err := clock.ParseTimestamp(ts.String())
		return clock.DecodeTimestamp(ts.Encode()) == ts && err == nil && p == ts && len(ts.String()) == 16
	}
	order := func(w1 uint64, l1 uint16, w2 uint64, l2 uint16) bool {
		a, b := gen(w1, l1), gen(w2, l2)
		byFields := 0
		switch {
		case a.WallTime < b.WallTime || a.WallTime == b.WallTime && a.Logical < b.Logical:
			byFields = -1
		case a != b:
			byFields = 1
		}
		return a.Compare(b) == byFields && strings.Compare(a.String(), b.String()) == byFields
	}
	if err := quick.Check(roundTrip, nil); err != nil {
		t.Error(err)
	}
	if err := quick.Check(order, nil); err != nil {
		t.Error(err)
	}
	if got := (clock.Timestamp{WallTime: 1, Logical: 2}).String(); got != "0000000000010002" {
		t.Errorf("String = %q", got)
	}
}

func FuzzParseTimestamp(f *testing.F) {
	for _, s := range []string{"0000000000010002", "FFFFFFFFFFFFFFFF", "", "xyz", "+000000000000001", "00000000000000000"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		ts, err := clock.ParseTimestamp(s)
		if err != nil {
			return
		}
		if !strings.EqualFold(ts.String(), s) {
			t.Fatalf("ParseTimestamp(%q) = %v, prints %q", s, ts, ts.String())
		}
		if ts.WallTime < 0 || ts.WallTime > clock.MaxWallTime {
			t.Fatalf("wall time %d out of range", ts.WallTime)
		}
	})
}
