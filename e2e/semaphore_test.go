package e2e

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/durationpb"

	v1 "github.com/seed-a88e5317/resilience-sidecar/clients/go/resiliencev1"
	"github.com/seed-a88e5317/resilience-sidecar/internal/ratelimit"
	"github.com/seed-a88e5317/resilience-sidecar/internal/semaphore"
	"github.com/seed-a88e5317/resilience-sidecar/internal/testharness"
	"github.com/seed-a88e5317/resilience-sidecar/internal/testkit"
)

// Issue 22, section 3: bulkheads. Real sidecars on a real Redis and on a
// 3-master Cluster; a shared resource checks that never more than limit
// holders are inside it at once.

// bulkhead is the resource a semaphore protects: it counts the holders
// inside, keyed by fencing token, and records every time more than limit
// were inside together, and any token granted twice.
type bulkhead struct {
	limit int

	mu     sync.Mutex
	inside map[uint64]string // fencing token -> holder
	seen   map[uint64]bool
	peak   int
	over   []string
	dupes  int
	grants int
}

func newBulkhead(limit int) *bulkhead {
	return &bulkhead{limit: limit, inside: map[uint64]string{}, seen: map[uint64]bool{}}
}

func (b *bulkhead) enter(holder string, token uint64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.grants++
	if b.seen[token] {
		b.dupes++
	}
	b.seen[token] = true
	b.inside[token] = holder
	if n := len(b.inside); n > b.limit {
		b.over = append(b.over, fmt.Sprintf("%d inside at once (limit %d) when %s entered with token %d", n, b.limit, holder, token))
	} else if n > b.peak {
		b.peak = n
	}
}

func (b *bulkhead) leave(token uint64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	delete(b.inside, token)
}

// check fails t if the bound was broken, or if it was never reached (the
// test then proved nothing).
func (b *bulkhead) check(t *testing.T) {
	t.Helper()
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(b.over) > 0 || b.dupes > 0 {
		t.Fatalf("bulkhead broken: %d duplicate tokens; %d overlaps, first %q", b.dupes, len(b.over), b.over)
	}
	if b.peak != b.limit {
		t.Fatalf("peak %d holders inside; want the limit %d (fewer means the load never filled the bulkhead)", b.peak, b.limit)
	}
}

