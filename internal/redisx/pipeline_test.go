package redisx_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/seed-a88e5317/resilience-sidecar/internal/redisx"
	"github.com/seed-a88e5317/resilience-sidecar/internal/store"
	"github.com/seed-a88e5317/resilience-sidecar/internal/testharness"
	"github.com/seed-a88e5317/resilience-sidecar/internal/testkit"
)

// echoScript counts its calls on KEYS[1] and returns ARGV[1], so every
// caller can check that the reply it got is its own.
var echoScript = redisx.NewScript("test.echo", `
redis.call('INCR', KEYS[1])
return ARGV[1]
`)

// pipelined returns a client of url with the auto-pipeliner installed.
func pipelined(t *testing.T, url string, mode redisx.Mode, timeout time.Duration, flushers int) (redis.UniversalClient, *redisx.Coalescer) {
	t.Helper()
	c, err := redisx.NewClient(url, mode, timeout)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c, redisx.AutoPipeline(c, flushers, 0)
}

// result is what one call returned.
type result struct {
	v   any
	err error
}

func call(ctx context.Context, c redis.UniversalClient, s *redis.Script, key string, arg any) <-chan result {
	ch := make(chan result, 1)
	go func() {
		v, err := s.Run(ctx, c, []string{key}, arg).Result()
		ch <- result{v, err}
	}()
	return ch
}

