// Package config builds the sidecar's one Config from command-line flags,
// SIDECAR_* environment variables and an optional YAML file, with the
// precedence flag > environment > file > default, and validates it once.
//
// Every setting has three spellings: the YAML key (store_timeout), the flag
// (--store-timeout) and the environment variable (SIDECAR_STORE_TIMEOUT).
// Every error Load returns is a *FieldError whose message is one line naming
// the setting by its YAML/flag spelling, and never contains the Redis
// password or the API token.
package config

import (
	"fmt"
	"log/slog"
	"net/url"
	"strconv"
	"strings"
	"time"
	"unicode"

	"gopkg.in/yaml.v3"
)

// RedisMode says how RedisURL is read and which kind of Redis deployment the
// sidecar talks to.
type RedisMode string

// The Redis modes. The URL of each is parsed by go-redis's ParseURL,
// ParseClusterURL and ParseFailoverURL respectively.
const (
	RedisStandalone RedisMode = "standalone"
	RedisCluster    RedisMode = "cluster"
	RedisSentinel   RedisMode = "sentinel"
)

// Log levels accepted by log_level, lowercase only.
const (
	LogDebug = "debug"
	LogInfo  = "info"
	LogWarn  = "warn"
	LogError = "error"
)

// Config is the sidecar's whole configuration. A *Config returned by Load
// has passed validation: every field is within the bounds documented on it,
// and APIToken holds the token read from APITokenFile (empty when no token
// file is configured).
type Config struct {
	// Listen is the gRPC listen address: "host:port" (port 0-65535) or
	// "unix:///absolute/path". Use ListenNetworkAddress to listen on it.
	Listen string `yaml:"listen"`
	// RedisURL is the Redis URL read according to RedisMode; empty means the
	// embedded in-memory store. It may contain a password: log it only
	// through String or LogValue, which redact it.
	RedisURL string `yaml:"redis_url"`
	// RedisMode is one of RedisStandalone (default), RedisCluster, RedisSentinel.
	RedisMode RedisMode `yaml:"redis_mode"`
	// ConfigFile is the path of the YAML file that was read ("" if none).
	// It is set by --config or SIDECAR_CONFIG only.
	ConfigFile string `yaml:"-"`
	// Namespace scopes every key; 1-64 bytes of [A-Za-z0-9._-].
	Namespace string `yaml:"namespace"`
	// MetricsListen is the host:port of the Prometheus /metrics endpoint;
	// empty disables it.
	MetricsListen string `yaml:"metrics_listen"`
	// APITokenFile is the path of the file holding the bearer token; empty
	// disables authentication.
	APITokenFile string `yaml:"api_token_file"`
	// APIToken is the token read from APITokenFile, trimmed of surrounding
	// whitespace; non-empty exactly when APITokenFile is set. It is never
	// printed by String or LogValue.
	APIToken string `yaml:"-" json:"-"`
	// LogLevel is one of debug, info (default), warn, error. See SlogLevel.
	LogLevel string `yaml:"log_level"`
	// StoreTimeout bounds one store call before UNAVAILABLE (50ms-30s, default 1s).
	StoreTimeout time.Duration `yaml:"store_timeout"`
	// RedisWaitReplicas is how many replicas must acknowledge (Redis WAIT)
	// the writes that grant or extend a lock and that start, checkpoint or
	// complete an idempotency key before the sidecar reports them (0-16,
	// default 0: do not wait). See docs/topologies.md.
	RedisWaitReplicas int `yaml:"redis_wait_replicas"`
	// RedisWaitTimeout bounds that wait (1ms-30s, default 500ms; below
	// StoreTimeout when RedisWaitReplicas is set).
	RedisWaitTimeout time.Duration `yaml:"redis_wait_timeout"`
	// RedisPipeline sends the scripts of concurrent calls as pipelines
	// (default true).
	RedisPipeline bool `yaml:"redis_pipeline"`
	// ShutdownTimeout bounds draining in-flight calls at SIGTERM (0s-5m, default 10s).
	ShutdownTimeout time.Duration `yaml:"shutdown_timeout"`
	// HealthInterval is how often the store is probed for the health
	// service (100ms-1m, default 1s).
	HealthInterval time.Duration `yaml:"health_interval"`
	// MaxOffset is how far ahead of this sidecar's wall clock a remote
	// hybrid logical clock timestamp may be before UpdateHlc refuses it
	// with CLOCK_SKEW (1ms-1m, default 500ms).
	MaxOffset time.Duration `yaml:"max_offset"`
	// MaxMessageBytes is the gRPC max receive message size (1024-67108864,
	// default 4194304).
	MaxMessageBytes int `yaml:"max_message_bytes"`
	// MaxResultBytes bounds a stored idempotency result, data plus metadata
	// keys and values (1024-67108864, default 1048576).
	MaxResultBytes int `yaml:"max_result_bytes"`
	// MaxBreakers bounds the circuit breakers one sidecar tracks
	// (1-1000000, default 10000); beyond it a new name is
	// RESOURCE_EXHAUSTED/LIMIT_EXCEEDED.
	MaxBreakers int `yaml:"max_breakers"`
	// Breakers holds the file's breaker policies by name, validated and
	// with defaults filled in (see BreakerPolicy); "default" covers the
	// names not declared. Nil when the file declares none.
	Breakers map[string]BreakerPolicy `yaml:"breakers"`
	// Upstreams holds the file's upstreams by name, validated and with
	// defaults filled in (see Upstream). Nil when the file declares none.
	Upstreams map[string]Upstream `yaml:"upstreams"`
	// SagaRetention is how long COMPLETED and COMPENSATED sagas are kept
	// (1m-8760h, default 168h).
	SagaRetention time.Duration `yaml:"saga_retention"`
	// SagaLeaseTTL is the lease of a sidecar compensating a saga
	// (500ms-10m, default 15s).
	SagaLeaseTTL time.Duration `yaml:"saga_lease_ttl"`
	// SagaRecoveryInterval is how often the saga recovery worker runs
	// (10ms-10m, default 5s).
	SagaRecoveryInterval time.Duration `yaml:"saga_recovery_interval"`
	// SagaMaxBodyBytes bounds a compensation's body (1-16777216, default
	// 65536).
	SagaMaxBodyBytes int `yaml:"saga_max_body_bytes"`
	// SagaMaxSteps bounds a saga's steps (1-100000, default 1000).
	SagaMaxSteps int `yaml:"saga_max_steps"`
	// Events is the file's `events` section (see Events); zero when the
	// file has none, which means the defaults.
	Events Events `yaml:"events"`
	// Outbox is the file's `outbox` section (see Outbox); zero (no relay)
	// when the file has none.
	Outbox Outbox `yaml:"outbox"`
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
		slog.String("saga_retention", c.SagaRetention.String()),
		slog.String("saga_lease_ttl", c.SagaLeaseTTL.String()),
		slog.String("saga_recovery_interval", c.SagaRecoveryInterval.String()),
		slog.Int("saga_max_body_bytes", c.SagaMaxBodyBytes),
		slog.Int("saga_max_steps", c.SagaMaxSteps),
		slog.Int("event_topics", len(c.Events.Topics)),
		slog.Int("event_push", len(c.Events.Push)),
		slog.String("outbox_postgres_url", redactPostgresURL(c.Outbox.PostgresURL)),
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

// urlSecrets returns the secrets RedactURL hides, to scrub them from
// error messages.
func urlSecrets(rawURL string) []string {
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil
	}
	var s []string
	if u.User != nil {
		if p, ok := u.User.Password(); ok && p != "" {
			s = append(s, p, url.QueryEscape(p), url.PathEscape(p))
		}
	}
	for k, vs := range u.Query() {
		if strings.Contains(strings.ToLower(k), "password") {
			for _, v := range vs {
				if v != "" {
					s = append(s, v, url.QueryEscape(v))
				}
			}
		}
	}
	return s
}