// permitWorker loops acquire (waiting) -> work inside the bulkhead ->
// release until stop, counting its grants. It returns at its first error,
// which is reported unless the sidecar was killed (victim).
func permitWorker(c v1.SemaphoreServiceClient, name, holder string, limit uint32, b *bulkhead, grants *atomic.Int64, stop <-chan struct{}, errs chan<- error, victim bool) {
	for i := 0; ; i++ {
		select {
		case <-stop:
			return
		default:
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		r, err := c.AcquirePermit(ctx, &v1.AcquirePermitRequest{Name: name, Limit: limit, Ttl: durationpb.New(2 * time.Second),
			WaitTimeout: durationpb.New(30 * time.Second), Owner: holder})
		cancel()
		if err != nil || !r.GetAcquired() {
			if !victim {
				errs <- fmt.Errorf("%s acquire %d: %v, %w", holder, i, r, err)
			}
			return
		}
		p := r.GetPermit()
		b.enter(holder, p.GetFencingToken())
		grants.Add(1)
		time.Sleep(time.Duration(1+i%3) * time.Millisecond) // real time: the work the bulkhead bounds
		b.leave(p.GetFencingToken())
		ctx, cancel = context.WithTimeout(context.Background(), 10*time.Second)
		_, err = c.ReleasePermit(ctx, &v1.ReleasePermitRequest{Name: name, PermitId: p.GetPermitId()})
		cancel()
		if err != nil {
			if !victim {
				errs <- fmt.Errorf("%s release %d: %w", holder, i, err)
			}
			return
		}
	}
}

// semTopologies are the shared stores the bulkhead tests run on.
func semTopologies() []struct {
	name string
	args func(t *testing.T) []string
} {
	return []struct {
		name string
		args func(t *testing.T) []string
	}{
		{"redis", func(t *testing.T) []string { return []string{"--redis-url", testharness.StartRedis(t).URL()} }},
		{"cluster", func(t *testing.T) []string {
			return []string{"--redis-mode", "cluster", "--redis-url", testharness.StartCluster(t, 3).URL()}
		}},
	}
}

func semClient(t *testing.T, s *testharness.Sidecar) v1.SemaphoreServiceClient {
	t.Helper()
	return v1.NewSemaphoreServiceClient(s.Conn(t))
}

// TestSemaphoreBulkheadAcrossSidecars: 3 sidecars x 8 clients hammer one
// semaphore of limit 4 for E2E_RATELIMIT_SECONDS (10 s by default): never
// more than 4 inside, every client served.
func TestSemaphoreBulkheadAcrossSidecars(t *testing.T) {
	bin := testharness.BuildSidecar(t)
	for _, tp := range semTopologies() {
		t.Run(tp.name, func(t *testing.T) {
			args := tp.args(t)
			var sidecars []*testharness.Sidecar
			for range 3 {
				sidecars = append(sidecars, testharness.StartSidecar(t, bin, args...))
			}
			const limit, perSidecar = 4, 8
			b := newBulkhead(limit)
			stop := make(chan struct{})
			errs := make(chan error, 3*perSidecar)
			counts := make([]atomic.Int64, 3*perSidecar)
			var wg sync.WaitGroup
			for i := range 3 * perSidecar {
				c := semClient(t, sidecars[i%3])
				wg.Go(func() { permitWorker(c, "pool", fmt.Sprint("w", i), limit, b, &counts[i], stop, errs, false) })
			}
			run := loadDuration(t)
			time.Sleep(run) // real time: the load runs for a while
			close(stop)
			wg.Wait()
			close(errs)
			for err := range errs {
				t.Error(err)
			}
			b.check(t)
			for i := range counts {
				if counts[i].Load() == 0 {
					t.Errorf("client w%d was never served", i)
				}
			}
			t.Logf("%d grants in %v, peak %d of %d", b.grants, run, b.peak, limit)
		})
	}
}

// TestSemaphoreScriptsPreloaded: the sidecar loads the semaphore's and
// the rate limiter's scripts at start, so that their first call is an
// EVALSHA, not an EVAL of the whole script.
func TestSemaphoreScriptsPreloaded(t *testing.T) {
	r := testharness.StartRedis(t)
	testharness.StartSidecar(t, testharness.BuildSidecar(t), "--redis-url", r.URL())
	scripts := slices.Concat(semaphore.Scripts, ratelimit.Scripts)
	hashes := make([]string, len(scripts))
	for i, s := range scripts {
		hashes[i] = s.Hash()
	}
	loaded, err := r.Client(t).ScriptExists(ctxT(t, 10*time.Second), hashes...).Result()
	if err != nil {
		t.Fatal(err)
	}
	for i, ok := range loaded {
		if !ok {
			t.Errorf("script %d of %d (%s) not loaded at start", i, len(scripts), hashes[i])
		}
	}
}

// TestSemaphoreHoldersAndSidecarKilled: client processes holding permits
// through HoldPermit are SIGKILLed, then a sidecar is; the bound holds
// throughout, the killed holders' permits come back long before their TTL,
// and the survivors go on.
func TestSemaphoreHoldersAndSidecarKilled(t *testing.T) {
	bin := testharness.BuildSidecar(t)
	for _, tp := range semTopologies() {
		t.Run(tp.name, func(t *testing.T) {
			args := tp.args(t)
			var sidecars []*testharness.Sidecar
			for range 3 {
				sidecars = append(sidecars, testharness.StartSidecar(t, bin, args...))
			}
			const limit = 3
			b := newBulkhead(limit)
			// Two child processes hold permits (a minute's TTL) through
			// the second sidecar.
			var children []*exec.Cmd
			var childTokens []uint64
			for range 2 {
				cmd, token := startPermitChild(t, sidecars[1].Addr(), "pool", limit)
				b.enter("child", token)
				children = append(children, cmd)
				childTokens = append(childTokens, token)
			}
			stop := make(chan struct{})
			errs := make(chan error, 12)
			var grants atomic.Int64
			var wg sync.WaitGroup
			for i := range 12 {
				c := semClient(t, sidecars[i%3])
				wg.Go(func() { permitWorker(c, "pool", fmt.Sprint("w", i), limit, b, &grants, stop, errs, i%3 == 0) })
			}
			time.Sleep(time.Second) // real time: load with one free permit
			for i, cmd := range children {
				b.leave(childTokens[i]) // from here on the child does nothing
				if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
					t.Fatal(err)
				}
			}
			get := semClient(t, sidecars[2])
			testkit.EventuallyNil(t, 20*time.Second, "the killed children's permits given back (their TTL is a minute)", func() error {
				r, err := get.GetSemaphore(ctxT(t, 10*time.Second), &v1.GetSemaphoreRequest{Name: "pool"})
				if err != nil {
					return err
				}
				for _, h := range r.GetHolders() {
					if h.GetOwner() == "child" {
						return fmt.Errorf("still held by a child: %v", h)
					}
				}
				return nil
			})
			time.Sleep(time.Second) // real time: load with every permit
			before := grants.Load()
			sidecars[0].Kill()
			time.Sleep(3 * time.Second) // real time: the survivors go on past the victims' 2 s TTL
			close(stop)
			wg.Wait()
			close(errs)
			for err := range errs {
				t.Error(err)
			}
			b.check(t)
			if grants.Load() <= before {
				t.Fatal("no grant after the sidecar was killed: the survivors stalled")
			}
			t.Logf("%d grants, %d after the kill", grants.Load(), grants.Load()-before)
		})
	}
}

