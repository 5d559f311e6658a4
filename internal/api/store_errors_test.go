package api_test

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/redis/go-redis/v9"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/test/bufconn"

	v1 "github.com/seed-a88e5317/resilience-sidecar/clients/go/resiliencev1"
	"github.com/seed-a88e5317/resilience-sidecar/internal/api"
	"github.com/seed-a88e5317/resilience-sidecar/internal/idempotency"
	"github.com/seed-a88e5317/resilience-sidecar/internal/lock"
	"github.com/seed-a88e5317/resilience-sidecar/internal/metrics"
	"github.com/seed-a88e5317/resilience-sidecar/internal/redisx"
	"github.com/seed-a88e5317/resilience-sidecar/internal/server"
	"github.com/seed-a88e5317/resilience-sidecar/internal/testharness"
	"github.com/seed-a88e5317/resilience-sidecar/internal/testkit"
)

// redisSidecar is an in-process sidecar (server.Server with its health
// probe and metrics) serving the lock and idempotency APIs on a real
// Redis, over bufconn.
type redisSidecar struct {
	locks   v1.LockServiceClient
	idem    v1.IdempotencyServiceClient
	health  healthpb.HealthClient
	metrics *metrics.Metrics
}

// startRedisSidecar serves the APIs on the Redis at url, with grants and
// records waiting for wait. t.Cleanup stops it.
func startRedisSidecar(t *testing.T, url string, wait redisx.Wait) *redisSidecar {
	t.Helper()
	rdb, err := redisx.NewClient(url, redisx.Standalone, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rdb.Close() })
	discard := slog.New(slog.DiscardHandler)
	m := metrics.New()
	srv := server.New(server.Options{Log: discard, ShutdownTimeout: 5 * time.Second, Metrics: m,
		Store: redisx.Pinger{Client: rdb, Timeout: 2 * time.Second}, HealthInterval: 20 * time.Millisecond})
	ls := lock.NewRedisStore(rdb, "test", 2*time.Second, lock.WithWait(wait))
	is := idempotency.NewRedisStore(rdb, "test", 2*time.Second, idempotency.WithWait(wait))
	lsvc, isvc := lock.NewService(ls, nil, discard), idempotency.NewService(is, nil, discard)
	// After the server stopped: their hand-back queues end.
	t.Cleanup(lsvc.Close)
	t.Cleanup(isvc.Close)
	v1.RegisterLockServiceServer(srv.GRPC(), api.NewLockServer(srv.Stopping(), lsvc, discard))
	v1.RegisterIdempotencyServiceServer(srv.GRPC(), api.NewIdempotencyServer(srv.Stopping(), isvc, discard, idemMaxResult))

	lis := bufconn.Listen(1 << 20)
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ctx, lis) }()
	conn, err := grpc.NewClient("passthrough:///bufconn",
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()),
	)
	if err != nil {
		cancel()
		t.Fatalf("grpc.NewClient: %v", err)
	}
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-served:
			if err != nil {
				t.Errorf("Serve returned %v after shutdown; want nil", err)
			}
		case <-time.After(eventTimeout):
			t.Errorf("Serve did not return after shutdown")
		}
		conn.Close()
	})
	return &redisSidecar{locks: v1.NewLockServiceClient(conn), idem: v1.NewIdempotencyServiceClient(conn),
		health: healthpb.NewHealthClient(conn), metrics: m}
}

// waitHealth waits until the sidecar's overall health is want.
func (sc *redisSidecar) waitHealth(t *testing.T, want healthpb.HealthCheckResponse_ServingStatus) {
	t.Helper()
	testkit.EventuallyNil(t, eventTimeout, fmt.Sprintf("health %v", want), func() error {
		resp, err := sc.health.Check(rpcCtx(t), &healthpb.HealthCheckRequest{})
		if err != nil {
			t.Fatalf("health check: %v", err)
		}
		if got := resp.GetStatus(); got != want {
			return fmt.Errorf("health = %v", got)
		}
		return nil
	})
}

