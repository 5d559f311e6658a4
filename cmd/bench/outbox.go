package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/seed-a88e5317/resilience-sidecar/internal/testharness"
)

func init() { groups = append(groups, outboxRows) }

// outboxBatch is how many rows one op commits (in one transaction) and
// then waits for.
const outboxBatch = 100

// outboxRows: the outbox relay end to end. Each op commits 100 outbox rows
// in one Postgres transaction, then waits until the relay (one sidecar on
// Redis, batch_size 100, woken by NOTIFY) has published and marked all of
// them (and every row before them); throughput is in rows per second,
// latency is commit to marked.
func outboxRows(env *Env) []Row {
	pg := testharness.StartPostgres(env.TB)
	dir, err := os.MkdirTemp("", "bench-outbox-")
	if err != nil {
		env.TB.Fatalf("bench: %v", err)
	}
	env.TB.Cleanup(func() { _ = os.RemoveAll(dir) })
	cfg := filepath.Join(dir, "sidecar.yaml")
	body := fmt.Sprintf("outbox:\n  postgres_url: %q\n  batch_size: %d\n  poll_interval: 1s\n", pg.URL(), outboxBatch)
	if err := os.WriteFile(cfg, []byte(body), 0o600); err != nil {
		env.TB.Fatalf("bench: %v", err)
	}
	testharness.StartSidecar(env.TB, env.Bin, "--config", cfg, "--redis-url", env.RedisURL, "--log-level", "error")

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	pool, err := pgxpool.New(ctx, pg.URL())
	if err != nil {
		env.TB.Fatalf("bench: %v", err)
	}
	env.TB.Cleanup(pool.Close)

	// One poller publishes the low watermark: every id below the smallest
	// unpublished one is published. Waiters compare their highest id with
	// it, so waiting costs Postgres one cheap query per 5ms whatever the
	// concurrency (not one per waiter).
	var mu sync.Mutex
	cond := sync.NewCond(&mu)
	var watermark int64
	pollCtx, stopPoll := context.WithCancel(context.Background())
	polled := make(chan struct{})
	go func() {
		defer close(polled)
		for pollCtx.Err() == nil {
			var w int64
			err := pool.QueryRow(pollCtx, `SELECT coalesce(min(id), (SELECT coalesce(max(id), 0) + 1 FROM outbox))
				FROM outbox WHERE published_at IS NULL`).Scan(&w)
			if err == nil {
				mu.Lock()
				watermark = w
				mu.Unlock()
				cond.Broadcast()
			}
			select {
			case <-pollCtx.Done():
			case <-time.After(5 * time.Millisecond):
			}
		}
		cond.Broadcast()
	}()
	env.TB.Cleanup(func() { stopPoll(); <-polled })

	op := func(ctx context.Context, worker, i int) error {
		var ids []int64
		err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
			rows, err := tx.Query(ctx, `INSERT INTO outbox (topic, key, payload)
				SELECT 'bench-outbox', $1, convert_to('row ' || g, 'UTF8') FROM generate_series(1, $2) g RETURNING id`,
				fmt.Sprintf("w%d", worker), outboxBatch)
			if err != nil {
				return err
			}
			ids, err = pgx.CollectRows(rows, pgx.RowTo[int64])
			return err
		})
		if err != nil {
			return err
		}
		last := slices.Max(ids)
		stop := context.AfterFunc(ctx, func() { mu.Lock(); cond.Broadcast(); mu.Unlock() })
		defer stop()
		mu.Lock()
		defer mu.Unlock()
		for watermark <= last {
			if err := ctx.Err(); err != nil {
				return fmt.Errorf("rows up to id %d still unpublished: %w", last, err)
			}
			if pollCtx.Err() != nil {
				return pollCtx.Err()
			}
			cond.Wait()
		}
		return nil
	}
	return []Row{{Name: "outbox relay rows/s: 100-row commits, published and marked (sidecar on Redis)", Op: op, PerOp: outboxBatch}}
}