// startPermitChild starts a client process that holds a permit of name
// and returns it with the permit's fencing token.
func startPermitChild(t *testing.T, addr, name string, limit int) (*exec.Cmd, uint64) {
	t.Helper()
	child := exec.Command(os.Args[0], "-test.run=^$")
	child.Env = append(os.Environ(), childModeEnv+"=hold-permit", "E2E_ADDR="+addr, "E2E_KEY="+name, fmt.Sprint("E2E_LIMIT=", limit))
	child.Stderr = os.Stderr
	out, err := child.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := child.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = child.Process.Kill(); _ = child.Wait() })
	line, err := bufio.NewReader(out).ReadString('\n')
	var token uint64
	if _, serr := fmt.Sscanf(line, "HELD %d", &token); err != nil || serr != nil {
		t.Fatalf("child did not take a permit: %q %v %v", line, err, serr)
	}
	return child, token
}

// childHoldPermit holds a permit through a HoldPermit session with a
// minute's TTL, prints "HELD <token>" and waits to be killed.
func childHoldPermit(addr, name, limitText string) int {
	limit, err := strconv.ParseUint(limitText, 10, 32)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer conn.Close()
	stream, err := v1.NewSemaphoreServiceClient(conn).HoldPermit(context.Background())
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	err = stream.Send(&v1.HoldPermitRequest{Msg: &v1.HoldPermitRequest_Acquire_{Acquire: &v1.HoldPermitRequest_Acquire{
		Name: name, Limit: uint32(limit), Ttl: durationpb.New(time.Minute), WaitTimeout: durationpb.New(30 * time.Second), Owner: "child"}}})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	m, err := stream.Recv()
	if err != nil || m.GetAcquired() == nil {
		fmt.Fprintln(os.Stderr, "not acquired:", m, err)
		return 1
	}
	fmt.Printf("HELD %d\n", m.GetAcquired().GetFencingToken())
	for {
		if _, err := stream.Recv(); err != nil {
			return 1
		}
	}
}

// TestSemaphoreFIFOAcrossSidecars: waiters through two sidecars are served
// in the order they arrived.
func TestSemaphoreFIFOAcrossSidecars(t *testing.T) {
	bin := testharness.BuildSidecar(t)
	for _, tp := range semTopologies() {
		t.Run(tp.name, func(t *testing.T) {
			args := tp.args(t)
			testFIFO(t, testharness.StartSidecar(t, bin, args...), testharness.StartSidecar(t, bin, args...))
		})
	}
}

