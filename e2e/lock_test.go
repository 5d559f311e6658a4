package e2e

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/protobuf/types/known/durationpb"

	v1 "github.com/seed-a88e5317/resilience-sidecar/clients/go/resiliencev1"
	"github.com/seed-a88e5317/resilience-sidecar/internal/linearize"
	"github.com/seed-a88e5317/resilience-sidecar/internal/redisx"
	"github.com/seed-a88e5317/resilience-sidecar/internal/testharness"
	"github.com/seed-a88e5317/resilience-sidecar/internal/testkit"
)

// fencedCounter is the resource a lock protects, with Kleppmann's fencing
// check on reads and writes: it refuses any token below the highest it has
// seen, and a second holder presenting the same token (a duplicate grant).
type fencedCounter struct {
	mu        sync.Mutex
	value     int
	maxToken  uint64
	maxHolder string
	accepted  int
	rejected  int
	dupes     int
}

func (r *fencedCounter) read(holder string, token uint64) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	switch {
	case token < r.maxToken:
		r.rejected++
		return 0, errStale
	case token == r.maxToken && holder != r.maxHolder:
		r.dupes++
		return 0, fmt.Errorf("token %d granted to both %s and %s", token, r.maxHolder, holder)
	}
	r.maxToken, r.maxHolder = token, holder
	return r.value, nil
}

func (r *fencedCounter) write(holder string, token uint64, v int) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if token != r.maxToken || holder != r.maxHolder {
		r.rejected++
		return errStale
	}
	r.value = v
	r.accepted++
	return nil
}

type contentionResult struct {
	res          *fencedCounter
	overlaps     int64
	releasesLost int64
}

