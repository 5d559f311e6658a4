package config

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/user"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/seed-a88e5317/resilience-sidecar/internal/config/field"
	"github.com/seed-a88e5317/resilience-sidecar/internal/redisx"
	"github.com/seed-a88e5317/resilience-sidecar/internal/saga"
)

// Bounds the checks and tests share.
const (
	minStoreTimeout = 50 * time.Millisecond
	maxStoreTimeout = 30 * time.Second
	minMessageBytes = 1024
	maxMessageBytes = 64 << 20
	maxNamespaceLen = 64
	// maxUnixPathLen is the longest socket path Linux accepts (sun_path is
	// 108 bytes including the terminating NUL).
	maxUnixPathLen = 107
	// maxTokenFileBytes bounds how much of api_token_file is read.
	maxTokenFileBytes = 64 << 10

	unixPrefix = "unix://"
	configKey  = "config"
)

// setting is one top-level setting, bound to a Config.
type setting struct {
	key   string // YAML key; the flag is key with '-' for '_', the env var SIDECAR_<KEY>
	typ   string // value kind shown in usage
	def   string // default, as text; parsed by set like any other source
	usage string
	set   func(text string) error // parses text into the Config; the error says what was expected
	check func() error            // checks the merged value; nil: nothing beyond set
	value func() slog.Value       // the value, for String and LogValue
}

func (s setting) flagName() string { return strings.ReplaceAll(s.key, "_", "-") }
func (s setting) envName() string  { return "SIDECAR_" + strings.ToUpper(s.key) }

