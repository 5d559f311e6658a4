package e2e

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	v1 "github.com/seed-a88e5317/resilience-sidecar/clients/go/resiliencev1"
	"github.com/seed-a88e5317/resilience-sidecar/internal/testharness"
	"github.com/seed-a88e5317/resilience-sidecar/internal/testkit"
)

// mustLimitExceeded checks err is RESOURCE_EXHAUSTED/LIMIT_EXCEEDED naming
// limit in its ErrorInfo metadata, with a RetryInfo.
func mustLimitExceeded(t *testing.T, err error, limit string) {
	t.Helper()
	if msg := limitProblem(err, limit); msg != "" {
		t.Fatal(msg)
	}
}

// limitProblem is what is wrong with err as a refusal by limit ("" if nothing).
func limitProblem(err error, limit string) string {
	st, _ := status.FromError(err)
	var info *errdetails.ErrorInfo
	var retry *errdetails.RetryInfo
	for _, d := range st.Details() {
		switch d := d.(type) {
		case *errdetails.ErrorInfo:
			info = d
		case *errdetails.RetryInfo:
			retry = d
		}
	}
	switch {
	case st.Code() != codes.ResourceExhausted || info.GetReason() != "LIMIT_EXCEEDED":
		return fmt.Sprintf("err = %v; want RESOURCE_EXHAUSTED/LIMIT_EXCEEDED (%s)", err, limit)
	case info.GetMetadata()["limit"] != limit:
		return fmt.Sprintf("limit metadata = %q; want %q (%v)", info.GetMetadata()["limit"], limit, err)
	case retry.GetRetryDelay().AsDuration() <= 0:
		return fmt.Sprintf("no RetryInfo in %v", err)
	}
	return ""
}

// rejections reads resilience_limit_rejections_total{limit=...}.
func rejections(t *testing.T, metricsAddr, limit string) float64 {
	t.Helper()
	return metricValue(t, metricsAddr, `resilience_limit_rejections_total{limit="`+limit+`"}`)
}

// peakRSS is a process's VmHWM (peak resident set size) in bytes.
func peakRSS(t *testing.T, pid int) int64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			return kb << 10
		}
	}
	t.Fatal("no VmHWM")
	return 0
}

// serveUpstream serves h on loopback until the test ends and returns a
// config file declaring it as upstream "up".
func serveUpstream(t *testing.T, h http.Handler) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hs := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := hs.Serve(lis); err != nil && !errors.Is(err, http.ErrServerClosed) {
			t.Error(err)
		}
	}()
	t.Cleanup(func() { _ = hs.Close(); <-done })
	cfg := filepath.Join(t.TempDir(), "sidecar.yaml")
	yaml := fmt.Sprintf("upstreams:\n  up: {url: %q, max_connections: 1024, timeout: 30s}\n", "http://"+lis.Addr().String())
	if err := os.WriteFile(cfg, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	return cfg
}

