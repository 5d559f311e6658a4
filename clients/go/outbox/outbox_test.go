package outbox_test

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"os"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	_ "github.com/jackc/pgx/v5/stdlib"

	"github.com/seed-a88e5317/resilience-sidecar/clients/go/outbox"
)

func ctxT(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func openDB(t *testing.T) *sql.DB {
	t.Helper()
	db, err := sql.Open("pgx", os.Getenv("DATABASE_URL"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = db.Close() })
	return db
}

type row struct {
	topic, key string
	payload    []byte
	headers    map[string]string
	published  bool
}

func readRow(t *testing.T, ctx context.Context, db *sql.DB, table string, id int64) (row, bool) {
	t.Helper()
	var r row
	var h []byte
	var pub sql.NullTime
	err := db.QueryRowContext(ctx, `SELECT topic, key, payload, headers, published_at FROM `+table+` WHERE id = $1`, id).
		Scan(&r.topic, &r.key, &r.payload, &h, &pub)
	if errors.Is(err, sql.ErrNoRows) {
		return row{}, false
	}
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(h, &r.headers); err != nil {
		t.Fatalf("headers %s are not a JSON object: %v", h, err)
	}
	r.published = pub.Valid
	return r, true
}

func TestInsertDatabaseSQLCommitAndRollback(t *testing.T) {
	ctx := ctxT(t)
	db := openDB(t)
	ev := outbox.Event{Topic: "orders", Key: "k1", Payload: []byte{0, 1, 2}, Headers: map[string]string{"a": "b", "trace": "x"}}

	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	rolledBack, err := outbox.Insert(ctx, tx, ev)
	if err != nil {
		t.Fatal(err)
	}
	if err := tx.Rollback(); err != nil {
		t.Fatal(err)
	}
	if _, ok := readRow(t, ctx, db, "outbox", rolledBack); ok {
		t.Fatalf("row %d visible after rollback", rolledBack)
	}

	tx, err = db.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	id, err := outbox.Insert(ctx, tx, ev)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := readRow(t, ctx, db, "outbox", id); ok {
		t.Fatal("row visible to another session before commit")
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	r, ok := readRow(t, ctx, db, "outbox", id)
	if !ok {
		t.Fatal("row missing after commit")
	}
	if r.topic != "orders" || r.key != "k1" || string(r.payload) != "\x00\x01\x02" ||
		len(r.headers) != 2 || r.headers["a"] != "b" || r.headers["trace"] != "x" || r.published {
		t.Fatalf("row = %+v", r)
	}
}

func TestInsertPgxCommitAndRollback(t *testing.T) {
	ctx := ctxT(t)
	conn, err := pgx.Connect(ctx, os.Getenv("DATABASE_URL"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	db := openDB(t)

	tx, err := conn.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	rolledBack, err := outbox.InsertPgx(ctx, tx, outbox.Event{Topic: "t", Payload: []byte("x")})
	if err != nil {
		t.Fatal(err)
	}
	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	if _, ok := readRow(t, ctx, db, "outbox", rolledBack); ok {
		t.Fatal("row visible after rollback")
	}

	var id int64
	if err := pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
		id, err = outbox.InsertPgx(ctx, tx, outbox.Event{Topic: "t", Headers: map[string]string{"h": "v"}})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	r, ok := readRow(t, ctx, db, "outbox", id)
	if !ok || r.topic != "t" || r.key != "" || len(r.payload) != 0 || r.headers["h"] != "v" {
		t.Fatalf("row = %+v, %v", r, ok)
	}
	// Outside a transaction (autocommit) too.
	id, err = outbox.InsertPgx(ctx, conn, outbox.Event{Topic: "t"})
	if err != nil {
		t.Fatal(err)
	}
	if r, ok := readRow(t, ctx, db, "outbox", id); !ok || len(r.headers) != 0 {
		t.Fatalf("autocommit row = %+v, %v", r, ok)
	}
}

func TestInsertWithTable(t *testing.T) {
	ctx := ctxT(t)
	db := openDB(t)
	if _, err := db.ExecContext(ctx, `CREATE SCHEMA IF NOT EXISTS app; CREATE TABLE IF NOT EXISTS app.events_outbox (LIKE outbox INCLUDING ALL)`); err != nil {
		t.Fatal(err)
	}
	id, err := outbox.Insert(ctx, db, outbox.Event{Topic: "x"}, outbox.WithTable("app.events_outbox"))
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := readRow(t, ctx, db, "app.events_outbox", id); !ok {
		t.Fatal("row not in app.events_outbox")
	}
}

func TestInsertRefusesBadInput(t *testing.T) {
	ctx := ctxT(t)
	db := openDB(t)
	if _, err := outbox.Insert(ctx, db, outbox.Event{}); !errors.Is(err, outbox.ErrNoTopic) {
		t.Errorf("no topic: %v", err)
	}
	for _, table := range []string{"", "Outbox", "a;drop table outbox", "a.b.c", `"x"`} {
		if _, err := outbox.Insert(ctx, db, outbox.Event{Topic: "t"}, outbox.WithTable(table)); !errors.Is(err, outbox.ErrBadTable) {
			t.Errorf("table %q: %v", table, err)
		}
	}
	if _, err := outbox.Insert(ctx, db, outbox.Event{Topic: "t"}, outbox.WithTable("missing_table")); err == nil {
		t.Error("insert into a missing table succeeded")
	}
}