// settings returns c's top-level settings in usage and validation order:
// config first (Load reads it before the others), and each one after those
// its check depends on (redis_mode before redis_url).
func settings(c *Config) []setting {
	// Replication: how ownership writes wait for replicas (docs/topologies.md).
	waitReplicas := row(&c.RedisWaitReplicas, "redis_wait_replicas", "count|all", "0",
		"replicas that must acknowledge (Redis WAIT) a lock grant or renewal, an idempotency key's start, checkpoint or completion, a saga write and an event publish before it is reported; fewer in redis_wait_timeout is UNAVAILABLE, never a success (0-16, 0: do not wait; all: every replica the master reports online and, on Sentinel, no failover begun, which keeps them through any single failover: docs/topologies.md)",
		func(s string) (int, error) {
			if s == "all" {
				return WaitAll, nil
			}
			n, err := number(0, 16, false)(s)
			if err != nil {
				err = fmt.Errorf("must be all or a whole number between 0 and 16, got %s", field.Quote(s))
			}
			return n, err
		}, nil)
	waitMin := row(&c.RedisWaitMinReplicas, "redis_wait_min_replicas", "count", "0",
		"with redis_wait_replicas all: fewer replicas online than this refuses those writes (UNAVAILABLE) (0-16)",
		number(0, 16, false), func() error {
			if c.RedisWaitMinReplicas > 0 && c.RedisWaitReplicas != WaitAll {
				return errors.New("needs redis_wait_replicas all")
			}
			return nil
		})
	waitTimeout := dur(&c.RedisWaitTimeout, "redis_wait_timeout", "500ms", time.Millisecond, 30*time.Second,
		"how long the replicas of redis_wait_replicas have to acknowledge; below store_timeout")
	inBounds := waitTimeout.check
	waitTimeout.check = func() error {
		if err := inBounds(); err != nil || c.RedisWaitReplicas == 0 || c.RedisWaitTimeout < c.StoreTimeout {
			return err
		}
		return fmt.Errorf("must be below store_timeout (%v) when redis_wait_replicas is set, got %v", c.StoreTimeout, c.RedisWaitTimeout)
	}

	return []setting{
		row(&c.ConfigFile, configKey, "path", "", "YAML config file (flag and environment only)", text, nil),
		row(&c.Listen, "listen", "address", "127.0.0.1:50051", "gRPC listen address: host:port or unix:///absolute/path", text,
			func() error { return checkListen(c.Listen) }),
		row(&c.ListenMode, "listen_mode", "octal", "0600", "permission bits of a unix listen socket; connecting needs write permission, so 0660 lets listen_group in (0-0777)", parseMode, nil),
		row(&c.ListenGroup, "listen_group", "group", "", "group (name or id) given the unix listen socket; empty: the sidecar's own", text,
			func() error { return checkListenGroup(c) }),
		row(&c.RedisMode, "redis_mode", "mode", string(redisx.Standalone), "how redis_url is read: standalone, cluster or sentinel", text,
			func() error { return oneOf(string(c.RedisMode), "standalone", "cluster", "sentinel") }),
		row(&c.RedisURL, "redis_url", "url", "", "Redis URL, e.g. redis://user:password@host:6379/0 or rediss://...; empty runs on the embedded in-memory store", text,
			func() error { return checkRedisURL(c) }),
		row(&c.Namespace, "namespace", "name", "default", "scope of every key; sidecars that share locks and clocks use the same one (1-64 of A-Z a-z 0-9 . _ -)", text,
			func() error { return checkNamespace(c.Namespace) }),
		row(&c.MetricsListen, "metrics_listen", "address", "127.0.0.1:9090", "host:port of the Prometheus /metrics endpoint; empty disables it", text,
			func() error {
				return checkExtraListen(c, c.MetricsListen, func(s string) error { return checkHostPort(s, "host:port, or empty to disable") })
			}),
		row(&c.HTTPListen, "http_listen", "address", "127.0.0.1:50080", "HTTP/JSON listen address for every unary RPC (docs/http.md): host:port or unix:///absolute/path; empty disables it", text,
			func() error { return checkExtraListen(c, c.HTTPListen, checkListen) }),
		row(&c.DebugListen, "debug_listen", "address", "", "host:port serving net/http/pprof under /debug/pprof/; empty (the default) disables it", text,
			func() error { return checkExtraListen(c, c.DebugListen, checkListen) }),
		row(&c.APITokenFile, "api_token_file", "path", "", "file holding the bearer token callers must present; empty disables authentication", text,
			func() error { return loadToken(c) }),
		row(&c.LogLevel, "log_level", "level", "info", "debug, info, warn or error", text,
			func() error { return oneOf(c.LogLevel, "debug", "info", "warn", "error") }),
		dur(&c.StoreTimeout, "store_timeout", "1s", minStoreTimeout, maxStoreTimeout, "how long one store call may take before UNAVAILABLE"),
		waitReplicas,
		waitMin,
		waitTimeout,
		row(&c.RedisPipeline, "redis_pipeline", "bool", "true", "send the Redis scripts of concurrent calls together as pipelines, which costs Redis less CPU per call; a lone call still goes out at once (true or false)",
			parseBool, nil),
		dur(&c.ShutdownTimeout, "shutdown_timeout", "10s", 0, 5*time.Minute, "bound on draining in-flight calls at SIGTERM"),
		dur(&c.HealthInterval, "health_interval", "1s", 100*time.Millisecond, time.Minute, "how often the store is probed for the health service"),
		dur(&c.MaxOffset, "max_offset", "500ms", time.Millisecond, time.Minute,
			"how far ahead of this sidecar's clock a remote hybrid logical clock timestamp may be before UpdateHlc refuses it (CLOCK_SKEW)"),
		row(&c.MaxMessageBytes, "max_message_bytes", "bytes", "4194304", fmt.Sprintf("gRPC max receive message size (%d-%d)", minMessageBytes, maxMessageBytes),
			number(minMessageBytes, maxMessageBytes, true), nil),
		row(&c.MaxResultBytes, "max_result_bytes", "bytes", "1048576", "largest idempotency result stored, data plus metadata (1024-67108864); a request carrying it must also fit max_message_bytes",
			number(1024, 64<<20, true), nil),
		row(&c.MaxConcurrentCalls, "max_concurrent_calls", "count", "4096", "unary calls served at once, waits excluded (max_waiters counts them); more: RESOURCE_EXHAUSTED (1-1000000)",
			number(1, 1_000_000, false), nil),
		row(&c.MaxWaiters, "max_waiters", "count", "10000", "callers waiting at once for a lock or an idempotency key (about 15 KB each) (1-1000000)",
			number(1, 1_000_000, false), nil),
		row(&c.MaxSessions, "max_sessions", "count", "10000", "open HoldLock sessions (1-1000000)", number(1, 1_000_000, false), nil),
		row(&c.MaxSubscriptions, "max_subscriptions", "count", "1000", "open Subscribe streams (1-1000000)", number(1, 1_000_000, false), nil),
		row(&c.MaxResponseBytesInFlight, "max_response_bytes_in_flight", "bytes", "33554432",
			"upstream response bytes held in memory at once, shared by every ExecuteCall and compensation; a response that does not fit is refused (1048576-4294967296)",
			number(1<<20, 4<<30, true), nil),
		row(&c.MaxBreakers, "max_breakers", "count", "10000", "most circuit breakers one sidecar tracks; idle undeclared ones are forgotten to make room (1-1000000)",
			number(1, 1_000_000, false), nil),
		dur(&c.Saga.Retention, "saga_retention", "168h", saga.MinRetention, saga.MaxRetention,
			"how long COMPLETED and COMPENSATED sagas stay in the saga log (COMPENSATION_FAILED ones stay until resolved)"),
		dur(&c.Saga.Lease, "saga_lease_ttl", saga.DefaultLease.String(), saga.MinLease, saga.MaxLease,
			"lease of a sidecar compensating a saga, renewed every third of it; when a sidecar dies another takes its sagas over after it"),
		dur(&c.Saga.RecoveryInterval, "saga_recovery_interval", saga.DefaultRecoveryInterval.String(), saga.MinRecoveryInterval, saga.MaxRecoveryInterval,
			"how often the recovery worker looks for timed-out sagas and sagas whose compensating sidecar died"),
		row(&c.Saga.MaxBodyBytes, "saga_max_body_bytes", "bytes", strconv.Itoa(saga.DefaultMaxBodyBytes),
			fmt.Sprintf("largest compensation body RecordStep accepts (it is kept in the saga log) (1-%d)", saga.MaxMaxBodyBytes),
			number(1, saga.MaxMaxBodyBytes, false), nil),
		row(&c.Saga.MaxSteps, "saga_max_steps", "count", strconv.Itoa(saga.DefaultMaxSteps), fmt.Sprintf("most steps one saga may record (1-%d)", saga.MaxMaxSteps),
			number(1, saga.MaxMaxSteps, false), nil),
	}
}

