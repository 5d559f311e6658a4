package testharness

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/seed-a88e5317/resilience-sidecar/internal/redisx"
)

// SentinelMasterName is the name the sentinels of StartSentinel monitor.
const SentinelMasterName = "mymaster"

// sentinelReadyTimeout bounds how long StartSentinel waits for the
// sentinels to find the replicas and each other.
const sentinelReadyTimeout = 30 * time.Second

// SentinelOption configures StartSentinel.
type SentinelOption func(*sentinelConfig)

type sentinelConfig struct {
	replicas     int
	sentinels    int
	downAfter    time.Duration
	replicaProxy bool
	extraArgs    []string
}

// WithReplicationProxy makes every replica replicate from the initial
// master through a Proxy (see ReplicationProxy), so that a test can delay
// or cut replication. Clients and sentinels still reach every node directly.
func WithReplicationProxy() SentinelOption {
	return func(c *sentinelConfig) { c.replicaProxy = true }
}

// WithSentinelReplicas sets how many replicas follow the master (default
// 1). With two, a switchover promotes one while the other still follows
// the old master until the sentinels repoint it.
func WithSentinelReplicas(n int) SentinelOption {
	return func(c *sentinelConfig) { c.replicas = n }
}

// Sentinel is a Redis Sentinel deployment of real processes on loopback
// ports, owned by one test: one master, its replicas and the sentinels
// monitoring it under SentinelMasterName. Data nodes are *Redis, so Kill,
// Restart, Pause and Resume work on them. Its methods are safe for
// concurrent use.
type Sentinel struct {
	tb        TB
	data      []*Redis // data[0] is the initial master
	sentinels []*sentinelProc
	proxy     *Proxy
}

// sentinelProc is one redis-server --sentinel process.
type sentinelProc struct {
	addr    string
	dir     string
	logPath string

	mu sync.Mutex
	p  *proc
}

// StartSentinel starts a master, its replicas (default 1) and sentinels
// (default 3, quorum 2, down-after 1s, failover timeout 5s), and waits until
// every replica is in sync and every sentinel knows every replica and every
// other sentinel, so that a failover can be authorised at once. Cleanup
// stops every process.
func StartSentinel(tb TB, opts ...SentinelOption) *Sentinel {
	tb.Helper()
	cfg := sentinelConfig{replicas: 1, sentinels: 3, downAfter: time.Second}
	for _, o := range opts {
		o(&cfg)
	}
	s := &Sentinel{tb: tb}
	dataArgs := append([]string{
		"--repl-diskless-sync", "yes",
		"--repl-diskless-sync-delay", "0",
		"--repl-ping-replica-period", "1",
	}, cfg.extraArgs...)
	master := StartRedis(tb, WithRedisArgs(dataArgs...))
	s.data = append(s.data, master)
	upstream := master.Addr()
	if cfg.replicaProxy {
		s.proxy = StartProxy(tb, master.Addr())
		upstream = s.proxy.Addr()
	}
	host, port, _ := net.SplitHostPort(upstream)
	for range cfg.replicas {
		s.data = append(s.data, StartRedis(tb, WithRedisArgs(append(dataArgs, "--replicaof", host, port)...)))
	}

	mhost, mport, _ := net.SplitHostPort(master.Addr())
	quorum := cfg.sentinels/2 + 1
	for range cfg.sentinels {
		s.sentinels = append(s.sentinels, startSentinelProc(tb, fmt.Sprintf(
			"sentinel monitor %s %s %s %d\n"+
				"sentinel down-after-milliseconds %s %d\n"+
				"sentinel failover-timeout %s 5000\n"+
				"sentinel parallel-syncs %s 1\n",
			SentinelMasterName, mhost, mport, quorum,
			SentinelMasterName, cfg.downAfter.Milliseconds(),
			SentinelMasterName, SentinelMasterName)))
	}

	ctx, cancel := context.WithTimeout(context.Background(), sentinelReadyTimeout)
	defer cancel()
	if err := s.WaitReplicasSynced(ctx); err != nil {
		tb.Fatalf("testharness: %v", err)
	}
	if err := s.waitDiscovery(ctx, master.Addr()); err != nil {
		tb.Fatalf("testharness: %v\n%s", err, s.logs())
	}
	return s
}

