package redisx_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/seed-a88e5317/resilience-sidecar/internal/redisx"
	"github.com/seed-a88e5317/resilience-sidecar/internal/store"
	"github.com/seed-a88e5317/resilience-sidecar/internal/testharness"
	"github.com/seed-a88e5317/resilience-sidecar/internal/testkit"
)

// replyError is a Redis error reply as go-redis returns it (redis.Error).
type replyError string

func (e replyError) Error() string { return string(e) }
func (replyError) RedisError()     {}

var _ redis.Error = replyError("")

// storeKinds are the precise kinds of store.ErrUnavailable.
var storeKinds = []error{store.ErrFull, store.ErrReadOnly, store.ErrNotReplicated}

// wantKind checks that got is store.ErrUnavailable of exactly kind
// (store.ErrUnavailable itself: none of the precise kinds), or, for a nil
// kind, not store.ErrUnavailable at all; and that it still matches cause.
func wantKind(t *testing.T, got, cause, kind error) {
	t.Helper()
	if cause != nil && !errors.Is(got, cause) {
		t.Errorf("Classify = %v; the cause %v is lost", got, cause)
	}
	if kind == nil {
		if errors.Is(got, store.ErrUnavailable) {
			t.Errorf("Classify = %v; want an error that is not store.ErrUnavailable", got)
		}
		return
	}
	if !errors.Is(got, store.ErrUnavailable) {
		t.Fatalf("Classify = %v; want store.ErrUnavailable", got)
	}
	for _, k := range storeKinds {
		if errors.Is(got, k) != (k == kind) {
			t.Errorf("Classify = %v: errors.Is(%v) = %v; want %v", got, k, errors.Is(got, k), k == kind)
		}
	}
}

func TestClassifyReplyErrors(t *testing.T) {
	t.Parallel()
	cases := []struct {
		reply string
		kind  error // nil: not store.ErrUnavailable
	}{
		{"OOM command not allowed when used memory > 'maxmemory'.", store.ErrFull},
		{"OOM command not allowed when used memory > 'maxmemory'. script: ff96, on @user_script:1.", store.ErrFull},
		{"OOM allow-oom flag is not set on the script, can not run it when used memory > 'maxmemory'", store.ErrFull},
		{"READONLY You can't write against a read only replica.", store.ErrReadOnly},
		{"MISCONF Redis is configured to save RDB snapshots, but it's currently unable to persist to disk.", store.ErrReadOnly},
		{"NOREPLICAS Not enough good replicas to write.", store.ErrNotReplicated},
		{"BUSY Redis is busy running a script. You can only call SCRIPT KILL or SHUTDOWN NOSAVE.", store.ErrUnavailable},
		{"LOADING Redis is loading the dataset in memory", store.ErrUnavailable},
		{"MASTERDOWN Link with MASTER is down and replica-serve-stale-data is set to 'no'.", store.ErrUnavailable},
		{"CLUSTERDOWN The cluster is down", store.ErrUnavailable},
		{"TRYAGAIN Multiple keys request during rehashing of slot", store.ErrUnavailable},
		{"MOVED 3999 127.0.0.1:6381", store.ErrUnavailable},
		{"ASK 3999 127.0.0.1:6381", store.ErrUnavailable},
		{"ERR Error running script: Script attempted to access a non local key in a cluster node", store.ErrUnavailable},
		// Not "cannot serve now": a bug or a caller's error.
		{"BUSYKEY Target key name already exists.", nil},
		{"BUSYGROUP Consumer Group name already exists", nil},
		{"OOMPH not a code Redis has", nil},
		{"ERR unknown command 'FOO'", nil},
		{"WRONGTYPE Operation against a key holding the wrong kind of value", nil},
		{"NOSCRIPT No matching script. Please use EVAL.", nil},
	}
	for _, tc := range cases {
		t.Run(strings.Fields(tc.reply)[0], func(t *testing.T) {
			t.Parallel()
			cause := replyError(tc.reply)
			wantKind(t, redisx.Classify(context.Background(), cause), cause, tc.kind)
			// Wrapped, as a pipeline or a helper may return it.
			wrapped := fmt.Errorf("pipeline: %w", cause)
			wantKind(t, redisx.Classify(context.Background(), wrapped), cause, tc.kind)
		})
	}
}

