package e2e

import (
	"cmp"
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/oklog/ulid/v2"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	v1 "github.com/seed-a88e5317/resilience-sidecar/clients/go/resiliencev1"
	"github.com/seed-a88e5317/resilience-sidecar/internal/linearize"
	"github.com/seed-a88e5317/resilience-sidecar/internal/testharness"
)

func clockClient(t *testing.T, s *testharness.Sidecar) v1.ClockServiceClient {
	t.Helper()
	return v1.NewClockServiceClient(s.Conn(t))
}

// clockSidecars starts n sidecars on one Redis (the embedded store when
// redisURL is empty).
func clockSidecars(t *testing.T, n int, redisURL string, extra ...string) []*testharness.Sidecar {
	t.Helper()
	bin := testharness.BuildSidecar(t)
	if redisURL != "" {
		extra = append([]string{"--redis-url", redisURL}, extra...)
	}
	out := make([]*testharness.Sidecar, n)
	for i := range out {
		out[i] = testharness.StartSidecar(t, bin, extra...)
	}
	return out
}

// lamportBlock is one answer of the clock: first..last (one value for
// ObserveLamport), and who got it.
type lamportBlock struct {
	first, last uint64
	caller      int
}

// TestClockLamportUniqueAcrossSidecars: 64 callers spread over 3 sidecar
// processes on one Redis mix NextLamport (counts from 1 to 1000) and
// ObserveLamport (of their own last value, or of the highest value any
// caller has seen, as after receiving a message). Every value handed out is
// unique, each caller's values strictly increase, no block overlaps another,
// and a sidecar started after all of them were killed continues above.
func TestClockLamportUniqueAcrossSidecars(t *testing.T) {
	rd := testharness.StartRedis(t)
	sidecars := clockSidecars(t, 3, rd.URL())
	ctx := ctxT(t, 3*time.Minute)
	const callers, ops = 64, 60
	counts := []uint32{1, 1, 2, 7, 100, 1000}
	hist := linearize.NewHistory()
	defer linearize.Check(t, lamportModel, hist)

	var seen atomic.Uint64 // highest value any caller got: "messages" carry it
	blocks := make([][]lamportBlock, callers)
	var wg sync.WaitGroup
	for c := range callers {
		wg.Go(func() {
			client := recordClock(hist, clockClient(t, sidecars[c%len(sidecars)]))
			rng := rand.New(rand.NewPCG(uint64(c), 1))
			var last uint64
			for range ops {
				var b lamportBlock
				switch rng.IntN(3) {
				case 0, 1:
					n := counts[rng.IntN(len(counts))]
					r, err := client.NextLamport(ctx, &v1.NextLamportRequest{Clock: "orders", Count: n})
					if err != nil {
						t.Errorf("caller %d: NextLamport(%d): %v", c, n, err)
						return
					}
					if r.GetLast()-r.GetFirst()+1 != uint64(n) {
						t.Errorf("caller %d: NextLamport(%d) = %d..%d", c, n, r.GetFirst(), r.GetLast())
						return
					}
					b = lamportBlock{r.GetFirst(), r.GetLast(), c}
				default:
					ts := last + uint64(rng.IntN(50))
					if rng.IntN(2) == 0 {
						ts = seen.Load()
					}
					r, err := client.ObserveLamport(ctx, &v1.ObserveLamportRequest{Clock: "orders", Timestamp: ts})
					if err != nil {
						t.Errorf("caller %d: ObserveLamport(%d): %v", c, ts, err)
						return
					}
					if r.GetTimestamp() <= ts {
						t.Errorf("caller %d: ObserveLamport(%d) = %d, not above it", c, ts, r.GetTimestamp())
						return
					}
					b = lamportBlock{r.GetTimestamp(), r.GetTimestamp(), c}
				}
				if b.first <= last {
					t.Errorf("caller %d: %d..%d after %d: not strictly increasing", c, b.first, b.last, last)
					return
				}
				last = b.last
				for {
					s := seen.Load()
					if s >= last || seen.CompareAndSwap(s, last) {
						break
					}
				}
				blocks[c] = append(blocks[c], b)
			}
		})
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}

	all := slices.Concat(blocks...)
	slices.SortFunc(all, func(a, b lamportBlock) int { return cmp.Compare(a.first, b.first) })
	var values uint64
	for i, b := range all {
		values += b.last - b.first + 1
		if i > 0 && b.first <= all[i-1].last {
			t.Fatalf("blocks overlap: %d..%d (caller %d) and %d..%d (caller %d)",
				all[i-1].first, all[i-1].last, all[i-1].caller, b.first, b.last, b.caller)
		}
	}
	top := all[len(all)-1].last
	t.Logf("%d answers, %d values, highest %d", len(all), values, top)
	for _, s := range sidecars {
		g, err := recordClock(hist, clockClient(t, s)).GetLamport(ctx, &v1.GetLamportRequest{Clock: "orders"})
		if err != nil || g.GetTimestamp() != top {
			t.Fatalf("GetLamport = %v, %v; want the highest value handed out, %d", g, err, top)
		}
		s.Kill()
	}
	fresh := clockSidecars(t, 1, rd.URL())[0]
	r, err := recordClock(hist, clockClient(t, fresh)).NextLamport(ctx, &v1.NextLamportRequest{Clock: "orders"})
	if err != nil || r.GetFirst() != top+1 {
		t.Fatalf("after every sidecar restarted: %v, %v; want %d", r, err, top+1)
	}
}

