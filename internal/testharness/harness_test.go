package testharness

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// Compile-time checks: the testing types satisfy TB, and the sidecar API
// (not exercised here: the binary does not exist yet) keeps its shape.
var (
	_ TB = (*testing.T)(nil)
	_ TB = (*testing.B)(nil)

	_ func(TB) string                            = BuildSidecar
	_ func(TB, string, ...string) *Sidecar       = StartSidecar
	_ func(TB, string, ...string) *Sidecar       = StartSidecarNoWait
	_ func(*Sidecar, TB) any                     = func(s *Sidecar, tb TB) any { return s.Conn(tb) }
	_ func(*Sidecar, time.Duration) (int, error) = (*Sidecar).Wait
)

func TestFreeAddr(t *testing.T) {
	t.Parallel()
	addr := FreeAddr(t)
	host, _, err := net.SplitHostPort(addr)
	if err != nil || host != "127.0.0.1" {
		t.Fatalf("FreeAddr = %q, want 127.0.0.1:<port> (err %v)", addr, err)
	}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("listen on FreeAddr result %s: %v", addr, err)
	}
	l.Close()
}

func ping(c *redis.Client, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	return c.Ping(ctx).Err()
}

func TestRedisKillRestartLosesData(t *testing.T) {
	t.Parallel()
	r := StartRedis(t)
	addr := r.Addr()
	if want := "redis://" + addr + "/0"; r.URL() != want {
		t.Fatalf("URL = %q, want %q", r.URL(), want)
	}
	c := r.Client(t)
	ctx := context.Background()
	if err := c.Set(ctx, "k", "v", 0).Err(); err != nil {
		t.Fatalf("SET: %v", err)
	}

	r.Kill()
	if err := ping(c, 300*time.Millisecond); err == nil {
		t.Fatal("PING succeeded after Kill")
	}
	r.Kill() // idempotent

	r.Restart()
	if r.Addr() != addr {
		t.Fatalf("Addr after Restart = %s, want %s", r.Addr(), addr)
	}
	if err := ping(c, 2*time.Second); err != nil {
		t.Fatalf("PING after Restart: %v", err)
	}
	if err := c.Get(ctx, "k").Err(); !errors.Is(err, redis.Nil) {
		t.Fatalf("GET k after Kill+Restart without persistence: err = %v, want redis.Nil", err)
	}
}

func TestRedisRestartWhileRunning(t *testing.T) {
	t.Parallel()
	r := StartRedis(t)
	c := r.Client(t)
	r.Restart()
	r.Restart()
	if err := ping(c, 2*time.Second); err != nil {
		t.Fatalf("PING after Restart: %v", err)
	}
}

func TestRedisAppendOnlySurvivesKill(t *testing.T) {
	t.Parallel()
	r := StartRedis(t, WithAppendOnly(), WithRedisArgs("--appendfsync", "always"))
	c := r.Client(t)
	ctx := context.Background()
	if err := c.Set(ctx, "k", "v", 0).Err(); err != nil {
		t.Fatalf("SET: %v", err)
	}
	r.Kill()
	r.Restart()
	got, err := c.Get(ctx, "k").Result()
	if err != nil || got != "v" {
		t.Fatalf("GET k after Kill+Restart with AOF = %q, %v; want \"v\"", got, err)
	}
}

func TestRedisPauseResume(t *testing.T) {
	t.Parallel()
	r := StartRedis(t)
	c := r.Client(t)
	if err := ping(c, time.Second); err != nil {
		t.Fatalf("PING: %v", err)
	}

	r.Pause()
	start := time.Now()
	err := ping(c, 200*time.Millisecond)
	elapsed := time.Since(start)
	if err == nil {
		t.Fatal("PING succeeded while paused")
	}
	if elapsed > 2*time.Second {
		t.Fatalf("PING while paused took %v; the 200ms context was not honoured", elapsed)
	}

	r.Resume()
	if err := ping(c, 2*time.Second); err != nil {
		t.Fatalf("PING after Resume: %v", err)
	}
}

func TestRedisKillWhilePausedThenRestart(t *testing.T) {
	t.Parallel()
	r := StartRedis(t)
	r.Pause()
	r.Kill() // SIGKILL must end a stopped process too
	r.Restart()
	if err := ping(r.Client(t), 2*time.Second); err != nil {
		t.Fatalf("PING after Restart: %v", err)
	}
}

func TestRedisURLParses(t *testing.T) {
	t.Parallel()
	r := StartRedis(t)
	opt, err := redis.ParseURL(r.URL())
	if err != nil {
		t.Fatalf("ParseURL(%q): %v", r.URL(), err)
	}
	c := redis.NewClient(opt)
	defer c.Close()
	if err := ping(c, 2*time.Second); err != nil {
		t.Fatalf("PING via URL: %v", err)
	}
}

// fakeTB records what the harness reports. Fatalf ends the calling
// goroutine, like testing.T.FailNow, so run the harness via runFake.
type fakeTB struct {
	mu       sync.Mutex
	failed   bool
	fatals   []string
	logs     []string
	cleanups []func()
}

func (f *fakeTB) Helper() {}

func (f *fakeTB) Cleanup(fn func()) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.cleanups = append(f.cleanups, fn)
}

func (f *fakeTB) Fatalf(format string, args ...any) {
	f.mu.Lock()
	f.failed = true
	f.fatals = append(f.fatals, fmt.Sprintf(format, args...))
	f.mu.Unlock()
	runtime.Goexit()
}