// TestResponseBudgetBoundsMemory is issue 18's reproduction: 300
// concurrent ExecuteCalls whose upstream answers 4 MB took the sidecar to
// 915 MB. With the default max_response_bytes_in_flight its peak RSS
// stays under the 200 MB, every call is either answered in full
// or refused with LIMIT_EXCEEDED, and each refusal is counted. With and
// without a Content-Length (a chunked body is reserved as it grows).
func TestResponseBudgetBoundsMemory(t *testing.T) {
	const calls, size = 300, 4_000_000
	body := make([]byte, size)
	for _, tc := range []struct {
		name    string
		chunked bool
	}{{"content-length", false}, {"chunked", true}} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := serveUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
				if !tc.chunked {
					w.Header().Set("Content-Length", strconv.Itoa(size))
				}
				_, _ = w.Write(body)
			}))
			maddr := testharness.FreeAddr(t)
			sc := testharness.StartSidecar(t, testharness.BuildSidecar(t), "--config", cfg, "--metrics-listen", maddr, "--log-level", "error")
			conns := make([]v1.BreakerServiceClient, 8)
			for i := range conns {
				cc, err := grpc.NewClient(sc.Addr(), grpc.WithTransportCredentials(insecure.NewCredentials()),
					grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(64<<20)))
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { cc.Close() })
				conns[i] = v1.NewBreakerServiceClient(cc)
			}
			ctx := ctxT(t, 2*time.Minute)
			var ok, refused atomic.Int64
			problems := make(chan string, calls)
			var wg sync.WaitGroup
			for i := range calls {
				wg.Add(1)
				go func() {
					defer wg.Done()
					r, err := conns[i%len(conns)].ExecuteCall(ctx, &v1.ExecuteCallRequest{Upstream: "up", Path: "/big"})
					switch {
					case err == nil && len(r.GetBody()) == size:
						ok.Add(1)
					case err == nil:
						problems <- fmt.Sprintf("answered with %d bytes of %d", len(r.GetBody()), size)
					default:
						if p := limitProblem(err, "max_response_bytes_in_flight"); p != "" {
							problems <- p
						}
						refused.Add(1)
					}
				}()
			}
			wg.Wait()
			close(problems)
			for p := range problems {
				t.Error(p)
			}
			peak := peakRSS(t, sc.PID())
			t.Logf("%d answered, %d refused; sidecar peak RSS %.1f MB", ok.Load(), refused.Load(), float64(peak)/(1<<20))
			if peak >= 200<<20 {
				t.Errorf("peak RSS %d bytes; want under 200 MB", peak)
			}
			if ok.Load() == 0 || refused.Load() == 0 {
				t.Errorf("%d answered, %d refused; want both (the budget holds several 4 MB answers, not 300)", ok.Load(), refused.Load())
			}
			if got := rejections(t, maddr, "max_response_bytes_in_flight"); got != float64(refused.Load()) {
				t.Errorf("rejections counted %v; want %d", got, refused.Load())
			}
			// The budget is whole again (a leak of one answer's reservation
			// per call would show within 10): one call at a time is answered.
			for range 10 {
				if r, err := conns[0].ExecuteCall(ctx, &v1.ExecuteCallRequest{Upstream: "up", Path: "/big"}); err != nil || len(r.GetBody()) != size {
					t.Fatalf("lone call after the burst: %d bytes, %v", len(r.GetBody()), err)
				}
			}
		})
	}
}

