// Package outbox writes transactional outbox rows for the resilience
// sidecar's outbox relay: insert the event in the same transaction as the
// data it describes, and the sidecar publishes it through the EventService
// exactly once after the transaction commits (and never if it rolls back).
//
// The table is created by deploy/postgres/outbox.sql; the sidecar's config
// section `outbox` points the relay at it (docs/outbox.md).
//
// Insert takes a database/sql transaction (*sql.Tx, or *sql.DB / *sql.Conn
// outside one); InsertPgx takes a pgx transaction (pgx.Tx, or *pgx.Conn /
// *pgxpool.Pool outside one). Both are safe for concurrent use as far as
// the transaction they are given is.
package outbox

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"strings"

	"github.com/jackc/pgx/v5"
)

// DefaultTable is the table Insert writes to unless WithTable says another.
const DefaultTable = "outbox"

// Errors Insert returns before touching the database, matched with errors.Is.
var (
	// ErrNoTopic: Event.Topic is empty.
	ErrNoTopic = errors.New("outbox: event topic is required")
	// ErrBadTable: the WithTable name is not a lowercase identifier,
	// optionally schema-qualified.
	ErrBadTable = errors.New("outbox: table must be a lowercase identifier, optionally schema.table")
)

// Event is one event to publish once the transaction commits.
type Event struct {
	// Topic is the EventService topic; required.
	Topic string
	// Key is the event key (ordering and partitioning); may be empty.
	Key string
	// Payload is published as is; nil is an empty payload.
	Payload []byte
	// Headers are published with the event; stored as a JSON object.
	Headers map[string]string
}

// Option configures Insert and InsertPgx.
type Option func(*options)

type options struct{ table string }

// WithTable writes to table (a lowercase identifier, optionally
// "schema.table") instead of DefaultTable; it must match the sidecar's
// outbox.table.
func WithTable(table string) Option { return func(o *options) { o.table = table } }

// SQLQuerier is what Insert writes through: *sql.Tx, *sql.DB or *sql.Conn.
type SQLQuerier interface {
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

// PgxQuerier is what InsertPgx writes through: pgx.Tx, *pgx.Conn or
// *pgxpool.Pool.
type PgxQuerier interface {
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

var identRE = regexp.MustCompile(`^[a-z_][a-z0-9_]{0,62}(\.[a-z_][a-z0-9_]{0,62})?$`)

// statement builds the INSERT and its arguments.
func statement(ev Event, opts []Option) (string, []any, error) {
	o := options{table: DefaultTable}
	for _, f := range opts {
		f(&o)
	}
	if !identRE.MatchString(o.table) {
		return "", nil, fmt.Errorf("%w, got %q", ErrBadTable, o.table)
	}
	if ev.Topic == "" {
		return "", nil, ErrNoTopic
	}
	headers := []byte("{}")
	if len(ev.Headers) > 0 {
		var err error
		if headers, err = json.Marshal(ev.Headers); err != nil {
			return "", nil, fmt.Errorf("outbox: headers: %w", err)
		}
	}
	payload := ev.Payload
	if payload == nil {
		payload = []byte{}
	}
	table := pgx.Identifier(strings.Split(o.table, ".")).Sanitize()
	q := "INSERT INTO " + table + " (topic, key, payload, headers) VALUES ($1, $2, $3, $4::jsonb) RETURNING id"
	return q, []any{ev.Topic, ev.Key, payload, string(headers)}, nil
}

// Insert adds ev to the outbox through q (a *sql.Tx to make it part of
// the transaction) and returns the row id, which the sidecar publishes
// with the idempotency key "outbox:<table>:<id>". The row is published
// only if and after the transaction commits. Errors: ErrNoTopic,
// ErrBadTable, or the database's.
func Insert(ctx context.Context, q SQLQuerier, ev Event, opts ...Option) (int64, error) {
	stmt, args, err := statement(ev, opts)
	if err != nil {
		return 0, err
	}
	var id int64
	if err := q.QueryRowContext(ctx, stmt, args...).Scan(&id); err != nil {
		return 0, fmt.Errorf("outbox: insert: %w", err)
	}
	return id, nil
}

// InsertPgx is Insert for pgx: q is a pgx.Tx to make the row part of the
// transaction.
func InsertPgx(ctx context.Context, q PgxQuerier, ev Event, opts ...Option) (int64, error) {
	stmt, args, err := statement(ev, opts)
	if err != nil {
		return 0, err
	}
	var id int64
	if err := q.QueryRow(ctx, stmt, args...).Scan(&id); err != nil {
		return 0, fmt.Errorf("outbox: insert: %w", err)
	}
	return id, nil
}
