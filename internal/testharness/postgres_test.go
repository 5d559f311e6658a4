package testharness_test

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/seed-a88e5317/resilience-sidecar/internal/testharness"
)

func TestPostgresOutboxTableAndRestart(t *testing.T) {
	pg := testharness.StartPostgres(t)
	url := pg.NewDatabase(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	insert := func() {
		t.Helper()
		c, err := pgx.Connect(ctx, url)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close(ctx)
		if _, err := c.Exec(ctx, `INSERT INTO outbox (topic, key, payload, headers) VALUES ('t', 'k', 'p', '{"a":"b"}')`); err != nil {
			t.Fatal(err)
		}
	}
	count := func() int {
		t.Helper()
		c, err := pgx.Connect(ctx, url)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close(ctx)
		var n int
		if err := c.QueryRow(ctx, `SELECT count(*) FROM outbox WHERE published_at IS NULL`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	insert()
	pg.Kill()
	if _, err := pgx.Connect(ctx, url); err == nil {
		t.Fatal("connected to a killed server")
	}
	pg.Restart()
	insert()
	pg.Stop()
	pg.Restart()
	if n := count(); n != 2 {
		t.Fatalf("unpublished rows after restarts = %d, want 2", n)
	}
}