func TestAutoPipelineEachCallerGetsItsReply(t *testing.T) {
	t.Parallel()
	r := testharness.StartRedis(t)
	c, p := pipelined(t, r.URL(), redisx.Standalone, 10*time.Second, 0)
	ctx := context.Background()
	if err := echoScript.Load(ctx, c).Err(); err != nil {
		t.Fatal(err)
	}
	const callers, calls = 64, 50
	var wg sync.WaitGroup
	errs := make(chan error, callers)
	for g := range callers {
		wg.Go(func() {
			for i := range calls {
				want := fmt.Sprintf("%d/%d", g, i)
				v, err := echoScript.Run(ctx, c, []string{fmt.Sprintf("rs:{t/%d}:n", g)}, want).Result()
				if err != nil || v != want {
					errs <- fmt.Errorf("caller %d call %d = %v, %v; want %q", g, i, v, err, want)
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	for g := range callers {
		if n, err := c.Get(ctx, fmt.Sprintf("rs:{t/%d}:n", g)).Int(); err != nil || n != calls {
			t.Errorf("caller %d ran %d scripts, %v; want %d", g, n, err, calls)
		}
	}
	st := p.Stats()
	t.Logf("%d calls in %d round trips", st.Calls, st.RoundTrips)
	if st.Calls != callers*calls {
		t.Errorf("Stats().Calls = %d, want %d", st.Calls, callers*calls)
	}
}

// TestAutoPipelineBatches holds Redis paused while callers pile up, so the
// calls queued behind the ones in flight must leave as one pipeline.
func TestAutoPipelineBatches(t *testing.T) {
	t.Parallel()
	r := testharness.StartRedis(t)
	c, p := pipelined(t, r.URL(), redisx.Standalone, 10*time.Second, 2)
	ctx := context.Background()
	if err := echoScript.Run(ctx, c, []string{"rs:{t}:warm"}, "x").Err(); err != nil {
		t.Fatal(err)
	}
	before := p.Stats()
	r.Pause()
	const callers = 64
	res := make([]<-chan result, callers)
	for i := range res {
		res[i] = call(ctx, c, echoScript, fmt.Sprintf("rs:{t/%d}:n", i), i)
	}
	testkit.Eventually(t, 20*time.Second, "every call to reach the pipeliner", func() bool { return p.Stats().Calls-before.Calls == callers })
	r.Resume()
	for i, ch := range res {
		if got := <-ch; got.err != nil || got.v != fmt.Sprint(i) {
			t.Errorf("call %d = %v, %v", i, got.v, got.err)
		}
	}
	// Two calls went out on their own; the 62 queued behind them need at
	// most two pipelines, or a few more if a caller was slow to queue.
	trips := p.Stats().RoundTrips - before.RoundTrips
	t.Logf("%d calls in %d round trips", callers, trips)
	if trips > callers/4 {
		t.Errorf("%d calls took %d round trips; want them batched", callers, trips)
	}
}

var (
	failScript  = redisx.NewScript("test.fail", `return redis.error_reply('ERR test failure')`)
	crashScript = redisx.NewScript("test.crash", `return redis.call('NO-SUCH-COMMAND', KEYS[1])`)
	nilScript   = redisx.NewScript("test.nil", `return false`)
	// unloaded is never loaded: EVALSHA gets NOSCRIPT, and Run falls back to EVAL.
	unloaded = redisx.NewScript("test.unloaded", `return 'loaded by EVAL ' .. ARGV[1]`)
)

// TestAutoPipelineErrorsStayWithTheirCall sends failing scripts in the same
// pipeline as good ones: each gets its own error, the others their replies.
func TestAutoPipelineErrorsStayWithTheirCall(t *testing.T) {
	t.Parallel()
	r := testharness.StartRedis(t)
	c, p := pipelined(t, r.URL(), redisx.Standalone, 10*time.Second, 1)
	ctx := context.Background()
	if err := redisx.LoadScripts(ctx, c, echoScript, failScript, crashScript, nilScript); err != nil {
		t.Fatal(err)
	}
	filler := call(ctx, c, echoScript, "rs:{t}:filler", "f") // goes out alone and holds the slot
	testkit.Eventually(t, 20*time.Second, "the filler", func() bool { return p.Stats().Calls == 1 })
	r.Pause()
	before := p.Stats()
	good1 := call(ctx, c, echoScript, "rs:{t}:a", "a")
	fail := call(ctx, c, failScript, "rs:{t}:b", nil)
	crash := call(ctx, c, crashScript, "rs:{t}:c", nil)
	nilReply := call(ctx, c, nilScript, "rs:{t}:d", nil)
	fallback := call(ctx, c, unloaded, "rs:{t}:e", "e")
	noscript := make(chan error, 1)
	go func() {
		noscript <- c.EvalSha(ctx, strings.Repeat("0", 40), []string{"rs:{t}:f"}).Err()
	}()
	good2 := call(ctx, c, echoScript, "rs:{t}:g", "g")
	testkit.Eventually(t, 20*time.Second, "every call to queue", func() bool { return p.Stats().Calls-before.Calls == 7 })
	r.Resume()

	if got := <-filler; got.err != nil || got.v != "f" {
		t.Errorf("filler = %v, %v", got.v, got.err)
	}
	if got := <-good1; got.err != nil || got.v != "a" {
		t.Errorf("good call before the failures = %v, %v", got.v, got.err)
	}
	if got := <-fail; got.err == nil || !strings.Contains(got.err.Error(), "test failure") {
		t.Errorf("error_reply script = %v, %v; want its own error", got.v, got.err)
	}
	if got := <-crash; got.err == nil || !strings.Contains(strings.ToLower(got.err.Error()), "unknown") {
		t.Errorf("crashing script = %v, %v; want its own error", got.v, got.err)
	}
	if got := <-nilReply; !errors.Is(got.err, redis.Nil) {
		t.Errorf("script returning false = %v, %v; want redis.Nil", got.v, got.err)
	}
	if got := <-fallback; got.err != nil || got.v != "loaded by EVAL e" {
		t.Errorf("unloaded script = %v, %v; want the EVAL fallback's reply", got.v, got.err)
	}
	if err := <-noscript; err == nil || !strings.Contains(err.Error(), "NOSCRIPT") {
		t.Errorf("EVALSHA of an unknown script = %v; want NOSCRIPT", err)
	}
	if got := <-good2; got.err != nil || got.v != "g" {
		t.Errorf("good call after the failures = %v, %v", got.v, got.err)
	}
	if trips := p.Stats().RoundTrips - before.RoundTrips; trips > 3 {
		t.Errorf("%d round trips; want the calls pipelined together", trips)
	}
}

// TestAutoPipelineCancellation cancels calls while they wait in the queue
// and while their pipeline is in flight, with Redis paused to hold them
// there: each returns its context's error at once, the others complete.
func TestAutoPipelineCancellation(t *testing.T) {
	t.Parallel()
	r := testharness.StartRedis(t)
	c, p := pipelined(t, r.URL(), redisx.Standalone, 10*time.Second, 1)
	bg := context.Background()
	if err := echoScript.Load(bg, c).Err(); err != nil {
		t.Fatal(err)
	}
	r.Pause()
	// The filler holds the only slot until its deadline; everything after
	// it queues.
	fctx, fcancel := context.WithTimeout(bg, 2*time.Second)
	defer fcancel()
	filler := call(fctx, c, echoScript, "rs:{t}:filler", "f")
	testkit.Eventually(t, 20*time.Second, "the filler", func() bool { return p.Stats().RoundTrips == 1 })

	dead, cancelDead := context.WithCancel(bg)
	cancelDead()
	early := call(dead, c, echoScript, "rs:{t}:early", "x") // cancelled before it queued
	queuedCtx, cancelQueued := context.WithCancel(bg)
	queued := call(queuedCtx, c, echoScript, "rs:{t}:queued", "q")
	keep := call(bg, c, echoScript, "rs:{t}:keep", "k")
	inflightCtx, cancelInflight := context.WithCancel(bg)
	inflight := call(inflightCtx, c, echoScript, "rs:{t}:inflight", "i")
	testkit.Eventually(t, 20*time.Second, "the calls to queue", func() bool { return p.Stats().Calls == 5 })

	if got := <-early; !errors.Is(got.err, context.Canceled) {
		t.Errorf("call with a cancelled context = %v, %v", got.v, got.err)
	}
	cancelQueued()
	if got := <-queued; !errors.Is(got.err, context.Canceled) {
		t.Errorf("call cancelled while queued = %v, %v", got.v, got.err)
	}
	// The filler's deadline frees the slot and the flusher sends the rest:
	// keep and inflight, in one pipeline that Redis, paused, holds.
	if got := <-filler; got.err == nil {
		t.Errorf("filler on a paused Redis = %v; want its deadline's error", got.v)
	}
	testkit.Eventually(t, 20*time.Second, "the pipeline to be sent", func() bool { return p.Stats().RoundTrips == 2 })
	cancelInflight()
	if got := <-inflight; !errors.Is(got.err, context.Canceled) {
		t.Errorf("call cancelled in flight = %v, %v", got.v, got.err)
	}
	r.Resume()
	if got := <-keep; got.err != nil || got.v != "k" {
		t.Errorf("neighbour of the cancelled calls = %v, %v", got.v, got.err)
	}
	for key, want := range map[string]int{"early": 0, "queued": 0, "keep": 1, "inflight": 1} {
		n, err := c.Get(bg, "rs:{t}:"+key).Int()
		if errors.Is(err, redis.Nil) {
			n, err = 0, nil
		}
		if err != nil || n != want {
			t.Errorf("%s ran %d times, %v; want %d (cancelled before sending: never; after: unknown to the caller but sent)", key, n, err, want)
		}
	}
	if st := p.Stats(); st.RoundTrips != 2 {
		t.Errorf("Stats() = %+v; want the filler's and one pipeline", st)
	}
}

// TestAutoPipelineStoreTimeout runs store-like calls on a paused Redis:
// every caller, with or without a deadline of its own, fails within the
// client's timeout with an error Classify calls unavailable.
func TestAutoPipelineStoreTimeout(t *testing.T) {
	t.Parallel()
	r := testharness.StartRedis(t)
	const timeout = 300 * time.Millisecond
	c, p := pipelined(t, r.URL(), redisx.Standalone, timeout, 0)
	bg := context.Background()
	if err := echoScript.Load(bg, c).Err(); err != nil {
		t.Fatal(err)
	}
	r.Pause()
	defer r.Resume()
	var wg sync.WaitGroup
	errs := make([]error, 32)
	for i := range errs {
		wg.Go(func() {
			ctx := bg
			if i%2 == 0 { // as the stores do
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(bg, timeout)
				defer cancel()
			}
			_, err := echoScript.Run(ctx, c, []string{fmt.Sprintf("rs:{t/%d}:n", i)}, i).Result()
			errs[i] = redisx.Classify(bg, err)
		})
	}
	wg.Wait()
	for i, err := range errs {
		if !errors.Is(err, store.ErrUnavailable) {
			t.Errorf("call %d on a paused Redis: %v; want store.ErrUnavailable", i, err)
		}
	}
	t.Logf("%+v", p.Stats())
}

// TestClusterAutoPipeline sends a burst over keys of every slot owner, then
// pauses one master: calls for the others still complete, in pipelines of
// their own, and the paused master's calls complete when it resumes.
func TestClusterAutoPipeline(t *testing.T) {
	t.Parallel()
	cl := testharness.StartCluster(t, 3)
	c, p := pipelined(t, cl.URL(), redisx.Cluster, 10*time.Second, 0)
	ctx := context.Background()
	const callers, calls, keys = 48, 20, 96
	var wg sync.WaitGroup
	errs := make(chan error, callers)
	for g := range callers {
		wg.Go(func() {
			for i := range calls {
				key := fmt.Sprintf("rs:{k%d}:n", (g*calls+i)%keys)
				want := fmt.Sprintf("%d/%d", g, i)
				if v, err := echoScript.Run(ctx, c, []string{key}, want).Result(); err != nil || v != want {
					errs <- fmt.Errorf("caller %d call %d on %s = %v, %v", g, i, key, v, err)
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	total := 0
	for k := range keys {
		n, err := c.Get(ctx, fmt.Sprintf("rs:{k%d}:n", k)).Int()
		if err != nil {
			t.Fatal(err)
		}
		total += n
	}
	if total != callers*calls {
		t.Errorf("%d scripts ran, want %d", total, callers*calls)
	}
	t.Logf("burst: %+v", p.Stats())

	paused := cl.Masters()[0]
	onPaused := map[string]bool{}
	for k := range keys {
		key := fmt.Sprintf("rs:{k%d}:n", k)
		onPaused[key] = cl.Owner(t, cl.KeySlot(t, key)) == paused
	}
	var slow, fast []<-chan result
	paused.Pause()
	for k := range keys {
		key := fmt.Sprintf("rs:{k%d}:n", k)
		ch := call(ctx, c, echoScript, key, key)
		if onPaused[key] {
			slow = append(slow, ch)
		} else {
			fast = append(fast, ch)
		}
	}
	for _, ch := range fast {
		if got := <-ch; got.err != nil {
			t.Errorf("call to a running master while another is paused: %v", got.err)
		}
	}
	paused.Resume()
	for _, ch := range slow {
		if got := <-ch; got.err != nil {
			t.Errorf("call to the paused master after it resumed: %v", got.err)
		}
	}
	if len(slow) == 0 || len(fast) == 0 {
		t.Fatalf("%d keys on the paused master, %d elsewhere; want both", len(slow), len(fast))
	}
}