// Duration is a time.Duration written in Go duration syntax ("250ms",
// "2s", "1m30s") in YAML and text. A bare number such as 5 is rejected
// (no unit), except "0".
type Duration time.Duration

// UnmarshalYAML accepts a scalar in Go duration syntax; anything else is an
// error saying what was expected (without the key, which the caller knows).
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind == yaml.AliasNode && n.Alias != nil {
		n = n.Alias
	}
	if n.Kind != yaml.ScalarNode {
		return fmt.Errorf("must be a duration such as \"250ms\" or \"2s\", got a YAML %s", kindName(n.Kind))
	}
	return d.UnmarshalText([]byte(n.Value))
}

// UnmarshalText parses Go duration syntax.
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil {
		return fmt.Errorf("must be a duration such as \"250ms\" or \"2s\", got %s", quoteValue(string(b)))
	}
	*d = Duration(v)
	return nil
}

// String returns the duration in Go syntax, e.g. "1.5s".
func (d Duration) String() string { return time.Duration(d).String() }

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

// quoteValue quotes a user-supplied value for an error message, cut to a
// readable length.
func quoteValue(s string) string {
	const maxLen = 80
	if len(s) > maxLen {
		cut := maxLen
		for cut > 0 && !utf8RuneStart(s[cut]) {
			cut--
		}
		return strconv.Quote(s[:cut]) + "..."
	}
	return strconv.Quote(s)
}

func utf8RuneStart(b byte) bool { return b&0xC0 != 0x80 }

func kindName(k yaml.Kind) string {
	switch k {
	case yaml.MappingNode:
		return "mapping"
	case yaml.SequenceNode:
		return "sequence"
	case yaml.DocumentNode:
		return "document"
	case yaml.AliasNode:
		return "alias"
	default:
		return "scalar"
	}
}
