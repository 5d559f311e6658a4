package redisx

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// ShardedSub is a sharded subscription (SSUBSCRIBE) to one channel that
// keeps following the channel's slot. On Redis Cluster, when a slot moves
// to another master (resharding, or a failover), Redis ends the
// subscriptions of its channels with a "sunsubscribe" message and go-redis
// does not subscribe again; ShardedSub does, on the slot's new owner.
//
// C receives a signal (coalesced) for every message, and also after every
// re-subscription, whether go-redis made it after a lost connection or
// ShardedSub after a moved slot: messages published in between are lost,
// so a receiver must re-check the state it waits for. C is closed by Close.
type ShardedSub struct {
	C <-chan struct{}

	c       redis.UniversalClient
	channel string
	timeout time.Duration
	out     chan struct{}
	ctx     context.Context
	cancel  context.CancelFunc
	done    chan struct{}

	mu     sync.Mutex
	ps     *redis.PubSub
	closed bool
}

// SSubscribe subscribes to channel and waits (bounded by ctx) until Redis
// confirms it, following MOVED and ASK while a slot moves. timeout bounds
// each later re-subscription attempt. Close the returned subscription when
// done.
func SSubscribe(ctx context.Context, c redis.UniversalClient, channel string, timeout time.Duration) (*ShardedSub, error) {
	var ps *redis.PubSub
	for attempt := 1; ; attempt++ {
		var err error
		if ps, err = subscribeConfirmed(ctx, c, channel); err == nil {
			break
		}
		moved, ask, _ := redirect(err)
		if !moved && !ask {
			return nil, err
		}
		// The client's slot map is behind a resharding.
		if cc, ok := c.(*redis.ClusterClient); ok {
			cc.ReloadState(ctx)
		}
		if attempt == maxWaitRedirects || sleepCtx(ctx, time.Duration(attempt)*10*time.Millisecond) != nil {
			return nil, err
		}
	}
	out := make(chan struct{}, 1)
	s := &ShardedSub{C: out, c: c, channel: channel, timeout: timeout, out: out, ps: ps, done: make(chan struct{})}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	go s.run(ps)
	return s, nil
}

func subscribeConfirmed(ctx context.Context, c redis.UniversalClient, channel string) (*redis.PubSub, error) {
	ps := c.SSubscribe(ctx, channel)
	if _, err := ps.Receive(ctx); err != nil {
		_ = ps.Close()
		return nil, err
	}
	return ps, nil
}

// Close ends the subscription, waits for its goroutine and closes C. It is
// idempotent.
func (s *ShardedSub) Close() error {
	s.mu.Lock()
	var err error
	if !s.closed {
		s.closed = true
		s.cancel()
		if err = s.ps.Close(); errors.Is(err, redis.ErrClosed) {
			err = nil // already closed by a re-subscription
		}
	}
	s.mu.Unlock()
	<-s.done
	return err
}

func (s *ShardedSub) signal() {
	select {
	case s.out <- struct{}{}:
	default:
	}
}

// run forwards messages of ps, and replaces ps when Redis drops the
// subscription, until Close.
func (s *ShardedSub) run(ps *redis.PubSub) {
	defer close(s.done)
	defer close(s.out)
	for {
		dropped := false
		for m := range ps.ChannelWithSubscriptions() {
			switch m := m.(type) {
			case *redis.Message:
				s.signal()
			case *redis.Subscription:
				switch m.Kind {
				case "ssubscribe": // go-redis re-subscribed after reconnecting
					s.signal()
				case "sunsubscribe": // we never unsubscribe: Redis dropped us
					dropped = true
				}
			}
			if dropped {
				break
			}
		}
		if !dropped { // closed by Close
			return
		}
		if ps = s.resubscribe(ps); ps == nil {
			return
		}
		s.signal()
	}
}

// resubscribe closes old and subscribes again, retrying with backoff (and
// a fresh slot map on Cluster) until it succeeds or Close is called, which
// it reports by returning nil.
func (s *ShardedSub) resubscribe(old *redis.PubSub) *redis.PubSub {
	_ = old.Close()
	backoff := 20 * time.Millisecond
	for {
		if cc, ok := s.c.(*redis.ClusterClient); ok {
			cc.ReloadState(s.ctx)
		}
		ctx, cancel := context.WithTimeout(s.ctx, s.timeout)
		ps, err := subscribeConfirmed(ctx, s.c, s.channel)
		cancel()
		if err == nil {
			s.mu.Lock()
			if s.closed {
				s.mu.Unlock()
				_ = ps.Close()
				return nil
			}
			s.ps = ps
			s.mu.Unlock()
			return ps
		}
		if errors.Is(s.ctx.Err(), context.Canceled) {
			return nil
		}
		if sleepCtx(s.ctx, backoff) != nil {
			return nil
		}
		backoff = min(2*backoff, time.Second)
	}
}
