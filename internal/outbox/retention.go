package outbox

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"
)

// retentionRounds bounds the batches one retention run deletes, so that
// relaying is not held up for long; the rest waits for the next run.
const retentionRounds = 10

// retain deletes published rows whose published_at is older than
// Retention, RetentionBatch at a time, and returns a Postgres failure.
// The created_at condition is implied (a row is published after it is
// created) but lets Postgres skip whole partitions of a table partitioned
// by created_at.
func (r *Relay) retain(ctx context.Context, conn *pgx.Conn) error {
	q := "DELETE FROM " + r.table + " WHERE id IN (SELECT id FROM " + r.table +
		" WHERE published_at < now() - make_interval(secs => $1) AND created_at < now() - make_interval(secs => $1) LIMIT $2)"
	for range retentionRounds {
		n, err := func() (int64, error) {
			ctx, cancel := context.WithTimeout(ctx, r.opts.BatchTimeout)
			defer cancel()
			tag, err := conn.Exec(ctx, q, r.opts.Retention.Seconds(), r.opts.RetentionBatch)
			return tag.RowsAffected(), err
		}()
		if err != nil {
			return fmt.Errorf("retention: %s", scrub(err))
		}
		r.m.retained(n)
		if n < int64(r.opts.RetentionBatch) {
			return nil
		}
	}
	return nil
}