func (f *fakeTB) Logf(format string, args ...any) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.logs = append(f.logs, fmt.Sprintf(format, args...))
}

func (f *fakeTB) Failed() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.failed
}

// runFake runs fn with a fresh fakeTB on its own goroutine, then runs the
// registered cleanups in reverse order.
func runFake(fn func(tb *fakeTB)) *fakeTB {
	tb := &fakeTB{}
	done := make(chan struct{})
	go func() {
		defer close(done)
		fn(tb)
	}()
	<-done
	for i := len(tb.cleanups) - 1; i >= 0; i-- {
		tb.cleanups[i]()
	}
	return tb
}

func TestStartRedisNotOnPath(t *testing.T) {
	t.Setenv("PATH", t.TempDir())
	tb := runFake(func(tb *fakeTB) { StartRedis(tb) })
	if len(tb.fatals) != 1 || !strings.Contains(tb.fatals[0], "redis-server not found on PATH: run `make redis`") {
		t.Fatalf("fatals = %q, want the not-found message", tb.fatals)
	}
}

func TestStartRedisBadArgsFailsWithLog(t *testing.T) {
	t.Parallel()
	tb := runFake(func(tb *fakeTB) { StartRedis(tb, WithRedisArgs("--no-such-directive", "x")) })
	if len(tb.fatals) != 1 {
		t.Fatalf("fatals = %q, want exactly one", tb.fatals)
	}
	if msg := tb.fatals[0]; !strings.Contains(msg, "exited before answering PING") || !strings.Contains(msg, "no-such-directive") {
		t.Fatalf("fatal message lacks the exit or the redis log:\n%s", msg)
	}
}

func TestRedisCleanupOnFailureLogsAndKills(t *testing.T) {
	t.Parallel()
	var r *Redis
	tb := runFake(func(tb *fakeTB) {
		r = StartRedis(tb)
		tb.mu.Lock()
		tb.failed = true // as if the test had failed
		tb.mu.Unlock()
	})
	joined := strings.Join(tb.logs, "\n")
	if !strings.Contains(joined, "Ready to accept connections") {
		t.Fatalf("cleanup logs lack the redis log tail:\n%s", joined)
	}
	c := redis.NewClient(&redis.Options{Addr: r.Addr(), MaxRetries: -1})
	defer c.Close()
	if err := ping(c, time.Second); err == nil {
		t.Fatal("redis still answering after cleanup")
	}
	if _, err := os.Stat(r.Dir()); !os.IsNotExist(err) {
		t.Fatalf("redis dir %s not removed: %v", r.Dir(), err)
	}
}

func TestProcWaitAndKill(t *testing.T) {
	t.Parallel()
	logPath := filepath.Join(t.TempDir(), "log")

	p, err := startProc(logPath, "sh", "-c", "echo hello; exit 3")
	if err != nil {
		t.Fatal(err)
	}
	if code, err := p.wait(5 * time.Second); code != 3 || err != nil {
		t.Fatalf("wait = %d, %v; want 3, nil", code, err)
	}

	p, err = startProc(logPath, "sleep", "30")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.wait(50 * time.Millisecond); !errors.Is(err, ErrWaitTimeout) {
		t.Fatalf("wait on running process: err = %v, want ErrWaitTimeout", err)
	}
	p.kill()
	if code, err := p.wait(time.Second); code != -1 || err == nil || !strings.Contains(err.Error(), "killed") {
		t.Fatalf("wait after kill = %d, %v; want -1 and a signal error", code, err)
	}
	if err := p.signal(os.Interrupt); !errors.Is(err, os.ErrProcessDone) {
		t.Fatalf("signal after exit: err = %v, want os.ErrProcessDone", err)
	}
	if got := tailFile(logPath, 50); got != "hello" {
		t.Fatalf("log = %q, want %q", got, "hello")
	}
}

func TestTailLines(t *testing.T) {
	t.Parallel()
	var b strings.Builder
	for i := 1; i <= 60; i++ {
		fmt.Fprintf(&b, "line %d\n", i)
	}
	got := strings.Split(tailLines(b.String(), 50), "\n")
	if len(got) != 50 || got[0] != "line 11" || got[49] != "line 60" {
		t.Fatalf("tailLines kept %d lines, %q..%q", len(got), got[0], got[len(got)-1])
	}
	if tailLines("", 50) != "(empty)" {
		t.Fatal("tailLines of empty input")
	}
}

func TestResolveSidecarBin(t *testing.T) {
	t.Parallel()
	root := t.TempDir()
	bin := filepath.Join(root, "bin", "sidecar")
	if err := os.MkdirAll(filepath.Dir(bin), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bin, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if got, err := resolveSidecarBin(bin, ""); err != nil || got != bin {
		t.Fatalf("absolute: %q, %v", got, err)
	}
	if got, err := resolveSidecarBin("bin/sidecar", root); err != nil || got != bin {
		t.Fatalf("relative to module root: %q, %v", got, err)
	}
	if _, err := resolveSidecarBin("bin/nope", root); err == nil {
		t.Fatal("missing binary accepted")
	}
}

func TestModuleRoot(t *testing.T) {
	t.Parallel()
	root, err := moduleRoot()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, "go.mod")); err != nil {
		t.Fatalf("moduleRoot %s has no go.mod: %v", root, err)
	}
	if _, err := os.Stat(filepath.Join(root, "internal", "testharness")); err != nil {
		t.Fatalf("moduleRoot %s is not this module's root: %v", root, err)
	}
}
