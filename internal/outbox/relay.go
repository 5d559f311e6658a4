// Package outbox is the transactional outbox relay: an application inserts
// event rows into its own Postgres table in the same transaction as its
// data (deploy/postgres/outbox.sql), and the relay publishes every
// committed row through the EventService exactly once per row id, then
// marks the row published (or deletes it).
//
// One cycle of the relay is one Postgres transaction:
//
//	BEGIN
//	SELECT id, topic, key, payload, headers FROM <table>
//	  WHERE published_at IS NULL ORDER BY id LIMIT <batch> FOR UPDATE SKIP LOCKED
//	Publish each row, idempotency key "outbox:<table>:<id>", in id order,
//	  stopping at the first failure
//	UPDATE <table> SET published_at = now() WHERE id = ANY(<published ids>)
//	  (or DELETE ... WHERE id = ANY(...))
//	COMMIT
//
// SKIP LOCKED lets several sidecars relay the same table in parallel, each
// taking rows the others have not locked. A relay that dies mid-batch
// leaves its rows unmarked (its transaction rolls back); whoever takes them
// next publishes them again with the same idempotency keys, which the
// EventService deduplicates, so each row id is published once as long as
// the dedup retention (events.dedup_retention) outlasts the longest relay
// outage. A row whose publish failed is never marked. See docs/outbox.md.
//
// The relay is woken by LISTEN on the table's NOTIFY channel (the schema's
// trigger notifies on insert), polls every PollInterval in case a
// notification is lost, and backs off exponentially with jitter while
// Postgres or Publish fails, reporting itself unhealthy meanwhile.
package outbox

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/seed-a88e5317/resilience-sidecar/internal/backoff"
	"github.com/seed-a88e5317/resilience-sidecar/internal/events"
)

// Defaults of Options.
const (
	DefaultTable         = "outbox"
	DefaultBatchSize     = 100
	DefaultPollInterval  = time.Second
	DefaultNotifyChannel = "outbox"
	DefaultStatsInterval = time.Second
	DefaultMinBackoff    = 100 * time.Millisecond
	DefaultMaxBackoff    = 30 * time.Second
	DefaultBatchTimeout  = 30 * time.Second
	MaxBatchSize         = 10_000
)

// Mode is what the relay does with a published row.
type Mode string

// The modes of Options.OnPublish.
const (
	// Mark sets published_at = now(); the rows stay for the application to
	// prune (DELETE ... WHERE published_at < now() - interval '7 days').
	Mark Mode = "mark"
	// Delete deletes the row.
	Delete Mode = "delete"
)

// ErrClosed is returned by Run on a closed Relay.
var ErrClosed = errors.New("outbox: relay closed")

// identRE is a lowercase Postgres identifier, optionally schema-qualified.
var identRE = regexp.MustCompile(`^[a-z_][a-z0-9_]{0,62}(\.[a-z_][a-z0-9_]{0,62})?$`)

// CheckIdentifier reports whether s is a table name the relay accepts:
// lowercase letters, digits and underscores, not starting with a digit, at
// most 63 bytes, optionally "schema.table". Channel names follow the same
// rule without the schema.
func CheckIdentifier(s string, qualified bool) error {
	if !identRE.MatchString(s) || (!qualified && strings.Contains(s, ".")) {
		want := "a lowercase identifier (a-z, 0-9, _; not starting with a digit; at most 63 bytes)"
		if qualified {
			want += ", optionally schema-qualified (schema.table)"
		}
		return fmt.Errorf("must be %s, got %q", want, s)
	}
	return nil
}

// Publisher publishes one event: *events.Service. Publish must deduplicate
// on IdempotencyKey atomically with the append.
type Publisher interface {
	Publish(ctx context.Context, m events.Message) (events.Published, error)
}

// Relay relays one outbox table. Run it once; Close stops it. Status is
// safe for concurrent use.
type Relay struct {
	opts     Options
	table    string // quoted for SQL
	selectQ  string
	markQ    string
	statsQ   string
	listenQ  string
	idemBase string // "outbox:<table>:"

	wake chan struct{}

	mu        sync.Mutex
	closed    bool
	cancel    context.CancelFunc
	wg        sync.WaitGroup
	healthy   bool
	lastErr   string
	backlog   int64
	lag       time.Duration
	lastPubAt time.Time
	// refused are the rows Publish refuses for good, skipped by the
	// select; at most maxRefused are remembered.
	refused     []int64
	lastRefused string

	published atomic.Int64
}

// maxRefused bounds the refused rows one relay skips; past it, the next
// refused row stops the relay at that row, as any failing publish does.
const maxRefused = 1000