func TestClassifyOtherErrors(t *testing.T) {
	t.Parallel()
	cancelled, cancel := context.WithCancel(context.Background())
	cancel()
	notReplicated := fmt.Errorf("%w: 0 of 1 replicas within 50ms", redisx.ErrNotReplicated)
	refused := &net.OpError{Op: "dial", Net: "tcp", Err: errors.New("connection refused")}
	cases := []struct {
		name   string
		caller context.Context
		err    error
		kind   error
	}{
		{"WAIT shortfall", context.Background(), notReplicated, store.ErrNotReplicated},
		{"connection refused", context.Background(), refused, store.ErrUnavailable},
		{"store timeout", context.Background(), context.DeadlineExceeded, store.ErrUnavailable},
		{"client closed", context.Background(), redis.ErrClosed, store.ErrUnavailable},
		{"caller gave up", cancelled, replyError("OOM command not allowed"), nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			got := redisx.Classify(tc.caller, tc.err)
			cause := tc.err
			if tc.caller.Err() != nil {
				cause = tc.caller.Err()
			}
			wantKind(t, got, cause, tc.kind)
		})
	}
	if err := redisx.Classify(context.Background(), nil); err != nil {
		t.Errorf("Classify(nil) = %v", err)
	}
	if err := redisx.Classify(context.Background(), redis.Nil); err != redis.Nil {
		t.Errorf("Classify(redis.Nil) = %v; want redis.Nil", err)
	}
}