// startSentinelProc writes a sentinel config with conf and starts it on a
// free port.
func startSentinelProc(tb TB, conf string) *sentinelProc {
	tb.Helper()
	bin := redisServerBin(tb)
	dir, err := os.MkdirTemp("", "testharness-sentinel-")
	if err != nil {
		tb.Fatalf("testharness: create sentinel dir: %v", err)
	}
	sp := &sentinelProc{dir: dir, logPath: filepath.Join(dir, "sentinel.log")}
	tb.Cleanup(func() {
		sp.mu.Lock()
		p := sp.p
		sp.mu.Unlock()
		if p != nil {
			p.kill()
		}
		if tb.Failed() {
			tb.Logf("sentinel %s log, last %d lines:\n%s", sp.addr, logTailLines, tailFile(sp.logPath, logTailLines))
		}
		_ = os.RemoveAll(dir)
	})
	for attempt := 1; ; attempt++ {
		addr, err := freeAddr()
		if err != nil {
			tb.Fatalf("testharness: find free port: %v", err)
		}
		_, port, _ := net.SplitHostPort(addr)
		confPath := filepath.Join(dir, "sentinel.conf")
		full := "port " + port + "\nbind 127.0.0.1\nprotected-mode no\ndaemonize no\ndir " + dir + "\n" + conf
		if err := os.WriteFile(confPath, []byte(full), 0o644); err != nil {
			tb.Fatalf("testharness: write sentinel config: %v", err)
		}
		offset := logSize(sp.logPath)
		p, err := startProc(sp.logPath, bin, confPath, "--sentinel")
		if err != nil {
			tb.Fatalf("testharness: start sentinel: %v", err)
		}
		sp.mu.Lock()
		sp.addr, sp.p = addr, p
		sp.mu.Unlock()
		err = waitRedisReady(p, addr, redisReadyTimeout)
		if err == nil {
			return sp
		}
		p.kill()
		if attempt < redisStartAttempts && addrInUse(sp.logPath, offset) {
			continue
		}
		tb.Fatalf("testharness: sentinel: %v\nlog (%s), last %d lines:\n%s", err, sp.logPath, logTailLines, tailFile(sp.logPath, logTailLines))
		return nil
	}
}

// redisServerBin finds redis-server on PATH or fails tb as StartRedis does.
func redisServerBin(tb TB) string {
	tb.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		tb.Fatalf("redis-server not found on PATH: run `make redis` (scripts/ensure-redis.sh)")
	}
	return bin
}

// waitDiscovery waits until every sentinel reports master at addr, every
// replica and every other sentinel.
func (s *Sentinel) waitDiscovery(ctx context.Context, addr string) error {
	var last string
	for {
		ok := true
		for _, sp := range s.sentinels {
			st, err := s.sentinelView(ctx, sp.addr)
			if err != nil || st.master != addr || st.replicas < len(s.data)-1 || st.sentinels < len(s.sentinels)-1 {
				last, ok = fmt.Sprintf("sentinel %s: %+v %v", sp.addr, st, err), false
				break
			}
		}
		if ok {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("sentinels did not discover the deployment: %s", last)
		case <-time.After(pollInterval):
		}
	}
}

type sentinelView struct {
	master              string
	replicas, sentinels int
	flags               string
}

func (s *Sentinel) sentinelView(ctx context.Context, addr string) (sentinelView, error) {
	c := redis.NewSentinelClient(&redis.Options{Addr: addr, DisableIdentity: true, ContextTimeoutEnabled: true, MaxRetries: -1})
	defer c.Close()
	m, err := c.Master(ctx, SentinelMasterName).Result()
	if err != nil {
		return sentinelView{}, err
	}
	var v sentinelView
	v.master = net.JoinHostPort(m["ip"], m["port"])
	v.flags = m["flags"]
	fmt.Sscan(m["num-slaves"], &v.replicas)
	fmt.Sscan(m["num-other-sentinels"], &v.sentinels)
	// num-slaves counts replicas that are down, too.
	rs, err := c.Replicas(ctx, SentinelMasterName).Result()
	if err != nil {
		return sentinelView{}, err
	}
	v.replicas = 0
	for _, r := range rs {
		if !strings.Contains(r["flags"], "down") && !strings.Contains(r["flags"], "disconnected") {
			v.replicas++
		}
	}
	return v, nil
}