func testFIFO(t *testing.T, sa, sb *testharness.Sidecar) {
	a, b := semClient(t, sa), semClient(t, sb)
	ctx := ctxT(t, time.Minute)
	first, err := a.AcquirePermit(ctx, &v1.AcquirePermitRequest{Name: "one", Limit: 1, Ttl: durationpb.New(time.Minute)})
	if err != nil || !first.GetAcquired() {
		t.Fatalf("AcquirePermit = %v, %v", first, err)
	}
	type grant struct {
		who string
		p   *v1.Permit
	}
	granted := make(chan grant, 4)
	order := []struct {
		who string
		c   v1.SemaphoreServiceClient
	}{{"a1", a}, {"b1", b}, {"a2", a}, {"b2", b}}
	for i, w := range order {
		go func() {
			r, err := w.c.AcquirePermit(ctx, &v1.AcquirePermitRequest{Name: "one", Limit: 1, Ttl: durationpb.New(time.Minute),
				WaitTimeout: durationpb.New(50 * time.Second), Owner: w.who})
			if err != nil || !r.GetAcquired() {
				t.Errorf("%s: %v, %v", w.who, r, err)
				granted <- grant{who: w.who}
				return
			}
			granted <- grant{w.who, r.GetPermit()}
		}()
		// The next one arrives once this one waits.
		testkit.EventuallyNil(t, 10*time.Second, w.who+" waiting", func() error {
			r, err := a.GetSemaphore(ctx, &v1.GetSemaphoreRequest{Name: "one"})
			if err == nil && r.GetWaiters() != uint32(i+1) {
				err = fmt.Errorf("waiters %d", r.GetWaiters())
			}
			return err
		})
	}
	prev := first.GetPermit()
	var got []string
	for range order {
		rel := a
		if strings.HasPrefix(prev.GetOwner(), "b") {
			rel = b
		}
		if _, err := rel.ReleasePermit(ctx, &v1.ReleasePermitRequest{Name: "one", PermitId: prev.GetPermitId()}); err != nil {
			t.Fatal(err)
		}
		g := <-granted
		if g.p == nil {
			t.FailNow()
		}
		got = append(got, g.who)
		prev = g.p
	}
	if strings.Join(got, ",") != "a1,b1,a2,b2" {
		t.Fatalf("served %v; want the arrival order a1,b1,a2,b2", got)
	}
}

// TestTimedOutPermitAcquiresLeaveNothingHeld: acquisitions whose deadlines
// (1-6 ms) expire mid-call leave no permit held for the hour of their TTL.
func TestTimedOutPermitAcquiresLeaveNothingHeld(t *testing.T) {
	bin := testharness.BuildSidecar(t)
	for _, tp := range orphanTopologies(t) {
		t.Run(tp.name, func(t *testing.T) {
			sc := testharness.StartSidecar(t, bin, tp.args(t)...)
			c := semClient(t, sc)
			granted, failed := shortDeadlineCalls(t, func(ctx context.Context, i int) (bool, error) {
				r, err := c.AcquirePermit(ctx, &v1.AcquirePermitRequest{Name: "orphans", Limit: orphanCalls, Ttl: durationpb.New(time.Hour)})
				if err != nil || !r.GetAcquired() {
					return false, err
				}
				rctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				defer cancel()
				if _, err := c.ReleasePermit(rctx, &v1.ReleasePermitRequest{Name: "orphans", PermitId: r.GetPermit().GetPermitId()}); err != nil {
					t.Errorf("release %d: %v", i, err)
				}
				return true, nil
			})
			ctx := ctxT(t, time.Minute)
			first, after := eventuallyNone(t, "permits", func() int {
				r, err := c.GetSemaphore(ctx, &v1.GetSemaphoreRequest{Name: "orphans"})
				if err != nil {
					t.Fatal(err)
				}
				return int(r.GetHeld())
			})
			r, err := c.GetSemaphore(ctx, &v1.GetSemaphoreRequest{Name: "orphans"})
			if err != nil {
				t.Fatal(err)
			}
			// The store granted permits: those the clients did not get
			// were given back.
			if failed == 0 || r.GetLastFencingToken() == 0 {
				t.Fatalf("%d calls failed, last token %d: no deadline expired while the store granted, so the test proved nothing", failed, r.GetLastFencingToken())
			}
			t.Logf("%d calls: %d granted and released by the client, %d failed; right after them %d permits held, none from %v on",
				orphanCalls, granted, failed, first, after.Round(time.Millisecond))
		})
	}
}

