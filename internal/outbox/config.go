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

// Bounds of the settings in the config file.
const (
	MinPollInterval         = 10 * time.Millisecond
	MaxPollInterval         = time.Hour
	MinLeaderTimeout        = 2 * time.Second
	MaxLeaderTimeout        = 10 * time.Minute
	MinRefusedRetryInterval = time.Second
	MaxRefusedRetryInterval = 24 * time.Hour
	MinRetention            = time.Minute
	MaxRetention            = 10 * 365 * 24 * time.Hour
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
	// LeaderTimeout is how long Postgres keeps the session of a silent
	// active relay (a frozen process, a host cut off from the database)
	// before it ends it, which hands the table over to a standby
	// (DefaultLeaderTimeout; 2s-10m). A relay that dies outright hands it
	// over at once: Postgres sees its connection close. Keep it above
	// the store timeout: a publish that takes longer than this may cost
	// the relay its turn (safely: the batch is redone, deduplicated).
	LeaderTimeout time.Duration `yaml:"leader_timeout"`
	// RefusedRetryInterval is how often the active relay tries the rows
	// the EventService refused again, so that a fixed row is published
	// without a restart (DefaultRefusedRetryInterval; 1s-24h).
	RefusedRetryInterval time.Duration `yaml:"refused_retry_interval"`
	// Retention, in mark mode, deletes published rows once their
	// published_at is this old, in batches, by the active relay (0, the
	// default: kept; 1m-87600h). Not allowed with on_publish: delete.
	Retention time.Duration `yaml:"retention"`
	// Publisher publishes the rows; required.
	Publisher Publisher `yaml:"-"`
	// Topics are the topics the configuration declares (events.topics):
	// the label values of the publish delay histogram, whose topic label
	// is empty when none are declared.
	Topics []string `yaml:"-"`
	// RetentionInterval is how often the retention runs
	// (DefaultRetentionInterval); RetentionBatch how many rows one delete
	// takes (DefaultRetentionBatch).
	RetentionInterval time.Duration `yaml:"-"`
	RetentionBatch    int           `yaml:"-"`
	// StandbyPoll is how often a standby tries to take the table over
	// (DefaultStandbyPoll); it also does so at once when the active relay
	// lets go on shutdown.
	StandbyPoll time.Duration `yaml:"-"`
	// DedupKeep is how long a row's idempotency key is kept once the row
	// is marked (DefaultDedupKeep): long enough for a relay that lost the
	// table mid-batch to finish publishing it, deduplicated.
	DedupKeep time.Duration `yaml:"-"`
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
	dur(&o.LeaderTimeout, DefaultLeaderTimeout)
	dur(&o.RefusedRetryInterval, DefaultRefusedRetryInterval)
	dur(&o.RetentionInterval, DefaultRetentionInterval)
	dur(&o.StandbyPoll, DefaultStandbyPoll)
	dur(&o.DedupKeep, 2*o.BatchTimeout)
	if o.Retention < 0 {
		o.Retention = 0
	}
	if o.RetentionBatch <= 0 {
		o.RetentionBatch = DefaultRetentionBatch
	}
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
	case o.LeaderTimeout < MinLeaderTimeout || o.LeaderTimeout > MaxLeaderTimeout:
		return field.Errorf("leader_timeout", "must be between %v and %v, got %v", MinLeaderTimeout, MaxLeaderTimeout, o.LeaderTimeout)
	case o.RefusedRetryInterval < MinRefusedRetryInterval || o.RefusedRetryInterval > MaxRefusedRetryInterval:
		return field.Errorf("refused_retry_interval", "must be between %v and %v, got %v", MinRefusedRetryInterval, MaxRefusedRetryInterval, o.RefusedRetryInterval)
	case o.Retention != 0 && (o.Retention < MinRetention || o.Retention > MaxRetention):
		return field.Errorf("retention", "must be 0 (keep published rows) or between %v and %v, got %v", MinRetention, MaxRetention, o.Retention)
	case o.Retention != 0 && o.OnPublish == Delete:
		return field.Errorf("retention", "applies to on_publish: mark only (delete mode keeps no published rows)")
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