// WaitReplicasSynced waits until every data node other than the current
// master reports its replication link up.
func (s *Sentinel) WaitReplicasSynced(ctx context.Context) error {
	master, err := s.masterAddr(ctx)
	if err != nil {
		master = s.data[0].Addr()
	}
	for _, r := range s.data {
		if r.Addr() == master {
			continue
		}
		if err := waitLinkUp(ctx, r.Addr()); err != nil {
			return err
		}
	}
	return nil
}

// URL returns the deployment as go-redis's ParseFailoverURL reads it (the
// sidecar's --redis-mode sentinel form): the sentinels and the master name.
func (s *Sentinel) URL() string {
	u := "redis://" + s.sentinels[0].addr + "/0?"
	for _, sp := range s.sentinels[1:] {
		u += "addr=" + sp.addr + "&"
	}
	return u + "master_name=" + SentinelMasterName
}

// SentinelAddrs returns the sentinels' addresses.
func (s *Sentinel) SentinelAddrs() []string {
	var out []string
	for _, sp := range s.sentinels {
		out = append(out, sp.addr)
	}
	return out
}

// Nodes returns the data nodes, the initial master first.
func (s *Sentinel) Nodes() []*Redis { return append([]*Redis(nil), s.data...) }

// ReplicationProxy returns the proxy the replicas replicate through (nil
// without WithReplicationProxy). It only carries the replicas' links to the
// initial master.
func (s *Sentinel) ReplicationProxy() *Proxy { return s.proxy }

// Client returns a failover client for the test, closed in tb's Cleanup.
// Scripts are pipelined by redisx.AutoPipeline, as in the sidecar.
func (s *Sentinel) Client(tb TB) *redis.Client {
	tb.Helper()
	c := redis.NewFailoverClient(&redis.FailoverOptions{
		MasterName:            SentinelMasterName,
		SentinelAddrs:         s.SentinelAddrs(),
		DisableIdentity:       true,
		ContextTimeoutEnabled: true,
	})
	redisx.AutoPipeline(c, 0, 0) // scripts take the sidecar's path
	tb.Cleanup(func() { _ = c.Close() })
	return c
}

// masterAddr asks the first sentinel that answers for the master's address.
func (s *Sentinel) masterAddr(ctx context.Context) (string, error) {
	var lastErr error
	for _, sp := range s.sentinels {
		c := redis.NewSentinelClient(&redis.Options{Addr: sp.addr, DisableIdentity: true, ContextTimeoutEnabled: true, MaxRetries: -1})
		a, err := c.GetMasterAddrByName(ctx, SentinelMasterName).Result()
		c.Close()
		if err == nil && len(a) == 2 {
			return net.JoinHostPort(a[0], a[1]), nil
		}
		lastErr = err
	}
	return "", fmt.Errorf("no sentinel knows the master: %v", lastErr)
}

// Master returns the data node the sentinels currently name as master.
func (s *Sentinel) Master(tb TB) *Redis {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	addr, err := s.masterAddr(ctx)
	if err != nil {
		tb.Fatalf("testharness: %v", err)
	}
	for _, r := range s.data {
		if r.Addr() == addr {
			return r
		}
	}
	tb.Fatalf("testharness: sentinels name %s, which is not a data node", addr)
	return nil
}

// Failover asks a sentinel to fail over (SENTINEL FAILOVER) and waits until
// every sentinel names another data node as master and that node says it
// is one. It then points the old master at the new one (REPLICAOF), which
// the sentinels would do themselves only at their next INFO round, up to
// 10 s later. It returns the new master and does not wait for the old one
// to be in sync (see WaitReplicasSynced).
func (s *Sentinel) Failover(tb TB) *Redis {
	tb.Helper()
	return s.failover(tb, true)
}