// New validates o and returns a relay that does nothing until Run.
func New(o Options) (*Relay, error) {
	if o.URL == "" {
		return nil, errors.New("outbox: URL is required")
	}
	if o.Publisher == nil {
		return nil, errors.New("outbox: Publisher is required")
	}
	if _, err := pgx.ParseConfig(o.URL); err != nil {
		return nil, errors.New("outbox: the Postgres URL does not parse") // the cause may quote the password
	}
	o = o.WithDefaults()
	if err := CheckIdentifier(o.Table, true); err != nil {
		return nil, fmt.Errorf("outbox: table %w", err)
	}
	if err := CheckIdentifier(o.NotifyChannel, false); err != nil {
		return nil, fmt.Errorf("outbox: notify channel %w", err)
	}
	if o.OnPublish != Mark && o.OnPublish != Delete {
		return nil, fmt.Errorf("outbox: on_publish must be mark or delete, got %q", o.OnPublish)
	}
	o.BatchSize = min(o.BatchSize, MaxBatchSize)
	o.MaxBackoff = max(o.MaxBackoff, o.MinBackoff)
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	t := pgx.Identifier(strings.Split(o.Table, ".")).Sanitize()
	r := &Relay{
		opts:     o,
		table:    t,
		selectQ:  "SELECT id, topic, key, payload, headers FROM " + t + " WHERE published_at IS NULL AND id <> ALL($2) ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED",
		markQ:    "UPDATE " + t + " SET published_at = now() WHERE id = ANY($1)",
		statsQ:   "SELECT count(*), COALESCE(EXTRACT(EPOCH FROM now() - min(created_at)), 0)::float8 FROM " + t + " WHERE published_at IS NULL",
		listenQ:  "LISTEN " + pgx.Identifier{o.NotifyChannel}.Sanitize(),
		idemBase: "outbox:" + o.Table + ":",
		wake:     make(chan struct{}, 1),
	}
	if o.OnPublish == Delete {
		r.markQ = "DELETE FROM " + t + " WHERE id = ANY($1)"
	}
	o.Metrics.SetOutboxHealthy(false)
	return r, nil
}

// IdempotencyKey is the key row id of table is published with.
func IdempotencyKey(table string, id int64) string {
	return "outbox:" + table + ":" + strconv.FormatInt(id, 10)
}

// Run relays until ctx is done or Close is called, then returns nil (or
// ErrClosed if the relay was already closed). A batch in flight when it
// stops is rolled back: its rows stay unmarked and are published again
// (deduplicated) later. Run may be called once.
func (r *Relay) Run(ctx context.Context) error {
	r.mu.Lock()
	if r.closed || r.cancel != nil {
		r.mu.Unlock()
		return ErrClosed
	}
	ctx, cancel := context.WithCancel(ctx)
	r.cancel = cancel
	r.wg.Add(2)
	r.mu.Unlock()
	defer cancel()

	go func() {
		defer r.wg.Done()
		r.listen(ctx)
	}()
	go func() {
		defer r.wg.Done()
		r.stats(ctx)
	}()
	r.relay(ctx)
	cancel()
	r.wg.Wait()
	return nil
}

// Close stops Run (if running) and waits for it to return. It is safe to
// call more than once.
func (r *Relay) Close() {
	r.mu.Lock()
	r.closed = true
	cancel := r.cancel
	r.mu.Unlock()
	if cancel != nil {
		cancel()
		r.wg.Wait()
	}
}

// Status reports the relay for GetOutboxStatus.
func (r *Relay) Status() events.OutboxStatus {
	r.mu.Lock()
	defer r.mu.Unlock()
	return events.OutboxStatus{
		Enabled:         true,
		Healthy:         r.healthy,
		LastError:       r.lastErr,
		Backlog:         r.backlog,
		Lag:             r.lag,
		Published:       r.published.Load(),
		LastPublishedAt: r.lastPubAt,
		Table:           r.opts.Table,
		Refused:         int64(len(r.refused)),
		LastRefused:     r.lastRefused,
	}
}

// relay runs cycles until ctx is done.
func (r *Relay) relay(ctx context.Context) {
	var conn *pgx.Conn
	defer func() {
		if conn != nil {
			closeConn(conn)
		}
	}()
	poll := time.NewTimer(0)
	defer poll.Stop()
	failures := 0
	for ctx.Err() == nil {
		n, err := r.cycle(ctx, &conn)
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			failures++
			r.setFailed(err, failures)
			if !sleep(ctx, r.backoff(failures)) {
				return
			}
			continue
		}
		if failures > 0 {
			r.opts.Log.Info("outbox relay recovered", "table", r.opts.Table, "after_failures", failures)
		}
		failures = 0
		r.setHealthy()
		if n == r.opts.BatchSize {
			continue // more rows are probably waiting
		}
		poll.Reset(r.opts.PollInterval)
		select {
		case <-ctx.Done():
			return
		case <-r.wake:
		case <-poll.C:
		}
	}
}