// TestClockLamportSurvivesRedisRestartWithAOF: with appendfsync always the
// clock continues where it was after Redis is killed and restarted.
func TestClockLamportSurvivesRedisRestartWithAOF(t *testing.T) {
	rd := testharness.StartRedis(t, testharness.WithAppendOnly(), testharness.WithRedisArgs("--appendfsync", "always"))
	sc := clockSidecars(t, 1, rd.URL(), "--store-timeout", "300ms", "--health-interval", "100ms")[0]
	hist := linearize.NewHistory()
	defer linearize.Check(t, lamportModel, hist)
	c := recordClock(hist, clockClient(t, sc))
	ctx := ctxT(t, time.Minute)
	if r, err := c.NextLamport(ctx, &v1.NextLamportRequest{Clock: "c", Count: 10}); err != nil || r.GetLast() != 10 {
		t.Fatal(r, err)
	}
	rd.Kill()
	rd.Restart()
	waitHealth(t, sc.Conn(t), healthpb.HealthCheckResponse_SERVING, 20*time.Second)
	r, err := c.NextLamport(ctx, &v1.NextLamportRequest{Clock: "c"})
	if err != nil || r.GetFirst() != 11 {
		t.Fatalf("after the Redis restart: %v, %v; want 11", r, err)
	}
}

// TestClockLamportRefusesToGoBackwards: a Redis restarted without
// persistence forgets the clock; the sidecar refuses (INTERNAL, logged
// loudly) to hand out again values it handed out, until ObserveLamport of
// the highest known value moves the clock past them.
func TestClockLamportRefusesToGoBackwards(t *testing.T) {
	rd := testharness.StartRedis(t)
	sc := clockSidecars(t, 1, rd.URL(), "--store-timeout", "300ms", "--health-interval", "100ms")[0]
	// The refused calls (INTERNAL) count as of unknown outcome; no answer
	// the clients saw may go backwards.
	hist := linearize.NewHistory()
	defer linearize.Check(t, lamportModel, hist)
	c := recordClock(hist, clockClient(t, sc))
	ctx := ctxT(t, time.Minute)
	if r, err := c.NextLamport(ctx, &v1.NextLamportRequest{Clock: "c", Count: 10}); err != nil || r.GetLast() != 10 {
		t.Fatal(r, err)
	}
	rd.Kill()
	rd.Restart() // no persistence: the clock is gone
	waitHealth(t, sc.Conn(t), healthpb.HealthCheckResponse_SERVING, 20*time.Second)
	for range 3 {
		r, err := c.NextLamport(ctx, &v1.NextLamportRequest{Clock: "c"})
		if code, _ := reasonOf(err); code != codes.Internal {
			t.Fatalf("after losing the clock: %v, %v; want INTERNAL, never a repeated value", r, err)
		}
	}
	if _, err := c.GetLamport(ctx, &v1.GetLamportRequest{Clock: "c"}); status.Code(err) != codes.Internal {
		t.Fatalf("GetLamport after losing the clock: %v; want INTERNAL", err)
	}
	if !strings.Contains(sc.Log(), "LAMPORT CLOCK WENT BACKWARDS") {
		t.Fatal("the regression was not logged loudly")
	}
	o, err := c.ObserveLamport(ctx, &v1.ObserveLamportRequest{Clock: "c", Timestamp: 10})
	if err != nil || o.GetTimestamp() != 11 {
		t.Fatalf("repairing ObserveLamport(10) = %v, %v; want 11", o, err)
	}
	if r, err := c.NextLamport(ctx, &v1.NextLamportRequest{Clock: "c"}); err != nil || r.GetFirst() != 12 {
		t.Fatalf("after the repair: %v, %v; want 12", r, err)
	}
}