// Switchover is Failover as an operator's planned switchover happens: the
// old master is left to the sentinels, which point it at the new one at
// their next INFO round (up to 10 s later); until then it still says it is
// a master, and clients connected to it stay connected.
func (s *Sentinel) Switchover(tb TB) *Redis {
	tb.Helper()
	return s.failover(tb, false)
}

func (s *Sentinel) failover(tb TB, repoint bool) *Redis {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), sentinelReadyTimeout)
	defer cancel()
	old, err := s.masterAddr(ctx)
	if err != nil {
		tb.Fatalf("testharness: %v", err)
	}
	sc := redis.NewSentinelClient(&redis.Options{Addr: s.sentinels[0].addr, DisableIdentity: true, ContextTimeoutEnabled: true, MaxRetries: -1})
	defer sc.Close()
	for {
		err := sc.Failover(ctx, SentinelMasterName).Err()
		if err == nil {
			break
		}
		// INPROG (a failover still finishing) or NOGOODSLAVE (a replica
		// not yet reported healthy): retry within the bound.
		if ctx.Err() != nil {
			tb.Fatalf("testharness: sentinel failover: %v\n%s", err, s.logs())
		}
		time.Sleep(100 * time.Millisecond)
	}
	nm := s.waitNewMaster(tb, ctx, old)
	if repoint {
		host, port, _ := net.SplitHostPort(nm.Addr())
		_, _ = do(ctx, old, "replicaof", host, port) // best effort: the sentinels insist anyway
	}
	return nm
}

// WaitNewMaster waits (up to 30s) until every sentinel names a master
// other than old and that node says it is a master, as after killing the
// master; it returns the new master.
func (s *Sentinel) WaitNewMaster(tb TB, old string) *Redis {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), sentinelReadyTimeout)
	defer cancel()
	return s.waitNewMaster(tb, ctx, old)
}

func (s *Sentinel) waitNewMaster(tb TB, ctx context.Context, old string) *Redis {
	tb.Helper()
	var last string
	for {
		addrs := map[string]bool{}
		for _, sp := range s.sentinels {
			st, err := s.sentinelView(ctx, sp.addr)
			if err != nil {
				addrs["error: "+err.Error()] = true
				continue
			}
			addrs[st.master] = true
		}
		if len(addrs) == 1 {
			for a := range addrs {
				if a != old && !strings.HasPrefix(a, "error") {
					role, err := do(ctx, a, "role")
					if r, ok := role.([]any); err == nil && ok && len(r) > 0 && r[0] == "master" {
						for _, n := range s.data {
							if n.Addr() == a {
								return n
							}
						}
					}
				}
			}
		}
		last = fmt.Sprint(addrs)
		select {
		case <-ctx.Done():
			tb.Fatalf("testharness: no new master after failover from %s: sentinels say %s\n%s", old, last, s.logs())
			return nil
		case <-time.After(pollInterval):
		}
	}
}

// logs returns the tail of every sentinel's log, for failure messages.
func (s *Sentinel) logs() string {
	var b strings.Builder
	for _, sp := range s.sentinels {
		fmt.Fprintf(&b, "sentinel %s log, last 20 lines:\n%s\n", sp.addr, tailFile(sp.logPath, 20))
	}
	return b.String()
}

// PauseSentinel freezes the i-th sentinel with SIGSTOP: connections are
// still accepted by the kernel but nothing is answered. Cleanup (or
// KillSentinel) ends it.
func (s *Sentinel) PauseSentinel(tb TB, i int) {
	tb.Helper()
	sp := s.sentinels[i]
	sp.mu.Lock()
	defer sp.mu.Unlock()
	if sp.p == nil {
		tb.Fatalf("testharness: sentinel %d not running", i)
		return
	}
	if err := sp.p.signal(syscall.SIGSTOP); err != nil {
		tb.Fatalf("testharness: pause sentinel %s: %v", sp.addr, err)
	}
}

// KillSentinel ends the i-th sentinel with SIGKILL (even while paused) and
// waits for it to exit: its port then refuses connections.
func (s *Sentinel) KillSentinel(tb TB, i int) {
	tb.Helper()
	sp := s.sentinels[i]
	sp.mu.Lock()
	defer sp.mu.Unlock()
	if sp.p != nil {
		sp.p.kill()
		sp.p = nil
	}
}
