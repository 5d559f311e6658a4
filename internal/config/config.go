// Package config builds the sidecar's Config from command-line flags,
// SIDECAR_* environment variables and an optional YAML file, with the
// precedence flag > environment > file > default, and validates it once.
//
// Each top-level setting is one row of settings(), which gives its YAML key
// (store_timeout), flag (--store-timeout) and environment variable
// (SIDECAR_STORE_TIMEOUT). The file's sections are decoded strictly into
// the capability packages' Config types by their yaml tags (file.go), and
// those types check themselves. Every error Load returns is a *FieldError:
// one line naming the setting, without the Redis password or the API token.
package config

import (
	"log/slog"
	"maps"
	"net/url"
	"os"
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
	"github.com/seed-a88e5317/resilience-sidecar/internal/ratelimit"
	"github.com/seed-a88e5317/resilience-sidecar/internal/redisx"
	"github.com/seed-a88e5317/resilience-sidecar/internal/saga"
	"github.com/seed-a88e5317/resilience-sidecar/internal/upstream"
)

// WaitAll is RedisWaitReplicas for "all": every replica the master reports
// online (docs/topologies.md).
const WaitAll = -1

// Config is the sidecar's whole configuration. A *Config returned by Load
// has passed validation: each top-level setting is within the bounds of its
// row in settings() (--help lists them), and each section the file gives
// has its defaults filled in and has passed its type's Validate.
type Config struct {
	Listen        string      // gRPC address: host:port or unix:///absolute/path (see ListenNetworkAddress)
	RedisURL      string      // read according to RedisMode; empty: the embedded in-memory store
	RedisMode     redisx.Mode // standalone, cluster or sentinel
	ConfigFile    string      // the YAML file read ("" if none); set by --config or SIDECAR_CONFIG only
	Namespace     string      // scopes every key
	MetricsListen string      // host:port of /metrics; empty disables it
	APITokenFile  string      // file holding the bearer token; empty disables authentication
	HTTPListen    string      // HTTP/JSON address, as Listen; empty disables it
	DebugListen   string      // host:port or unix:///path of net/http/pprof; empty disables it
	// APIToken is the token read from APITokenFile, trimmed of surrounding
	// whitespace; non-empty exactly when APITokenFile is set.
	APIToken          string `json:"-"`
	LogLevel          string // debug, info, warn or error (see SlogLevel)
	StoreTimeout      time.Duration
	RedisWaitReplicas int // replicas that must acknowledge (Redis WAIT) ownership writes; 0: none; WaitAll: every one online
	// RedisWaitMinReplicas, with WaitAll, is the fewest replicas online
	// those writes need.
	RedisWaitMinReplicas int
	RedisWaitTimeout     time.Duration
	RedisPipeline        bool
	ShutdownTimeout      time.Duration
	HealthInterval       time.Duration
	MaxOffset            time.Duration
	MaxMessageBytes      int
	MaxResultBytes       int
	MaxBreakers          int
	// ListenMode and ListenGroup make a unix Listen socket (server.UnixSocket).
	ListenMode  os.FileMode
	ListenGroup string
	// The admission limits (internal/admission).
	MaxConcurrentCalls       int
	MaxWaiters               int
	MaxSessions              int
	MaxSubscriptions         int
	MaxResponseBytesInFlight int
	// Saga holds the saga_* settings (Retention, Lease, RecoveryInterval,
	// MaxBodyBytes, MaxSteps); the rest of the Options are the program's.
	Saga saga.Options

	// The file's sections, each the zero value when the file leaves it out.
	Breakers  breaker.Config `yaml:"breakers"`  // by name; "default" covers the undeclared
	Upstreams Upstreams      `yaml:"upstreams"` // by name
	Events    events.Config  `yaml:"events"`
	Outbox    outbox.Options `yaml:"outbox"` // Outbox.Enabled reports whether there is a relay
	// RateLimits are the declared rate limiters by name; Take on any
	// other is LIMITER_UNKNOWN.
	RateLimits ratelimit.Config `yaml:"ratelimits"`
	// EnvoyRateLimit configures Envoy's ShouldRateLimit from
	// envoyproxy/ratelimit files.
	EnvoyRateLimit ratelimit.EnvoyConfig `yaml:"envoy_ratelimit"`
}

