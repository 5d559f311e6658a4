package config

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/seed-a88e5317/resilience-sidecar/internal/config/field"
	"github.com/seed-a88e5317/resilience-sidecar/internal/redisx"
	"github.com/seed-a88e5317/resilience-sidecar/internal/saga"
)

// Bounds and defaults.
const (
	defaultListen        = "127.0.0.1:50051"
	defaultMetricsListen = "127.0.0.1:9090"
	defaultNamespace     = "default"

	minStoreTimeout    = 50 * time.Millisecond
	maxStoreTimeout    = 30 * time.Second
	minShutdownTimeout = 0
	maxShutdownTimeout = 5 * time.Minute
	minHealthInterval  = 100 * time.Millisecond
	maxHealthInterval  = time.Minute
	minMessageBytes    = 1024
	maxMessageBytes    = 64 << 20
	minResultBytes     = 1024
	minBreakers        = 1
	maxBreakers        = 1_000_000
	maxResultBytes     = 64 << 20

	maxNamespaceLen = 64
	// maxUnixPathLen is the longest socket path Linux accepts (sun_path is
	// 108 bytes including the terminating NUL).
	maxUnixPathLen = 107
	// maxTokenFileBytes bounds how much of api_token_file is read.
	maxTokenFileBytes = 64 << 10

	unixPrefix = "unix://"
	envPrefix  = "SIDECAR_"
)

// Bounds of redis_wait_replicas and redis_wait_timeout (Redis WAIT after
// the writes that hand out ownership).
const (
	minWaitReplicas = 0
	maxWaitReplicas = 16
	minWaitTimeout  = time.Millisecond
	maxWaitTimeout  = 30 * time.Second
)

// Bounds of max_offset, the tolerance of the hybrid logical clock for
// remote clocks running ahead of this one.
const (
	minMaxOffset = time.Millisecond
	maxMaxOffset = time.Minute
)

// setting describes one top-level setting: its spellings, default, parsing and validation.
type setting struct {
	key    string // YAML key; the flag is key with '-' for '_', the env var SIDECAR_<KEY>
	typ    string // value kind shown in usage
	usage  string
	def    string // default, as text; parsed with set like any other source
	inFile bool   // whether the YAML file may set it
	// set parses text into c; its error says what was expected (syntax only).
	set func(c *Config, text string) error
	// check validates the merged value; nil means no check beyond set.
	check func(c *Config) error
}

func (f setting) flagName() string { return strings.ReplaceAll(f.key, "_", "-") }
func (f setting) envName() string  { return envPrefix + strings.ToUpper(f.key) }

const configKey = "config"

