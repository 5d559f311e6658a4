package testharness

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/seed-a88e5317/resilience-sidecar/internal/redisx"
)

// redisReadyTimeout bounds how long StartRedis and Restart wait for PING.
const redisReadyTimeout = 10 * time.Second

// redisStartAttempts is how many fresh ports StartRedis tries when the port
// it picked was taken by someone else in the meantime.
const redisStartAttempts = 3

// RedisOption configures StartRedis.
type RedisOption func(*redisConfig)

type redisConfig struct {
	appendOnly bool
	extraArgs  []string
}

// WithAppendOnly enables the append-only file (--appendonly yes, fsync every
// second by default) so that data survives Kill and Restart; without it the
// server keeps nothing on disk.
func WithAppendOnly() RedisOption {
	return func(c *redisConfig) { c.appendOnly = true }
}

// WithRedisArgs appends extra redis-server command-line arguments, for
// example WithRedisArgs("--maxmemory", "1mb"). They come after the
// harness's own arguments, so they override them.
func WithRedisArgs(args ...string) RedisOption {
	return func(c *redisConfig) { c.extraArgs = append(c.extraArgs, args...) }
}

// Redis is a redis-server process on a loopback port, owned by one test.
// Its methods are safe for concurrent use.
type Redis struct {
	tb      TB
	bin     string
	dir     string // --dir, and home of the log file
	logPath string
	cfg     redisConfig

	mu   sync.Mutex
	addr string
	p    *proc
}

// StartRedis starts a fresh redis-server on a free loopback port with
// persistence off (unless WithAppendOnly), waits until it answers PING and
// registers a Cleanup that kills it. It fails tb when redis-server is not on
// PATH or does not become ready within 10s.
func StartRedis(tb TB, opts ...RedisOption) *Redis {
	tb.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		tb.Fatalf("redis-server not found on PATH: run `make redis` (scripts/ensure-redis.sh)")
	}
	var cfg redisConfig
	for _, o := range opts {
		o(&cfg)
	}
	dir, err := os.MkdirTemp("", "testharness-redis-")
	if err != nil {
		tb.Fatalf("testharness: create redis dir: %v", err)
	}
	r := &Redis{
		tb:      tb,
		bin:     bin,
		dir:     dir,
		logPath: filepath.Join(dir, "redis.log"),
		cfg:     cfg,
	}
	tb.Cleanup(r.cleanup)

	for attempt := 1; ; attempt++ {
		addr, err := freeAddr()
		if err != nil {
			tb.Fatalf("testharness: find free port: %v", err)
		}
		offset := logSize(r.logPath)
		r.mu.Lock()
		r.addr = addr
		err = r.startLocked()
		r.mu.Unlock()
		if err == nil {
			return r
		}
		if attempt < redisStartAttempts && addrInUse(r.logPath, offset) {
			tb.Logf("testharness: redis port %s was taken, retrying on another port", addr)
			continue
		}
		tb.Fatalf("testharness: %v\nredis log (%s), last %d lines:\n%s",
			err, r.logPath, logTailLines, tailFile(r.logPath, logTailLines))
	}
}

// args builds the redis-server command line for the current address.
func (r *Redis) args() []string {
	_, port, _ := net.SplitHostPort(r.addr)
	appendOnly := "no"
	if r.cfg.appendOnly {
		appendOnly = "yes"
	}
	args := []string{
		"--port", port,
		"--bind", "127.0.0.1",
		"--save", "",
		"--appendonly", appendOnly,
		"--dir", r.dir,
		"--protected-mode", "no",
		"--daemonize", "no",
	}
	return append(args, r.cfg.extraArgs...)
}

// startLocked starts the process on r.addr and waits for PING. On failure
// the process is killed and an error describing why is returned.
func (r *Redis) startLocked() error {
	p, err := startProc(r.logPath, r.bin, r.args()...)
	if err != nil {
		return fmt.Errorf("start redis-server: %w", err)
	}
	r.p = p
	if err := waitRedisReady(p, r.addr, redisReadyTimeout); err != nil {
		p.kill()
		return err
	}
	return nil
}

