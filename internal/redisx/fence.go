package redisx

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"
)

// SentinelFence is the Fence of a Sentinel deployment: a write is
// confirmed when, after it was acknowledged, every sentinel answers that
// the node that took it is the master and that no failover has begun. A
// sentinel that refuses
// connections is not running, so it cannot be failing over, and is passed
// over; one that does not answer in time fails the confirmation. Calls
// that arrive while a round of questions is being prepared share it, so
// under load the cost is one round per round-trip time, not per write.
type SentinelFence struct {
	master    string
	timeout   time.Duration
	sentinels []*redis.SentinelClient

	mu      sync.Mutex
	pending *fenceRound // the next round: not yet asked, open to joiners
	running *fenceRound // the round being asked, if any
}

// fenceRound is one question to every sentinel. done closes when err is
// set; node is the master every sentinel named.
type fenceRound struct {
	done chan struct{}
	node string
	err  error
}

// NewSentinelFence returns the Fence for the Sentinel deployment of url (a
// go-redis failover URL, as for NewClient in Sentinel mode); each round of
// questions takes at most timeout. Every sentinel of the deployment must
// be listed in url: one that is not could start a failover unseen.
func NewSentinelFence(url string, timeout time.Duration) (*SentinelFence, error) {
	o, err := redis.ParseFailoverURL(url)
	if err != nil {
		return nil, fmt.Errorf("redisx: redis_url: %w", err)
	}
	f := &SentinelFence{master: o.MasterName, timeout: timeout}
	for _, addr := range o.SentinelAddrs {
		f.sentinels = append(f.sentinels, redis.NewSentinelClient(&redis.Options{
			Addr: addr, Username: o.SentinelUsername, Password: o.SentinelPassword, TLSConfig: o.TLSConfig,
			DialTimeout: timeout, ReadTimeout: timeout, WriteTimeout: timeout,
			MaxRetries: -1, DialerRetries: 1, ContextTimeoutEnabled: true, DisableIdentity: true,
		}))
	}
	return f, nil
}

// Close closes the connections to the sentinels.
func (f *SentinelFence) Close() error {
	var errs []error
	for _, s := range f.sentinels {
		errs = append(errs, s.Close())
	}
	return errors.Join(errs...)
}

// Confirm implements Fence. It asks in a round that starts after it was
// called: the round being asked when it arrives may have been sent before
// the write was acknowledged, so it waits for the next one.
func (f *SentinelFence) Confirm(ctx context.Context, node string) error {
	f.mu.Lock()
	r, lead := f.pending, f.pending == nil
	if lead {
		r = &fenceRound{done: make(chan struct{})}
		f.pending = r
	}
	prev := f.running
	f.mu.Unlock()
	if lead {
		// The leader asks for everyone who joins until it starts, whatever
		// its own context: each round is bounded by the fence's timeout.
		if prev != nil {
			<-prev.done
		}
		f.mu.Lock()
		f.pending, f.running = nil, r
		f.mu.Unlock()
		r.node, r.err = f.ask(context.WithoutCancel(ctx))
		close(r.done)
		f.mu.Lock()
		if f.running == r {
			f.running = nil
		}
		f.mu.Unlock()
	}
	select {
	case <-r.done:
	case <-ctx.Done():
		return ctx.Err()
	}
	if r.err != nil {
		return r.err
	}
	if r.node != node {
		return fmt.Errorf("the sentinels name %s as master, not %s, which took the write", r.node, node)
	}
	return nil
}

// ask asks every sentinel at once for the master's state and returns the
// master they all name.
func (f *SentinelFence) ask(ctx context.Context) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, f.timeout)
	defer cancel()
	type answer struct {
		addr, node string
		err        error
	}
	answers := make(chan answer, len(f.sentinels))
	for _, s := range f.sentinels {
		go func() {
			node, err := f.askOne(ctx, s)
			answers <- answer{s.String(), node, err}
		}()
	}
	var node string
	var errs []error
	for range f.sentinels {
		a := <-answers
		switch {
		case a.err != nil:
			errs = append(errs, a.err)
		case a.node == "": // not running
		case node == "":
			node = a.node
		case node != a.node:
			errs = append(errs, fmt.Errorf("sentinels disagree on the master: %s and %s", node, a.node))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return "", err
	}
	if node == "" {
		return "", errors.New("no sentinel answered")
	}
	return node, nil
}

// askOne asks one sentinel. It returns "" and no error for a sentinel that
// is not running (connection refused).
func (f *SentinelFence) askOne(ctx context.Context, s *redis.SentinelClient) (string, error) {
	m, err := s.Master(ctx, f.master).Result()
	if errors.Is(err, syscall.ECONNREFUSED) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("sentinel %s: %w", s, err)
	}
	// The sentinel sets this flag as it starts a failover, before it
	// promotes anything.
	for flag := range strings.SplitSeq(m["flags"], ",") {
		if flag == "failover_in_progress" {
			return "", fmt.Errorf("sentinel %s: master %s is failing over (%s)", s, f.master, m["flags"])
		}
	}
	return net.JoinHostPort(m["ip"], m["port"]), nil
}