// settings returns the settings in usage and validation order (redis_mode
// before redis_url, which depends on it). It returns a fresh slice on every
// call.
func settings() []setting {
	return []setting{
		{
			key: configKey, typ: "path", def: "", inFile: false,
			usage: "YAML config file (flag and environment only)",
			set:   func(c *Config, s string) error { c.ConfigFile = s; return nil },
		},
		{
			key: "listen", typ: "address", def: defaultListen, inFile: true,
			usage: "gRPC listen address: host:port or unix:///absolute/path",
			set:   func(c *Config, s string) error { c.Listen = s; return nil },
			check: func(c *Config) error { return checkListen(c.Listen) },
		},
		{
			key: "redis_mode", typ: "mode", def: string(redisx.Standalone), inFile: true,
			usage: "how redis_url is read: standalone, cluster or sentinel",
			set:   func(c *Config, s string) error { c.RedisMode = redisx.Mode(s); return nil },
			check: func(c *Config) error {
				return checkOneOf(string(c.RedisMode), string(redisx.Standalone), string(redisx.Cluster), string(redisx.Sentinel))
			},
		},
		{
			key: "redis_url", typ: "url", def: "", inFile: true,
			usage: "Redis URL, e.g. redis://user:password@host:6379/0 or rediss://...; empty runs on the embedded in-memory store",
			set:   func(c *Config, s string) error { c.RedisURL = s; return nil },
			check: checkRedisURL,
		},
		{
			key: "namespace", typ: "name", def: defaultNamespace, inFile: true,
			usage: "scope of every key; sidecars that share locks and clocks use the same one (1-64 of A-Z a-z 0-9 . _ -)",
			set:   func(c *Config, s string) error { c.Namespace = s; return nil },
			check: func(c *Config) error { return checkNamespace(c.Namespace) },
		},
		{
			key: "metrics_listen", typ: "address", def: defaultMetricsListen, inFile: true,
			usage: "host:port of the Prometheus /metrics endpoint; empty disables it",
			set:   func(c *Config, s string) error { c.MetricsListen = s; return nil },
			check: checkMetricsListen,
		},
		{
			key: "api_token_file", typ: "path", def: "", inFile: true,
			usage: "file holding the bearer token callers must present; empty disables authentication",
			set:   func(c *Config, s string) error { c.APITokenFile = s; return nil },
			check: loadToken,
		},
		{
			key: "log_level", typ: "level", def: LogInfo, inFile: true,
			usage: "debug, info, warn or error",
			set:   func(c *Config, s string) error { c.LogLevel = s; return nil },
			check: func(c *Config) error { return checkOneOf(c.LogLevel, LogDebug, LogInfo, LogWarn, LogError) },
		},
		durationField("store_timeout", "1s", minStoreTimeout, maxStoreTimeout,
			"how long one store call may take before UNAVAILABLE",
			func(c *Config) *time.Duration { return &c.StoreTimeout }),
		intField("redis_wait_replicas", "count", 0, minWaitReplicas, maxWaitReplicas,
			fmt.Sprintf("replicas that must acknowledge (Redis WAIT) a lock grant or renewal and an idempotency key's start, checkpoint or completion before it is reported; fewer in redis_wait_timeout is UNAVAILABLE, never a success (%d-%d, 0: do not wait)", minWaitReplicas, maxWaitReplicas),
			func(c *Config) *int { return &c.RedisWaitReplicas }),
		redisWaitTimeoutField(),
		{
			key: "redis_pipeline", typ: "bool", def: "true", inFile: true,
			usage: "send the Redis scripts of concurrent calls together as pipelines, which costs Redis less CPU per call; a lone call still goes out at once (true or false)",
			set: func(c *Config, s string) error {
				b, err := strconv.ParseBool(s)
				if err != nil {
					return fmt.Errorf("must be true or false, got %s", field.Quote(s))
				}
				c.RedisPipeline = b
				return nil
			},
		},
		durationField("shutdown_timeout", "10s", minShutdownTimeout, maxShutdownTimeout,
			"bound on draining in-flight calls at SIGTERM",
			func(c *Config) *time.Duration { return &c.ShutdownTimeout }),
		durationField("health_interval", "1s", minHealthInterval, maxHealthInterval,
			"how often the store is probed for the health service",
			func(c *Config) *time.Duration { return &c.HealthInterval }),
		durationField("max_offset", "500ms", minMaxOffset, maxMaxOffset,
			"how far ahead of this sidecar's clock a remote hybrid logical clock timestamp may be before UpdateHlc refuses it (CLOCK_SKEW)",
			func(c *Config) *time.Duration { return &c.MaxOffset }),
		bytesField("max_message_bytes", 4<<20, minMessageBytes, maxMessageBytes,
			fmt.Sprintf("gRPC max receive message size (%d-%d)", minMessageBytes, maxMessageBytes),
			func(c *Config) *int { return &c.MaxMessageBytes }),
		bytesField("max_result_bytes", 1<<20, minResultBytes, maxResultBytes,
			fmt.Sprintf("largest idempotency result stored, data plus metadata (%d-%d); a request carrying it must also fit max_message_bytes", minResultBytes, maxResultBytes),
			func(c *Config) *int { return &c.MaxResultBytes }),
		intField("max_breakers", "count", 10000, minBreakers, maxBreakers,
			fmt.Sprintf("most circuit breakers one sidecar tracks; idle undeclared ones are forgotten to make room (%d-%d)", minBreakers, maxBreakers),
			func(c *Config) *int { return &c.MaxBreakers }),
		durationField("saga_retention", "168h", saga.MinRetention, saga.MaxRetention,
			"how long COMPLETED and COMPENSATED sagas stay in the saga log (COMPENSATION_FAILED ones stay until resolved)",
			func(c *Config) *time.Duration { return &c.Saga.Retention }),
		durationField("saga_lease_ttl", saga.DefaultLease.String(), saga.MinLease, saga.MaxLease,
			"lease of a sidecar compensating a saga, renewed every third of it; when a sidecar dies another takes its sagas over after it",
			func(c *Config) *time.Duration { return &c.Saga.Lease }),
		durationField("saga_recovery_interval", saga.DefaultRecoveryInterval.String(), saga.MinRecoveryInterval, saga.MaxRecoveryInterval,
			"how often the recovery worker looks for timed-out sagas and sagas whose compensating sidecar died",
			func(c *Config) *time.Duration { return &c.Saga.RecoveryInterval }),
		intField("saga_max_body_bytes", "bytes", saga.DefaultMaxBodyBytes, 1, saga.MaxMaxBodyBytes,
			fmt.Sprintf("largest compensation body RecordStep accepts (it is kept in the saga log) (1-%d)", saga.MaxMaxBodyBytes),
			func(c *Config) *int { return &c.Saga.MaxBodyBytes }),
		intField("saga_max_steps", "count", saga.DefaultMaxSteps, 1, saga.MaxMaxSteps,
			fmt.Sprintf("most steps one saga may record (1-%d)", saga.MaxMaxSteps),
			func(c *Config) *int { return &c.Saga.MaxSteps }),
	}
}

