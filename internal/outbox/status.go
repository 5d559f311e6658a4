package outbox

import (
	"context"
	"errors"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/seed-a88e5317/resilience-sidecar/internal/events"
)

// state is what Status reports; Relay.mu guards it.
type state struct {
	healthy bool
	lastErr string
	// active: this relay holds the table.
	active    bool
	tableName string // schema.table once resolved, else as configured

	// pgDown: the relay's last Postgres round trip failed; lastContact is
	// its last successful one.
	pgDown      bool
	lastContact time.Time

	// The active relay's view of the table, read every StatsInterval
	// (statsAt: zero when not read during this turn). oldest estimates,
	// on the local clock, the created_at of the oldest unpublished row
	// not refused (zero: none).
	statsAt time.Time
	backlog int64
	oldest  time.Time

	// refused are the rows refused for good during this turn, by id.
	refused     map[int64]*refusal
	lastRefused int64
	refuseSeq   uint64

	lastPubAt time.Time
}

// refusal is a row the EventService refused for good.
type refusal struct {
	reason string
	// created estimates the row's created_at on the local clock.
	created time.Time
	seq     uint64
}

// lag is the age of the oldest unpublished row known, at now: while the
// relay cannot reach Postgres it grows from the oldest row the active
// relay last saw, or from the last contact when it knew of none (a row
// written since is at most that old), so that a lag alert fires during an
// outage. A standby in contact reports 0: the active relay reports the
// table.
func (s *state) lag(now, started time.Time) time.Duration {
	switch {
	case s.pgDown:
		base := s.lastContact
		if base.IsZero() {
			base = started
		}
		if !s.oldest.IsZero() && s.oldest.Before(base) {
			base = s.oldest
		}
		return max(now.Sub(base), 0)
	case s.active && !s.statsAt.IsZero() && !s.oldest.IsZero():
		return max(now.Sub(s.oldest), 0)
	}
	return 0
}

// backlogKnown reports whether backlog is current: read by the active
// relay, in contact with Postgres, within three stats intervals.
func (s *state) backlogKnown(now time.Time, every time.Duration) bool {
	return s.active && !s.pgDown && !s.statsAt.IsZero() && now.Sub(s.statsAt) <= 3*every
}

// oldestRefused is the age of the oldest refused row (0 when none).
func (s *state) oldestRefused(now time.Time) time.Duration {
	var oldest time.Time
	for _, f := range s.refused {
		if oldest.IsZero() || f.created.Before(oldest) {
			oldest = f.created
		}
	}
	if oldest.IsZero() {
		return 0
	}
	return max(now.Sub(oldest), 0)
}

// Status reports the relay for GetOutboxStatus.
func (r *Relay) Status() events.OutboxStatus {
	now := time.Now()
	r.mu.Lock()
	defer r.mu.Unlock()
	s := &r.st
	st := events.OutboxStatus{
		Enabled:          true,
		Healthy:          s.healthy,
		LastError:        s.lastErr,
		Active:           s.active,
		Lag:              s.lag(now, r.started),
		Published:        r.published.Load(),
		LastPublishedAt:  s.lastPubAt,
		Table:            s.tableName,
		Refused:          int64(len(s.refused)),
		OldestRefusedAge: s.oldestRefused(now),
	}
	if s.backlogKnown(now, r.opts.StatsInterval) {
		st.Backlog, st.BacklogKnown = s.backlog, true
	}
	if f := s.refused[s.lastRefused]; f != nil {
		st.LastRefused = refusedText(s.lastRefused, f.reason)
	}
	return st
}

func (r *Relay) tableName() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.st.tableName
}

func (r *Relay) isActive() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.st.active
}

// pgAnswered records a successful Postgres round trip of the relay. A
// standby forgets what it knew of the table as the active relay.
func (r *Relay) pgAnswered() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.st.pgDown, r.st.lastContact = false, time.Now()
	if !r.st.active {
		r.st.oldest, r.st.statsAt = time.Time{}, time.Time{}
	}
}

// pgFailed records that the relay lost Postgres.
func (r *Relay) pgFailed() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.st.pgDown = true
}