// redisClient is a client of r as the sidecar makes it.
func redisClient(t *testing.T, r *testharness.Redis) redis.UniversalClient {
	t.Helper()
	c, err := redisx.NewClient(r.URL(), redisx.Standalone, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// fillRedis fills r (started with maxmemory-policy noeviction) past a 2 MiB
// maxmemory, so every write is refused with OOM however clients come and
// go, until FLUSHALL.
func fillRedis(t *testing.T, c redis.UniversalClient) {
	t.Helper()
	ctx := context.Background()
	if err := c.ConfigSet(ctx, "maxmemory", "0").Err(); err != nil {
		t.Fatal(err)
	}
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

// TestClassifyRealReplies puts a real Redis in each state and checks what
// a write (a script, as the stores run them) and the health probe give.
func TestClassifyRealReplies(t *testing.T) {
	t.Parallel()
	write := redisx.NewScript("test.write", `return redis.call('SET', KEYS[1], ARGV[1])`)
	cases := []struct {
		name  string
		setup func(t *testing.T) (c redis.UniversalClient, undo func())
		kind  error
	}{
		{"OOM", func(t *testing.T) (redis.UniversalClient, func()) {
			r := testharness.StartRedis(t, testharness.WithRedisArgs("--maxmemory-policy", "noeviction"))
			c := redisClient(t, r)
			fillRedis(t, c)
			return c, func() { c.FlushAll(context.Background()) }
		}, store.ErrFull},
		{"READONLY", func(t *testing.T) (redis.UniversalClient, func()) {
			master := testharness.StartRedis(t)
			host, port, _ := net.SplitHostPort(master.Addr())
			replica := testharness.StartRedis(t, testharness.WithRedisArgs("--replicaof", host, port))
			c := redisClient(t, replica)
			return c, func() { c.SlaveOf(context.Background(), "NO", "ONE") }
		}, store.ErrReadOnly},
		{"NOREPLICAS", func(t *testing.T) (redis.UniversalClient, func()) {
			r := testharness.StartRedis(t, testharness.WithRedisArgs("--min-replicas-to-write", "1"))
			c := redisClient(t, r)
			return c, func() { c.ConfigSet(context.Background(), "min-replicas-to-write", "0") }
		}, store.ErrNotReplicated},
		{"MISCONF", func(t *testing.T) (redis.UniversalClient, func()) {
			// A failed RDB save, with save points set, stops writes: save
			// into a directory that is gone (which even root cannot).
			dir := filepath.Join(t.TempDir(), "gone")
			if err := os.Mkdir(dir, 0o755); err != nil {
				t.Fatal(err)
			}
			r := testharness.StartRedis(t, testharness.WithRedisArgs("--dir", dir, "--save", "3600 1", "--stop-writes-on-bgsave-error", "yes"))
			c := redisClient(t, r)
			ctx := context.Background()
			if err := os.Remove(dir); err != nil {
				t.Fatal(err)
			}
			if err := c.BgSave(ctx).Err(); err != nil {
				t.Fatal(err)
			}
			testkit.EventuallyNil(t, 10*time.Second, "BGSAVE into a removed directory to fail", func() error {
				info, err := c.Info(ctx, "persistence").Result()
				if err != nil {
					t.Fatal(err)
				}
				if !strings.Contains(info, "rdb_bgsave_in_progress:0") || !strings.Contains(info, "rdb_last_bgsave_status:err") {
					return fmt.Errorf("INFO persistence:\n%s", info)
				}
				return nil
			})
			return c, func() { c.ConfigSet(ctx, "save", "") }
		}, store.ErrReadOnly},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			c, undo := tc.setup(t)
			ctx := context.Background()
			_, err := write.Run(ctx, c, []string{"k"}, "v").Result()
			if err == nil {
				t.Fatalf("a write succeeded in state %s", tc.name)
			}
			wantKind(t, redisx.Classify(ctx, err), err, tc.kind)

			p := redisx.Pinger{Client: c, Timeout: 2 * time.Second}
			wantKind(t, p.Ping(ctx), nil, tc.kind)

			undo()
			if err := p.Ping(ctx); err != nil {
				t.Errorf("Ping after leaving state %s: %v; want nil", tc.name, err)
			}
		})
	}
}

// TestPingWritesNothing: the health probe passes on a healthy Redis and
// neither writes a key nor replicates anything.
func TestPingWritesNothing(t *testing.T) {
	t.Parallel()
	r := testharness.StartRedis(t)
	c := redisClient(t, r)
	ctx := context.Background()
	before, err := c.Info(ctx, "replication").Result()
	if err != nil {
		t.Fatal(err)
	}
	p := redisx.Pinger{Client: c, Timeout: 2 * time.Second}
	for range 3 {
		if err := p.Ping(ctx); err != nil {
			t.Fatalf("Ping = %v; want nil", err)
		}
	}
	if n, err := c.DBSize(ctx).Result(); err != nil || n != 0 {
		t.Errorf("DBSIZE after pings = %d, %v; want 0", n, err)
	}
	after, err := c.Info(ctx, "replication").Result()
	if err != nil {
		t.Fatal(err)
	}
	if offset(before) != offset(after) {
		t.Errorf("master_repl_offset moved from %s to %s: the probe was replicated", offset(before), offset(after))
	}
}

func offset(info string) string {
	for _, l := range strings.Split(info, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(l), "master_repl_offset:"); ok {
			return v
		}
	}
	return ""
}

// pastDeadline is a caller whose deadline has passed but whose timer has
// not marked it done yet, as happens for a moment on a loaded machine.
type pastDeadline struct{ context.Context }

func (pastDeadline) Deadline() (time.Time, bool) { return time.Now().Add(-time.Millisecond), true }

// A read that timed out at the caller's deadline is the caller's deadline,
// not a store outage, even before the context says so.
func TestClassifyTimeoutAtCallersDeadline(t *testing.T) {
	timeout := &net.OpError{Op: "read", Net: "tcp", Err: os.ErrDeadlineExceeded}
	if err := redisx.Classify(pastDeadline{context.Background()}, timeout); !errors.Is(err, context.DeadlineExceeded) || errors.Is(err, store.ErrUnavailable) {
		t.Fatalf("Classify = %v, want the caller's deadline", err)
	}
	if err := redisx.Classify(context.Background(), timeout); !errors.Is(err, store.ErrUnavailable) {
		t.Fatalf("Classify without a deadline = %v, want unavailable", err)
	}
}