// row is one outbox row.
type row struct {
	id      int64
	topic   string
	key     string
	payload []byte
	headers []byte
}

// cycle relays one batch in one transaction and returns how many rows it
// read. On a Postgres error the connection is dropped (and reopened by the
// next cycle).
func (r *Relay) cycle(ctx context.Context, connp **pgx.Conn) (int, error) {
	ctx, cancel := context.WithTimeout(ctx, r.opts.BatchTimeout)
	defer cancel()
	if *connp == nil {
		c, err := pgx.Connect(ctx, r.opts.URL)
		if err != nil {
			return 0, fmt.Errorf("connect to postgres: %s", scrub(err))
		}
		*connp = c
	}
	conn := *connp
	n, err := r.batch(ctx, conn)
	if err != nil && !errors.Is(err, errPublish) {
		closeConn(conn)
		*connp = nil
	}
	return n, err
}

// errPublish marks a cycle that failed in Publish (Postgres is fine).
var errPublish = errors.New("publish")

func (r *Relay) batch(ctx context.Context, conn *pgx.Conn) (int, error) {
	tx, err := conn.Begin(ctx)
	if err != nil {
		return 0, fmt.Errorf("begin: %s", scrub(err))
	}
	defer tx.Rollback(context.WithoutCancel(ctx)) //nolint:errcheck // no-op after Commit
	r.mu.Lock()
	skip := append([]int64{}, r.refused...)
	r.mu.Unlock()
	rows, err := tx.Query(ctx, r.selectQ, r.opts.BatchSize, skip)
	if err != nil {
		return 0, fmt.Errorf("select: %s", scrub(err))
	}
	var batch []row
	for rows.Next() {
		var x row
		if err := rows.Scan(&x.id, &x.topic, &x.key, &x.payload, &x.headers); err != nil {
			rows.Close()
			return 0, fmt.Errorf("select: %s", scrub(err))
		}
		batch = append(batch, x)
	}
	if err := rows.Err(); err != nil {
		return 0, fmt.Errorf("select: %s", scrub(err))
	}
	if len(batch) == 0 {
		return 0, tx.Commit(ctx)
	}

	ids := make([]int64, 0, len(batch))
	var pubErr error
	for _, x := range batch {
		m := events.Message{Topic: x.topic, Key: x.key, Payload: x.payload, IdempotencyKey: r.idemBase + strconv.FormatInt(x.id, 10)}
		if m.Headers, err = decodeHeaders(x.headers); err != nil {
			err = fmt.Errorf("%w: headers: %v", events.ErrInvalid, err)
		} else {
			_, err = r.opts.Publisher.Publish(ctx, m)
		}
		if err != nil && refusedForGood(err) && r.refuse(x.id, err) {
			continue
		}
		if err != nil {
			pubErr = fmt.Errorf("%w: row %d: %v", errPublish, x.id, err)
			break
		}
		ids = append(ids, x.id)
	}
	if len(ids) > 0 {
		if _, err := tx.Exec(ctx, r.markQ, ids); err != nil {
			return len(batch), fmt.Errorf("mark published: %s", scrub(err))
		}
		if err := tx.Commit(ctx); err != nil {
			return len(batch), fmt.Errorf("commit: %s", scrub(err))
		}
		// Metrics first: a caller that saw Status change finds them current.
		r.opts.Metrics.AddOutboxPublished(len(ids))
		r.published.Add(int64(len(ids)))
		r.mu.Lock()
		r.lastPubAt = time.Now()
		r.mu.Unlock()
	}
	return len(batch), pubErr
}

// refusedForGood reports whether Publish would refuse the row whatever
// the retries: the row itself is invalid.
func refusedForGood(err error) bool {
	return errors.Is(err, events.ErrInvalid) || errors.Is(err, events.ErrTopicUnknown)
}

// refuse remembers row id as refused so later selects skip it, and
// reports whether it did (false once maxRefused rows are remembered).
func (r *Relay) refuse(id int64, err error) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.refused) >= maxRefused {
		return false
	}
	r.refused = append(r.refused, id)
	r.lastRefused = fmt.Sprintf("row %d: %v", id, err)
	r.opts.Metrics.AddOutboxRefused(1)
	r.opts.Log.Warn("outbox row refused for good: skipped, left unpublished in the table; fix or delete it",
		"table", r.opts.Table, "row", id, "error", err.Error())
	return true
}

