package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/seed-a88e5317/resilience-sidecar/internal/config"
	"github.com/seed-a88e5317/resilience-sidecar/internal/lock"
	"github.com/seed-a88e5317/resilience-sidecar/internal/metrics"
	"github.com/seed-a88e5317/resilience-sidecar/internal/saga"
	"github.com/seed-a88e5317/resilience-sidecar/internal/upstream"
)

// newSagas builds the saga service on its store, compensating through the
// upstream caller, with its recovery worker elected on the lock store.
// Close it before the caller and the stores.
func newSagas(cfg *config.Config, st stores, caller *upstream.Caller, m *metrics.Metrics, log *slog.Logger) (*saga.Service, error) {
	host, _ := os.Hostname()
	opts := cfg.Saga
	opts.Store, opts.Caller, opts.Elector = st.saga, caller, lockElector{st.lock}
	opts.Owner = fmt.Sprintf("sidecar %s pid %d", host, os.Getpid())
	opts.Retry = func(name string) saga.RetryPolicy {
		if u, ok := cfg.Upstreams[name]; ok {
			return u.CompensationRetry
		}
		return saga.DefaultRetry
	}
	opts.Log, opts.Metrics = log, m
	svc, err := saga.NewService(opts)
	if err != nil {
		return nil, fmt.Errorf("sagas: %w", err)
	}
	return svc, nil
}

// lockElector elects the saga recovery worker with the lock store's own
// primitives.
type lockElector struct{ s lock.Store }

func (e lockElector) TryAcquire(ctx context.Context, key, leaseID, owner string, ttl time.Duration) (bool, error) {
	_, _, ok, err := e.s.TryAcquire(ctx, key, leaseID, owner, ttl)
	return ok, err
}

func (e lockElector) Renew(ctx context.Context, key, leaseID string, ttl time.Duration) (bool, error) {
	_, err := e.s.Renew(ctx, key, leaseID, ttl)
	if errors.Is(err, lock.ErrLeaseLost) {
		return false, nil
	}
	return err == nil, err
}

func (e lockElector) Release(ctx context.Context, key, leaseID string) error {
	if err := e.s.Release(ctx, key, leaseID); err != nil && !errors.Is(err, lock.ErrLeaseLost) {
		return err
	}
	return nil
}
