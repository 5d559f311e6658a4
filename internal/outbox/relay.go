// Package outbox is the transactional outbox relay: an application inserts
// event rows into its own Postgres table in the same transaction as its
// data (deploy/postgres/outbox.sql), and the relay publishes every
// committed row through the EventService exactly once per row id, in id
// order, then marks the row published (or deletes it).
//
// One relay per table is active at a time: every sidecar relaying the
// table holds a connection to it, and the one whose session holds the
// table's Postgres advisory lock (pg_try_advisory_lock, keyed by the
// table's oid) relays; the others are standbys that try the lock every
// StandbyPoll, and at once when the active relay lets go on shutdown
// (it NOTIFYs them). The lock belongs to the same session that locks and
// marks the rows, so it is released exactly when that session ends: at
// once when the relay dies (Postgres sees its connection close), and
// after LeaderTimeout when it falls silent (frozen, or cut off from the
// database: the session's idle timeouts end it; the active relay pings
// well within them). One active relay publishing in id order keeps the
// order of every key's rows in the stream, whatever the number of
// sidecars (docs/outbox.md, Ordering).
//
// One cycle of the active relay is one Postgres transaction:
//
//	BEGIN
//	SELECT id, topic, key, payload, headers, <age> FROM <table>
//	  WHERE published_at IS NULL AND id <> ALL(<refused>) ORDER BY id LIMIT <batch> FOR UPDATE
//	Publish each row, idempotency key "outbox:<table>:<id>", headers
//	  x-outbox-table and x-outbox-id, in id order, stopping at the first
//	  failure
//	UPDATE <table> SET published_at = now() WHERE id = ANY(<published ids>)
//	  (or DELETE ... WHERE id = ANY(...))
//	COMMIT
//	shorten the published rows' idempotency keys to DedupKeep
//
// A relay that dies mid-batch leaves its rows unmarked (its transaction
// rolls back); the next active relay publishes them again with the same
// idempotency keys, which the EventService deduplicates (their keys keep
// the full dedup retention until the rows are marked), so each row id is
// published once. A row whose publish failed is never marked.
//
// Rows the EventService refuses for good are skipped (remembered for the
// relay's turn, logged once), kept out of backlog and lag, and tried again
// every RefusedRetryInterval or on RetryRefused.
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
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/seed-a88e5317/resilience-sidecar/internal/backoff"
	"github.com/seed-a88e5317/resilience-sidecar/internal/events"
)

// Defaults of Options.
const (
	DefaultTable                = "outbox"
	DefaultBatchSize            = 100
	DefaultPollInterval         = time.Second
	DefaultNotifyChannel        = "outbox"
	DefaultStatsInterval        = time.Second
	DefaultMinBackoff           = 100 * time.Millisecond
	DefaultMaxBackoff           = 30 * time.Second
	DefaultBatchTimeout         = 30 * time.Second
	DefaultLeaderTimeout        = 10 * time.Second
	DefaultRefusedRetryInterval = time.Minute
	DefaultRetentionInterval    = time.Minute
	DefaultRetentionBatch       = 1000
	DefaultStandbyPoll          = 500 * time.Millisecond
	MaxBatchSize                = 10_000
)

// Headers every outbox event carries, naming the row it comes from (they
// replace headers of the same names in the row).
const (
	HeaderTable = "x-outbox-table"
	HeaderID    = "x-outbox-id"
)

// Mode is what the relay does with a published row.
type Mode string

// The modes of Options.OnPublish.
const (
	// Mark sets published_at = now(); the rows stay until Retention (or
	// the application) deletes them.
	Mark Mode = "mark"
	// Delete deletes the row.
	Delete Mode = "delete"
)

// ErrClosed is returned by Run on a closed Relay.
var ErrClosed = errors.New("outbox: relay closed")

// ErrNotActive is returned by RetryRefused when this relay lost the table
// before it could answer.
var ErrNotActive = errors.New("outbox: this relay is not the active one")

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
// on IdempotencyKey atomically with the append; ExpireDedup shortens the
// retention of keys already recorded.
type Publisher interface {
	Publish(ctx context.Context, m events.Message) (events.Published, error)
	ExpireDedup(ctx context.Context, topic string, keys []string, keep time.Duration) error
}

// lockClass is the high half of the table's advisory lock key ("RSOB");
// the low half is the table's oid. pg_locks shows it as classid
// 1381191490, objid <oid>, objsubid 1.
const lockClass = 0x52534F42