// TestSemaphoreRedisFrozen: with Redis frozen (SIGSTOP), acquisitions,
// waits and renewals answer UNAVAILABLE/STORE_UNAVAILABLE instead of
// hanging; once Redis is back, whatever the frozen calls may have been
// granted is given back, and the permits held before still count.
func TestSemaphoreRedisFrozen(t *testing.T) {
	rd := testharness.StartRedis(t)
	sc := startSidecars(t, 1, rd.URL(), "--store-timeout", "300ms", "--health-interval", "100ms")[0]
	c := semClient(t, sc)
	ctx := ctxT(t, time.Minute)
	held, err := c.AcquirePermit(ctx, &v1.AcquirePermitRequest{Name: "frozen", Limit: 2, Ttl: durationpb.New(time.Hour), Owner: "before"})
	if err != nil || !held.GetAcquired() {
		t.Fatalf("AcquirePermit = %v, %v", held, err)
	}
	rd.Pause()
	resumed := false
	t.Cleanup(func() {
		if !resumed {
			rd.Resume()
		}
	})
	calls := map[string]func(context.Context) error{
		"AcquirePermit": func(ctx context.Context) error {
			_, err := c.AcquirePermit(ctx, &v1.AcquirePermitRequest{Name: "frozen", Limit: 2, Ttl: durationpb.New(time.Hour)})
			return err
		},
		"AcquirePermit waiting": func(ctx context.Context) error {
			_, err := c.AcquirePermit(ctx, &v1.AcquirePermitRequest{Name: "frozen", Limit: 2, Ttl: durationpb.New(time.Hour), WaitTimeout: durationpb.New(time.Minute)})
			return err
		},
		"RenewPermit": func(ctx context.Context) error {
			_, err := c.RenewPermit(ctx, &v1.RenewPermitRequest{Name: "frozen", PermitId: held.GetPermit().GetPermitId(), Ttl: durationpb.New(time.Hour)})
			return err
		},
		"GetSemaphore": func(ctx context.Context) error {
			_, err := c.GetSemaphore(ctx, &v1.GetSemaphoreRequest{Name: "frozen"})
			return err
		},
	}
	for name, call := range calls {
		// The call's own deadline (10 s) is far above the store timeout:
		// the answer comes from the sidecar's bound, not the client's.
		err := call(ctxT(t, 10*time.Second))
		if code, reason := reasonOf(err); code != codes.Unavailable || reason != "STORE_UNAVAILABLE" {
			t.Errorf("%s with Redis frozen = %v; want UNAVAILABLE/STORE_UNAVAILABLE", name, err)
		}
	}
	rd.Resume()
	resumed = true
	testkit.EventuallyNil(t, 20*time.Second, "only the permit taken before the freeze held", func() error {
		r, err := c.GetSemaphore(ctx, &v1.GetSemaphoreRequest{Name: "frozen"})
		if err == nil && (r.GetHeld() != 1 || r.GetHolders()[0].GetOwner() != "before") {
			err = fmt.Errorf("held %d: %v", r.GetHeld(), r.GetHolders())
		}
		return err
	})
}

// semScripts counts, through MONITOR, the scripts Redis runs on the
// semaphore name (of namespace "default"), whoever sends them; other
// services' background work is not counted.
func semScripts(t *testing.T, rd *testharness.Redis, name string) *atomic.Int64 {
	t.Helper()
	conn, err := net.Dial("tcp", rd.Addr())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Write([]byte("MONITOR\r\n")); err != nil {
		t.Fatal(err)
	}
	r := bufio.NewReader(conn)
	if line, err := r.ReadString('\n'); err != nil || !strings.HasPrefix(line, "+OK") {
		t.Fatalf("MONITOR: %q %v", line, err)
	}
	var n atomic.Int64
	done := make(chan struct{})
	go func() {
		defer close(done)
		tag := "{default/sem/" + name + "}"
		for {
			line, err := r.ReadString('\n')
			if err != nil {
				return // the cleanup closed the connection
			}
			// Commands a script calls show as "[0 lua]": not counted.
			if strings.Contains(line, tag) && !strings.Contains(line, " lua]") &&
				(strings.Contains(line, `"evalsha"`) || strings.Contains(line, `"eval"`)) {
				n.Add(1)
			}
		}
	}()
	t.Cleanup(func() {
		_ = conn.Close()
		<-done
	})
	return &n
}