// runContention has clients spread over the sidecars do rounds of
// acquire -> fenced read-modify-write -> release on one key. sleepEvery > 0
// makes every n-th critical section outlast the TTL.
func runContention(t *testing.T, sidecars []*testharness.Sidecar, clientsPer, rounds int, ttl time.Duration, sleepEvery int, sleep time.Duration) contentionResult {
	t.Helper()
	res := &fencedCounter{}
	hist := linearize.NewHistory()
	var inside, overlaps, releasesLost atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, len(sidecars)*clientsPer)
	for si, sc := range sidecars {
		c := lockClient(t, sc)
		for ci := range clientsPer {
			wg.Add(1)
			go func() {
				defer wg.Done()
				c := recordLocks(hist, c)
				for r := range rounds {
					holder := fmt.Sprintf("s%d-c%d-r%d", si, ci, r)
					ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
					resp, err := c.AcquireLock(ctx, &v1.AcquireLockRequest{
						Key: "shared-counter", Ttl: durationpb.New(ttl), WaitTimeout: durationpb.New(time.Minute), Owner: holder})
					cancel()
					if err != nil {
						errs <- fmt.Errorf("%s acquire: %w", holder, err)
						return
					}
					if !resp.GetAcquired() {
						errs <- fmt.Errorf("%s: wait ended without the lock (holder %v)", holder, resp.GetHolder())
						return
					}
					lease := resp.GetLease()
					if inside.Add(1) > 1 {
						overlaps.Add(1)
					}
					v, err := res.read(holder, lease.GetFencingToken())
					if err == nil {
						if sleepEvery > 0 && r%sleepEvery == 0 {
							time.Sleep(sleep) // real time: a GC pause or slow disk, longer than the TTL
						}
						_ = res.write(holder, lease.GetFencingToken(), v+1)
					}
					inside.Add(-1)
					ctx, cancel = context.WithTimeout(context.Background(), 10*time.Second)
					_, err = c.ReleaseLock(ctx, &v1.ReleaseLockRequest{Key: "shared-counter", LeaseId: lease.GetLeaseId()})
					cancel()
					if code, reason := reasonOf(err); err != nil {
						if code == codes.FailedPrecondition && reason == "LEASE_LOST" {
							releasesLost.Add(1)
						} else {
							errs <- fmt.Errorf("%s release: %w", holder, err)
							return
						}
					}
				}
			}()
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	linearize.Check(t, lockModel, hist)
	return contentionResult{res: res, overlaps: overlaps.Load(), releasesLost: releasesLost.Load()}
}

func startSidecars(t *testing.T, n int, redisURL string, extra ...string) []*testharness.Sidecar {
	t.Helper()
	bin := testharness.BuildSidecar(t)
	out := make([]*testharness.Sidecar, n)
	for i := range out {
		out[i] = testharness.StartSidecar(t, bin, append([]string{"--redis-url", redisURL}, extra...)...)
	}
	return out
}

func TestLockMutualExclusionAcrossSidecars(t *testing.T) {
	rd := testharness.StartRedis(t)
	sidecars := startSidecars(t, 3, rd.URL())
	const clientsPer, rounds = 18, 8 // 54 concurrent clients, 432 grants
	r := runContention(t, sidecars, clientsPer, rounds, 30*time.Second, 0, 0)
	res := r.res
	if res.dupes != 0 || res.rejected != 0 || r.overlaps != 0 || r.releasesLost != 0 {
		t.Fatalf("exclusion violated: duplicate tokens %d, stale tokens %d, overlapping holders %d, lost releases %d",
			res.dupes, res.rejected, r.overlaps, r.releasesLost)
	}
	if want := 3 * clientsPer * rounds; res.value != want || res.accepted != want {
		t.Fatalf("counter = %d after %d accepted writes; want %d (lost updates)", res.value, res.accepted, want)
	}
}

func TestLockFencingCatchesHoldersWhoseLeaseExpired(t *testing.T) {
	rd := testharness.StartRedis(t)
	sidecars := startSidecars(t, 3, rd.URL())
	// Every 3rd critical section sleeps 3x the TTL, so other clients get
	// the lock while the sleeper still thinks it holds it.
	r := runContention(t, sidecars, 10, 6, 150*time.Millisecond, 3, 450*time.Millisecond)
	res := r.res
	t.Logf("accepted %d, stale refused %d, releases that found the lease lost %d", res.accepted, res.rejected, r.releasesLost)
	if res.dupes != 0 {
		t.Fatalf("%d duplicate fencing tokens", res.dupes)
	}
	if res.value != res.accepted {
		t.Fatalf("counter %d != accepted writes %d: a stale write got through", res.value, res.accepted)
	}
	if res.rejected == 0 || r.releasesLost == 0 {
		t.Fatalf("no holder outlived its lease (refused %d, lost %d): the scenario did not happen", res.rejected, r.releasesLost)
	}
}

func TestLockWaiterWokenByRelease(t *testing.T) {
	rd := testharness.StartRedis(t)
	sidecars := startSidecars(t, 2, rd.URL())
	a, b := lockClient(t, sidecars[0]), lockClient(t, sidecars[1])
	ctx := ctxT(t, time.Minute)
	held, err := a.AcquireLock(ctx, &v1.AcquireLockRequest{Key: "wake", Ttl: durationpb.New(time.Hour), Owner: "a"})
	if err != nil || !held.GetAcquired() {
		t.Fatalf("acquire: %v %v", held, err)
	}

	got := make(chan *v1.AcquireLockResponse, 1)
	go func() {
		r, err := b.AcquireLock(ctx, &v1.AcquireLockRequest{Key: "wake", Ttl: durationpb.New(time.Hour), WaitTimeout: durationpb.New(time.Minute), Owner: "b"})
		if err != nil {
			t.Error(err)
		}
		got <- r
	}()
	// Release only once the waiter is subscribed to the release channel, so
	// the grant can only come from the wake-up (the TTL is an hour).
	rdb := rd.Client(t)
	ch := redisx.Key("default", redisx.Lock, "wake", "lock:released")
	testkit.EventuallyNil(t, 20*time.Second, "the waiter subscribed to "+ch, func() error {
		n, err := rdb.PubSubShardNumSub(ctx, ch).Result()
		if err == nil && n[ch] == 0 {
			err = fmt.Errorf("subscribers %v", n)
		}
		return err
	})
	if _, err := a.ReleaseLock(ctx, &v1.ReleaseLockRequest{Key: "wake", LeaseId: held.GetLease().GetLeaseId()}); err != nil {
		t.Fatal(err)
	}
	r := <-got
	if !r.GetAcquired() || r.GetLease().GetFencingToken() <= held.GetLease().GetFencingToken() {
		t.Fatalf("waiter got %v after release of token %d", r, held.GetLease().GetFencingToken())
	}

	// A wait that ends without the lock says so and shows the holder.
	r, err = a.AcquireLock(ctx, &v1.AcquireLockRequest{Key: "wake", WaitTimeout: durationpb.New(300 * time.Millisecond), Owner: "a"})
	if err != nil || r.GetAcquired() || r.GetHolder().GetOwner() != "b" {
		t.Fatalf("timed-out wait: %v %v; want acquired=false holder b", r, err)
	}
}

func TestLockCancelledWaitersLeaveNoGoroutines(t *testing.T) {
	rd := testharness.StartRedis(t)
	bin := testharness.BuildSidecar(t)
	metrics := testharness.FreeAddr(t)
	sc := testharness.StartSidecar(t, bin, "--redis-url", rd.URL(), "--metrics-listen", metrics)
	c := lockClient(t, sc)
	ctx := ctxT(t, time.Minute)
	if r, err := c.AcquireLock(ctx, &v1.AcquireLockRequest{Key: "busy", Ttl: durationpb.New(time.Hour)}); err != nil || !r.GetAcquired() {
		t.Fatal(r, err)
	}
	baseline := metricValue(t, metrics, "go_goroutines")

	var wg sync.WaitGroup
	for range 50 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
			defer cancel()
			_, err := c.AcquireLock(cctx, &v1.AcquireLockRequest{Key: "busy", WaitTimeout: durationpb.New(time.Minute)})
			if code, _ := reasonOf(err); code != codes.DeadlineExceeded && code != codes.Canceled {
				t.Errorf("cancelled waiter: %v", err)
			}
		}()
	}
	wg.Wait()
	testkit.EventuallyNil(t, 20*time.Second, "the cancelled waiters' goroutines gone", func() error {
		if n := metricValue(t, metrics, "go_goroutines"); n > baseline+2 {
			return fmt.Errorf("goroutines %v, baseline %v: cancelled waiters left goroutines behind", n, baseline)
		}
		return nil
	})
	// And no subscription is left open for the key.
	rdb := rd.Client(t)
	ch := redisx.Key("default", redisx.Lock, "busy", "lock:released")
	if n, err := rdb.PubSubShardNumSub(ctx, ch).Result(); err != nil || n[ch] != 0 {
		t.Fatalf("subscriptions left on %s: %v %v", ch, n, err)
	}
}

