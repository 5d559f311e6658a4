package testharness

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/seed-a88e5317/resilience-sidecar/internal/redisx"
)

// clusterSlots is the number of hash slots of Redis Cluster.
const clusterSlots = 16384

// clusterReadyTimeout bounds how long StartCluster waits for the cluster
// to agree on its slots and replicas.
const clusterReadyTimeout = 30 * time.Second

// ClusterOption configures StartCluster.
type ClusterOption func(*clusterConfig)

type clusterConfig struct {
	replicas  int
	extraArgs []string
}

// WithClusterReplicas gives every master n replicas (default 0).
func WithClusterReplicas(n int) ClusterOption {
	return func(c *clusterConfig) { c.replicas = n }
}

// Cluster is a Redis Cluster of real redis-server processes on loopback
// ports, owned by one test: masters with the slots split evenly in order,
// and optional replicas. Each node is a *Redis, so Kill, Restart, Pause and
// Resume work on one node (a restarted node keeps its nodes.conf and
// rejoins). Its methods are safe for concurrent use.
type Cluster struct {
	tb       TB
	masters  []*Redis
	replicas []*Redis
}

// StartCluster starts masters (at least 1) cluster-enabled redis-servers
// (and their replicas), assigns the slots, joins them and waits until every
// node reports cluster_state:ok and sees every other node. Cleanup stops
// every node.
func StartCluster(tb TB, masters int, opts ...ClusterOption) *Cluster {
	tb.Helper()
	if masters < 1 {
		tb.Fatalf("testharness: StartCluster needs at least one master, got %d", masters)
	}
	var cfg clusterConfig
	for _, o := range opts {
		o(&cfg)
	}
	c := &Cluster{tb: tb}
	start := func() *Redis {
		// The cluster bus port is chosen too: the default (port+10000) may
		// be taken or above 65535.
		bus, err := freeAddr()
		if err != nil {
			tb.Fatalf("testharness: find free port: %v", err)
		}
		_, busPort, _ := net.SplitHostPort(bus)
		args := append([]string{
			"--cluster-enabled", "yes",
			"--cluster-config-file", "nodes.conf",
			"--cluster-port", busPort,
			"--cluster-node-timeout", "5000",
			"--repl-diskless-sync", "yes",
			"--repl-diskless-sync-delay", "0",
		}, cfg.extraArgs...)
		return StartRedis(tb, WithRedisArgs(args...))
	}
	for range masters {
		c.masters = append(c.masters, start())
	}
	for range masters * cfg.replicas {
		c.replicas = append(c.replicas, start())
	}

	ctx, cancel := context.WithTimeout(context.Background(), clusterReadyTimeout)
	defer cancel()
	if err := c.create(ctx, cfg.replicas); err != nil {
		tb.Fatalf("testharness: create cluster: %v", err)
	}
	return c
}

// nodeClient is a plain client of one node, closed by the caller.
func nodeClient(addr string) *redis.Client {
	return redis.NewClient(&redis.Options{
		Addr:                  addr,
		DisableIdentity:       true,
		ContextTimeoutEnabled: true,
		MaxRetries:            -1,
		PoolSize:              2,
	})
}

// do runs one command on the node at addr.
func do(ctx context.Context, addr string, args ...any) (any, error) {
	c := nodeClient(addr)
	defer c.Close()
	return c.Do(ctx, args...).Result()
}

// create assigns slots (with distinct config epochs, as redis-cli does),
// introduces the nodes to each other, attaches the replicas and waits for
// agreement.
func (c *Cluster) create(ctx context.Context, replicasPer int) error {
	all := c.Nodes()
	per := clusterSlots / len(c.masters)
	for i, m := range c.masters {
		lo, hi := i*per, (i+1)*per-1
		if i == len(c.masters)-1 {
			hi = clusterSlots - 1
		}
		if _, err := do(ctx, m.Addr(), "cluster", "addslotsrange", lo, hi); err != nil {
			return fmt.Errorf("addslotsrange on %s: %w", m.Addr(), err)
		}
	}
	for i, n := range all {
		if _, err := do(ctx, n.Addr(), "cluster", "set-config-epoch", i+1); err != nil {
			return fmt.Errorf("set-config-epoch on %s: %w", n.Addr(), err)
		}
	}
	first := all[0]
	for _, n := range all[1:] {
		host, port, _ := net.SplitHostPort(n.Addr())
		bus, err := busPort(ctx, n.Addr())
		if err != nil {
			return err
		}
		if _, err := do(ctx, first.Addr(), "cluster", "meet", host, port, bus); err != nil {
			return fmt.Errorf("cluster meet %s: %w", n.Addr(), err)
		}
	}
	if err := c.waitAgreement(ctx, len(all)); err != nil {
		return err
	}
	for i, r := range c.replicas {
		master := c.masters[i/replicasPer]
		id, err := nodeID(ctx, master.Addr())
		if err != nil {
			return err
		}
		// The replica must have learnt of its master through gossip first.
		for {
			_, err = do(ctx, r.Addr(), "cluster", "replicate", id)
			if err == nil {
				break
			}
			if ctx.Err() != nil {
				return fmt.Errorf("cluster replicate %s -> %s: %w", r.Addr(), master.Addr(), err)
			}
			time.Sleep(pollInterval)
		}
	}
	if len(c.replicas) > 0 {
		if err := c.WaitReplicasSynced(ctx); err != nil {
			return err
		}
		return c.waitAgreement(ctx, len(all))
	}
	return nil
}