// TestSemaphoreWaitersNeitherPollNorHerd: 40 callers waiting through two
// sidecars cost Redis nothing while nothing happens, and a release costs
// a few scripts, not one per waiter.
func TestSemaphoreWaitersNeitherPollNorHerd(t *testing.T) {
	rd := testharness.StartRedis(t)
	sidecars := startSidecars(t, 2, rd.URL())
	ctx := ctxT(t, 2*time.Minute)
	c := semClient(t, sidecars[0])
	held, err := c.AcquirePermit(ctx, &v1.AcquirePermitRequest{Name: "herd", Limit: 1, Ttl: durationpb.New(time.Minute)})
	if err != nil || !held.GetAcquired() {
		t.Fatalf("AcquirePermit = %v, %v", held, err)
	}
	const waiters = 40
	granted := make(chan *v1.Permit, waiters)
	for i := range waiters {
		wc := semClient(t, sidecars[i%2])
		go func() {
			r, err := wc.AcquirePermit(ctx, &v1.AcquirePermitRequest{Name: "herd", Limit: 1, Ttl: durationpb.New(time.Minute),
				WaitTimeout: durationpb.New(90 * time.Second), Owner: fmt.Sprint("w", i)})
			if err != nil || !r.GetAcquired() {
				t.Errorf("w%d: %v, %v", i, r, err)
				granted <- nil
				return
			}
			granted <- r.GetPermit()
		}()
	}
	testkit.EventuallyNil(t, 20*time.Second, "all waiting", func() error {
		r, err := c.GetSemaphore(ctx, &v1.GetSemaphoreRequest{Name: "herd"})
		if err == nil && r.GetWaiters() != waiters {
			err = fmt.Errorf("waiters %d", r.GetWaiters())
		}
		return err
	})
	scripts := semScripts(t, rd, "herd")
	// The last callers' joins may still wake each head for one refresh
	// (its try reports the sidecar's waiters); let those run first.
	// real time: until no script ran for 500 ms (at most 20 tries), so a
	// straggling refresh on a loaded machine is not mistaken for polling.
	settled := scripts.Load()
	for range 20 {
		time.Sleep(500 * time.Millisecond)
		if n := scripts.Load(); n != settled {
			settled = n
			continue
		}
		break
	}
	time.Sleep(2 * time.Second) // real time: waiters that polled would show up here
	if idle := scripts.Load() - settled; idle != 0 {
		t.Fatalf("%d scripts ran in 2 s while %d callers waited and nothing changed: they poll", idle, waiters)
	}
	before := scripts.Load()
	if _, err := c.ReleasePermit(ctx, &v1.ReleasePermitRequest{Name: "herd", PermitId: held.GetPermit().GetPermitId()}); err != nil {
		t.Fatal(err)
	}
	p := <-granted
	if p == nil {
		t.FailNow()
	}
	time.Sleep(time.Second) // real time: any herd of late tries would run now
	// The release, one try per sidecar with waiters, and the next head's
	// refused try in the granted sidecar: about 4; a herd is 40.
	if n := scripts.Load() - before; n > 8 {
		t.Fatalf("one release and one grant cost %d scripts with %d waiters: a thundering herd", n, waiters)
	} else {
		t.Logf("one release and one grant with %d waiters on 2 sidecars: %d scripts", waiters, n)
	}
	// Let the rest through so that the test ends promptly.
	for range waiters - 1 {
		rel := p
		if _, err := c.ReleasePermit(ctx, &v1.ReleasePermitRequest{Name: "herd", PermitId: rel.GetPermitId()}); err != nil {
			t.Fatal(err)
		}
		if p = <-granted; p == nil {
			t.FailNow()
		}
	}
}