// Relay relays one outbox table. Run it once; Close stops it. Status and
// RetryRefused are safe for concurrent use.
type Relay struct {
	opts     Options
	table    string // quoted for SQL
	selectQ  string
	markQ    string
	statsQ   string
	listenQ  string
	idemBase string // "outbox:<table>:"
	// releaseMsg and retryMsg are the NOTIFY payloads on the channel
	// that say "the active relay let go" and "retry the refused rows".
	releaseMsg, retryMsg string
	topics               map[string]bool
	m                    *relayMetrics
	started              time.Time

	wake     chan struct{} // rows may be waiting (a notification)
	handover chan struct{} // the active relay let go: try the lock now, and often for a while
	recheck  chan struct{} // the listener (re)connected: a release may have gone unheard
	retry    chan struct{} // retry the refused rows (a notification)
	retryReq chan chan retryResult
	// restored ends the relay's and the listener's backoff when Postgres
	// answers the stats probe again.
	restored, listenRestored chan struct{}

	mu     sync.Mutex
	closed bool
	cancel context.CancelFunc
	wg     sync.WaitGroup
	done   chan struct{} // closed when Run returns
	st     state

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
	if o.Retention > 0 && o.OnPublish == Delete {
		return nil, errors.New("outbox: retention applies to on_publish: mark only")
	}
	o.BatchSize = min(o.BatchSize, MaxBatchSize)
	o.MaxBackoff = max(o.MaxBackoff, o.MinBackoff)
	// Standbys and the active relay speak well within the idle timeouts.
	o.StandbyPoll = min(o.StandbyPoll, o.LeaderTimeout/4)
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	t := pgx.Identifier(strings.Split(o.Table, ".")).Sanitize()
	r := &Relay{
		opts:  o,
		table: t,
		selectQ: "SELECT id, topic, key, payload, headers, EXTRACT(EPOCH FROM clock_timestamp() - created_at)::float8 FROM " + t +
			" WHERE published_at IS NULL AND id <> ALL($2) ORDER BY id LIMIT $1 FOR UPDATE",
		markQ: "UPDATE " + t + " SET published_at = now() WHERE id = ANY($1)",
		statsQ: "SELECT count(*), COALESCE(EXTRACT(EPOCH FROM clock_timestamp() - min(created_at)), -1)::float8 FROM " + t +
			" WHERE published_at IS NULL AND id <> ALL($1)",
		listenQ:        "LISTEN " + pgx.Identifier{o.NotifyChannel}.Sanitize(),
		idemBase:       "outbox:" + o.Table + ":",
		releaseMsg:     "resilience-outbox release " + o.Table,
		retryMsg:       "resilience-outbox retry-refused " + o.Table,
		topics:         map[string]bool{},
		m:              newRelayMetrics(o.Metrics),
		wake:           make(chan struct{}, 1),
		handover:       make(chan struct{}, 1),
		recheck:        make(chan struct{}, 1),
		retry:          make(chan struct{}, 1),
		retryReq:       make(chan chan retryResult),
		restored:       make(chan struct{}, 1),
		listenRestored: make(chan struct{}, 1),
		done:           make(chan struct{}),
		st:             state{tableName: o.Table, refused: map[int64]*refusal{}},
	}
	for _, tp := range o.Topics {
		r.topics[tp] = true
	}
	if o.OnPublish == Delete {
		r.markQ = "DELETE FROM " + t + " WHERE id = ANY($1)"
	}
	o.Metrics.SetOutboxHealthy(false)
	r.m.setActive(false)
	return r, nil
}

// IdempotencyKey is the key row id of table is published with.
func IdempotencyKey(table string, id int64) string {
	return "outbox:" + table + ":" + strconv.FormatInt(id, 10)
}