// TestWaiterLimit: past max_waiters, lock and idempotency waiters are
// refused with LIMIT_EXCEEDED at once, while calls that do not wait are
// served, and every admitted waiter is granted when its lock is released.
func TestWaiterLimit(t *testing.T) {
	const admitted, extra = 50, 2000
	rd := testharness.StartRedis(t)
	maddr := testharness.FreeAddr(t)
	sc := testharness.StartSidecar(t, testharness.BuildSidecar(t), "--redis-url", rd.URL(), "--metrics-listen", maddr,
		"--max-waiters", strconv.Itoa(admitted), "--log-level", "error")
	lc := lockClient(t, sc)
	ic := v1.NewIdempotencyServiceClient(sc.Conn(t))
	ctx := ctxT(t, 2*time.Minute)
	key := func(i int) string { return "wl-" + strconv.Itoa(i) }
	leases := make([]string, admitted)
	for i := range leases {
		r, err := lc.AcquireLock(ctx, &v1.AcquireLockRequest{Key: key(i), Ttl: durationpb.New(time.Hour), Owner: "holder"})
		if err != nil || !r.GetAcquired() {
			t.Fatalf("holder %d: %v %v", i, r, err)
		}
		leases[i] = r.GetLease().GetLeaseId()
	}
	var granted atomic.Int64
	waitErrs := make(chan error, admitted)
	var wg sync.WaitGroup
	for i := range admitted {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r, err := lc.AcquireLock(ctx, &v1.AcquireLockRequest{Key: key(i), Ttl: durationpb.New(time.Minute),
				WaitTimeout: durationpb.New(time.Minute), Owner: "waiter"})
			if err == nil && !r.GetAcquired() {
				err = fmt.Errorf("waiter %d not granted: %v", i, r)
			}
			if err != nil {
				waitErrs <- err
				return
			}
			granted.Add(1)
		}()
	}
	// Each waiter heads its key's queue, subscribed to its release channel.
	rc := rd.Client(t)
	testkit.Eventually(t, 30*time.Second, "every waiter parked", func() bool {
		n, _ := strconv.Atoi(infoField(ctx, t, rc, "stats", "pubsubshard_channels"))
		return n >= admitted
	})

	// A claim in progress, for idempotency waiters.
	if r, err := ic.CheckOrRecordIdempotency(ctx, &v1.CheckOrRecordIdempotencyRequest{Key: "op", Fingerprint: "f", LeaseTtl: durationpb.New(time.Minute)}); err != nil ||
		r.GetOutcome() != v1.CheckOrRecordIdempotencyResponse_OUTCOME_STARTED {
		t.Fatalf("claim: %v %v", r, err)
	}
	problems := make(chan string, extra)
	var calls sync.WaitGroup
	for i := range extra {
		calls.Add(1)
		go func() {
			defer calls.Done()
			var err error
			if i%2 == 0 {
				_, err = lc.AcquireLock(ctx, &v1.AcquireLockRequest{Key: key(i % admitted), Ttl: durationpb.New(time.Minute),
					WaitTimeout: durationpb.New(time.Minute), Owner: "extra"})
			} else {
				_, err = ic.CheckOrRecordIdempotency(ctx, &v1.CheckOrRecordIdempotencyRequest{Key: "op", Fingerprint: "f",
					LeaseTtl: durationpb.New(time.Minute), WaitTimeout: durationpb.New(time.Minute)})
			}
			if p := limitProblem(err, "max_waiters"); p != "" {
				problems <- p
			}
		}()
	}
	calls.Wait()
	close(problems)
	for p := range problems {
		t.Error(p)
	}
	if got := rejections(t, maddr, "max_waiters"); got != extra {
		t.Errorf("max_waiters rejections counted %v; want %d", got, extra)
	}
	// Calls that do not wait are still served.
	if r, err := lc.AcquireLock(ctx, &v1.AcquireLockRequest{Key: "free", Ttl: durationpb.New(time.Minute), Owner: "try"}); err != nil || !r.GetAcquired() {
		t.Fatalf("try-lock while the waiters are full: %v %v", r, err)
	}

	for i, id := range leases {
		if _, err := lc.ReleaseLock(ctx, &v1.ReleaseLockRequest{Key: key(i), LeaseId: id}); err != nil {
			t.Fatal(err)
		}
	}
	wg.Wait()
	close(waitErrs)
	for err := range waitErrs {
		t.Error(err)
	}
	if granted.Load() != admitted {
		t.Fatalf("%d of %d admitted waiters granted", granted.Load(), admitted)
	}
	// Their slots are free again: a new waiter is admitted (and granted).
	if r, err := lc.AcquireLock(ctx, &v1.AcquireLockRequest{Key: "after", Ttl: durationpb.New(time.Minute),
		WaitTimeout: durationpb.New(time.Second), Owner: "after"}); err != nil || !r.GetAcquired() {
		t.Fatalf("waiter after the others: %v %v", r, err)
	}
}

// infoField reads one field of a Redis INFO section.
func infoField(ctx context.Context, t *testing.T, c *redis.Client, section, name string) string {
	t.Helper()
	info, err := c.Info(ctx, section).Result()
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(info, "\r\n") {
		if v, ok := strings.CutPrefix(line, name+":"); ok {
			return v
		}
	}
	return ""
}

