// Package config builds the sidecar's one Config from command-line flags,
// SIDECAR_* environment variables and an optional YAML file, with the
// precedence flag > environment > file > default, and validates it once.
//
// Every top-level setting has three spellings: the YAML key
// (store_timeout), the flag (--store-timeout) and the environment variable
// (SIDECAR_STORE_TIMEOUT); one table (fields.go) lists them. The file's
// sections (breakers, upstreams, events, outbox) are decoded straight into
// the capability packages' configuration types by their yaml tags, which
// then check themselves (Validate).
//
// Every error Load returns is a *FieldError whose message is one line naming
// the setting by its YAML/flag spelling, and never contains the Redis
// password or the API token.
package config

import (
	"fmt"
	"log/slog"
	"maps"
	"net/url"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode"

	"github.com/seed-a88e5317/resilience-sidecar/internal/breaker"
	"github.com/seed-a88e5317/resilience-sidecar/internal/config/field"
	"github.com/seed-a88e5317/resilience-sidecar/internal/events"
	"github.com/seed-a88e5317/resilience-sidecar/internal/outbox"
	"github.com/seed-a88e5317/resilience-sidecar/internal/redisx"
	"github.com/seed-a88e5317/resilience-sidecar/internal/saga"
	"github.com/seed-a88e5317/resilience-sidecar/internal/upstream"
)

// Log levels accepted by log_level, lowercase only.
const (
	LogDebug = "debug"
	LogInfo  = "info"
	LogWarn  = "warn"
	LogError = "error"
)

// Config is the sidecar's whole configuration. A *Config returned by Load
// has passed validation: every field is within the bounds documented on it
// (or by its type), and APIToken holds the token read from APITokenFile
// (empty when no token file is configured).
type Config struct {
	// Listen is the gRPC listen address: "host:port" (port 0-65535) or
	// "unix:///absolute/path". Use ListenNetworkAddress to listen on it.
	Listen string
	// RedisURL is the Redis URL read according to RedisMode; empty means the
	// embedded in-memory store. It may contain a password: log it only
	// through String or LogValue, which redact it.
	RedisURL string
	// RedisMode is redisx.Standalone (default), Cluster or Sentinel.
	RedisMode redisx.Mode
	// ConfigFile is the path of the YAML file that was read ("" if none).
	// It is set by --config or SIDECAR_CONFIG only.
	ConfigFile string
	// Namespace scopes every key; 1-64 bytes of [A-Za-z0-9._-].
	Namespace string
	// MetricsListen is the host:port of the Prometheus /metrics endpoint;
	// empty disables it.
	MetricsListen string
	// APITokenFile is the path of the file holding the bearer token; empty
	// disables authentication.
	APITokenFile string
	// APIToken is the token read from APITokenFile, trimmed of surrounding
	// whitespace; non-empty exactly when APITokenFile is set. It is never
	// printed by String or LogValue.
	APIToken string `json:"-"`
	// LogLevel is one of debug, info (default), warn, error. See SlogLevel.
	LogLevel string
	// StoreTimeout bounds one store call before UNAVAILABLE (50ms-30s, default 1s).
	StoreTimeout time.Duration
	// RedisWaitReplicas is how many replicas must acknowledge (Redis WAIT)
	// the writes that grant or extend a lock and that start, checkpoint or
	// complete an idempotency key before the sidecar reports them (0-16,
	// default 0: do not wait). See docs/topologies.md.
	RedisWaitReplicas int
	// RedisWaitTimeout bounds that wait (1ms-30s, default 500ms; below
	// StoreTimeout when RedisWaitReplicas is set).
	RedisWaitTimeout time.Duration
	// RedisPipeline sends the scripts of concurrent calls as pipelines
	// (default true).
	RedisPipeline bool
	// ShutdownTimeout bounds draining in-flight calls at SIGTERM (0s-5m, default 10s).
	ShutdownTimeout time.Duration
	// HealthInterval is how often the store is probed for the health
	// service (100ms-1m, default 1s).
	HealthInterval time.Duration
	// MaxOffset is how far ahead of this sidecar's wall clock a remote
	// hybrid logical clock timestamp may be before UpdateHlc refuses it
	// with CLOCK_SKEW (1ms-1m, default 500ms).
	MaxOffset time.Duration
	// MaxMessageBytes is the gRPC max receive message size (1024-67108864,
	// default 4194304).
	MaxMessageBytes int
	// MaxResultBytes bounds a stored idempotency result, data plus metadata
	// keys and values (1024-67108864, default 1048576).
	MaxResultBytes int
	// MaxBreakers bounds the circuit breakers one sidecar tracks
	// (1-1000000, default 10000); beyond it a new name is
	// RESOURCE_EXHAUSTED/LIMIT_EXCEEDED.
	MaxBreakers int
	// Saga holds the saga settings of the flags saga_retention (Retention,
	// 1m-8760h, default 168h), saga_lease_ttl (Lease, 500ms-10m, default
	// 15s), saga_recovery_interval (RecoveryInterval, 10ms-10m, default
	// 5s), saga_max_body_bytes (MaxBodyBytes, 1-16777216, default 65536)
	// and saga_max_steps (MaxSteps, 1-100000, default 1000); the rest of
	// the Options are the program's to fill.
	Saga saga.Options

	// The file's sections. A section the file leaves out is the zero value
	// (nil, or no relay for Outbox); one it gives has every default filled
	// in and has passed its type's validation.

	// Breakers are the breaker policies by name; "default" covers the
	// names not declared.
	Breakers breaker.Config `yaml:"breakers"`
	// Upstreams are the upstreams by name.
	Upstreams Upstreams `yaml:"upstreams"`
	// Events configures the EventService and its push subscriptions.
	Events events.Config `yaml:"events"`
	// Outbox configures the outbox relay (docs/outbox.md): Outbox.Enabled
	// reports whether there is one.
	Outbox outbox.Options `yaml:"outbox"`
}

