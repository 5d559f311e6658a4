package main

import (
	"log/slog"

	"github.com/redis/go-redis/v9"

	"github.com/seed-a88e5317/resilience-sidecar/internal/config"
	"github.com/seed-a88e5317/resilience-sidecar/internal/events"
	"github.com/seed-a88e5317/resilience-sidecar/internal/metrics"
	"github.com/seed-a88e5317/resilience-sidecar/internal/redisx"
	"github.com/seed-a88e5317/resilience-sidecar/internal/upstream"
)

// newRedisEvents is the event store on rdb. Its blocking reads (waiting
// for new events) go through a second client of the same Redis, with its
// own pool and without the command hooks, so that they never hold a
// connection the other stores need and do not count as store latency.
// Publishes wait for wait (--redis-wait-replicas), so that an outbox row
// is marked only once its event reached the replicas.
func newRedisEvents(cfg *config.Config, rdb redis.UniversalClient, wait redisx.Wait, log *slog.Logger) *events.RedisStore {
	block, err := redisx.NewClient(cfg.RedisURL, cfg.RedisMode, cfg.StoreTimeout)
	if err != nil {
		// Cannot happen: the same URL made rdb.
		log.Warn("events: no separate client for blocking reads; sharing the main one", "error", err)
		return events.NewRedisStore(rdb, cfg.Namespace, cfg.StoreTimeout, events.WithWait(wait))
	}
	return events.NewRedisStore(rdb, cfg.Namespace, cfg.StoreTimeout, events.WithWait(wait), events.WithBlockingClient(block), events.WithOwnedBlockingClient())
}

// newEvents builds the event service on its store and starts the push
// subscriptions of the config. The returned stop ends the pushes and
// releases the store's own connections; call it before closing the caller
// and the stores.
func newEvents(cfg *config.Config, st stores, caller *upstream.Caller, m *metrics.Metrics, log *slog.Logger) (*events.Service, func()) {
	opts := cfg.Events.Options
	opts.Log, opts.Metrics = log, m
	svc := events.NewService(st.events, opts)
	pushers := make([]*events.Pusher, 0, len(cfg.Events.Push))
	for _, p := range cfg.Events.Push {
		log.Info("push subscription", "name", p.Name, "topic", p.Topic, "group", p.Group, "upstream", p.Upstream)
		pushers = append(pushers, svc.StartPush(p, caller))
	}
	return svc, func() {
		for _, p := range pushers {
			p.Close()
		}
		if c, ok := st.events.(interface{ Close() error }); ok {
			if err := c.Close(); err != nil {
				log.Warn("events: closing the blocking client failed", "error", err)
			}
		}
	}
}