func TestHoldLockReleasedWhenClientProcessIsKilled(t *testing.T) {
	rd := testharness.StartRedis(t)
	sc := startSidecars(t, 1, rd.URL())[0]
	child := exec.Command(os.Args[0], "-test.run=^$")
	child.Env = append(os.Environ(), childModeEnv+"=hold", "E2E_ADDR="+sc.Addr(), "E2E_KEY=killed")
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
	if err != nil || !strings.HasPrefix(line, "HELD ") {
		t.Fatalf("child did not take the lock: %q %v", line, err)
	}
	c := lockClient(t, sc)
	ctx := ctxT(t, time.Minute)
	if r, err := c.AcquireLock(ctx, &v1.AcquireLockRequest{Key: "killed"}); err != nil || r.GetAcquired() {
		t.Fatalf("lock should be held by the child: %v %v", r, err)
	}

	if err := child.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	// The child's TTL is a minute; a 20 s wait succeeds only because the
	// sidecar released the lock when the session's stream died.
	r, err := c.AcquireLock(ctx, &v1.AcquireLockRequest{Key: "killed", WaitTimeout: durationpb.New(20 * time.Second), Owner: "survivor"})
	if err != nil || !r.GetAcquired() {
		t.Fatalf("after killing the holder: %v %v; want acquired well before the 1m TTL", r, err)
	}
}