// TestConcurrentCallLimit: past max_concurrent_calls a unary call is
// refused at once while the admitted ones finish undisturbed; health
// checks are exempt; a waiting call gives its slot back (max_waiters
// counts it instead).
func TestConcurrentCallLimit(t *testing.T) {
	const limit = 4
	arrived := make(chan struct{}, 64)
	release := make(chan struct{})
	cfg := serveUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		arrived <- struct{}{}
		select {
		case <-release:
		case <-r.Context().Done():
		}
		_, _ = w.Write([]byte("done"))
	}))
	rd := testharness.StartRedis(t)
	rc := rd.Client(t)
	maddr := testharness.FreeAddr(t)
	sc := testharness.StartSidecar(t, testharness.BuildSidecar(t), "--config", cfg, "--metrics-listen", maddr, "--redis-url", rd.URL(),
		"--max-concurrent-calls", strconv.Itoa(limit), "--log-level", "error")
	conn := sc.Conn(t)
	bc, lc := v1.NewBreakerServiceClient(conn), v1.NewLockServiceClient(conn)
	ctx := ctxT(t, time.Minute)

	// Twice the limit of waiters, one arriving after the other (so that
	// arriving never needs more than one call slot): parked, they hold
	// no call slot, and calls are served beside them.
	waitCtx, stopWaiting := context.WithCancel(ctx)
	var waiters sync.WaitGroup
	for i := range 2 * limit {
		key := "held-" + strconv.Itoa(i)
		if r, err := lc.AcquireLock(ctx, &v1.AcquireLockRequest{Key: key, Ttl: durationpb.New(time.Minute), Owner: "holder"}); err != nil || !r.GetAcquired() {
			t.Fatalf("holder: %v %v", r, err)
		}
		waiters.Add(1)
		go func() {
			defer waiters.Done()
			_, _ = lc.AcquireLock(waitCtx, &v1.AcquireLockRequest{Key: key, Ttl: durationpb.New(time.Minute),
				WaitTimeout: durationpb.New(time.Minute), Owner: "waiter"})
		}()
		// Parked once its key's release channel is subscribed.
		testkit.Eventually(t, 10*time.Second, "waiter "+strconv.Itoa(i)+" parked", func() bool {
			n, _ := strconv.Atoi(infoField(ctx, t, rc, "stats", "pubsubshard_channels"))
			return n == i+1
		})
	}
	if _, err := lc.GetLock(ctx, &v1.GetLockRequest{Key: "held-0"}); err != nil {
		t.Fatalf("unary call beside %d waiters: %v", 2*limit, err)
	}
	stopWaiting()
	waiters.Wait()

	results := make(chan error, limit)
	for range limit {
		go func() {
			r, err := bc.ExecuteCall(ctx, &v1.ExecuteCallRequest{Upstream: "up", Path: "/slow"})
			if err == nil && string(r.GetBody()) != "done" {
				err = fmt.Errorf("body %q", r.GetBody())
			}
			results <- err
		}()
	}
	for range limit {
		<-arrived
	}
	_, err := lc.GetLock(ctx, &v1.GetLockRequest{Key: "held-0"})
	mustLimitExceeded(t, err, "max_concurrent_calls")
	_, err = lc.AcquireLock(ctx, &v1.AcquireLockRequest{Key: "other", Ttl: durationpb.New(time.Minute), WaitTimeout: durationpb.New(time.Second)})
	mustLimitExceeded(t, err, "max_concurrent_calls")
	if r, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{}); err != nil || r.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("health under the limit: %v %v", r, err)
	}
	if got := rejections(t, maddr, "max_concurrent_calls"); got != 2 {
		t.Errorf("max_concurrent_calls rejections counted %v; want 2", got)
	}
	close(release)
	for range limit {
		if err := <-results; err != nil {
			t.Errorf("admitted call disturbed: %v", err)
		}
	}
	if _, err := lc.GetLock(ctx, &v1.GetLockRequest{Key: "held-0"}); err != nil {
		t.Fatalf("after the admitted calls: %v", err)
	}
}

