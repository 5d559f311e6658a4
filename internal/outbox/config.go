package outbox

import (
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/seed-a88e5317/resilience-sidecar/internal/config/field"
	"github.com/seed-a88e5317/resilience-sidecar/internal/metrics"
)

// Bounds of PollInterval in the config file.
const (
	MinPollInterval = 10 * time.Millisecond
	MaxPollInterval = time.Hour
)

// Options configure a Relay. Zero (or negative) values get the defaults
// noted (WithDefaults). The yaml tags are the keys of the config file's
// `outbox` section, which configures a relay when present (Enabled).
type Options struct {
	// URL is the Postgres connection URL
	// (postgres://user:password@host:5432/db?sslmode=...) or key=value DSN,
	// pgx syntax; the PG* environment variables and the password file fill
	// in what it leaves out, as with libpq. Required. It may hold a
	// password: it is never logged (config.Config redacts it when printed).
	URL string `yaml:"postgres_url"`
	// Table holds the outbox rows (DefaultTable), a lowercase identifier,
	// optionally schema-qualified.
	Table string `yaml:"table"`
	// BatchSize is the most rows one transaction locks and publishes
	// (DefaultBatchSize, at most MaxBatchSize).
	BatchSize int `yaml:"batch_size"`
	// PollInterval is how often the table is read when no notification
	// arrives (DefaultPollInterval; 10ms-1h in the config file).
	PollInterval time.Duration `yaml:"poll_interval"`
	// NotifyChannel is the channel LISTENed on (DefaultNotifyChannel).
	NotifyChannel string `yaml:"notify_channel"`
	// OnPublish is Mark (default) or Delete.
	OnPublish Mode `yaml:"on_publish"`
	// Publisher publishes the rows; required.
	Publisher Publisher `yaml:"-"`
	// StatsInterval is how often backlog and lag are read (DefaultStatsInterval).
	StatsInterval time.Duration `yaml:"-"`
	// MinBackoff and MaxBackoff bound the wait after a failed cycle; it
	// doubles per consecutive failure, with full jitter
	// (DefaultMinBackoff, DefaultMaxBackoff).
	MinBackoff time.Duration `yaml:"-"`
	MaxBackoff time.Duration `yaml:"-"`
	// BatchTimeout bounds one cycle, Postgres and publishes together
	// (DefaultBatchTimeout).
	BatchTimeout time.Duration `yaml:"-"`
	// Log receives failures and recoveries (nil: discarded).
	Log *slog.Logger `yaml:"-"`
	// Metrics receives the resilience_outbox_* series (nil: none).
	Metrics *metrics.Metrics `yaml:"-"`
}

// Enabled reports whether o names a database: a config file configures a
// relay by giving the outbox section (and so postgres_url).
func (o Options) Enabled() bool { return o.URL != "" }

// WithDefaults returns o with every zero or negative setting set to its
// default.
func (o Options) WithDefaults() Options {
	str := func(v *string, d string) {
		if *v == "" {
			*v = d
		}
	}
	dur := func(v *time.Duration, d time.Duration) {
		if *v <= 0 {
			*v = d
		}
	}
	str(&o.Table, DefaultTable)
	str(&o.NotifyChannel, DefaultNotifyChannel)
	if o.OnPublish == "" {
		o.OnPublish = Mark
	}
	if o.BatchSize <= 0 {
		o.BatchSize = DefaultBatchSize
	}
	dur(&o.PollInterval, DefaultPollInterval)
	dur(&o.StatsInterval, DefaultStatsInterval)
	dur(&o.MinBackoff, DefaultMinBackoff)
	dur(&o.MaxBackoff, DefaultMaxBackoff)
	dur(&o.BatchTimeout, DefaultBatchTimeout)
	return o
}

// Validate reports the first problem of the settings the config file
// gives, as they are (zero ones are not defaulted: validate
// o.WithDefaults() for that), as a *field.Error whose path is the key.
// Messages never quote the URL.
func (o Options) Validate() error {
	if o.URL == "" {
		return field.Errorf("postgres_url", "must be set when the outbox section is present")
	}
	if err := checkPostgresURL(o.URL); err != nil {
		return field.Within("postgres_url", err)
	}
	if err := CheckIdentifier(o.Table, true); err != nil {
		return field.Within("table", err)
	}
	if err := CheckIdentifier(o.NotifyChannel, false); err != nil {
		return field.Within("notify_channel", err)
	}
	switch {
	case o.OnPublish != Mark && o.OnPublish != Delete:
		return field.Errorf("on_publish", "must be one of mark, delete, got %s", field.Quote(string(o.OnPublish)))
	case o.BatchSize < 1 || o.BatchSize > MaxBatchSize:
		return field.Errorf("batch_size", "must be between 1 and %d, got %d", MaxBatchSize, o.BatchSize)
	case o.PollInterval < MinPollInterval || o.PollInterval > MaxPollInterval:
		return field.Errorf("poll_interval", "must be between %v and %v, got %v", MinPollInterval, MaxPollInterval, o.PollInterval)
	}
	return nil
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