// Upstream is one entry of the file's `upstreams` section: the upstream
// and how saga compensations on it are retried.
type Upstream struct {
	upstream.Config `yaml:",inline"`
	// CompensationRetry is the saga executor's retry policy for
	// compensations on the upstream.
	CompensationRetry saga.RetryPolicy `yaml:"compensation_retry"`
}

// Upstreams are the file's upstreams by name (Upstream.Name).
type Upstreams map[string]Upstream

// WithDefaults returns a copy of us with each upstream named after its key
// and given its defaults.
func (us Upstreams) WithDefaults() Upstreams {
	out := make(Upstreams, len(us))
	for name, u := range us {
		u.Name = name
		u.Config = u.Config.WithDefaults()
		u.CompensationRetry = u.CompensationRetry.WithDefaults()
		out[name] = u
	}
	return out
}

// Validate reports the first problem of us, by name in sorted order.
func (us Upstreams) Validate() error {
	for _, name := range slices.Sorted(maps.Keys(us)) {
		if err := field.CheckName(name); err != nil {
			return err
		}
		if err := us[name].Config.Validate(); err != nil {
			return field.Within(field.Key(name), err)
		}
		if err := us[name].CompensationRetry.Validate(); err != nil {
			return field.Within(field.Join(field.Key(name), "compensation_retry"), err)
		}
	}
	return nil
}

// ListenNetworkAddress returns the arguments for net.Listen: ("unix",
// "/abs/path") for a "unix:///abs/path" Listen, else ("tcp", Listen).
func (c *Config) ListenNetworkAddress() (network, address string) {
	if p, ok := strings.CutPrefix(c.Listen, unixPrefix); ok {
		return "unix", p
	}
	return "tcp", c.Listen
}

// UsesEmbeddedStore reports whether the sidecar runs on the embedded
// in-memory store, i.e. no Redis URL is configured.
func (c *Config) UsesEmbeddedStore() bool { return c.RedisURL == "" }

// SlogLevel returns LogLevel as a slog.Level; an unrecognised level (only
// possible for a Config not made by Load) is slog.LevelInfo.
func (c *Config) SlogLevel() slog.Level {
	switch c.LogLevel {
	case LogDebug:
		return slog.LevelDebug
	case LogWarn:
		return slog.LevelWarn
	case LogError:
		return slog.LevelError
	default:
		return slog.LevelInfo
	}
}

// LogValue implements slog.LogValuer: the settings as a group, with the
// Redis password (user info and any password query parameter) replaced by
// "xxxxx", and the API token left out (only whether one is set).
func (c Config) LogValue() slog.Value { return slog.GroupValue(c.attrs()...) }

// String returns the settings as one line of key=value pairs, redacted
// exactly as LogValue is.
func (c Config) String() string {
	var b strings.Builder
	for i, a := range c.attrs() {
		if i > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(a.Key)
		b.WriteByte('=')
		v := a.Value.String()
		if v == "" || strings.ContainsFunc(v, func(r rune) bool {
			return r == ' ' || r == '"' || r == '=' || !unicode.IsPrint(r)
		}) {
			v = strconv.Quote(v)
		}
		b.WriteString(v)
	}
	return b.String()
}

// GoString makes %#v print the same redacted form as String, so that
// formatting a Config never reveals the token or the Redis password.
func (c Config) GoString() string { return "config.Config{" + c.String() + "}" }