// TestSessionAndSubscriptionLimits: past max_sessions a HoldLock stream,
// and past max_subscriptions a Subscribe stream, ends at once with
// LIMIT_EXCEEDED; the open ones keep working, and a closed one frees its
// slot.
func TestSessionAndSubscriptionLimits(t *testing.T) {
	const sessions, subs = 3, 2
	maddr := testharness.FreeAddr(t)
	sc := testharness.StartSidecar(t, testharness.BuildSidecar(t), "--metrics-listen", maddr,
		"--max-sessions", strconv.Itoa(sessions), "--max-subscriptions", strconv.Itoa(subs), "--log-level", "error")
	conn := sc.Conn(t)
	lc, ec := v1.NewLockServiceClient(conn), v1.NewEventServiceClient(conn)
	ctx := ctxT(t, time.Minute)

	hold := func(ctx context.Context, key string) (v1.LockService_HoldLockClient, *v1.HoldLockResponse, error) {
		st, err := lc.HoldLock(ctx)
		if err != nil {
			return nil, nil, err
		}
		if err := st.Send(&v1.HoldLockRequest{Msg: &v1.HoldLockRequest_Acquire_{Acquire: &v1.HoldLockRequest_Acquire{
			Key: key, Ttl: durationpb.New(time.Minute), Owner: "s"}}}); err != nil && !errors.Is(err, io.EOF) {
			return nil, nil, err
		}
		r, err := st.Recv()
		return st, r, err
	}
	var cancels []context.CancelFunc
	for i := range sessions {
		sctx, cancel := context.WithCancel(ctx)
		cancels = append(cancels, cancel)
		if _, r, err := hold(sctx, "s-"+strconv.Itoa(i)); err != nil || r.GetAcquired() == nil {
			t.Fatalf("session %d: %v %v", i, r, err)
		}
	}
	_, _, err := hold(ctx, "s-extra")
	mustLimitExceeded(t, err, "max_sessions")
	for i := range sessions { // the open sessions still hold their locks
		if r, err := lc.GetLock(ctx, &v1.GetLockRequest{Key: "s-" + strconv.Itoa(i)}); err != nil || !r.GetHeld() {
			t.Fatalf("session %d after the refusal: %v %v", i, r, err)
		}
	}
	cancels[0]()
	testkit.EventuallyNil(t, 10*time.Second, "a session slot freed by a closed session", func() error {
		sctx, cancel := context.WithCancel(ctx)
		cancels = append(cancels, cancel)
		_, r, err := hold(sctx, "s-new")
		if err == nil && r.GetAcquired() == nil {
			err = fmt.Errorf("not acquired: %v", r)
		}
		return err
	})

	subscribe := func(group string) (v1.EventService_SubscribeClient, error) {
		s, err := ec.Subscribe(ctx, &v1.SubscribeRequest{Topic: "t", Group: group, Consumer: "c", VisibilityTimeout: durationpb.New(time.Minute)})
		if err != nil {
			return nil, err
		}
		m, err := s.Recv()
		if err == nil && m.GetSubscribed() == nil {
			err = fmt.Errorf("first message %v", m)
		}
		return s, err
	}
	var open []v1.EventService_SubscribeClient
	for i := range subs {
		s, err := subscribe("g" + strconv.Itoa(i))
		if err != nil {
			t.Fatalf("subscription %d: %v", i, err)
		}
		open = append(open, s)
	}
	_, err = subscribe("g-extra")
	mustLimitExceeded(t, err, "max_subscriptions")
	if _, err := ec.Publish(ctx, &v1.PublishRequest{Topic: "t", Key: "k", Payload: []byte("x")}); err != nil {
		t.Fatal(err)
	}
	for i, s := range open { // each open subscription still delivers
		m, err := s.Recv()
		if err != nil || m.GetEvent() == nil {
			t.Fatalf("subscription %d after the refusal: %v %v", i, m, err)
		}
	}
	if got := rejections(t, maddr, "max_sessions") + rejections(t, maddr, "max_subscriptions"); got < 2 {
		t.Errorf("rejections counted %v; want at least 2", got)
	}
	for _, c := range cancels {
		c()
	}
}