// redisWaitTimeoutField is a duration setting that must also leave room for
// the write itself within store_timeout when replicas are awaited.
func redisWaitTimeoutField() setting {
	f := durationField("redis_wait_timeout", "500ms", minWaitTimeout, maxWaitTimeout,
		"how long the replicas of redis_wait_replicas have to acknowledge; below store_timeout",
		func(c *Config) *time.Duration { return &c.RedisWaitTimeout })
	bounds := f.check
	f.check = func(c *Config) error {
		if err := bounds(c); err != nil {
			return err
		}
		if c.RedisWaitReplicas > 0 && c.RedisWaitTimeout >= c.StoreTimeout {
			return fmt.Errorf("must be below store_timeout (%v) when redis_wait_replicas is set, got %v", c.StoreTimeout, c.RedisWaitTimeout)
		}
		return nil
	}
	return f
}

func durationField(key, def string, lo, hi time.Duration, usage string, ptr func(*Config) *time.Duration) setting {
	return setting{
		key: key, typ: "duration", def: def, inFile: true,
		usage: fmt.Sprintf("%s (%v-%v)", usage, lo, hi),
		set: func(c *Config, s string) error {
			d, err := parseDuration(s)
			*ptr(c) = d
			return err
		},
		check: func(c *Config) error {
			if d := *ptr(c); d < lo || d > hi {
				return fmt.Errorf("must be between %v and %v, got %v", lo, hi, d)
			}
			return nil
		},
	}
}

// intField is a whole-number setting within [lo, hi], checked as it is
// parsed.
func intField(key, typ string, def, lo, hi int, usage string, ptr func(*Config) *int) setting {
	return setting{
		key: key, typ: typ, def: strconv.Itoa(def), inFile: true, usage: usage,
		set: func(c *Config, s string) error {
			n, err := strconv.ParseInt(s, 10, 64)
			if err != nil || n < int64(lo) || n > int64(hi) {
				return fmt.Errorf("must be a whole number between %d and %d, got %s", lo, hi, field.Quote(s))
			}
			*ptr(c) = int(n)
			return nil
		},
	}
}