// Upstream is one entry of the file's `upstreams` section: the upstream
// and how saga compensations on it are retried.
type Upstream struct {
	upstream.Config   `yaml:",inline"`
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
		u.Config, u.CompensationRetry = u.Config.WithDefaults(), u.CompensationRetry.WithDefaults()
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
			return field.Within(field.Key(name)+".compensation_retry", err)
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
	return map[string]slog.Level{"debug": slog.LevelDebug, "warn": slog.LevelWarn, "error": slog.LevelError}[c.LogLevel]
}

// LogValue implements slog.LogValuer: the settings as a group, with the
// passwords of the Redis and Postgres URLs replaced by "xxxxx", and the
// API token left out (only whether one is set).
func (c Config) LogValue() slog.Value { return slog.GroupValue(c.attrs()...) }

// String returns the settings as one line of key=value pairs, redacted
// exactly as LogValue is.
func (c Config) String() string {
	var b strings.Builder
	for i, a := range c.attrs() {
		v := a.Value.String()
		if v == "" || strings.ContainsFunc(v, func(r rune) bool { return r == ' ' || r == '"' || r == '=' || !unicode.IsPrint(r) }) {
			v = strconv.Quote(v)
		}
		if i > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(a.Key + "=" + v)
	}
	return b.String()
}

// GoString makes %#v print the same redacted form as String, so that
// formatting a Config never reveals the token or the Redis password.
func (c Config) GoString() string { return "config.Config{" + c.String() + "}" }

func (c Config) attrs() []slog.Attr {
	store := "redis"
	if c.UsesEmbeddedStore() {
		store = "embedded"
	}
	out := []slog.Attr{slog.String("store", store)}
	for _, s := range settings(&c) {
		out = append(out, slog.Attr{Key: s.key, Value: s.value()})
		if s.key == "redis_url" { // the one setting that may hold a secret
			out[len(out)-1].Value = slog.StringValue(RedactURL(c.RedisURL))
		}
	}
	return append(out, slog.Bool("api_token_set", c.APIToken != ""),
		slog.Int("breakers", len(c.Breakers)), slog.Int("upstreams", len(c.Upstreams)),
		slog.Int("event_topics", len(c.Events.Topics)), slog.Int("event_push", len(c.Events.Push)),
		slog.String("outbox_postgres_url", redactPostgresURL(c.Outbox.URL)))
}

// redacted replaces secrets in logs and errors.
const redacted = "xxxxx"

// RedactURL returns rawURL with the password of its user info and the
// value of every query parameter whose name contains "password" replaced
// by "xxxxx". A URL that does not parse is returned as a fixed placeholder,
// since its secrets cannot be located; "" stays "".
func RedactURL(rawURL string) string {
	u, err := url.Parse(rawURL)
	switch {
	case rawURL == "":
		return ""
	case err != nil:
		return "<unparsable URL, redacted>"
	}
	if _, ok := u.User.Password(); ok {
		u.User = url.UserPassword(u.User.Username(), redacted)
	}
	q, changed := u.Query(), false
	for k, vs := range q {
		if strings.Contains(strings.ToLower(k), "password") {
			q[k], changed = slices.Repeat([]string{redacted}, len(vs)), true
		}
	}
	if changed {
		u.RawQuery = q.Encode()
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

// FieldError is the one kind of error Load returns (besides flag.ErrHelp).
// Error gives one line, "config: <field>: <msg>", where Field is the
// setting's YAML/flag spelling ("store_timeout", "upstreams.pay.timeout"),
// "config" for problems reading the file, or "flags" for malformed command
// lines. Msg never contains the Redis password or the API token.
type FieldError struct {
	Field string
	Msg   string
	err   error // cause, for errors.Is/As; never carries a secret
}

// Error returns "config: <field>: <msg>" on one line: line breaks and other
// control characters are escaped.
func (e *FieldError) Error() string { return "config: " + oneLine(e.Field) + ": " + oneLine(e.Msg) }

// Unwrap returns the underlying cause (e.g. an *fs.PathError), if any.
func (e *FieldError) Unwrap() error { return e.err }

// oneLine escapes control and line-separator characters so s prints as one line.
func oneLine(s string) string {
	escape := func(r rune) bool { return unicode.IsControl(r) || r == '\u2028' || r == '\u2029' }
	if !strings.ContainsFunc(s, escape) {
		return s
	}
	var b strings.Builder
	for _, r := range s {
		if q := strconv.QuoteRune(r); escape(r) {
			b.WriteString(q[1 : len(q)-1])
		} else {
			b.WriteRune(r)
		}
	}
	return b.String()
}