func TestHoldLockRenewsAndShutdownReleases(t *testing.T) {
	rd := testharness.StartRedis(t)
	sidecars := startSidecars(t, 2, rd.URL())
	ctx := ctxT(t, time.Minute)
	stream, err := lockClient(t, sidecars[0]).HoldLock(ctx)
	if err != nil {
		t.Fatal(err)
	}
	ttl := 300 * time.Millisecond
	if err := stream.Send(&v1.HoldLockRequest{Msg: &v1.HoldLockRequest_Acquire_{Acquire: &v1.HoldLockRequest_Acquire{
		Key: "session", Ttl: durationpb.New(ttl), Owner: "holder"}}}); err != nil {
		t.Fatal(err)
	}
	m, err := stream.Recv()
	if err != nil || m.GetAcquired() == nil {
		t.Fatalf("first event: %v %v", m, err)
	}
	token := m.GetAcquired().GetFencingToken()
	start := time.Now()
	renewals := 0
	for renewals < 15 || time.Since(start) < 6*ttl {
		m, err := stream.Recv()
		if err != nil || m.GetRenewed() == nil {
			t.Fatalf("after %d renewals: %v %v", renewals, m, err)
		}
		renewals++
	}
	other := lockClient(t, sidecars[1])
	info, err := other.GetLock(ctx, &v1.GetLockRequest{Key: "session"})
	if err != nil || !info.GetHeld() || info.GetHolder().GetFencingToken() != token {
		t.Fatalf("after %d renewals (%v, %d TTLs): %v %v", renewals, time.Since(start), time.Since(start)/ttl, info, err)
	}

	sidecars[0].Signal(syscall.SIGTERM)
	for {
		m, err := stream.Recv()
		if err != nil {
			t.Fatalf("stream ended without a lost event: %v", err)
		}
		if m.GetLost() != nil {
			if m.GetLost().GetReason() != v1.HoldLockResponse_Lost_REASON_SHUTDOWN {
				t.Fatalf("lost reason %v, want SHUTDOWN", m.GetLost())
			}
			break
		}
	}
	if code, err := sidecars[0].Wait(30 * time.Second); err != nil || code != 0 {
		t.Fatalf("sidecar exit after SIGTERM: %d %v", code, err)
	}
	r, err := other.AcquireLock(ctx, &v1.AcquireLockRequest{Key: "session"})
	if err != nil || !r.GetAcquired() || r.GetLease().GetFencingToken() <= token {
		t.Fatalf("lock not released by shutdown: %v %v", r, err)
	}
}

func TestLockRedisKilledAndRestarted(t *testing.T) {
	rd := testharness.StartRedis(t)
	bin := testharness.BuildSidecar(t)
	sc := testharness.StartSidecar(t, bin, "--redis-url", rd.URL(), "--store-timeout", "300ms", "--health-interval", "100ms")
	hist := linearize.NewHistory()
	base := lockClient(t, sc)
	c := recordLocks(hist, base)
	ctx := ctxT(t, 2*time.Minute)
	before, err := c.AcquireLock(ctx, &v1.AcquireLockRequest{Key: "outage", Ttl: durationpb.New(time.Hour)})
	if err != nil || !before.GetAcquired() {
		t.Fatal(before, err)
	}

	rd.Kill()
	// During the outage every call fails UNAVAILABLE well within its
	// deadline, and no call reports a lock.
	var wg sync.WaitGroup
	var granted, wrong atomic.Int32
	for i := range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := recordLocks(hist, base)
			cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			defer cancel()
			r, err := c.AcquireLock(cctx, &v1.AcquireLockRequest{Key: fmt.Sprintf("outage-%d", i%3), WaitTimeout: durationpb.New(time.Second)})
			if r.GetAcquired() {
				granted.Add(1)
			}
			if code, reason := reasonOf(err); code != codes.Unavailable || reason != "STORE_UNAVAILABLE" {
				wrong.Add(1)
				t.Logf("acquire during outage: %v", err)
			}
		}()
	}
	wg.Wait()
	if granted.Load() != 0 || wrong.Load() != 0 {
		t.Fatalf("during the outage: %d grants, %d calls not UNAVAILABLE/STORE_UNAVAILABLE", granted.Load(), wrong.Load())
	}
	_, err = c.ReleaseLock(ctx, &v1.ReleaseLockRequest{Key: "outage", LeaseId: before.GetLease().GetLeaseId()})
	if code, reason := reasonOf(err); code != codes.Unavailable || reason != "STORE_UNAVAILABLE" {
		t.Fatalf("release during outage: %v; want UNAVAILABLE (never a false success)", err)
	}
	waitHealth(t, sc.Conn(t), healthpb.HealthCheckResponse_NOT_SERVING, 10*time.Second)

	rd.Restart() // no persistence: the lock state is gone
	waitHealth(t, sc.Conn(t), healthpb.HealthCheckResponse_SERVING, 20*time.Second)
	after, err := c.AcquireLock(ctx, &v1.AcquireLockRequest{Key: "outage"})
	if err != nil || !after.GetAcquired() {
		t.Fatalf("after restart: %v %v", after, err)
	}
	if after.GetLease().GetFencingToken() <= before.GetLease().GetFencingToken() {
		t.Fatalf("token %d after restart is not above %d from before", after.GetLease().GetFencingToken(), before.GetLease().GetFencingToken())
	}
	// Redis restarted without persistence forgot the lock: the history is
	// linearizable only because the release during the outage may have
	// happened (its outcome is unknown).
	linearize.Check(t, lockModel, hist)
}

