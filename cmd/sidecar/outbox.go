package main

import (
	"context"
	"log/slog"

	"github.com/seed-a88e5317/resilience-sidecar/internal/api"
	"github.com/seed-a88e5317/resilience-sidecar/internal/config"
	"github.com/seed-a88e5317/resilience-sidecar/internal/metrics"
	"github.com/seed-a88e5317/resilience-sidecar/internal/outbox"
)

// startOutbox starts the outbox relay of the config's `outbox` section,
// publishing through pub (the event service). status is nil when no relay
// is configured (GetOutboxStatus then answers enabled=false). stop ends
// the relay, rolling back a batch in flight; call it before stopping the
// event service and closing the stores.
func startOutbox(ctx context.Context, cfg *config.Config, pub outbox.Publisher, m *metrics.Metrics, log *slog.Logger) (status api.OutboxStatuser, stop func(), err error) {
	oc := cfg.Outbox
	if !oc.Enabled() {
		return nil, func() {}, nil
	}
	if cfg.UsesEmbeddedStore() {
		log.Warn("outbox relay publishes to the EMBEDDED IN-MEMORY STORE: rows are marked published but their events are lost on exit, and the idempotency keys that make relaying exactly-once are not shared with other sidecars")
	}
	r, err := outbox.New(outbox.Options{
		URL:           oc.PostgresURL,
		Table:         oc.Table,
		BatchSize:     oc.BatchSize,
		PollInterval:  oc.PollInterval,
		NotifyChannel: oc.NotifyChannel,
		OnPublish:     outbox.Mode(oc.OnPublish),
		Publisher:     pub,
		Log:           log,
		Metrics:       m,
	})
	if err != nil {
		return nil, nil, err
	}
	log.Info("outbox relay", "table", oc.Table, "on_publish", oc.OnPublish, "batch_size", oc.BatchSize,
		"poll_interval", oc.PollInterval.String(), "notify_channel", oc.NotifyChannel)
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = r.Run(ctx) // returns nil when stopped
	}()
	return r, func() {
		r.Close()
		<-done
	}, nil
}
