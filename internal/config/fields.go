package config

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
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

// field describes one setting: its spellings, default, parsing and validation.
type field struct {
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

func (f field) flagName() string { return strings.ReplaceAll(f.key, "_", "-") }
func (f field) envName() string  { return envPrefix + strings.ToUpper(f.key) }

const configKey = "config"

// fields returns the settings in usage and validation order (redis_mode
// before redis_url, which depends on it). It returns a fresh slice on every
// call.
func fields() []field {
	return append([]field{
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
			key: "redis_mode", typ: "mode", def: string(RedisStandalone), inFile: true,
			usage: "how redis_url is read: standalone, cluster or sentinel",
			set:   func(c *Config, s string) error { c.RedisMode = RedisMode(s); return nil },
			check: func(c *Config) error {
				return checkOneOf(string(c.RedisMode), string(RedisStandalone), string(RedisCluster), string(RedisSentinel))
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
		{
			key: "redis_wait_replicas", typ: "count", def: "0", inFile: true,
			usage: fmt.Sprintf("replicas that must acknowledge (Redis WAIT) a lock grant or renewal and an idempotency key's start, checkpoint or completion before it is reported; fewer in redis_wait_timeout is UNAVAILABLE, never a success (%d-%d, 0: do not wait)", minWaitReplicas, maxWaitReplicas),
			set: func(c *Config, s string) error {
				n, err := strconv.ParseInt(s, 10, 64)
				if err != nil || n < minWaitReplicas || n > maxWaitReplicas {
					return fmt.Errorf("must be a whole number between %d and %d, got %s", minWaitReplicas, maxWaitReplicas, quoteValue(s))
				}
				c.RedisWaitReplicas = int(n)
				return nil
			},
		},
		redisWaitTimeoutField(),
		redisPipelineField(),
		durationField("shutdown_timeout", "10s", minShutdownTimeout, maxShutdownTimeout,
			"bound on draining in-flight calls at SIGTERM",
			func(c *Config) *time.Duration { return &c.ShutdownTimeout }),
		durationField("health_interval", "1s", minHealthInterval, maxHealthInterval,
			"how often the store is probed for the health service",
			func(c *Config) *time.Duration { return &c.HealthInterval }),
		durationField("max_offset", "500ms", minMaxOffset, maxMaxOffset,
			"how far ahead of this sidecar's clock a remote hybrid logical clock timestamp may be before UpdateHlc refuses it (CLOCK_SKEW)",
			func(c *Config) *time.Duration { return &c.MaxOffset }),
		{
			key: "max_message_bytes", typ: "bytes", def: strconv.Itoa(4 << 20), inFile: true,
			usage: fmt.Sprintf("gRPC max receive message size (%d-%d)", minMessageBytes, maxMessageBytes),
			set: func(c *Config, s string) error {
				n, err := strconv.ParseInt(s, 10, 64)
				if err != nil {
					if errors.Is(err, strconv.ErrRange) {
						return fmt.Errorf("must be between %d and %d, got %s", minMessageBytes, maxMessageBytes, quoteValue(s))
					}
					return fmt.Errorf("must be an integer number of bytes, got %s", quoteValue(s))
				}
				if n < minMessageBytes || n > maxMessageBytes {
					// Checked here too so an out-of-range int64 never
					// reaches an int on 32-bit platforms.
					return fmt.Errorf("must be between %d and %d, got %d", minMessageBytes, maxMessageBytes, n)
				}
				c.MaxMessageBytes = int(n)
				return nil
			},
		},
		{
			key: "max_result_bytes", typ: "bytes", def: strconv.Itoa(1 << 20), inFile: true,
			usage: fmt.Sprintf("largest idempotency result stored, data plus metadata (%d-%d); a request carrying it must also fit max_message_bytes", minResultBytes, maxResultBytes),
			set: func(c *Config, s string) error {
				n, err := strconv.ParseInt(s, 10, 64)
				if err != nil {
					if errors.Is(err, strconv.ErrRange) {
						return fmt.Errorf("must be between %d and %d, got %s", minResultBytes, maxResultBytes, quoteValue(s))
					}
					return fmt.Errorf("must be an integer number of bytes, got %s", quoteValue(s))
				}
				if n < minResultBytes || n > maxResultBytes {
					return fmt.Errorf("must be between %d and %d, got %d", minResultBytes, maxResultBytes, n)
				}
				c.MaxResultBytes = int(n)
				return nil
			},
		},
		{
			key: "max_breakers", typ: "count", def: "10000", inFile: true,
			usage: fmt.Sprintf("most circuit breakers one sidecar tracks; idle undeclared ones are forgotten to make room (%d-%d)", minBreakers, maxBreakers),
			set: func(c *Config, s string) error {
				n, err := strconv.ParseInt(s, 10, 64)
				if err != nil || n < minBreakers || n > maxBreakers {
					return fmt.Errorf("must be a whole number between %d and %d, got %s", minBreakers, maxBreakers, quoteValue(s))
				}
				c.MaxBreakers = int(n)
				return nil
			},
		},
	}, sagaFields()...)
}

// redisWaitTimeoutField is a duration field that must also leave room for
// the write itself within store_timeout when replicas are awaited.
func redisWaitTimeoutField() field {
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

func durationField(key, def string, lo, hi time.Duration, usage string, ptr func(*Config) *time.Duration) field {
	return field{
		key: key, typ: "duration", def: def, inFile: true,
		usage: fmt.Sprintf("%s (%v-%v)", usage, lo, hi),
		set: func(c *Config, s string) error {
			var d Duration
			if err := d.UnmarshalText([]byte(s)); err != nil {
				return err
			}
			*ptr(c) = time.Duration(d)
			return nil
		},
		check: func(c *Config) error {
			if d := *ptr(c); d < lo || d > hi {
				return fmt.Errorf("must be between %v and %v, got %v", lo, hi, d)
			}
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
	return fmt.Errorf("must be one of %s, got %s", strings.Join(allowed, ", "), quoteValue(v))
}

func checkListen(s string) error {
	if s == "" {
		return errors.New("must not be empty: want host:port or unix:///absolute/path")
	}
	if strings.HasPrefix(s, "unix:") {
		p, ok := strings.CutPrefix(s, unixPrefix)
		switch {
		case !ok || !strings.HasPrefix(p, "/"):
			return fmt.Errorf("a unix socket must be written unix:///absolute/path, got %s", quoteValue(s))
		case strings.HasSuffix(p, "/"):
			return fmt.Errorf("unix socket path must name a file, not a directory, got %s", quoteValue(s))
		case strings.ContainsRune(p, 0):
			return fmt.Errorf("unix socket path must not contain NUL, got %s", quoteValue(s))
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
		return fmt.Errorf("must differ from listen, both are %s", quoteValue(c.Listen))
	}
	return nil
}

// checkHostPort accepts host:port with a decimal port 0-65535 and a host
// that is empty (all interfaces), an IP address or a DNS name.
func checkHostPort(s, want string) error {
	host, port, err := net.SplitHostPort(s)
	if err != nil || strings.Contains(s, "/") {
		return fmt.Errorf("must be %s, got %s", want, quoteValue(s))
	}
	if _, err := strconv.ParseUint(port, 10, 16); err != nil {
		return fmt.Errorf("port must be a number 0-65535, got %s", quoteValue(port))
	}
	if host == "" {
		return nil
	}
	if _, err := netip.ParseAddr(host); err == nil {
		return nil
	}
	if !validHostname(host) {
		return fmt.Errorf("host must be an IP address or a DNS name, got %s", quoteValue(host))
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
			return fmt.Errorf("must be 1-%d bytes of A-Z a-z 0-9 . _ -, got %s", maxNamespaceLen, quoteValue(ns))
		}
	}
	return nil
}

// checkRedisURL parses RedisURL the way go-redis will for RedisMode.
// Messages never contain the URL's password: a URL that net/url cannot
// parse is described without any quoted part of it, and the secrets of one
// that parses are scrubbed from go-redis's message.
func checkRedisURL(c *Config) error {
	if c.RedisURL == "" {
		if c.RedisMode != RedisStandalone {
			return fmt.Errorf("must be set when redis_mode is %s (empty means the embedded in-memory store)", c.RedisMode)
		}
		return nil
	}
	var err error
	switch c.RedisMode {
	case RedisStandalone:
		_, err = redis.ParseURL(c.RedisURL)
	case RedisCluster:
		_, err = redis.ParseClusterURL(c.RedisURL)
	case RedisSentinel:
		var o *redis.FailoverOptions
		if o, err = redis.ParseFailoverURL(c.RedisURL); err == nil && o.MasterName == "" {
			return errors.New("redis_mode sentinel needs the master name in the URL: ?master_name=...")
		}
	}
	if err == nil {
		return nil
	}
	var msg string
	if ue := (*url.Error)(nil); errors.As(err, &ue) {
		msg = "malformed URL: " + dropQuoted(ue.Err.Error())
	} else {
		msg = err.Error()
		for _, s := range urlSecrets(c.RedisURL) {
			msg = strings.ReplaceAll(msg, s, redacted)
		}
	}
	// The cause is deliberately not wrapped: it may quote the password.
	return fmt.Errorf("not a valid %s Redis URL: %s", c.RedisMode, msg)
}

// dropQuoted removes every "..." part of s (net/url quotes pieces of the
// URL, which may be pieces of the password).
func dropQuoted(s string) string {
	var b strings.Builder
	in := false
	for _, r := range s {
		if r == '"' {
			in = !in
			continue
		}
		if !in {
			b.WriteRune(r)
		}
	}
	return strings.Join(strings.Fields(b.String()), " ")
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
		return fmt.Errorf("token file %s is larger than %d bytes", quoteValue(c.APITokenFile), maxTokenFileBytes)
	}
	tok := strings.TrimSpace(string(b))
	if tok == "" {
		return fmt.Errorf("token file %s is empty", quoteValue(c.APITokenFile))
	}
	for i := 0; i < len(tok); i++ {
		if tok[i] <= ' ' || tok[i] >= 0x7f {
			return fmt.Errorf("token file %s must hold one token of printable ASCII without spaces", quoteValue(c.APITokenFile))
		}
	}
	c.APIToken = tok
	return nil
}