// TestClockRedisDown: with Redis hung or dead every Lamport call fails
// UNAVAILABLE/STORE_UNAVAILABLE within the store timeout, never a value;
// HLC and ULIDs, which need no store, keep working.
func TestClockRedisDown(t *testing.T) {
	rd := testharness.StartRedis(t)
	sc := clockSidecars(t, 1, rd.URL(), "--store-timeout", "300ms", "--health-interval", "100ms")[0]
	hist := linearize.NewHistory()
	defer linearize.Check(t, lamportModel, hist)
	base := clockClient(t, sc)
	c := recordClock(hist, base)
	ctx := ctxT(t, 2*time.Minute)
	if _, err := c.NextLamport(ctx, &v1.NextLamportRequest{Clock: "c"}); err != nil {
		t.Fatal(err)
	}
	outage := func(phase string) {
		t.Helper()
		var wg sync.WaitGroup
		for i := range 9 {
			wg.Go(func() {
				c := recordClock(hist, base)
				cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
				defer cancel()
				var err error
				var got any
				switch i % 3 {
				case 0:
					got, err = c.NextLamport(cctx, &v1.NextLamportRequest{Clock: "c", Count: 5})
				case 1:
					got, err = c.ObserveLamport(cctx, &v1.ObserveLamportRequest{Clock: "c", Timestamp: 100})
				default:
					got, err = c.GetLamport(cctx, &v1.GetLamportRequest{Clock: "c"})
				}
				if code, reason := reasonOf(err); code != codes.Unavailable || reason != "STORE_UNAVAILABLE" {
					t.Errorf("%s: call %d: %v, %v; want UNAVAILABLE/STORE_UNAVAILABLE", phase, i, got, err)
				}
			})
		}
		wg.Wait()
		if _, err := c.NowHlc(ctx, &v1.NowHlcRequest{}); err != nil {
			t.Errorf("%s: NowHlc: %v", phase, err)
		}
		if _, err := c.NextUlid(ctx, &v1.NextUlidRequest{Count: 10}); err != nil {
			t.Errorf("%s: NextUlid: %v", phase, err)
		}
	}
	rd.Pause()
	outage("paused")
	rd.Kill()
	outage("killed")
}