// row is the setting key stored in *p, read by parse and checked by check.
func row[T any](p *T, key, typ, def, usage string, parse func(string) (T, error), check func() error) setting {
	return setting{key: key, typ: typ, def: def, usage: usage, check: check,
		set: func(s string) (err error) { *p, err = parse(s); return err },
		value: func() slog.Value {
			if d, ok := any(*p).(time.Duration); ok {
				return slog.StringValue(d.String())
			}
			return slog.AnyValue(*p)
		}}
}

// dur is a duration setting within [lo, hi].
func dur(p *time.Duration, key, def string, lo, hi time.Duration, usage string) setting {
	return row(p, key, "duration", def, fmt.Sprintf("%s (%v-%v)", usage, lo, hi), parseDuration,
		func() error { return field.Range("", *p, lo, hi) })
}

func text[T ~string](s string) (T, error) { return T(s), nil }

// parseDuration reads Go duration syntax ("250ms", "2s", "1m30s"); a bare
// number such as 5 is refused (no unit), except "0".
func parseDuration(s string) (time.Duration, error) {
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, fmt.Errorf("must be a duration such as \"250ms\" or \"2s\", got %s", field.Quote(s))
	}
	return d, nil
}

func parseBool(s string) (bool, error) {
	b, err := strconv.ParseBool(s)
	if err != nil {
		return false, fmt.Errorf("must be true or false, got %s", field.Quote(s))
	}
	return b, nil
}

// number reads a whole number within [lo, hi], its errors worded for a
// count or, with bytes, for a size.
func number(lo, hi int, bytes bool) func(string) (int, error) {
	return func(s string) (int, error) {
		n, err := strconv.ParseInt(s, 10, 64)
		switch {
		case err == nil && n >= int64(lo) && n <= int64(hi):
			return int(n), nil
		case !bytes:
			return 0, fmt.Errorf("must be a whole number between %d and %d, got %s", lo, hi, field.Quote(s))
		case err != nil && !errors.Is(err, strconv.ErrRange):
			return 0, fmt.Errorf("must be an integer number of bytes, got %s", field.Quote(s))
		}
		return 0, fmt.Errorf("must be between %d and %d, got %s", lo, hi, s) // s is a number
	}
}

func oneOf(v string, allowed ...string) error {
	if slices.Contains(allowed, v) {
		return nil
	}
	return fmt.Errorf("must be one of %s, got %s", strings.Join(allowed, ", "), field.Quote(v))
}

func checkListen(s string) error {
	p, ok := strings.CutPrefix(s, unixPrefix)
	switch {
	case s == "":
		return errors.New("must not be empty: want host:port or unix:///absolute/path")
	case !strings.HasPrefix(s, "unix:"):
		return checkHostPort(s, "host:port or unix:///absolute/path")
	case !ok || !strings.HasPrefix(p, "/"):
		return fmt.Errorf("a unix socket must be written unix:///absolute/path, got %s", field.Quote(s))
	case strings.HasSuffix(p, "/"):
		return fmt.Errorf("unix socket path must name a file, not a directory, got %s", field.Quote(s))
	case strings.ContainsRune(p, 0):
		return fmt.Errorf("unix socket path must not contain NUL, got %s", field.Quote(s))
	case len(p) > maxUnixPathLen:
		return fmt.Errorf("unix socket path must be at most %d bytes, got %d", maxUnixPathLen, len(p))
	}
	return nil
}