func busPort(ctx context.Context, addr string) (string, error) {
	v, err := do(ctx, addr, "config", "get", "cluster-port")
	if err != nil {
		return "", fmt.Errorf("config get cluster-port on %s: %w", addr, err)
	}
	var s []string
	switch v := v.(type) {
	case []any:
		for _, x := range v {
			s = append(s, fmt.Sprint(x))
		}
	case map[any]any:
		for k, x := range v {
			s = append(s, fmt.Sprint(k), fmt.Sprint(x))
		}
	}
	if len(s) != 2 {
		return "", fmt.Errorf("config get cluster-port on %s: %v", addr, v)
	}
	return s[1], nil
}

func nodeID(ctx context.Context, addr string) (string, error) {
	v, err := do(ctx, addr, "cluster", "myid")
	if err != nil {
		return "", fmt.Errorf("cluster myid on %s: %w", addr, err)
	}
	return fmt.Sprint(v), nil
}

// waitAgreement waits until every node reports cluster_state:ok, knows n
// nodes and maps every slot to the same owners.
func (c *Cluster) waitAgreement(ctx context.Context, n int) error {
	var last string
	for {
		ok := true
		var want string
		for _, node := range c.Nodes() {
			info, err := do(ctx, node.Addr(), "cluster", "info")
			if err != nil {
				last, ok = fmt.Sprintf("%s: %v", node.Addr(), err), false
				break
			}
			s := fmt.Sprint(info)
			if !strings.Contains(s, "cluster_state:ok") || !strings.Contains(s, "cluster_known_nodes:"+strconv.Itoa(n)+"\r") {
				last, ok = fmt.Sprintf("%s: %s", node.Addr(), strings.ReplaceAll(s, "\r\n", " ")), false
				break
			}
			owners, err := slotOwners(ctx, node.Addr())
			if err != nil {
				last, ok = err.Error(), false
				break
			}
			got := fmt.Sprint(owners)
			if want == "" {
				want = got
			} else if got != want {
				last, ok = fmt.Sprintf("slot maps differ: %s vs %s", want, got), false
				break
			}
		}
		if ok {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("cluster did not agree: %s", last)
		case <-time.After(pollInterval):
		}
	}
}

// slotRange is one range of slots and the address of its master.
type slotRange struct {
	lo, hi int
	addr   string
}

// slotOwners returns the node at addr's view of which master serves which
// slots, sorted by slot.
func slotOwners(ctx context.Context, addr string) ([]slotRange, error) {
	cl := nodeClient(addr)
	defer cl.Close()
	//lint:ignore SA1019 CLUSTER SLOTS still answers on every Redis the harness runs (SHARDS needs 7.0)
	slots, err := cl.ClusterSlots(ctx).Result()
	if err != nil {
		return nil, fmt.Errorf("cluster slots on %s: %w", addr, err)
	}
	out := make([]slotRange, 0, len(slots))
	for _, s := range slots {
		if len(s.Nodes) == 0 {
			continue
		}
		out = append(out, slotRange{lo: s.Start, hi: s.End, addr: s.Nodes[0].Addr})
	}
	for i := 1; i < len(out); i++ { // insertion sort: a handful of ranges
		for j := i; j > 0 && out[j].lo < out[j-1].lo; j-- {
			out[j], out[j-1] = out[j-1], out[j]
		}
	}
	return out, nil
}

// WaitReplicasSynced waits until every replica reports its link to its
// master up.
func (c *Cluster) WaitReplicasSynced(ctx context.Context) error {
	for _, r := range c.replicas {
		if err := waitLinkUp(ctx, r.Addr()); err != nil {
			return err
		}
	}
	return nil
}

