package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/redis/go-redis/v9"

	"github.com/seed-a88e5317/resilience-sidecar/internal/testharness"
)

// outboxMemRows is how many rows the outbox-memory group relays.
const outboxMemRows = 20_000

// outboxMemory (group "outbox-memory", issue 25): the Redis memory the
// outbox relay costs per relayed row. One sidecar on a Redis of its own
// relays 20 000 rows (200 commits of 100); then it reports, per row, the
// growth of Redis's used_memory, the bytes of the rows' idempotency keys
// (MEMORY USAGE) and how long those keys are still kept (their PTTL), and
// what they hold at a steady 1 000 rows/s. It waits for the keys to
// expire when that is within two minutes and reports what is left.
func runOutboxMemory(env *Env) {
	tb := env.TB
	rd := testharness.StartRedis(tb)
	pg := testharness.StartPostgres(tb)
	dir, err := os.MkdirTemp("", "bench-outbox-mem-")
	if err != nil {
		tb.Fatalf("bench: %v", err)
	}
	tb.Cleanup(func() { _ = os.RemoveAll(dir) })
	cfg := filepath.Join(dir, "sidecar.yaml")
	body := fmt.Sprintf("outbox:\n  postgres_url: %q\n  batch_size: 100\n  poll_interval: 1s\n", pg.URL())
	if err := os.WriteFile(cfg, []byte(body), 0o600); err != nil {
		tb.Fatalf("bench: %v", err)
	}
	testharness.StartSidecar(tb, env.Bin, "--config", cfg, "--redis-url", rd.URL(), "--log-level", "error")
	rdb := rd.Client(tb)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	conn, err := pgx.Connect(ctx, pg.URL())
	if err != nil {
		tb.Fatalf("bench: %v", err)
	}
	defer conn.Close(context.Background())

	// Warm up (the stream, the scripts), then measure from there.
	relayRows(ctx, tb, conn, 100)
	waitPublished(ctx, tb, conn)
	before := usedMemory(ctx, tb, rdb)
	start := time.Now()
	relayRows(ctx, tb, conn, outboxMemRows)
	waitPublished(ctx, tb, conn)
	took := time.Since(start)
	after := usedMemory(ctx, tb, rdb)
	keys := dedupKeys(ctx, tb, rdb)
	var keyBytes int64
	var ttls []time.Duration
	for _, k := range keys {
		n, _ := rdb.MemoryUsage(ctx, k).Result()
		keyBytes += n
		if d, err := rdb.PTTL(ctx, k).Result(); err == nil && d > 0 {
			ttls = append(ttls, d)
		}
	}
	slices.Sort(ttls)
	var hold time.Duration
	if len(ttls) > 0 {
		hold = ttls[len(ttls)/2]
	}
	perRow := float64(after-before) / float64(outboxMemRows)
	keyPerRow := float64(keyBytes) / float64(max(len(keys), 1)) // one key per row
	fmt.Printf("\n== outbox memory: %d rows relayed by one sidecar (%s, %.0f rows/s) ==\n", outboxMemRows, took.Round(time.Millisecond), float64(outboxMemRows)/took.Seconds())
	fmt.Printf("redis used_memory growth per relayed row (stream entry and idempotency key): %.0f bytes\n", perRow)
	fmt.Printf("idempotency keys: %d (one per row, warm-up included), %.0f bytes each, kept %s more (median PTTL)\n", len(keys), keyPerRow, hold.Round(time.Second))
	if hold > 0 {
		steady := keyPerRow * 1000 * hold.Seconds()
		fmt.Printf("idempotency keys held at a steady 1 000 rows/s: %s\n", bytesText(steady))
	}
	if hold == 0 || hold > 2*time.Minute {
		return
	}
	deadline := time.Now().Add(hold + 30*time.Second)
	for len(dedupKeys(ctx, tb, rdb)) > 0 && time.Now().Before(deadline) {
		time.Sleep(time.Second) // real time: the keys expire by Redis's clock
	}
	left := usedMemory(ctx, tb, rdb)
	fmt.Printf("after the keys' hold: %d keys left, used_memory growth per relayed row %.0f bytes (the stream entries)\n",
		len(dedupKeys(ctx, tb, rdb)), float64(left-before)/float64(outboxMemRows))
}

// relayRows commits n outbox rows, 100 per transaction.
func relayRows(ctx context.Context, tb testharness.TB, conn *pgx.Conn, n int) {
	for done := 0; done < n; done += 100 {
		if _, err := conn.Exec(ctx, `INSERT INTO outbox (topic, key, payload)
			SELECT 'bench-outbox-mem', 'k' || (g % 16), convert_to('row ' || g, 'UTF8') FROM generate_series(1, $1) g`, min(100, n-done)); err != nil {
			tb.Fatalf("bench: insert: %v", err)
		}
	}
}

func waitPublished(ctx context.Context, tb testharness.TB, conn *pgx.Conn) {
	for {
		var n int
		if err := conn.QueryRow(ctx, `SELECT count(*) FROM outbox WHERE published_at IS NULL`).Scan(&n); err != nil {
			tb.Fatalf("bench: %v", err)
		}
		if n == 0 {
			return
		}
		select {
		case <-ctx.Done():
			tb.Fatalf("bench: %d rows still unpublished: %v", n, ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func usedMemory(ctx context.Context, tb testharness.TB, rdb *redis.Client) int64 {
	n, err := strconv.ParseInt(redisInfo(ctx, rdb, "memory")["used_memory"], 10, 64)
	if err != nil {
		tb.Fatalf("bench: INFO memory: %v", err)
	}
	return n
}

// dedupKeys are the events' idempotency keys in Redis.
func dedupKeys(ctx context.Context, tb testharness.TB, rdb *redis.Client) []string {
	var keys []string
	iter := rdb.Scan(ctx, 0, "*:ev:dedup:*", 1000).Iterator()
	for iter.Next(ctx) {
		keys = append(keys, iter.Val())
	}
	if err := iter.Err(); err != nil {
		tb.Fatalf("bench: SCAN: %v", err)
	}
	return keys
}

func bytesText(b float64) string {
	for _, u := range []string{"B", "KB", "MB", "GB"} {
		if b < 1000 || u == "GB" {
			return strings.TrimSuffix(fmt.Sprintf("%.1f", b), ".0") + " " + u
		}
		b /= 1000
	}
	return ""
}