// parseMode reads octal permission bits: 0660, 660 or 0o660.
func parseMode(s string) (os.FileMode, error) {
	n, err := strconv.ParseUint(strings.TrimPrefix(s, "0o"), 8, 32)
	if err != nil || n > 0o777 {
		return 0, fmt.Errorf("must be octal permission bits 0-0777 such as 0600 or 0660, got %s", field.Quote(s))
	}
	return os.FileMode(n), nil
}

// checkListenGroup: a group needs a unix socket, and must exist.
func checkListenGroup(c *Config) error {
	switch {
	case c.ListenGroup == "":
		return nil
	case !strings.HasPrefix(c.Listen, unixPrefix):
		return fmt.Errorf("needs a unix listen socket (unix:///path), listen is %s", field.Quote(c.Listen))
	}
	if id, err := strconv.Atoi(c.ListenGroup); err == nil && id >= 0 {
		return nil
	}
	if _, err := user.LookupGroup(c.ListenGroup); err != nil {
		return fmt.Errorf("no group %s on this host", field.Quote(c.ListenGroup))
	}
	return nil
}

// checkExtraListen checks the address s of an extra listener: empty
// disables it; else it must pass check and differ from listen (unless its
// port is 0, which picks a free one).
func checkExtraListen(c *Config, s string, check func(string) error) error {
	if s == "" {
		return nil
	}
	if err := check(s); err != nil {
		return err
	}
	if s == c.Listen && !strings.HasSuffix(s, ":0") {
		return fmt.Errorf("must differ from listen, both are %s", field.Quote(s))
	}
	return nil
}

// checkHostPort accepts host:port with a decimal port 0-65535 and a host
// that is empty (all interfaces), an IP address or a DNS name.
func checkHostPort(s, want string) error {
	host, port, err := net.SplitHostPort(s)
	if err != nil || strings.Contains(s, "/") {
		return fmt.Errorf("must be %s, got %s", want, field.Quote(s))
	}
	if _, err := strconv.ParseUint(port, 10, 16); err != nil {
		return fmt.Errorf("port must be a number 0-65535, got %s", field.Quote(port))
	}
	if _, err := netip.ParseAddr(host); err != nil && host != "" && (len(host) > 253 || !dnsName.MatchString(host)) {
		return fmt.Errorf("host must be an IP address or a DNS name, got %s", field.Quote(host))
	}
	return nil
}

// dnsName matches a DNS name: labels of 1-63 letters, digits, '-' (not
// first or last) and '_', each followed by a dot but the last.
var dnsName = regexp.MustCompile(`^([A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?\.)*[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?\.?$`)

var namespaceChars = regexp.MustCompile(`^[A-Za-z0-9._-]*$`)

func checkNamespace(ns string) error {
	if ns == "" || len(ns) > maxNamespaceLen {
		return fmt.Errorf("must be 1-%d bytes of A-Z a-z 0-9 . _ -, got %d bytes", maxNamespaceLen, len(ns))
	}
	if !namespaceChars.MatchString(ns) {
		return fmt.Errorf("must be 1-%d bytes of A-Z a-z 0-9 . _ -, got %s", maxNamespaceLen, field.Quote(ns))
	}
	return nil
}

// checkRedisURL checks RedisURL for RedisMode (redisx.CheckURL); empty
// means the embedded store, standalone only.
func checkRedisURL(c *Config) error {
	switch {
	case c.RedisURL != "":
		return redisx.CheckURL(c.RedisURL, c.RedisMode)
	case c.RedisMode != redisx.Standalone:
		return fmt.Errorf("must be set when redis_mode is %s (empty means the embedded in-memory store)", c.RedisMode)
	}
	return nil
}

// loadToken reads APITokenFile into APIToken. Messages never contain the
// file's contents.
func loadToken(c *Config) error {
	c.APIToken = ""
	if c.APITokenFile == "" {
		return nil
	}
	f, err := os.Open(c.APITokenFile)
	if err != nil {
		return fmt.Errorf("cannot read token: %w", err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxTokenFileBytes+1))
	tok, name := strings.TrimSpace(string(b)), field.Quote(c.APITokenFile)
	switch {
	case err != nil:
		return fmt.Errorf("cannot read token: %w", err)
	case len(b) > maxTokenFileBytes:
		return fmt.Errorf("token file %s is larger than %d bytes", name, maxTokenFileBytes)
	case tok == "":
		return fmt.Errorf("token file %s is empty", name)
	case strings.ContainsFunc(tok, func(r rune) bool { return r <= ' ' || r >= 0x7f }):
		return fmt.Errorf("token file %s must hold one token of printable ASCII without spaces", name)
	}
	c.APIToken = tok
	return nil
}