// Run relays until ctx is done or Close is called, then returns nil (or
// ErrClosed if the relay was already closed). A batch in flight when it
// stops is rolled back: its rows stay unmarked and are published again
// (deduplicated) by the next active relay, which the stop wakes at once.
// Run may be called once.
func (r *Relay) Run(ctx context.Context) error {
	r.mu.Lock()
	if r.closed || r.cancel != nil {
		r.mu.Unlock()
		return ErrClosed
	}
	ctx, cancel := context.WithCancel(ctx)
	r.cancel = cancel
	r.started = time.Now()
	r.wg.Add(2)
	r.mu.Unlock()
	defer close(r.done)
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

// Close stops Run (if running) and waits for it to return, the table
// handed over. It is safe to call more than once.
func (r *Relay) Close() {
	r.mu.Lock()
	r.closed = true
	cancel := r.cancel
	r.mu.Unlock()
	if cancel != nil {
		cancel()
		<-r.done
	}
}

// relay connects, waits for the table and relays it, again after every
// Postgres failure, until ctx is done.
func (r *Relay) relay(ctx context.Context) {
	failures := 0
	for ctx.Err() == nil {
		err := r.session(ctx, func() { failures = 0 })
		if ctx.Err() != nil {
			return
		}
		failures++
		r.pgFailed()
		r.setFailed(err, failures)
		if !r.sleepRestorable(ctx, r.backoff(failures), r.restored) {
			return
		}
	}
}

// session is one Postgres session: standby until it holds the table's
// lock, then active until a Postgres failure (returned) or ctx ends (nil).
// ok is called on each success, ending the caller's backoff.
func (r *Relay) session(ctx context.Context, ok func()) error {
	conn, key, err := r.connect(ctx)
	if err != nil {
		return err
	}
	defer closeConn(conn)
	poll := time.NewTimer(0)
	defer poll.Stop()
	// handoverUntil: the active relay said it lets go; its session may
	// end a moment after it said so, so try often until then.
	var handoverUntil time.Time
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-poll.C:
		case <-r.recheck:
		case <-r.handover:
			handoverUntil = time.Now().Add(handoverWindow)
		}
		got, err := r.tryLock(ctx, conn, key)
		if ctx.Err() != nil {
			return nil
		}
		if err != nil {
			return err
		}
		r.pgAnswered()
		ok()
		if got {
			break
		}
		r.setStandby()
		if !poll.Stop() {
			select {
			case <-poll.C:
			default:
			}
		}
		if time.Now().Before(handoverUntil) {
			poll.Reset(handoverPoll)
		} else {
			poll.Reset(r.opts.StandbyPoll)
		}
	}
	r.setActive(true)
	r.opts.Log.Info("outbox relay active: this sidecar relays the table", "table", r.tableName())
	err = r.lead(ctx, conn)
	r.setActive(false)
	if ctx.Err() != nil {
		r.letGo(conn, key)
		return nil
	}
	r.opts.Log.Warn("outbox relay lost the table; a standby takes over", "table", r.tableName(), "error", err.Error())
	return err
}

// connect opens the relay's session: its idle timeouts make Postgres end
// it (releasing the advisory lock) after LeaderTimeout of silence, and its
// lock timeout bounds a wait on rows another session locked. It resolves
// the table (its schema-qualified name and oid, the low half of the lock
// key).
func (r *Relay) connect(ctx context.Context) (*pgx.Conn, int64, error) {
	ctx, cancel := context.WithTimeout(ctx, r.opts.BatchTimeout)
	defer cancel()
	cfg, err := pgx.ParseConfig(r.opts.URL)
	if err != nil {
		return nil, 0, errors.New("connect to postgres: the URL does not parse")
	}
	if cfg.RuntimeParams["application_name"] == "" {
		cfg.RuntimeParams["application_name"] = "resilience-sidecar outbox relay"
	}
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, 0, fmt.Errorf("connect to postgres: %s", scrub(err))
	}
	ms := strconv.FormatInt(r.opts.LeaderTimeout.Milliseconds(), 10)
	for _, set := range []string{"idle_in_transaction_session_timeout", "lock_timeout", "idle_session_timeout"} {
		if _, err := conn.Exec(ctx, "SELECT set_config($1, $2, false)", set, ms); err != nil {
			var pe *pgconn.PgError
			if set == "idle_session_timeout" && errors.As(err, &pe) && pe.Code == "42704" {
				// Postgres before 14: a frozen relay keeps the table.
				r.opts.Log.Warn("outbox: Postgres has no idle_session_timeout (before 14): a frozen active relay keeps the table until its connection breaks")
				continue
			}
			closeConn(conn)
			return nil, 0, fmt.Errorf("set %s: %s", set, scrub(err))
		}
	}
	var oid int64
	var name string
	err = conn.QueryRow(ctx, `SELECT c.oid::bigint, n.nspname || '.' || c.relname FROM pg_class c
		JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = $1::regclass`, r.opts.Table).Scan(&oid, &name)
	if err != nil {
		closeConn(conn)
		return nil, 0, fmt.Errorf("table %s: %s", r.opts.Table, scrub(err))
	}
	r.mu.Lock()
	r.st.tableName = name
	r.mu.Unlock()
	return conn, lockClass<<32 | oid, nil
}

