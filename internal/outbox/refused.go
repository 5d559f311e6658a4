package outbox

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/seed-a88e5317/resilience-sidecar/internal/events"
)

// retryResult is the outcome of one retry of the refused rows.
type retryResult struct {
	published, refused, gone int
	// err is a publish failure that stopped the retry (the store is
	// down); Postgres failures are returned apart.
	err error
}

func refusedText(id int64, reason string) string {
	return "row " + strconv.FormatInt(id, 10) + ": " + reason
}

// refusedIDs are the rows refused during this turn, which the cycles skip.
func (r *Relay) refusedIDs() []int64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	ids := make([]int64, 0, len(r.st.refused))
	for id := range r.st.refused {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	return ids
}

// refuse remembers row x as refused for good, so that the cycles skip it,
// and reports whether it did (false once maxRefused rows are remembered).
// A row is logged and counted once per turn, and again only if the reason
// changes.
func (r *Relay) refuse(x row, err error) bool {
	reason := err.Error()
	r.mu.Lock()
	f, known := r.st.refused[x.id]
	switch {
	case known && f.reason == reason:
		r.mu.Unlock()
		return true
	case !known && len(r.st.refused) >= maxRefused:
		r.mu.Unlock()
		return false
	case !known:
		f = &refusal{created: x.readAt.Add(-x.age)}
		r.st.refused[x.id] = f
		r.opts.Metrics.AddOutboxRefused(1)
	}
	r.st.refuseSeq++
	f.reason, f.seq = reason, r.st.refuseSeq
	r.st.lastRefused = x.id
	table := r.st.tableName
	r.mu.Unlock()
	r.opts.Log.Warn("outbox row refused for good: skipped, left unpublished in the table and retried every refused_retry_interval; fix or delete it",
		"table", table, "row", x.id, "error", reason)
	return true
}

// unrefuse forgets a refused row (published, deleted or marked by someone
// else); last_refused then names the latest refusal still standing.
func (r *Relay) unrefuse(id int64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := r.st.refused[id]; !ok {
		return
	}
	delete(r.st.refused, id)
	if r.st.lastRefused != id {
		return
	}
	r.st.lastRefused = 0
	var seq uint64
	for rid, f := range r.st.refused {
		if f.seq > seq {
			seq, r.st.lastRefused = f.seq, rid
		}
	}
}

// retryRefused tries the refused rows again, in id order, in one
// transaction: rows that are gone (deleted, or published by someone) are
// forgotten, fixed ones published and marked, the others stay refused.
// It returns a Postgres failure; a publish failure (the store) stops it
// and is reported in the result.
func (r *Relay) retryRefused(ctx context.Context, conn *pgx.Conn) (retryResult, error) {
	ids := r.refusedIDs()
	if len(ids) == 0 {
		return retryResult{}, nil
	}
	ctx, cancel := context.WithTimeout(ctx, r.opts.BatchTimeout)
	defer cancel()
	tx, err := conn.Begin(ctx)
	if err != nil {
		return retryResult{}, fmt.Errorf("begin: %s", scrub(err))
	}
	defer tx.Rollback(context.WithoutCancel(ctx)) //nolint:errcheck // no-op after Commit
	rows, err := r.read(ctx, tx, "SELECT id, topic, key, payload, headers, EXTRACT(EPOCH FROM clock_timestamp() - created_at)::float8 FROM "+
		r.table+" WHERE id = ANY($1) AND published_at IS NULL ORDER BY id FOR UPDATE", ids)
	if err != nil {
		return retryResult{}, err
	}
	var res retryResult
	present := map[int64]bool{}
	for _, x := range rows {
		present[x.id] = true
	}
	for _, id := range ids {
		if !present[id] {
			r.unrefuse(id)
			res.gone++
		}
	}
	published, pubErr := r.publish(ctx, tx, rows, true)
	if err := r.mark(ctx, tx, published); err != nil {
		return res, err
	}
	res.published, res.err = len(published), pubErr
	res.refused = len(r.refusedIDs())
	if res.published > 0 || res.gone > 0 {
		r.opts.Log.Info("outbox refused rows retried", "table", r.tableName(), "published", res.published, "gone", res.gone, "still_refused", res.refused)
	}
	return res, nil
}

// retryTimeout bounds RetryRefused's wait for the active relay.
const retryTimeout = 30 * time.Second

// RetryRefused tries the refused rows again now. On the active relay it
// waits for the outcome (Active set, with the rows published, still
// refused, and forgotten because they are gone); on a standby it asks the
// active relay of the table through a Postgres notification and returns
// with Forwarded set.
func (r *Relay) RetryRefused(ctx context.Context) (events.OutboxRetry, error) {
	ctx, cancel := context.WithTimeout(ctx, retryTimeout)
	defer cancel()
	if !r.isActive() {
		conn, err := pgx.Connect(ctx, r.opts.URL)
		if err != nil {
			return events.OutboxRetry{}, fmt.Errorf("outbox: connect to postgres: %s", scrub(err))
		}
		defer closeConn(conn)
		if _, err := conn.Exec(ctx, "SELECT pg_notify($1, $2)", r.opts.NotifyChannel, r.retryMsg); err != nil {
			return events.OutboxRetry{}, fmt.Errorf("outbox: notify the active relay: %s", scrub(err))
		}
		return events.OutboxRetry{Forwarded: true}, nil
	}
	reply := make(chan retryResult, 1)
	select {
	case r.retryReq <- reply:
	case <-ctx.Done():
		return events.OutboxRetry{}, fmt.Errorf("%w (%v)", ErrNotActive, ctx.Err())
	}
	select {
	case res := <-reply:
		out := events.OutboxRetry{Active: true, Published: int64(res.published), Refused: int64(res.refused), Gone: int64(res.gone)}
		if res.err != nil {
			return out, fmt.Errorf("outbox: retry stopped: %w", res.err)
		}
		return out, nil
	case <-ctx.Done():
		return events.OutboxRetry{}, ctx.Err()
	}
}