// waitLinkUp waits until the replica at addr reports master_link_status:up.
func waitLinkUp(ctx context.Context, addr string) error {
	cl := nodeClient(addr)
	defer cl.Close()
	var last string
	for {
		info, err := cl.Info(ctx, "replication").Result()
		if err == nil && strings.Contains(info, "master_link_status:up") {
			return nil
		}
		last = fmt.Sprint(strings.ReplaceAll(info, "\r\n", " "), err)
		select {
		case <-ctx.Done():
			return fmt.Errorf("replica %s not in sync: %s", addr, last)
		case <-time.After(pollInterval):
		}
	}
}

// Masters returns the masters the cluster was created with, in slot order.
func (c *Cluster) Masters() []*Redis { return append([]*Redis(nil), c.masters...) }

// Replicas returns the replicas, those of master 0 first.
func (c *Cluster) Replicas() []*Redis { return append([]*Redis(nil), c.replicas...) }

// Nodes returns every node, masters first.
func (c *Cluster) Nodes() []*Redis {
	return append(c.Masters(), c.replicas...)
}

// Addrs returns the address of every node, masters first.
func (c *Cluster) Addrs() []string {
	var out []string
	for _, n := range c.Nodes() {
		out = append(out, n.Addr())
	}
	return out
}

// URL returns the cluster as go-redis's ParseClusterURL reads it (the
// sidecar's --redis-mode cluster form): the first master, and every other
// master as an addr parameter.
func (c *Cluster) URL() string {
	u := "redis://" + c.masters[0].Addr()
	for i, m := range c.masters[1:] {
		sep := "&"
		if i == 0 {
			sep = "?"
		}
		u += sep + "addr=" + m.Addr()
	}
	return u
}

// Client returns a cluster client for the test, closed in tb's Cleanup.
// Scripts are pipelined by redisx.AutoPipeline, as in the sidecar.
func (c *Cluster) Client(tb TB) *redis.ClusterClient {
	tb.Helper()
	cl := redis.NewClusterClient(&redis.ClusterOptions{
		Addrs:                 c.Addrs(),
		DisableIdentity:       true,
		ContextTimeoutEnabled: true,
	})
	redisx.AutoPipeline(cl, 0, 0) // scripts take the sidecar's path
	tb.Cleanup(func() { _ = cl.Close() })
	return cl
}

// KeySlot returns the hash slot of key, as the cluster computes it.
func (c *Cluster) KeySlot(tb TB, key string) int {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	v, err := do(ctx, c.masters[0].Addr(), "cluster", "keyslot", key)
	if err != nil {
		tb.Fatalf("testharness: cluster keyslot: %v", err)
	}
	n, _ := v.(int64)
	return int(n)
}

// Owner returns the master serving slot, by the view of the first master.
func (c *Cluster) Owner(tb TB, slot int) *Redis {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	addr, err := c.owner(ctx, slot)
	if err != nil {
		tb.Fatalf("testharness: %v", err)
	}
	return c.byAddr(tb, addr)
}

func (c *Cluster) owner(ctx context.Context, slot int) (string, error) {
	owners, err := slotOwners(ctx, c.masters[0].Addr())
	if err != nil {
		return "", err
	}
	for _, r := range owners {
		if slot >= r.lo && slot <= r.hi {
			return r.addr, nil
		}
	}
	return "", fmt.Errorf("slot %d has no owner", slot)
}

func (c *Cluster) byAddr(tb TB, addr string) *Redis {
	tb.Helper()
	for _, n := range c.Nodes() {
		if n.Addr() == addr {
			return n
		}
	}
	tb.Fatalf("testharness: no cluster node at %s", addr)
	return nil
}