func (r *Relay) tryLock(ctx context.Context, conn *pgx.Conn, key int64) (bool, error) {
	ctx, cancel := context.WithTimeout(ctx, r.opts.BatchTimeout)
	defer cancel()
	var got bool
	if err := conn.QueryRow(ctx, "SELECT pg_try_advisory_lock($1)", key).Scan(&got); err != nil {
		return false, fmt.Errorf("lock the table: %s", scrub(err))
	}
	return got, nil
}

// After the active relay's notification that it lets go, a standby tries
// the table every handoverPoll for handoverWindow.
const (
	handoverWindow = 2 * time.Second
	handoverPoll   = 50 * time.Millisecond
)

// letGo releases the table on shutdown and tells the standbys, so that
// one takes over at once: on the session itself when it is still usable
// (the notification arrives after the unlock: Postgres delivers it when
// the statement's transaction ends), else (the stop cut a statement
// short) by closing it and notifying from another connection.
func (r *Relay) letGo(conn *pgx.Conn, key int64) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if !conn.IsClosed() {
		if _, err := conn.Exec(ctx, "SELECT pg_advisory_unlock($1), pg_notify($2, $3)", key, r.opts.NotifyChannel, r.releaseMsg); err == nil {
			return
		}
	}
	closeConn(conn)
	if c, err := pgx.Connect(ctx, r.opts.URL); err == nil {
		_, _ = c.Exec(ctx, "SELECT pg_notify($1, $2)", r.opts.NotifyChannel, r.releaseMsg)
		closeConn(c)
	}
}

// lead relays the table while this session holds it. It returns the
// first Postgres failure, or nil when ctx ends. Publish failures keep the
// table: they back off, pinging the session so that it stays.
func (r *Relay) lead(ctx context.Context, conn *pgx.Conn) error {
	poll := time.NewTimer(0)
	defer poll.Stop()
	<-poll.C
	ping := time.NewTicker(r.pingInterval())
	defer ping.Stop()
	retryT := time.NewTicker(r.opts.RefusedRetryInterval)
	defer retryT.Stop()
	var retention <-chan time.Time
	if r.opts.Retention > 0 {
		t := time.NewTicker(r.opts.RetentionInterval)
		defer t.Stop()
		retention = t.C
		if err := r.retain(ctx, conn); err != nil {
			return err
		}
	}
	failures := 0
	for ctx.Err() == nil {
		n, err := r.cycle(ctx, conn)
		if ctx.Err() != nil {
			return nil
		}
		if err != nil && !errors.Is(err, errPublish) {
			return err
		}
		r.pgAnswered()
		if err != nil {
			failures++
			r.setFailed(err, failures)
			if err := r.idle(ctx, conn, r.backoff(failures)); err != nil {
				return err
			}
			continue
		}
		if failures > 0 {
			r.opts.Log.Info("outbox relay recovered", "table", r.tableName(), "after_failures", failures)
		}
		failures = 0
		r.setHealthy()
		block := n < r.opts.BatchSize // else more rows are probably waiting
		if block {
			poll.Reset(r.opts.PollInterval)
		}
		for {
			var err error
			if block {
				select {
				case <-ctx.Done():
					return nil
				case <-r.wake:
				case <-poll.C:
				case <-ping.C:
					err = r.ping(ctx, conn)
					if err == nil {
						continue
					}
				case <-retryT.C:
					_, err = r.retryRefused(ctx, conn)
				case <-r.retry:
					_, err = r.retryRefused(ctx, conn)
				case reply := <-r.retryReq:
					err = r.answerRetry(ctx, conn, reply)
				case <-retention:
					err = r.retain(ctx, conn)
				}
			} else {
				// Between full batches: housekeeping that is due, without waiting.
				select {
				case <-retryT.C:
					_, err = r.retryRefused(ctx, conn)
				case <-r.retry:
					_, err = r.retryRefused(ctx, conn)
				case reply := <-r.retryReq:
					err = r.answerRetry(ctx, conn, reply)
				case <-retention:
					err = r.retain(ctx, conn)
				default:
				}
			}
			if err != nil && ctx.Err() == nil {
				return err
			}
			break
		}
		if block && !poll.Stop() {
			select {
			case <-poll.C:
			default:
			}
		}
	}
	return nil
}

// answerRetry retries the refused rows for RetryRefused and returns a
// Postgres failure, which the reply carries too.
func (r *Relay) answerRetry(ctx context.Context, conn *pgx.Conn, reply chan<- retryResult) error {
	res, err := r.retryRefused(ctx, conn)
	if err != nil {
		res.err = err
	}
	reply <- res
	return err
}