// storeErrors is resilience_store_errors_total{reason}.
func (sc *redisSidecar) storeErrors(reason string) float64 {
	return testutil.ToFloat64(sc.metrics.StoreErrors.WithLabelValues(reason))
}

// wantStoreError checks that err is UNAVAILABLE with reason and a positive
// RetryInfo, without the store's words in the message.
func wantStoreError(t *testing.T, err error, reason string) {
	t.Helper()
	st := wantReason(t, err, codes.Unavailable, reason)
	if ri := retryInfo(st); ri == nil || ri.GetRetryDelay().AsDuration() <= 0 {
		t.Errorf("RetryInfo = %v; want a positive retry delay", ri)
	}
	for _, leak := range []string{"maxmemory", "script:", "127.0.0.1", "redisx"} {
		if strings.Contains(st.Message(), leak) {
			t.Errorf("message %q leaks the internal cause (%q)", st.Message(), leak)
		}
	}
}

// writes are the calls that write to the store, each on its own key.
func writes(sc *redisSidecar) []struct {
	name string
	call func(ctx context.Context, key string) error
} {
	return []struct {
		name string
		call func(ctx context.Context, key string) error
	}{
		{"AcquireLock", func(ctx context.Context, key string) error {
			_, err := sc.locks.AcquireLock(ctx, &v1.AcquireLockRequest{Key: key, Ttl: dur(time.Minute)})
			return err
		}},
		{"CheckOrRecordIdempotency", func(ctx context.Context, key string) error {
			_, err := sc.idem.CheckOrRecordIdempotency(ctx, &v1.CheckOrRecordIdempotencyRequest{Key: key, Fingerprint: "fp"})
			return err
		}},
	}
}

// fillRedis writes 4 MiB into a Redis with maxmemory-policy noeviction
// and lowers its maxmemory to 2 MiB: every write is then refused with OOM
// (however clients come and go) until memory is freed.
func fillRedis(t *testing.T, c *redis.Client) {
	t.Helper()
	ctx := rpcCtx(t)
	val := strings.Repeat("x", 1024)
	pipe := c.Pipeline()
	for i := range 4096 {
		pipe.Set(ctx, fmt.Sprintf("fill:%d", i), val, 0)
	}
	if _, err := pipe.Exec(ctx); err != nil {
		t.Fatal(err)
	}
	if err := c.ConfigSet(ctx, "maxmemory", "2mb").Err(); err != nil {
		t.Fatal(err)
	}
	if err := c.Set(ctx, "one-more", "x", 0).Err(); err == nil || !strings.HasPrefix(err.Error(), "OOM") {
		t.Fatalf("SET on a full Redis: %v; want OOM", err)
	}
}

// TestStoreFullIsStoreFullAndNotServing: a Redis out of memory (maxmemory,
// noeviction) refuses writes with UNAVAILABLE/STORE_FULL, counted, and the
// sidecar is NOT_SERVING until memory is freed.
func TestStoreFullIsStoreFullAndNotServing(t *testing.T) {
	t.Parallel()
	r := testharness.StartRedis(t, testharness.WithRedisArgs("--maxmemory-policy", "noeviction"))
	sc := startRedisSidecar(t, r.URL(), redisx.Wait{})
	sc.waitHealth(t, healthpb.HealthCheckResponse_SERVING)
	c := r.Client(t)
	fillRedis(t, c)

	sc.waitHealth(t, healthpb.HealthCheckResponse_NOT_SERVING)
	for i, w := range writes(sc) {
		wantStoreError(t, w.call(rpcCtx(t), "full"), api.ReasonStoreFull)
		if got := sc.storeErrors(api.ReasonStoreFull); got != float64(i+1) {
			t.Errorf("after %s: resilience_store_errors_total{reason=STORE_FULL} = %v; want %d", w.name, got, i+1)
		}
	}
	if got := sc.storeErrors(api.ReasonStoreUnavailable); got != 0 {
		t.Errorf("resilience_store_errors_total{reason=STORE_UNAVAILABLE} = %v; want 0", got)
	}

	if err := c.FlushAll(rpcCtx(t)).Err(); err != nil {
		t.Fatal(err)
	}
	sc.waitHealth(t, healthpb.HealthCheckResponse_SERVING)
	for _, w := range writes(sc) {
		if err := w.call(rpcCtx(t), "freed"); err != nil {
			t.Errorf("%s after FLUSHALL: %v", w.name, err)
		}
	}
}