// waitRedisReady polls PING until it succeeds, the process exits, or the
// timeout passes.
func waitRedisReady(p *proc, addr string, timeout time.Duration) error {
	c := redis.NewClient(&redis.Options{
		Addr:                  addr,
		DialTimeout:           500 * time.Millisecond,
		ReadTimeout:           500 * time.Millisecond,
		WriteTimeout:          500 * time.Millisecond,
		MaxRetries:            -1,
		PoolSize:              1,
		DisableIdentity:       true,
		ContextTimeoutEnabled: true,
	})
	defer c.Close()

	deadline := time.Now().Add(timeout)
	var lastErr error
	for {
		if p.exited() {
			return fmt.Errorf("redis-server on %s exited before answering PING: %s", addr, p.exitDescription())
		}
		ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
		lastErr = c.Ping(ctx).Err()
		cancel()
		if lastErr == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("redis-server on %s did not answer PING within %v: %v", addr, timeout, lastErr)
		}
		time.Sleep(pollInterval)
	}
}

// Addr returns the server's "127.0.0.1:port" address. It stays the same
// across Restart.
func (r *Redis) Addr() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.addr
}

// URL returns the server's address as "redis://127.0.0.1:port/0".
func (r *Redis) URL() string {
	return "redis://" + r.Addr() + "/0"
}

// Dir returns the server's working directory (its --dir, where the log and,
// with WithAppendOnly, the append-only file live).
func (r *Redis) Dir() string { return r.dir }

// Kill ends the server with SIGKILL (even while paused) and waits for it to
// exit. Without WithAppendOnly all data is lost. Killing a server that is
// not running does nothing.
func (r *Redis) Kill() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.p != nil {
		r.p.kill()
	}
}

// Restart starts the server again on the same port and directory and waits
// until it answers PING, failing the test otherwise. A server that is still
// running is killed first, so Restart after Kill and Restart alone both work.
func (r *Redis) Restart() {
	r.tb.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.p != nil {
		r.p.kill()
	}
	// The port was ours a moment ago, but it may still be briefly unbindable
	// (or grabbed by another process); retry within the same overall bound.
	deadline := time.Now().Add(redisReadyTimeout)
	for {
		offset := logSize(r.logPath)
		err := r.startLocked()
		if err == nil {
			return
		}
		if time.Now().Before(deadline) && addrInUse(r.logPath, offset) {
			time.Sleep(100 * time.Millisecond)
			continue
		}
		r.tb.Fatalf("testharness: restart redis on %s: %v\nredis log (%s), last %d lines:\n%s",
			r.addr, err, r.logPath, logTailLines, tailFile(r.logPath, logTailLines))
		return
	}
}

// Pause freezes the server with SIGSTOP: connections are still accepted by
// the kernel but nothing is answered until Resume.
func (r *Redis) Pause() {
	r.tb.Helper()
	r.signal(syscall.SIGSTOP)
}

// Resume continues a paused server with SIGCONT.
func (r *Redis) Resume() {
	r.tb.Helper()
	r.signal(syscall.SIGCONT)
}

func (r *Redis) signal(sig os.Signal) {
	r.tb.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.p == nil {
		r.tb.Fatalf("testharness: redis not started")
		return
	}
	if err := r.p.signal(sig); err != nil {
		r.tb.Fatalf("testharness: send %v to redis-server: %v", sig, err)
	}
}

// Client returns a new go-redis client for this server, closed in tb's
// Cleanup. Context deadlines are honoured (ContextTimeoutEnabled), so a
// command with a short context fails promptly while the server is paused.
// Scripts are pipelined by redisx.AutoPipeline, as in the sidecar, so the
// store tests run on the sidecar's path.
func (r *Redis) Client(tb TB) *redis.Client {
	tb.Helper()
	c := redis.NewClient(&redis.Options{
		Addr:                  r.Addr(),
		DisableIdentity:       true,
		ContextTimeoutEnabled: true,
	})
	redisx.AutoPipeline(c, 0, 0) // scripts take the sidecar's path
	tb.Cleanup(func() { _ = c.Close() })
	return c
}

// cleanup kills the server, reports its log tail if the test failed and
// removes its directory.
func (r *Redis) cleanup() {
	r.mu.Lock()
	p := r.p
	r.mu.Unlock()
	if p != nil {
		p.kill()
	}
	if r.tb.Failed() {
		r.tb.Logf("redis-server %s log, last %d lines:\n%s",
			r.Addr(), logTailLines, tailFile(r.logPath, logTailLines))
	}
	_ = os.RemoveAll(r.dir)
}