// setActive records that this relay took the table (a new turn: its
// refused rows are tried and logged afresh) or lost it.
func (r *Relay) setActive(on bool) {
	r.mu.Lock()
	r.st.active = on
	r.st.statsAt = time.Time{}
	r.st.refused, r.st.lastRefused = map[int64]*refusal{}, 0
	r.mu.Unlock()
	r.m.setActive(on)
	if on {
		r.m.takeover()
	}
}

func (r *Relay) setStandby() {
	r.opts.Metrics.SetOutboxHealthy(true)
	r.mu.Lock()
	r.st.healthy, r.st.lastErr = true, ""
	r.mu.Unlock()
}

func (r *Relay) setFailed(err error, failures int) {
	msg := err.Error()
	r.opts.Metrics.SetOutboxHealthy(false)
	r.mu.Lock()
	r.st.healthy = false
	r.st.lastErr = msg
	r.mu.Unlock()
	if failures == 1 || failures%10 == 0 {
		r.opts.Log.Warn("outbox relay failing; backing off", "table", r.tableName(), "failures", failures, "error", msg)
	}
}

func (r *Relay) setHealthy() {
	r.opts.Metrics.SetOutboxHealthy(true)
	r.mu.Lock()
	r.st.healthy = true
	r.st.lastErr = "" // the API's last_error is "" when healthy
	r.mu.Unlock()
}

// stats reads backlog and lag every StatsInterval while this relay is
// active; while the relay cannot reach Postgres it probes it instead, and
// the first answer ends the relay's and the listener's backoff. Either
// way it refreshes the gauges, so that the lag grows during an outage.
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
		r.mu.Lock()
		active, down := r.st.active, r.st.pgDown
		r.mu.Unlock()
		switch {
		case active:
			if err := r.readStats(ctx, &conn); err != nil && ctx.Err() == nil {
				r.opts.Log.Debug("outbox stats query failed", "error", err)
			}
		case down:
			if err := r.probe(ctx, &conn); err == nil {
				poke(r.restored)
				poke(r.listenRestored)
			}
		case conn != nil:
			closeConn(conn) // a standby in contact needs none
			conn = nil
		}
		r.gauges(time.Now())
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// statsConn returns the stats connection, opening it if needed.
func (r *Relay) statsConn(ctx context.Context, connp **pgx.Conn) (*pgx.Conn, error) {
	if *connp == nil {
		c, err := pgx.Connect(ctx, r.opts.URL)
		if err != nil {
			return nil, errors.New(scrub(err))
		}
		*connp = c
	}
	return *connp, nil
}

// probe checks that Postgres answers.
func (r *Relay) probe(ctx context.Context, connp **pgx.Conn) error {
	ctx, cancel := context.WithTimeout(ctx, min(r.opts.BatchTimeout, 5*time.Second))
	defer cancel()
	c, err := r.statsConn(ctx, connp)
	if err == nil {
		err = c.Ping(ctx)
	}
	if err != nil && *connp != nil {
		closeConn(*connp)
		*connp = nil
	}
	return err
}

func (r *Relay) readStats(ctx context.Context, connp **pgx.Conn) error {
	ctx, cancel := context.WithTimeout(ctx, r.opts.BatchTimeout)
	defer cancel()
	c, err := r.statsConn(ctx, connp)
	if err != nil {
		return err
	}
	var n int64
	var ageSec float64
	if err := c.QueryRow(ctx, r.statsQ, r.refusedIDs()).Scan(&n, &ageSec); err != nil {
		closeConn(c)
		*connp = nil
		return errors.New(scrub(err))
	}
	now := time.Now()
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.st.active {
		return nil // the turn ended meanwhile
	}
	r.st.backlog, r.st.statsAt, r.st.oldest = n, now, time.Time{}
	if ageSec >= 0 {
		r.st.oldest = now.Add(-time.Duration(ageSec * float64(time.Second)))
	}
	return nil
}

// gauges refreshes the backlog, lag and refused series from the state.
func (r *Relay) gauges(now time.Time) {
	r.mu.Lock()
	s := &r.st
	lag := s.lag(now, r.started)
	known := s.backlogKnown(now, r.opts.StatsInterval)
	backlog := s.backlog
	refused, refusedAge := len(s.refused), s.oldestRefused(now)
	r.mu.Unlock()
	r.m.setBacklog(backlog, known, lag)
	r.m.setRefused(refused, refusedAge)
}