// pingInterval is how often the active relay speaks to Postgres at least,
// well within the session's idle timeouts (LeaderTimeout).
func (r *Relay) pingInterval() time.Duration { return r.opts.LeaderTimeout / 4 }

func (r *Relay) ping(ctx context.Context, conn *pgx.Conn) error {
	ctx, cancel := context.WithTimeout(ctx, r.opts.BatchTimeout)
	defer cancel()
	if err := conn.Ping(ctx); err != nil {
		return fmt.Errorf("ping: %s", scrub(err))
	}
	return nil
}

// idle waits d (the backoff after a failed publish) while keeping the
// session alive, and returns a Postgres failure.
func (r *Relay) idle(ctx context.Context, conn *pgx.Conn, d time.Duration) error {
	end := time.NewTimer(d)
	defer end.Stop()
	ping := time.NewTicker(r.pingInterval())
	defer ping.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-end.C:
			return nil
		case <-ping.C:
			if err := r.ping(ctx, conn); err != nil {
				return err
			}
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
	// age is how old the row was (its created_at by Postgres's clock)
	// when read, at readAt.
	age    time.Duration
	readAt time.Time
}

// errPublish marks a cycle that failed in Publish (Postgres is fine).
var errPublish = errors.New("publish")

// cycle relays one batch in one transaction and returns how many rows it
// read.
func (r *Relay) cycle(ctx context.Context, conn *pgx.Conn) (int, error) {
	ctx, cancel := context.WithTimeout(ctx, r.opts.BatchTimeout)
	defer cancel()
	tx, err := conn.Begin(ctx)
	if err != nil {
		return 0, fmt.Errorf("begin: %s", scrub(err))
	}
	defer tx.Rollback(context.WithoutCancel(ctx)) //nolint:errcheck // no-op after Commit
	batch, err := r.read(ctx, tx, r.selectQ, r.opts.BatchSize, r.refusedIDs())
	if err != nil {
		return 0, err
	}
	if len(batch) == 0 {
		if err := tx.Commit(ctx); err != nil {
			return 0, fmt.Errorf("commit: %s", scrub(err))
		}
		return 0, nil
	}
	published, pubErr := r.publish(ctx, tx, batch, false)
	if err := r.mark(ctx, tx, published); err != nil {
		return len(batch), err
	}
	return len(batch), pubErr
}

// read runs a select of rows (selectQ or the refused rows' query).
func (r *Relay) read(ctx context.Context, tx pgx.Tx, q string, args ...any) ([]row, error) {
	rows, err := tx.Query(ctx, q, args...)
	if err != nil {
		return nil, fmt.Errorf("select: %s", scrub(err))
	}
	now := time.Now()
	var batch []row
	for rows.Next() {
		var x row
		var age float64
		if err := rows.Scan(&x.id, &x.topic, &x.key, &x.payload, &x.headers, &age); err != nil {
			rows.Close()
			return nil, fmt.Errorf("select: %s", scrub(err))
		}
		x.age, x.readAt = time.Duration(max(age, 0)*float64(time.Second)), now
		batch = append(batch, x)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("select: %s", scrub(err))
	}
	return batch, nil
}

// publishedRow is a row published in this transaction.
type publishedRow struct {
	row
	duplicate bool
}

// publish publishes batch in order until the first failure (returned,
// wrapping errPublish), skipping the rows refused for good (remembered;
// with retrying set they are rows refused before, tried again). While
// publishing it pings the transaction within the idle timeout.
func (r *Relay) publish(ctx context.Context, tx pgx.Tx, batch []row, retrying bool) ([]publishedRow, error) {
	var out []publishedRow
	lastStmt := time.Now()
	for _, x := range batch {
		if time.Since(lastStmt) > r.pingInterval() {
			if _, err := tx.Exec(ctx, "SELECT 1"); err != nil {
				return out, fmt.Errorf("ping: %s", scrub(err))
			}
			lastStmt = time.Now()
		}
		m := events.Message{Topic: x.topic, Key: x.key, Payload: x.payload, IdempotencyKey: r.idemBase + strconv.FormatInt(x.id, 10)}
		var p events.Published
		h, err := decodeHeaders(x.headers)
		if err != nil {
			err = fmt.Errorf("%w: headers: %v", events.ErrInvalid, err)
		} else {
			if h == nil {
				h = make(map[string]string, 2)
			}
			h[HeaderTable], h[HeaderID] = r.opts.Table, strconv.FormatInt(x.id, 10)
			m.Headers = h
			p, err = r.opts.Publisher.Publish(ctx, m)
		}
		if err != nil && refusedForGood(err) && r.refuse(x, err) {
			continue
		}
		if err != nil {
			return out, fmt.Errorf("%w: row %d: %v", errPublish, x.id, err)
		}
		if retrying {
			r.unrefuse(x.id)
		}
		out = append(out, publishedRow{row: x, duplicate: p.Duplicate})
	}
	return out, nil
}

