package outbox_test

import (
	"context"
	"database/sql"
	"fmt"
	"log"
	"os"

	"github.com/jackc/pgx/v5"
	_ "github.com/jackc/pgx/v5/stdlib" // the "pgx" database/sql driver

	"github.com/seed-a88e5317/resilience-sidecar/clients/go/outbox"
)

// An order and its "order placed" event are written in one database/sql
// transaction: the sidecar publishes the event only once the order is
// committed.
func Example() {
	ctx := context.Background()
	db, err := sql.Open("pgx", os.Getenv("DATABASE_URL"))
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()
	if _, err := db.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS orders (id text PRIMARY KEY, total numeric)`); err != nil {
		log.Fatal(err)
	}

	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		log.Fatal(err)
	}
	defer tx.Rollback() //nolint:errcheck // no-op after Commit
	if _, err := tx.ExecContext(ctx, `INSERT INTO orders (id, total) VALUES ($1, $2)`, "order-42", 12.5); err != nil {
		log.Fatal(err)
	}
	id, err := outbox.Insert(ctx, tx, outbox.Event{
		Topic:   "orders",
		Key:     "order-42",
		Payload: []byte(`{"order":"order-42","total":12.5}`),
		Headers: map[string]string{"type": "order.placed"},
	})
	if err != nil {
		log.Fatal(err)
	}
	if err := tx.Commit(); err != nil {
		log.Fatal(err)
	}

	var topic, key, headers string
	var published sql.NullTime
	if err := db.QueryRowContext(ctx, `SELECT topic, key, headers::text, published_at FROM outbox WHERE id = $1`, id).
		Scan(&topic, &key, &headers, &published); err != nil {
		log.Fatal(err)
	}
	fmt.Println(topic, key, headers)
	// Output: orders order-42 {"type": "order.placed"}
}

// The same with pgx: InsertPgx takes a pgx.Tx.
func ExampleInsertPgx() {
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, os.Getenv("DATABASE_URL"))
	if err != nil {
		log.Fatal(err)
	}
	defer conn.Close(ctx)

	err = pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
		// ... the application's own writes in tx ...
		_, err := outbox.InsertPgx(ctx, tx, outbox.Event{Topic: "payments", Key: "pay-7", Payload: []byte("captured")})
		return err
	})
	if err != nil {
		log.Fatal(err)
	}
	var n int
	if err := conn.QueryRow(ctx, `SELECT count(*) FROM outbox WHERE topic = 'payments' AND published_at IS NULL`).Scan(&n); err != nil {
		log.Fatal(err)
	}
	fmt.Println(n, "row waiting for the relay")
	// Output: 1 row waiting for the relay
}