// TestClockUlidsOverGRPC: concurrent callers of one sidecar get unique
// ULIDs, each caller's strictly increasing, with the timestamp beside each
// equal to the ULID's own. (The million-ULID tests run in-process in
// internal/clock; this checks the same through the real binary with fewer.)
func TestClockUlidsOverGRPC(t *testing.T) {
	sc := clockSidecars(t, 1, "")[0] // ULIDs need no store
	c := clockClient(t, sc)
	ctx := ctxT(t, 2*time.Minute)
	const callers, calls = 16, 25
	all := make([][]string, callers)
	var wg sync.WaitGroup
	for g := range callers {
		wg.Go(func() {
			var prev string
			for i := range calls {
				n := uint32(1)
				if i%3 != 0 {
					n = uint32(1 + (g*31+i*7)%500)
				}
				r, err := c.NextUlid(ctx, &v1.NextUlidRequest{Count: n})
				if err != nil {
					t.Errorf("caller %d: %v", g, err)
					return
				}
				if len(r.GetUlids()) != int(n) {
					t.Errorf("caller %d: NextUlid(%d) gave %d", g, n, len(r.GetUlids()))
					return
				}
				for _, u := range r.GetUlids() {
					id, err := ulid.ParseStrict(u.GetValue())
					if err != nil || u.GetValue() <= prev {
						t.Errorf("caller %d: ULID %q after %q (%v)", g, u.GetValue(), prev, err)
						return
					}
					if !u.GetTime().AsTime().Equal(ulid.Time(id.Time())) {
						t.Errorf("ULID %s: time %v, its own %v", u.GetValue(), u.GetTime().AsTime(), ulid.Time(id.Time()))
						return
					}
					prev = u.GetValue()
					all[g] = append(all[g], u.GetValue())
				}
			}
		})
	}
	wg.Wait()
	ids := slices.Concat(all...)
	slices.Sort(ids)
	if n := len(slices.Compact(slices.Clone(ids))); n != len(ids) {
		t.Fatalf("%d ULIDs, %d distinct", len(ids), n)
	}
	t.Logf("%d ULIDs", len(ids))
}

// TestClockHlcOverGRPC: the HLC through the real binary, with --max-offset
// set: timestamps increase, a remote one within the offset is merged, one
// beyond it is refused with CLOCK_SKEW and counted, and bad input names its
// field.
func TestClockHlcOverGRPC(t *testing.T) {
	metrics := testharness.FreeAddr(t)
	sc := clockSidecars(t, 1, "", "--max-offset", "200ms", "--metrics-listen", metrics)[0]
	c := clockClient(t, sc)
	ctx := ctxT(t, time.Minute)
	a, err := c.NowHlc(ctx, &v1.NowHlcRequest{})
	if err != nil {
		t.Fatal(err)
	}
	b, err := c.UpdateHlc(ctx, &v1.UpdateHlcRequest{Remote: &v1.UpdateHlcRequest_Text{Text: a.GetTimestamp().GetText()}})
	if err != nil || b.GetTimestamp().GetEncoded() <= a.GetTimestamp().GetEncoded() || b.GetTimestamp().GetText() <= a.GetTimestamp().GetText() {
		t.Fatalf("UpdateHlc(own timestamp) = %v, %v; want above %v", b, err, a)
	}
	// The test and the sidecar share the machine's clock: 10s ahead is far
	// beyond 200ms whatever the scheduling.
	ahead := uint64(time.Now().Add(10*time.Second).UnixMilli()) << 16
	_, err = c.UpdateHlc(ctx, &v1.UpdateHlcRequest{Remote: &v1.UpdateHlcRequest_Encoded{Encoded: ahead}})
	if code, reason := reasonOf(err); code != codes.FailedPrecondition || reason != "CLOCK_SKEW" {
		t.Fatalf("UpdateHlc 10s ahead: %v; want FAILED_PRECONDITION/CLOCK_SKEW", err)
	}
	after, err := c.NowHlc(ctx, &v1.NowHlcRequest{})
	if err != nil || after.GetTimestamp().GetEncoded() >= ahead {
		t.Fatalf("the refused timestamp was adopted: %v, %v", after, err)
	}
	if v := metricValue(t, metrics, "resilience_clock_skew_rejected_total"); v != 1 {
		t.Fatalf("skew rejections metric = %v, want 1", v)
	}

	_, err = c.NextLamport(ctx, &v1.NextLamportRequest{Clock: "bad\x7fname", Count: 100_001})
	st := status.Convert(err)
	var fields []string
	for _, d := range st.Details() {
		if br, ok := d.(*errdetails.BadRequest); ok {
			for _, f := range br.GetFieldViolations() {
				fields = append(fields, f.GetField())
			}
		}
	}
	if st.Code() != codes.InvalidArgument || fmt.Sprint(fields) != "[clock count]" {
		t.Fatalf("bad NextLamport: %v, fields %v", err, fields)
	}
}