// mark marks (or deletes) the published rows and commits, then counts
// them, observes their delay, and shortens their idempotency keys.
func (r *Relay) mark(ctx context.Context, tx pgx.Tx, rows []publishedRow) error {
	if len(rows) == 0 {
		if err := tx.Commit(ctx); err != nil {
			return fmt.Errorf("commit: %s", scrub(err))
		}
		return nil
	}
	ids := make([]int64, len(rows))
	for i, x := range rows {
		ids[i] = x.id
	}
	if _, err := tx.Exec(ctx, r.markQ, ids); err != nil {
		return fmt.Errorf("mark published: %s", scrub(err))
	}
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("commit: %s", scrub(err))
	}
	now := time.Now()
	// Metrics first: a caller that saw Status change finds them current.
	r.opts.Metrics.AddOutboxPublished(len(rows))
	keys := map[string][]string{}
	for _, x := range rows {
		if !x.duplicate {
			r.m.observeDelay(r.topicLabel(x.topic), x.age+now.Sub(x.readAt))
		}
		keys[x.topic] = append(keys[x.topic], r.idemBase+strconv.FormatInt(x.id, 10))
	}
	r.published.Add(int64(len(rows)))
	r.mu.Lock()
	r.st.lastPubAt = now
	r.mu.Unlock()
	// The rows are marked: nobody reads them again, but a relay that lost
	// the table mid-batch may still publish them for up to a batch
	// timeout. Their keys need only outlive that (DedupKeep), not the
	// dedup retention. A failure leaves them the full retention.
	for topic, ks := range keys {
		if err := r.opts.Publisher.ExpireDedup(ctx, topic, ks, r.opts.DedupKeep); err != nil {
			r.opts.Log.Debug("outbox: could not shorten the idempotency keys of published rows; they expire with the dedup retention",
				"topic", topic, "rows", len(ks), "error", err.Error())
		}
	}
	return nil
}

// topicLabel is the delay histogram's label for topic: the topic when it
// is declared, else "".
func (r *Relay) topicLabel(topic string) string {
	if r.topics[topic] {
		return topic
	}
	return ""
}

// refusedForGood reports whether Publish would refuse the row whatever
// the retries: the row itself is invalid.
func refusedForGood(err error) bool {
	return errors.Is(err, events.ErrInvalid) || errors.Is(err, events.ErrTopicUnknown)
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
	h := make(map[string]string, len(raw)+2)
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
// inserted (or a release or retry notified) unheard. Its own payloads (releaseMsg, retryMsg) wake the
// standby loop or the refused rows' retry instead. Failures are only
// logged: polling covers them.
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
		if !r.sleepRestorable(ctx, r.backoff(failures), r.listenRestored) {
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
	// Notifications sent while this connection was not listening are
	// lost: act as if each kind had come.
	poke(r.wake)
	poke(r.recheck)
	poke(r.retry)
	for {
		n, err := conn.WaitForNotification(ctx)
		if err != nil {
			return errors.New(scrub(err))
		}
		switch n.Payload {
		case r.releaseMsg:
			poke(r.handover)
		case r.retryMsg:
			poke(r.retry)
		default:
			poke(r.wake)
		}
	}
}

// poke signals ch (capacity 1) without blocking.
func poke(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// backoff is a full-jitter exponential backoff: uniform in
// [MinBackoff/2, min(MaxBackoff, MinBackoff*2^(failures-1))].
func (r *Relay) backoff(failures int) time.Duration {
	d := backoff.Ceiling(r.opts.MinBackoff, r.opts.MaxBackoff, failures)
	lo := r.opts.MinBackoff / 2
	return lo + rand.N(d-lo+1)
}

// sleepRestorable waits d, or until restored is signalled (Postgres
// answered again: the backoff ends with the first success) or ctx is done;
// it reports whether ctx is still live.
func (r *Relay) sleepRestorable(ctx context.Context, d time.Duration, restored chan struct{}) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
	case <-restored:
	}
	return true
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