// decodeHeaders reads the headers column: a JSON object (or null). String
// values are taken as is, null as "", other values as their JSON text.
func decodeHeaders(b []byte) (map[string]string, error) {
	if len(b) == 0 || string(b) == "null" {
		return nil, nil
	}
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(b, &raw); err != nil {
		return nil, errors.New("must be a JSON object")
	}
	if len(raw) == 0 {
		return nil, nil
	}
	h := make(map[string]string, len(raw))
	for k, v := range raw {
		var s string
		if err := json.Unmarshal(v, &s); err == nil {
			h[k] = s
			continue
		}
		h[k] = string(v)
	}
	return h, nil
}

// listen holds a LISTEN connection and wakes the relay on every
// notification, and once after each (re)connect since rows may have been
// inserted unheard. Failures are only logged: polling covers them.
func (r *Relay) listen(ctx context.Context) {
	failures := 0
	for ctx.Err() == nil {
		err := r.listenOnce(ctx, func() { failures = 0 })
		if ctx.Err() != nil {
			return
		}
		failures++
		if failures == 1 || failures%10 == 0 {
			r.opts.Log.Warn("outbox LISTEN connection failed; polling meanwhile", "channel", r.opts.NotifyChannel, "failures", failures, "error", err)
		}
		if !sleep(ctx, r.backoff(failures)) {
			return
		}
	}
}

func (r *Relay) listenOnce(ctx context.Context, listening func()) error {
	cctx, cancel := context.WithTimeout(ctx, r.opts.BatchTimeout)
	conn, err := pgx.Connect(cctx, r.opts.URL)
	if err == nil {
		_, err = conn.Exec(cctx, r.listenQ)
		if err != nil {
			closeConn(conn)
		}
	}
	cancel()
	if err != nil {
		return errors.New(scrub(err))
	}
	defer closeConn(conn)
	listening()
	r.poke()
	for {
		if _, err := conn.WaitForNotification(ctx); err != nil {
			return errors.New(scrub(err))
		}
		r.poke()
	}
}

// poke wakes the relay loop without blocking.
func (r *Relay) poke() {
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

// stats refreshes backlog and lag every StatsInterval.
func (r *Relay) stats(ctx context.Context) {
	var conn *pgx.Conn
	defer func() {
		if conn != nil {
			closeConn(conn)
		}
	}()
	t := time.NewTicker(r.opts.StatsInterval)
	defer t.Stop()
	for {
		if err := r.readStats(ctx, &conn); err != nil && ctx.Err() == nil {
			r.opts.Log.Debug("outbox stats query failed", "error", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (r *Relay) readStats(ctx context.Context, connp **pgx.Conn) error {
	ctx, cancel := context.WithTimeout(ctx, r.opts.BatchTimeout)
	defer cancel()
	if *connp == nil {
		c, err := pgx.Connect(ctx, r.opts.URL)
		if err != nil {
			return errors.New(scrub(err))
		}
		*connp = c
	}
	var n int64
	var lagSec float64
	if err := (*connp).QueryRow(ctx, r.statsQ).Scan(&n, &lagSec); err != nil {
		closeConn(*connp)
		*connp = nil
		return errors.New(scrub(err))
	}
	lag := time.Duration(lagSec * float64(time.Second))
	r.opts.Metrics.SetOutboxBacklog(n, lag)
	r.mu.Lock()
	r.backlog, r.lag = n, lag
	r.mu.Unlock()
	return nil
}

func (r *Relay) setFailed(err error, failures int) {
	msg := err.Error()
	r.opts.Metrics.SetOutboxHealthy(false)
	r.mu.Lock()
	r.healthy = false
	r.lastErr = msg
	r.mu.Unlock()
	if failures == 1 || failures%10 == 0 {
		r.opts.Log.Warn("outbox relay failing; backing off", "table", r.opts.Table, "failures", failures, "error", msg)
	}
}

func (r *Relay) setHealthy() {
	r.opts.Metrics.SetOutboxHealthy(true)
	r.mu.Lock()
	r.healthy = true
	r.lastErr = "" // the API's last_error is "" when healthy
	r.mu.Unlock()
}

// backoff is a full-jitter exponential backoff: uniform in
// [MinBackoff/2, min(MaxBackoff, MinBackoff*2^(failures-1))].
func (r *Relay) backoff(failures int) time.Duration {
	d := backoff.Ceiling(r.opts.MinBackoff, r.opts.MaxBackoff, failures)
	lo := r.opts.MinBackoff / 2
	return lo + rand.N(d-lo+1)
}

// sleep waits d or until ctx is done; it reports whether ctx is still live.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

func closeConn(c *pgx.Conn) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	_ = c.Close(ctx)
}

// scrub describes a pgx error for LastError and the logs. pgx's errors
// name the host, user and database but never the password (its connect
// errors print the parsed config without it); the URL itself is never put
// in a message. One place to tighten should that change.
func scrub(err error) string {
	return strings.Join(strings.Fields(err.Error()), " ") // one line: pgx indents per-host errors
}