func TestSidecarAuthUnixSocketAndBadConfig(t *testing.T) {
	bin := testharness.BuildSidecar(t)
	dir := t.TempDir()

	t.Run("bad config exits 2 naming the field", func(t *testing.T) {
		sc := testharness.StartSidecarNoWait(t, bin, "--ttl-typo")
		if code, err := sc.Wait(20 * time.Second); err != nil || code != 2 {
			t.Fatalf("exit %d %v", code, err)
		}
		sc = testharness.StartSidecarNoWait(t, bin, "--store-timeout", "1ms")
		if code, err := sc.Wait(20 * time.Second); err != nil || code != 2 {
			t.Fatalf("exit %d %v", code, err)
		}
		if log := strings.TrimSpace(sc.Log()); strings.Count(log, "\n") != 0 || !strings.Contains(log, "store_timeout") {
			t.Fatalf("want one line naming store_timeout, got %q", log)
		}
	})

	t.Run("bearer token", func(t *testing.T) {
		tokenFile := filepath.Join(dir, "token")
		if err := os.WriteFile(tokenFile, []byte("s3cret-token\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		sc := testharness.StartSidecar(t, bin, "--api-token-file", tokenFile)
		c := lockClient(t, sc)
		ctx := ctxT(t, time.Minute)
		_, err := c.GetLock(ctx, &v1.GetLockRequest{Key: "k"})
		if code, _ := reasonOf(err); code != codes.Unauthenticated {
			t.Fatalf("no token: %v", err)
		}
		conn, err := grpc.NewClient(sc.Addr(), grpc.WithTransportCredentials(insecure.NewCredentials()),
			grpc.WithPerRPCCredentials(bearerCreds("s3cret-token")))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		if _, err := v1.NewLockServiceClient(conn).GetLock(ctx, &v1.GetLockRequest{Key: "k"}); err != nil {
			t.Fatalf("right token: %v", err)
		}
		if strings.Contains(sc.Log(), "s3cret-token") {
			t.Fatal("token appears in the log")
		}
	})

	t.Run("unix socket", func(t *testing.T) {
		sock := filepath.Join(dir, "sidecar.sock")
		sc := testharness.StartSidecarNoWait(t, bin, "--listen", "unix://"+sock)
		conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		waitHealth(t, conn, healthpb.HealthCheckResponse_SERVING, 20*time.Second)
		r, err := v1.NewLockServiceClient(conn).AcquireLock(ctxT(t, time.Minute), &v1.AcquireLockRequest{Key: "over-unix"})
		if err != nil || !r.GetAcquired() {
			t.Fatalf("over unix socket: %v %v\n%s", r, err, sc.Log())
		}
	})
}

type bearerCreds string

func (b bearerCreds) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + string(b)}, nil
}
func (bearerCreds) RequireTransportSecurity() bool { return false }
