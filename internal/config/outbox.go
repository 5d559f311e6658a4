package config

import (
	"errors"
	"fmt"
	"net/url"
	"regexp"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"gopkg.in/yaml.v3"

	"github.com/seed-a88e5317/resilience-sidecar/internal/outbox"
)

// Outbox is the file's `outbox` section: the transactional outbox relay
// (docs/outbox.md). The relay runs when PostgresURL is set; a Config
// without the section has the zero Outbox (no relay).
type Outbox struct {
	// PostgresURL is the database holding the outbox table, as a URL
	// (postgres://user:password@host:5432/db?sslmode=...) or a key=value
	// DSN; the PG* environment variables and the password file fill in
	// what it leaves out, as with libpq. It may contain a password: log it
	// only through RedactURL (Config's String and LogValue do).
	PostgresURL string
	// Table is the outbox table, a lowercase identifier, optionally
	// schema-qualified (default "outbox").
	Table string
	// BatchSize is the most rows one relay transaction locks and publishes
	// (1-10000, default 100).
	BatchSize int
	// PollInterval is how often the table is read when no notification
	// arrives (10ms-1h, default 1s).
	PollInterval time.Duration
	// NotifyChannel is the channel the relay LISTENs on, which the table's
	// trigger notifies (default "outbox").
	NotifyChannel string
	// OnPublish is what happens to a published row: "mark" (default; set
	// published_at) or "delete".
	OnPublish string
}

// Enabled reports whether the relay is configured.
func (o Outbox) Enabled() bool { return o.PostgresURL != "" }

var outboxKeys = []string{"batch_size", "notify_channel", "on_publish", "poll_interval", "postgres_url", "table"}

// Bounds of the outbox settings.
const (
	minOutboxPoll = 10 * time.Millisecond
	maxOutboxPoll = time.Hour
)

// parseOutbox types and validates the `outbox` section. Error messages
// never quote postgres_url.
func parseOutbox(path string, n *yaml.Node) (Outbox, error) {
	if n == nil || isNull(n) {
		return Outbox{}, nil
	}
	s := section{path: path, prefix: "outbox"}
	m, err := s.entries(n, outboxKeys)
	if err != nil {
		return Outbox{}, err
	}
	var o Outbox
	v, ok := m["postgres_url"]
	if !ok || v.Value == "" {
		return Outbox{}, s.err("postgres_url", n.Line, "must be set when the outbox section is present")
	}
	if err := checkPostgresURL(v.Value); err != nil {
		return Outbox{}, s.err("postgres_url", v.Line, "%v", err)
	}
	o.PostgresURL = v.Value
	o.Table = outbox.DefaultTable
	if v, ok := m["table"]; ok {
		if err := outbox.CheckIdentifier(v.Value, true); err != nil {
			return Outbox{}, s.err("table", v.Line, "%v", err)
		}
		o.Table = v.Value
	}
	o.NotifyChannel = outbox.DefaultNotifyChannel
	if v, ok := m["notify_channel"]; ok {
		if err := outbox.CheckIdentifier(v.Value, false); err != nil {
			return Outbox{}, s.err("notify_channel", v.Line, "%v", err)
		}
		o.NotifyChannel = v.Value
	}
	o.OnPublish = string(outbox.Mark)
	if v, ok := m["on_publish"]; ok {
		if err := checkOneOf(v.Value, string(outbox.Mark), string(outbox.Delete)); err != nil {
			return Outbox{}, s.err("on_publish", v.Line, "%v", err)
		}
		o.OnPublish = v.Value
	}
	if o.BatchSize, err = s.int(m, "batch_size", outbox.DefaultBatchSize, 1, outbox.MaxBatchSize); err != nil {
		return Outbox{}, err
	}
	if o.PollInterval, err = s.duration(m, "poll_interval", outbox.DefaultPollInterval, minOutboxPoll, maxOutboxPoll); err != nil {
		return Outbox{}, err
	}
	return o, nil
}

// checkPostgresURL parses a Postgres URL or DSN as the relay will. Its
// message never contains any part of the value (pgx's may quote it).
func checkPostgresURL(s string) error {
	if strings.HasPrefix(s, "postgres://") || strings.HasPrefix(s, "postgresql://") {
		if _, err := url.Parse(s); err != nil {
			return errors.New("not a valid URL (want postgres://user:password@host:5432/db?sslmode=...)")
		}
	} else if strings.Contains(s, "://") {
		return fmt.Errorf("must be a postgres:// or postgresql:// URL or a key=value DSN")
	}
	if _, err := pgx.ParseConfig(s); err != nil {
		return errors.New("not a valid Postgres URL or DSN (want postgres://user:password@host:5432/db?sslmode=...)")
	}
	return nil
}

// dsnPassword matches the password of a key=value DSN, quoted or not.
var dsnPassword = regexp.MustCompile(`(?i)(\bpassword\s*=\s*)('(?:[^'\\]|\\.)*'|\S*)`)

// redactPostgresURL is RedactURL for a URL, and for a key=value DSN the
// same with its password value replaced.
func redactPostgresURL(s string) string {
	if strings.Contains(s, "://") {
		return RedactURL(s)
	}
	return dsnPassword.ReplaceAllString(s, "${1}"+redacted)
}
