package redisx

import (
	"context"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// Watches shares one sharded subscription per channel among any number of
// watchers in this process, so waiting callers cost one connection per
// channel rather than one each. It is safe for concurrent use.
type Watches struct {
	rdb     redis.UniversalClient
	timeout time.Duration

	mu    sync.Mutex
	byKey map[string]*watch
}

type watch struct {
	sub   *ShardedSub
	subs  map[chan struct{}]struct{}
	ready chan struct{}
	err   error
}

// NewWatches returns watches on rdb whose subscriptions take at most
// timeout to be confirmed.
func NewWatches(rdb redis.UniversalClient, timeout time.Duration) *Watches {
	return &Watches{rdb: rdb, timeout: timeout, byKey: map[string]*watch{}}
}

// Watch subscribes to channel. Once it returns, every message published on
// channel is signalled on the returned channel (buffered, coalesced) until
// stop is called; stop is idempotent. The subscription is confirmed by
// Redis before Watch returns and follows the channel's slot when it moves
// to another Cluster node. Errors wrap store.ErrUnavailable, or are ctx's.
func (ws *Watches) Watch(ctx context.Context, channel string) (<-chan struct{}, func(), error) {
	ch := make(chan struct{}, 1)
	ws.mu.Lock()
	w := ws.byKey[channel]
	create := w == nil
	if create {
		w = &watch{subs: map[chan struct{}]struct{}{}, ready: make(chan struct{})}
		ws.byKey[channel] = w
	}
	w.subs[ch] = struct{}{}
	ws.mu.Unlock()

	var once sync.Once
	stop := func() {
		once.Do(func() {
			ws.mu.Lock()
			defer ws.mu.Unlock()
			delete(w.subs, ch)
			if len(w.subs) == 0 {
				if ws.byKey[channel] == w {
					delete(ws.byKey, channel)
				}
				if w.sub != nil {
					_ = w.sub.Close()
				}
			}
		})
	}

	if create {
		// The creator stays subscribed until it returns, so the watch
		// cannot be torn down while it is being set up.
		sctx, cancel := context.WithTimeout(context.Background(), ws.timeout)
		sub, err := SSubscribe(sctx, ws.rdb, channel, ws.timeout)
		cancel()
		ws.mu.Lock()
		if err != nil {
			w.err = Classify(context.Background(), err)
			if ws.byKey[channel] == w {
				delete(ws.byKey, channel)
			}
		} else {
			w.sub = sub
			go ws.pump(w, sub.C)
		}
		close(w.ready)
		ws.mu.Unlock()
	}
	select {
	case <-w.ready:
	case <-ctx.Done():
		stop()
		return nil, nil, ctx.Err()
	}
	if w.err != nil {
		stop()
		return nil, nil, w.err
	}
	return ch, stop, nil
}

// pump fans messages out to the watchers; it ends when the last watcher's
// stop closes the subscription.
func (ws *Watches) pump(w *watch, msgs <-chan struct{}) {
	for range msgs {
		ws.mu.Lock()
		for ch := range w.subs {
			select {
			case ch <- struct{}{}:
			default:
			}
		}
		ws.mu.Unlock()
	}
}