// MoveSlot migrates slot to the master to, while clients keep using it, the
// way redis-cli --cluster reshard does: the target is marked IMPORTING and
// the source MIGRATING (from then on clients get ASK for keys already
// moved), the keys are moved in batches with MIGRATE, and the slot is
// assigned to the target on every master (clients then get MOVED).
// pause is slept between marking the slot and moving the keys, to hold
// the migration (and its ASK redirections) open under load. Moving a slot
// to its owner does nothing.
func (c *Cluster) MoveSlot(ctx context.Context, slot int, to *Redis, pause time.Duration) error {
	from, err := c.owner(ctx, slot)
	if err != nil {
		return err
	}
	if from == to.Addr() {
		return nil
	}
	srcID, err := nodeID(ctx, from)
	if err != nil {
		return err
	}
	dstID, err := nodeID(ctx, to.Addr())
	if err != nil {
		return err
	}
	if _, err := do(ctx, to.Addr(), "cluster", "setslot", slot, "importing", srcID); err != nil {
		return fmt.Errorf("setslot %d importing on %s: %w", slot, to.Addr(), err)
	}
	if _, err := do(ctx, from, "cluster", "setslot", slot, "migrating", dstID); err != nil {
		return fmt.Errorf("setslot %d migrating on %s: %w", slot, from, err)
	}
	if pause > 0 {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(pause):
		}
	}
	src := nodeClient(from)
	defer src.Close()
	host, port, _ := net.SplitHostPort(to.Addr())
	for {
		keys, err := src.ClusterGetKeysInSlot(ctx, slot, 100).Result()
		if err != nil {
			return fmt.Errorf("getkeysinslot %d on %s: %w", slot, from, err)
		}
		if len(keys) == 0 {
			break
		}
		args := []any{"migrate", host, port, "", 0, 5000, "keys"}
		for _, k := range keys {
			args = append(args, k)
		}
		if err := src.Do(ctx, args...).Err(); err != nil {
			return fmt.Errorf("migrate %d keys of slot %d: %w", len(keys), slot, err)
		}
	}
	// The target first, so that the source's MOVED never points at a node
	// that does not know it owns the slot yet.
	for _, addr := range append([]string{to.Addr(), from}, c.otherMasters(to.Addr(), from)...) {
		if _, err := do(ctx, addr, "cluster", "setslot", slot, "node", dstID); err != nil {
			return fmt.Errorf("setslot %d node on %s: %w", slot, addr, err)
		}
	}
	return nil
}

// otherMasters returns the addresses of the nodes currently serving slots
// other than the given ones.
func (c *Cluster) otherMasters(except ...string) []string {
	var out []string
	for _, m := range c.masters {
		skip := false
		for _, e := range except {
			skip = skip || m.Addr() == e
		}
		if !skip {
			out = append(out, m.Addr())
		}
	}
	return out
}

// Failover promotes a replica of the master serving slot with CLUSTER
// FAILOVER (a planned failover: the replica catches up with its master
// first, then takes its slots, and the old master becomes its replica),
// and waits until every node names the replica as the slot's owner. It
// returns the new master. The cluster must have been started with
// WithClusterReplicas.
func (c *Cluster) Failover(tb TB, slot int) *Redis {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	old, err := c.owner(ctx, slot)
	if err != nil {
		tb.Fatalf("testharness: %v", err)
	}
	replicas := c.replicasOf(ctx, old)
	if len(replicas) == 0 {
		tb.Fatalf("testharness: no replica of %s (the owner of slot %d) to fail over to", old, slot)
	}
	promoted := replicas[0]
	// A manual failover the replica cannot complete within Redis's 5 s
	// (a loaded machine) is abandoned by Redis: ask again after that.
	var asked time.Time
	for {
		if time.Since(asked) > 6*time.Second && isReplica(ctx, promoted.Addr()) {
			if _, err := do(ctx, promoted.Addr(), "cluster", "failover"); err != nil {
				tb.Fatalf("testharness: cluster failover on %s: %v", promoted.Addr(), err)
			}
			asked = time.Now()
		}
		agreed := true
		for _, n := range c.Nodes() {
			owners, err := slotOwners(ctx, n.Addr())
			if err != nil {
				agreed = false
				break
			}
			for _, r := range owners {
				if slot >= r.lo && slot <= r.hi && r.addr != promoted.Addr() {
					agreed = false
				}
			}
		}
		if agreed {
			return promoted
		}
		select {
		case <-ctx.Done():
			tb.Fatalf("testharness: slot %d still not served by %s after CLUSTER FAILOVER", slot, promoted.Addr())
		case <-time.After(pollInterval):
		}
	}
}

// ReplicasOf returns the nodes that say (ROLE) they replicate master.
func (c *Cluster) ReplicasOf(tb TB, master *Redis) []*Redis {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return c.replicasOf(ctx, master.Addr())
}

func (c *Cluster) replicasOf(ctx context.Context, master string) []*Redis {
	var out []*Redis
	for _, r := range c.Nodes() {
		v, err := do(ctx, r.Addr(), "role")
		role, _ := v.([]any)
		if err != nil || len(role) < 3 || role[0] != "slave" {
			continue
		}
		host, _ := role[1].(string)
		port, _ := role[2].(int64)
		if net.JoinHostPort(host, strconv.FormatInt(port, 10)) == master {
			out = append(out, r)
		}
	}
	return out
}

// isReplica reports whether the node at addr says it is a replica.
func isReplica(ctx context.Context, addr string) bool {
	v, err := do(ctx, addr, "role")
	role, _ := v.([]any)
	return err == nil && len(role) > 0 && role[0] == "slave"
}