// bytesField is a size in bytes within [lo, hi], checked as it is parsed.
func bytesField(key string, def, lo, hi int, usage string, ptr func(*Config) *int) setting {
	return setting{
		key: key, typ: "bytes", def: strconv.Itoa(def), inFile: true, usage: usage,
		set: func(c *Config, s string) error {
			n, err := strconv.ParseInt(s, 10, 64)
			switch {
			case errors.Is(err, strconv.ErrRange):
				return fmt.Errorf("must be between %d and %d, got %s", lo, hi, field.Quote(s))
			case err != nil:
				return fmt.Errorf("must be an integer number of bytes, got %s", field.Quote(s))
			case n < int64(lo) || n > int64(hi): // before the int conversion, for 32-bit platforms
				return fmt.Errorf("must be between %d and %d, got %d", lo, hi, n)
			}
			*ptr(c) = int(n)
			return nil
		},
	}
}

func checkOneOf(v string, allowed ...string) error {
	for _, a := range allowed {
		if v == a {
			return nil
		}
	}
	return fmt.Errorf("must be one of %s, got %s", strings.Join(allowed, ", "), field.Quote(v))
}

func checkListen(s string) error {
	if s == "" {
		return errors.New("must not be empty: want host:port or unix:///absolute/path")
	}
	if strings.HasPrefix(s, "unix:") {
		p, ok := strings.CutPrefix(s, unixPrefix)
		switch {
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
	return checkHostPort(s, "host:port or unix:///absolute/path")
}

func checkMetricsListen(c *Config) error {
	if c.MetricsListen == "" {
		return nil
	}
	if err := checkHostPort(c.MetricsListen, "host:port, or empty to disable"); err != nil {
		return err
	}
	if c.MetricsListen == c.Listen && !strings.HasSuffix(c.Listen, ":0") {
		return fmt.Errorf("must differ from listen, both are %s", field.Quote(c.Listen))
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
	if host == "" {
		return nil
	}
	if _, err := netip.ParseAddr(host); err == nil {
		return nil
	}
	if !validHostname(host) {
		return fmt.Errorf("host must be an IP address or a DNS name, got %s", field.Quote(host))
	}
	return nil
}

func validHostname(h string) bool {
	if len(h) > 253 {
		return false
	}
	for _, label := range strings.Split(strings.TrimSuffix(h, "."), ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for i := 0; i < len(label); i++ {
			b := label[i]
			if !(b >= 'a' && b <= 'z' || b >= 'A' && b <= 'Z' || b >= '0' && b <= '9' || b == '-' || b == '_') {
				return false
			}
		}
	}
	return true
}

func checkNamespace(ns string) error {
	if ns == "" || len(ns) > maxNamespaceLen {
		return fmt.Errorf("must be 1-%d bytes of A-Z a-z 0-9 . _ -, got %d bytes", maxNamespaceLen, len(ns))
	}
	for i := 0; i < len(ns); i++ {
		b := ns[i]
		if !(b >= 'a' && b <= 'z' || b >= 'A' && b <= 'Z' || b >= '0' && b <= '9' || b == '.' || b == '_' || b == '-') {
			return fmt.Errorf("must be 1-%d bytes of A-Z a-z 0-9 . _ -, got %s", maxNamespaceLen, field.Quote(ns))
		}
	}
	return nil
}

// checkRedisURL checks RedisURL for RedisMode (redisx.CheckURL); empty
// means the embedded store, standalone only.
func checkRedisURL(c *Config) error {
	if c.RedisURL == "" && c.RedisMode != redisx.Standalone {
		return fmt.Errorf("must be set when redis_mode is %s (empty means the embedded in-memory store)", c.RedisMode)
	}
	if c.RedisURL == "" {
		return nil
	}
	return redisx.CheckURL(c.RedisURL, c.RedisMode)
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
	if err != nil {
		return fmt.Errorf("cannot read token: %w", err)
	}
	if len(b) > maxTokenFileBytes {
		return fmt.Errorf("token file %s is larger than %d bytes", field.Quote(c.APITokenFile), maxTokenFileBytes)
	}
	tok := strings.TrimSpace(string(b))
	if tok == "" {
		return fmt.Errorf("token file %s is empty", field.Quote(c.APITokenFile))
	}
	for i := 0; i < len(tok); i++ {
		if tok[i] <= ' ' || tok[i] >= 0x7f {
			return fmt.Errorf("token file %s must hold one token of printable ASCII without spaces", field.Quote(c.APITokenFile))
		}
	}
	c.APIToken = tok
	return nil
}