// TestStoreStatesAreUnavailable puts a real Redis in each state in which
// it answers but cannot serve, and checks what a write gets over gRPC.
func TestStoreStatesAreUnavailable(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name string
		// setup returns the URL of the Redis the sidecar uses, in the
		// state; it undoes the state in t.Cleanup.
		setup  func(t *testing.T) string
		wait   redisx.Wait
		reason string
		// serving is the health the sidecar settles on in this state.
		serving healthpb.HealthCheckResponse_ServingStatus
	}{
		{"BUSY script", busyRedis, redisx.Wait{}, api.ReasonStoreUnavailable, healthpb.HealthCheckResponse_NOT_SERVING},
		{"READONLY replica", func(t *testing.T) string {
			master := testharness.StartRedis(t)
			host, port, _ := net.SplitHostPort(master.Addr())
			return testharness.StartRedis(t, testharness.WithRedisArgs("--replicaof", host, port)).URL()
		}, redisx.Wait{}, api.ReasonStoreReadOnly, healthpb.HealthCheckResponse_NOT_SERVING},
		{"MISCONF", misconfRedis, redisx.Wait{}, api.ReasonStoreReadOnly, healthpb.HealthCheckResponse_NOT_SERVING},
		{"NOREPLICAS", func(t *testing.T) string {
			return testharness.StartRedis(t, testharness.WithRedisArgs("--min-replicas-to-write", "1")).URL()
		}, redisx.Wait{}, api.ReasonReplicationShortfall, healthpb.HealthCheckResponse_NOT_SERVING},
		// The master takes writes; WAIT finds no replica to acknowledge
		// them. Health stays SERVING: no write is refused.
		{"WAIT shortfall", func(t *testing.T) string { return testharness.StartRedis(t).URL() },
			redisx.Wait{Replicas: 1, Timeout: 50 * time.Millisecond}, api.ReasonReplicationShortfall, healthpb.HealthCheckResponse_SERVING},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			sc := startRedisSidecar(t, tc.setup(t), tc.wait)
			sc.waitHealth(t, tc.serving)
			for i, w := range writes(sc) {
				wantStoreError(t, w.call(rpcCtx(t), "k"), tc.reason)
				if got := sc.storeErrors(tc.reason); got != float64(i+1) {
					t.Errorf("after %s: resilience_store_errors_total{reason=%s} = %v; want %d", w.name, tc.reason, got, i+1)
				}
			}
			if tc.wait.Replicas > 0 {
				// The unacknowledged grant was handed back at once.
				resp, err := sc.locks.GetLock(rpcCtx(t), &v1.GetLockRequest{Key: "k"})
				if err != nil || resp.GetHeld() {
					t.Errorf("GetLock after a WAIT shortfall = %v, %v; want not held", resp, err)
				}
			}
		})
	}
}