func (c Config) attrs() []slog.Attr {
	store := "embedded"
	if c.RedisURL != "" {
		store = "redis"
	}
	return []slog.Attr{
		slog.String("listen", c.Listen),
		slog.String("store", store),
		slog.String("redis_url", RedactURL(c.RedisURL)),
		slog.String("redis_mode", string(c.RedisMode)),
		slog.String("config", c.ConfigFile),
		slog.String("namespace", c.Namespace),
		slog.String("metrics_listen", c.MetricsListen),
		slog.String("api_token_file", c.APITokenFile),
		slog.Bool("api_token_set", c.APIToken != ""),
		slog.String("log_level", c.LogLevel),
		slog.String("store_timeout", c.StoreTimeout.String()),
		slog.Int("redis_wait_replicas", c.RedisWaitReplicas),
		slog.String("redis_wait_timeout", c.RedisWaitTimeout.String()),
		slog.Bool("redis_pipeline", c.RedisPipeline),
		slog.String("shutdown_timeout", c.ShutdownTimeout.String()),
		slog.String("health_interval", c.HealthInterval.String()),
		slog.String("max_offset", c.MaxOffset.String()),
		slog.Int("max_message_bytes", c.MaxMessageBytes),
		slog.Int("max_result_bytes", c.MaxResultBytes),
		slog.Int("max_breakers", c.MaxBreakers),
		slog.Int("breakers", len(c.Breakers)),
		slog.Int("upstreams", len(c.Upstreams)),
		slog.String("saga_retention", c.Saga.Retention.String()),
		slog.String("saga_lease_ttl", c.Saga.Lease.String()),
		slog.String("saga_recovery_interval", c.Saga.RecoveryInterval.String()),
		slog.Int("saga_max_body_bytes", c.Saga.MaxBodyBytes),
		slog.Int("saga_max_steps", c.Saga.MaxSteps),
		slog.Int("event_topics", len(c.Events.Topics)),
		slog.Int("event_push", len(c.Events.Push)),
		slog.String("outbox_postgres_url", redactPostgresURL(c.Outbox.URL)),
	}
}

// redacted replaces secrets in logs and errors.
const redacted = "xxxxx"

// RedactURL returns rawURL with the password of its user info and the
// value of every query parameter whose name contains "password" replaced
// by "xxxxx". A URL that does not parse is returned as a fixed placeholder,
// since its secrets cannot be located; "" stays "".
func RedactURL(rawURL string) string {
	if rawURL == "" {
		return ""
	}
	u, err := url.Parse(rawURL)
	if err != nil {
		return "<unparsable URL, redacted>"
	}
	if u.User != nil {
		if _, ok := u.User.Password(); ok {
			u.User = url.UserPassword(u.User.Username(), redacted)
		}
	}
	if u.RawQuery != "" {
		q := u.Query()
		changed := false
		for k, vs := range q {
			if strings.Contains(strings.ToLower(k), "password") {
				for i := range vs {
					vs[i] = redacted
				}
				changed = true
			}
		}
		if changed {
			u.RawQuery = q.Encode()
		}
	}
	return u.String()
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

// parseDuration reads Go duration syntax ("250ms", "2s", "1m30s"); a bare
// number such as 5 is refused (no unit), except "0".
func parseDuration(s string) (time.Duration, error) {
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, fmt.Errorf("must be a duration such as \"250ms\" or \"2s\", got %s", field.Quote(s))
	}
	return d, nil
}

// FieldError is the one kind of error Load returns (besides flag.ErrHelp).
// Error gives one line, "config: <field>: <msg>", where Field is the
// setting's YAML/flag spelling ("store_timeout"), "config" for problems
// reading the file, or "flags" for malformed command lines. Msg never
// contains the Redis password or the API token.
type FieldError struct {
	Field string
	Msg   string
	err   error // cause, for errors.Is/As; never carries a secret
}

// Error returns "config: <field>: <msg>" on one line: line breaks and other
// control characters are escaped.
func (e *FieldError) Error() string {
	return "config: " + oneLine(e.Field) + ": " + oneLine(e.Msg)
}

// Unwrap returns the underlying cause (e.g. an *fs.PathError), if any.
func (e *FieldError) Unwrap() error { return e.err }

// oneLine escapes control and line-separator characters so s prints as one line.
func oneLine(s string) string {
	if !strings.ContainsFunc(s, needsEscape) {
		return s
	}
	var b strings.Builder
	for _, r := range s {
		if needsEscape(r) {
			q := strconv.QuoteRune(r)
			b.WriteString(q[1 : len(q)-1])
			continue
		}
		b.WriteRune(r)
	}
	return b.String()
}

func needsEscape(r rune) bool {
	return unicode.IsControl(r) || r == '\u2028' || r == '\u2029'
}