// busyRedis runs a script that never ends on a fresh Redis (replies BUSY
// after 10ms); t.Cleanup kills it.
func busyRedis(t *testing.T) string {
	t.Helper()
	r := testharness.StartRedis(t, testharness.WithRedisArgs("--busy-reply-threshold", "10"))
	// No read timeout: the script's caller waits until SCRIPT KILL.
	runner := redis.NewClient(&redis.Options{Addr: r.Addr(), ReadTimeout: -1, MaxRetries: -1, DisableIdentity: true})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		_ = runner.Eval(context.Background(), "while true do end", nil).Err()
	}()
	admin := redis.NewClient(&redis.Options{Addr: r.Addr(), MaxRetries: -1, DisableIdentity: true})
	// Cleanups run last registered first: the script is killed, then its
	// caller is waited for and the clients closed.
	t.Cleanup(func() {
		wg.Wait()
		runner.Close()
		admin.Close()
	})
	t.Cleanup(func() {
		testkit.EventuallyNil(t, eventTimeout, "SCRIPT KILL", func() error {
			err := admin.ScriptKill(context.Background()).Err()
			if err != nil && strings.HasPrefix(err.Error(), "NOTBUSY") {
				return nil
			}
			return err
		})
	})
	testkit.EventuallyNil(t, eventTimeout, "Redis to reply BUSY", func() error {
		err := admin.Ping(rpcCtx(t)).Err()
		if err != nil && strings.HasPrefix(err.Error(), "BUSY ") {
			return nil
		}
		return fmt.Errorf("PING: %v", err)
	})
	return r.URL()
}

// misconfRedis is a fresh Redis whose RDB save failed while save points
// are set, so it refuses writes with MISCONF.
func misconfRedis(t *testing.T) string {
	t.Helper()
	// Saving into a directory that is gone fails, even for root.
	dir := filepath.Join(t.TempDir(), "gone")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	r := testharness.StartRedis(t, testharness.WithRedisArgs("--dir", dir, "--save", "3600 1", "--stop-writes-on-bgsave-error", "yes"))
	if err := os.Remove(dir); err != nil {
		t.Fatal(err)
	}
	c := r.Client(t)
	if err := c.BgSave(rpcCtx(t)).Err(); err != nil {
		t.Fatal(err)
	}
	testkit.EventuallyNil(t, eventTimeout, "BGSAVE into a removed directory to fail", func() error {
		info, err := c.Info(rpcCtx(t), "persistence").Result()
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(info, "rdb_bgsave_in_progress:0") || !strings.Contains(info, "rdb_last_bgsave_status:err") {
			return fmt.Errorf("INFO persistence:\n%s", info)
		}
		return nil
	})
	return r.URL()
}

// TestReasonListIsEveryClients: every reason of status.go is in each
// client's generated reason list (DESIGN.md section 3: the list in
// status.go is the source; internal/api/reasongen writes the lists, and
// each client's tests require a typed error for every entry), and the
// store reasons are the metric's.
func TestReasonListIsEveryClients(t *testing.T) {
	t.Parallel()
	src, err := os.ReadFile("status.go")
	if err != nil {
		t.Fatal(err)
	}
	var reasons []string
	for _, m := range regexp.MustCompile(`(?m)^\s*Reason\w+\s*=\s*"([A-Z_]+)"`).FindAllStringSubmatch(string(src), -1) {
		reasons = append(reasons, m[1])
	}
	for _, r := range []string{api.ReasonStoreUnavailable, api.ReasonStoreFull, api.ReasonStoreReadOnly, api.ReasonReplicationShortfall, api.ReasonLeaseLost} {
		if !slices.Contains(reasons, r) {
			t.Fatalf("reasons read from status.go %q lack %s: the pattern is stale", reasons, r)
		}
	}
	clients := []string{
		"../../clients/go/resilience/reasons_gen.go",
		"../../clients/node/src/reasons.ts",
		"../../clients/python/resilience_sidecar/reasons.py",
		"../../clients/java/src/main/java/io/github/seeda88e5317/resilience/Reasons.java",
	}
	for _, path := range clients {
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range reasons {
			if !strings.Contains(string(b), `"`+r+`"`) {
				t.Errorf("%s does not know reason %s", path, r)
			}
		}
	}
	if !slices.Equal(api.StoreReasons, metrics.StoreErrorReasons) {
		t.Errorf("api.StoreReasons = %q, metrics.StoreErrorReasons = %q; want the same", api.StoreReasons, metrics.StoreErrorReasons)
	}
}
