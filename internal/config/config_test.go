package config

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/seed-a88e5317/resilience-sidecar/internal/breaker"
	"github.com/seed-a88e5317/resilience-sidecar/internal/redisx"
	"github.com/seed-a88e5317/resilience-sidecar/internal/saga"
	"github.com/seed-a88e5317/resilience-sidecar/internal/upstream"
)

// env is a fake environment.
type env map[string]string

func (e env) get(k string) string { return e[k] }

// writeFile writes content to name in dir and returns its path.
func writeFile(t testing.TB, dir, name, content string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// load runs Load with a YAML file (skipped when yamlText is "") plus args and env.
func load(t *testing.T, yamlText string, e env, args ...string) (*Config, error) {
	t.Helper()
	if yamlText != "" {
		p := writeFile(t, t.TempDir(), "sidecar.yaml", yamlText)
		args = append([]string{"--config", p}, args...)
	}
	return Load(args, e.get, nil)
}

// mustFieldError checks err is a one-line *FieldError for field whose text
// contains every want.
func mustFieldError(t *testing.T, err error, field string, want ...string) {
	t.Helper()
	var fe *FieldError
	if !errors.As(err, &fe) {
		t.Fatalf("err = %v (%T), want *FieldError", err, err)
	}
	if fe.Field != field {
		t.Errorf("Field = %q, want %q (err: %v)", fe.Field, field, err)
	}
	msg := err.Error()
	t.Log(msg)
	if strings.ContainsAny(msg, "\n\r") {
		t.Errorf("error is not one line: %q", msg)
	}
	if !strings.HasPrefix(msg, "config: "+field+": ") {
		t.Errorf("error %q does not start with %q", msg, "config: "+field+": ")
	}
	for _, w := range want {
		if !strings.Contains(msg, w) {
			t.Errorf("error %q does not contain %q", msg, w)
		}
	}
}

func TestDefaults(t *testing.T) {
	c, err := Load(nil, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	want := Config{
		Listen:           "127.0.0.1:50051",
		RedisMode:        redisx.Standalone,
		Namespace:        "default",
		MetricsListen:    "127.0.0.1:9090",
		HTTPListen:       "127.0.0.1:50080",
		LogLevel:         "info",
		StoreTimeout:     time.Second,
		RedisWaitTimeout: 500 * time.Millisecond,
		RedisPipeline:    true,
		ShutdownTimeout:  10 * time.Second,
		HealthInterval:   time.Second,
		MaxOffset:        500 * time.Millisecond,
		MaxMessageBytes:  4194304,
		MaxResultBytes:   1048576,
		MaxBreakers:      10000,

		ListenMode:               0o600,
		MaxConcurrentCalls:       4096,
		MaxWaiters:               10000,
		MaxSessions:              10000,
		MaxSubscriptions:         1000,
		MaxResponseBytesInFlight: 32 << 20,

		Saga: saga.Options{
			Retention:        7 * 24 * time.Hour,
			Lease:            15 * time.Second,
			RecoveryInterval: 5 * time.Second,
			MaxBodyBytes:     65536,
			MaxSteps:         1000,
		},
	}
	if fmt.Sprintf("%#v", *c) != fmt.Sprintf("%#v", want) || c.APIToken != "" || c.APITokenFile != "" ||
		c.RedisURL != "" || c.ConfigFile != "" || c.Breakers != nil || c.Upstreams != nil {
		t.Errorf("defaults:\n got %s\nwant %s", c, want)
	}
	if !c.UsesEmbeddedStore() {
		t.Error("UsesEmbeddedStore() = false with no redis_url")
	}
	if n, a := c.ListenNetworkAddress(); n != "tcp" || a != "127.0.0.1:50051" {
		t.Errorf("ListenNetworkAddress() = %q, %q", n, a)
	}
	if c.SlogLevel() != slog.LevelInfo {
		t.Errorf("SlogLevel() = %v", c.SlogLevel())
	}
}

// TestPrecedence checks flag > env > file > default for every setting, and
// that an explicit flag wins even when it equals the default.
func TestPrecedence(t *testing.T) {
	dir := t.TempDir()
	tok := func(name, v string) string { return writeFile(t, dir, name, v+"\n") }
	tests := []struct {
		key                  string
		def, file, env, flag string
		get                  func(*Config) string
	}{
		{key: "listen", def: "127.0.0.1:50051", file: "127.0.0.1:1", env: "[::1]:2", flag: "unix:///tmp/s.sock",
			get: func(c *Config) string { return c.Listen }},
		{key: "redis_url", def: "", file: "redis://h1:6379/0", env: "redis://h2:6379/1", flag: "rediss://h3:6380/2",
			get: func(c *Config) string { return c.RedisURL }},
		{key: "redis_mode", def: "standalone", file: "cluster", env: "sentinel", flag: "cluster",
			get: func(c *Config) string { return string(c.RedisMode) }},
		{key: "namespace", def: "default", file: "orders", env: "billing", flag: "ship.v2_x-y",
			get: func(c *Config) string { return c.Namespace }},
		{key: "metrics_listen", def: "127.0.0.1:9090", file: ":9091", env: "localhost:9092", flag: "",
			get: func(c *Config) string { return c.MetricsListen }},
		{key: "api_token_file", def: "", file: tok("t1", "file-token"), env: tok("t2", "env-token"), flag: tok("t3", "flag-token"),
			get: func(c *Config) string { return c.APITokenFile + "|" + c.APIToken }},
		{key: "log_level", def: "info", file: "debug", env: "warn", flag: "error",
			get: func(c *Config) string { return c.LogLevel }},
		{key: "store_timeout", def: "1s", file: "2s", env: "3s", flag: "250ms",
			get: func(c *Config) string { return c.StoreTimeout.String() }},
		{key: "redis_wait_replicas", def: "0", file: "1", env: "2", flag: "16",
			get: func(c *Config) string { return strconv.Itoa(c.RedisWaitReplicas) }},
		{key: "redis_wait_timeout", def: "500ms", file: "1ms", env: "100ms", flag: "999ms",
			get: func(c *Config) string { return c.RedisWaitTimeout.String() }},
		{key: "redis_pipeline", def: "true", file: "false", env: "true", flag: "false",
			get: func(c *Config) string { return strconv.FormatBool(c.RedisPipeline) }},
		{key: "shutdown_timeout", def: "10s", file: "0s", env: "1m0s", flag: "5m0s",
			get: func(c *Config) string { return c.ShutdownTimeout.String() }},
		{key: "health_interval", def: "1s", file: "100ms", env: "2s", flag: "1m0s",
			get: func(c *Config) string { return c.HealthInterval.String() }},
		{key: "max_offset", def: "500ms", file: "1ms", env: "2s", flag: "1m0s",
			get: func(c *Config) string { return c.MaxOffset.String() }},
		{key: "max_message_bytes", def: "4194304", file: "1024", env: "2048", flag: "67108864",
			get: func(c *Config) string { return strconv.Itoa(c.MaxMessageBytes) }},
		{key: "max_result_bytes", def: "1048576", file: "1024", env: "2048", flag: "67108864",
			get: func(c *Config) string { return strconv.Itoa(c.MaxResultBytes) }},
		{key: "max_breakers", def: "10000", file: "1", env: "500", flag: "1000000",
			get: func(c *Config) string { return strconv.Itoa(c.MaxBreakers) }},
	}
	for _, tc := range tests {
		flagName := "--" + strings.ReplaceAll(tc.key, "_", "-")
		envName := "SIDECAR_" + strings.ToUpper(tc.key)
		// expected value of get() for a raw setting
		norm := func(v string) string {
			if tc.key == "api_token_file" {
				if v == "" {
					return "|"
				}
				b, _ := os.ReadFile(v)
				return v + "|" + strings.TrimSpace(string(b))
			}
			return v
		}
		file := fmt.Sprintf("%s: %q\n", tc.key, tc.file)
		cases := []struct {
			name     string
			yamlText string
			e        env
			args     []string
			want     string
		}{
			{"default", "", env{}, nil, tc.def},
			{"file", file, env{}, nil, tc.file},
			{"env beats file", file, env{envName: tc.env}, nil, tc.env},
			{"flag beats env", file, env{envName: tc.env}, []string{flagName + "=" + tc.flag}, tc.flag},
			{"flag equal to default beats env", file, env{envName: tc.env}, []string{flagName + "=" + tc.def}, tc.def},
			{"env without file", "", env{envName: tc.env}, nil, tc.env},
		}
		for _, cc := range cases {
			t.Run(tc.key+"/"+cc.name, func(t *testing.T) {
				args := cc.args
				if tc.key == "redis_mode" {
					// A URL valid for the mode that should win (another setting).
					u := map[string]string{"standalone": "redis://h:6379", "cluster": "redis://h:7000?addr=h2:7000",
						"sentinel": "redis://h:26379?master_name=m"}[cc.want]
					args = append(args, "--redis-url="+u)
				}
				c, err := load(t, cc.yamlText, cc.e, args...)
				if err != nil {
					t.Fatal(err)
				}
				if got := tc.get(c); got != norm(cc.want) {
					t.Errorf("%s = %q, want %q", tc.key, got, norm(cc.want))
				}
			})
		}
	}
}

func TestConfigFileChoice(t *testing.T) {
	dir := t.TempDir()
	a := writeFile(t, dir, "a.yaml", "namespace: from-a\n")
	b := writeFile(t, dir, "b.yaml", "namespace: from-b\n")
	tests := []struct {
		name string
		e    env
		args []string
		want string
		file string
	}{
		{"env", env{"SIDECAR_CONFIG": a}, nil, "from-a", a},
		{"flag beats env", env{"SIDECAR_CONFIG": a}, []string{"--config", b}, "from-b", b},
		{"single dash flag", nil, []string{"-config=" + b}, "from-b", b},
		{"explicit empty flag disables env file", env{"SIDECAR_CONFIG": a}, []string{"--config="}, "default", ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c, err := Load(tc.args, tc.e.get, nil)
			if err != nil {
				t.Fatal(err)
			}
			if c.Namespace != tc.want || c.ConfigFile != tc.file {
				t.Errorf("namespace %q file %q, want %q %q", c.Namespace, c.ConfigFile, tc.want, tc.file)
			}
		})
	}
}

// TestBounds sets each value by flag and checks the bounds just inside and
// just outside.
func TestBounds(t *testing.T) {
	long := "/" + strings.Repeat("s", maxUnixPathLen-1)
	tests := []struct {
		key     string
		value   string
		wantErr string // "" = valid
		args    []string
	}{
		{"listen", "127.0.0.1:0", "", nil},
		{"listen", "127.0.0.1:65535", "", nil},
		{"listen", "127.0.0.1:65536", "port must be a number 0-65535", nil},
		{"listen", "127.0.0.1:-1", "port must be a number 0-65535", nil},
		{"listen", "127.0.0.1:", "port must be a number 0-65535", nil},
		{"listen", "127.0.0.1:http", "port must be a number 0-65535", nil},
		{"listen", ":50051", "", nil},
		{"listen", "[::1]:50051", "", nil},
		{"listen", "[fe80::1%eth0]:50051", "", nil},
		{"listen", "localhost:50051", "", nil},
		{"listen", "my_host.svc.cluster.local:1", "", nil},
		{"listen", "bad host:1", "host must be an IP address or a DNS name", nil},
		{"listen", "localhost", "must be host:port or unix:///absolute/path", nil},
		{"listen", "::1", "must be host:port or unix:///absolute/path", nil},
		{"listen", "", "must not be empty", nil},
		{"listen", "unix:///tmp/sidecar.sock", "", nil},
		{"listen", "unix://" + long, "", nil},
		{"listen", "unix://" + long + "x", "at most 107 bytes", nil},
		{"listen", "unix://relative/sock", "unix:///absolute/path", nil},
		{"listen", "unix:/tmp/sock", "unix:///absolute/path", nil},
		{"listen", "unix:///tmp/", "not a directory", nil},
		{"redis_mode", "standalone", "", nil},
		{"redis_mode", "cluster", "", []string{"--redis-url=redis://h:7000?addr=h2:7001"}},
		{"redis_mode", "sentinel", "", []string{"--redis-url=redis://h:26379?master_name=mymaster&addr=h2:26379"}},
		{"redis_mode", "foo", `must be one of standalone, cluster, sentinel, got "foo"`, nil},
		{"redis_mode", "Cluster", `must be one of standalone, cluster, sentinel, got "Cluster"`, nil},
		{"redis_url", "redis://localhost:6379/0", "", nil},
		{"redis_url", "rediss://user:pw@localhost:6379/3?dial_timeout=3s", "", nil},
		{"redis_url", "unix:///var/run/redis.sock?db=2", "", nil},
		{"redis_url", "localhost:6379", "not a valid standalone Redis URL", nil},
		{"redis_url", "http://localhost:6379", "invalid URL scheme", nil},
		{"redis_url", "redis://localhost:6379/x", "invalid database number", nil},
		{"redis_url", "redis://localhost:6379?addr=h2:1", "unexpected option: addr", nil},
		{"redis_url", "redis://localhost:6379?addr=h2:1", "", []string{"--redis-mode=cluster"}},
		{"redis_url", "redis://localhost:6379?bogus=1", "not a valid cluster Redis URL", []string{"--redis-mode=cluster"}},
		{"redis_url", "unix:///var/run/redis.sock", "invalid URL scheme", []string{"--redis-mode=cluster"}},
		{"redis_url", "redis://localhost:26379", "master_name", []string{"--redis-mode=sentinel"}},
		{"redis_url", "", "must be set when redis_mode is cluster", []string{"--redis-mode=cluster"}},
		{"redis_url", "", "must be set when redis_mode is sentinel", []string{"--redis-mode=sentinel"}},
		{"namespace", "a", "", nil},
		{"namespace", strings.Repeat("n", 64), "", nil},
		{"namespace", strings.Repeat("n", 65), "got 65 bytes", nil},
		{"namespace", "", "got 0 bytes", nil},
		{"namespace", "A-z.0_9", "", nil},
		{"namespace", "a{b}", `got "a{b}"`, nil},
		{"namespace", "a:b", `got "a:b"`, nil},
		{"namespace", "a b", `got "a b"`, nil},
		{"namespace", "é", `got "é"`, nil},
		{"metrics_listen", "", "", nil},
		{"metrics_listen", ":0", "", nil},
		{"metrics_listen", "0.0.0.0:65535", "", nil},
		{"metrics_listen", "0.0.0.0:65536", "port must be a number 0-65535", nil},
		{"metrics_listen", "9090", "must be host:port, or empty to disable", nil},
		{"metrics_listen", "unix:///tmp/m.sock", "must be host:port", nil},
		{"metrics_listen", "127.0.0.1:50051", "must differ from listen", nil},
		{"log_level", "debug", "", nil},
		{"log_level", "info", "", nil},
		{"log_level", "warn", "", nil},
		{"log_level", "error", "", nil},
		{"log_level", "trace", `must be one of debug, info, warn, error, got "trace"`, nil},
		{"log_level", "INFO", `got "INFO"`, nil},
		{"store_timeout", "50ms", "", nil},
		{"store_timeout", "49999999ns", "must be between 50ms and 30s, got 49.999999ms", nil},
		{"store_timeout", "10ms", "must be between 50ms and 30s, got 10ms", nil},
		{"store_timeout", "30s", "", nil},
		{"store_timeout", "30000000001ns", "must be between 50ms and 30s, got 30.000000001s", nil},
		{"store_timeout", "abc", `must be a duration such as "250ms" or "2s", got "abc"`, nil},
		{"store_timeout", "5", `must be a duration`, nil},
		{"store_timeout", "", `must be a duration`, nil},
		{"redis_wait_replicas", "0", "", nil},
		{"redis_wait_replicas", "16", "", nil},
		{"redis_wait_replicas", "17", `must be all or a whole number between 0 and 16, got "17"`, nil},
		{"redis_wait_replicas", "-1", `must be all or a whole number between 0 and 16, got "-1"`, nil},
		{"redis_wait_replicas", "one", `must be all or a whole number between 0 and 16, got "one"`, nil},
		{"redis_wait_replicas", "all", "", nil},
		{"redis_wait_replicas", "ALL", `must be all or a whole number between 0 and 16, got "ALL"`, nil},
		{"redis_wait_min_replicas", "0", "", nil},
		{"redis_wait_min_replicas", "2", "", []string{"--redis-wait-replicas=all"}},
		{"redis_wait_min_replicas", "2", "needs redis_wait_replicas all", []string{"--redis-wait-replicas=2"}},
		{"redis_wait_min_replicas", "17", `must be a whole number between 0 and 16, got "17"`, []string{"--redis-wait-replicas=all"}},
		{"redis_pipeline", "0", "", nil},
		{"redis_pipeline", "yes", `must be true or false, got "yes"`, nil},
		{"redis_wait_timeout", "1ms", "", nil},
		{"redis_wait_timeout", "0", "must be between 1ms and 30s, got 0s", nil},
		{"redis_wait_timeout", "31s", "must be between 1ms and 30s, got 31s", nil},
		{"redis_wait_timeout", "2s", "", nil}, // no replicas awaited: not tied to store_timeout
		{"redis_wait_timeout", "1s", "must be below store_timeout (1s) when redis_wait_replicas is set, got 1s", []string{"--redis-wait-replicas=1"}},
		{"redis_wait_timeout", "300ms", "", []string{"--redis-wait-replicas=1", "--store-timeout=400ms"}},
		{"redis_wait_timeout", "1s", "must be below store_timeout (1s) when redis_wait_replicas is set, got 1s", []string{"--redis-wait-replicas=all"}},
		{"shutdown_timeout", "0s", "", nil},
		{"shutdown_timeout", "0", "", nil},
		{"shutdown_timeout", "-1ns", "must be between 0s and 5m0s, got -1ns", nil},
		{"shutdown_timeout", "5m", "", nil},
		{"shutdown_timeout", "300000000001ns", "must be between 0s and 5m0s, got 5m0.000000001s", nil},
		{"health_interval", "100ms", "", nil},
		{"health_interval", "99999999ns", "must be between 100ms and 1m0s, got 99.999999ms", nil},
		{"health_interval", "1m", "", nil},
		{"health_interval", "60000000001ns", "must be between 100ms and 1m0s, got 1m0.000000001s", nil},
		{"max_offset", "1ms", "", nil},
		{"max_offset", "999us", "must be between 1ms and 1m0s, got 999µs", nil},
		{"max_offset", "0", "must be between 1ms and 1m0s, got 0s", nil},
		{"max_offset", "1m", "", nil},
		{"max_offset", "61s", "must be between 1ms and 1m0s, got 1m1s", nil},
		{"max_message_bytes", "1024", "", nil},
		{"max_message_bytes", "1023", "must be between 1024 and 67108864, got 1023", nil},
		{"max_message_bytes", "67108864", "", nil},
		{"max_message_bytes", "67108865", "must be between 1024 and 67108864, got 67108865", nil},
		{"max_message_bytes", "99999999999999999999", "must be between 1024 and 67108864", nil},
		{"max_message_bytes", "4MiB", `must be an integer number of bytes, got "4MiB"`, nil},
		{"max_message_bytes", "0x400", `must be an integer number of bytes`, nil},
		{"max_result_bytes", "1024", "", nil},
		{"max_result_bytes", "1023", "must be between 1024 and 67108864, got 1023", nil},
		{"max_result_bytes", "67108865", "must be between 1024 and 67108864, got 67108865", nil},
		{"max_result_bytes", "1MiB", `must be an integer number of bytes, got "1MiB"`, nil},
		{"max_breakers", "1", "", nil},
		{"max_breakers", "0", `must be a whole number between 1 and 1000000, got "0"`, nil},
		{"max_breakers", "1000001", `must be a whole number between 1 and 1000000, got "1000001"`, nil},
	}
	for _, tc := range tests {
		flagName := "--" + strings.ReplaceAll(tc.key, "_", "-")
		t.Run(tc.key+"="+tc.value+strings.Join(tc.args, ","), func(t *testing.T) {
			args := append([]string{flagName + "=" + tc.value}, tc.args...)
			c, err := Load(args, nil, nil)
			if tc.wantErr == "" {
				if err != nil {
					t.Fatalf("want valid, got %v", err)
				}
				return
			}
			if c != nil {
				t.Errorf("Load returned a Config with an error")
			}
			mustFieldError(t, err, tc.key, tc.wantErr, "(from "+flagName+")")
		})
	}
}

func TestErrorsNameTheSource(t *testing.T) {
	tests := []struct {
		name     string
		yamlText string
		e        env
		args     []string
		field    string
		want     []string
	}{
		{"bad env value", "", env{"SIDECAR_STORE_TIMEOUT": "abc"}, nil,
			"store_timeout", []string{`got "abc"`, "(from SIDECAR_STORE_TIMEOUT)"}},
		{"bad env int", "", env{"SIDECAR_MAX_MESSAGE_BYTES": "big"}, nil,
			"max_message_bytes", []string{"(from SIDECAR_MAX_MESSAGE_BYTES)"}},
		{"out of range env", "", env{"SIDECAR_HEALTH_INTERVAL": "1h"}, nil,
			"health_interval", []string{"got 1h0m0s", "(from SIDECAR_HEALTH_INTERVAL)"}},
		{"bad file value", "namespace: ok\nstore_timeout: 10ms\n", nil, nil,
			"store_timeout", []string{"must be between 50ms and 30s, got 10ms", "sidecar.yaml line 2)"}},
		{"malformed file value is an error even when a flag overrides it", "store_timeout: abc\n", nil, []string{"--store-timeout=2s"},
			"store_timeout", []string{`got "abc"`, "sidecar.yaml line 1"}},
		{"file mapping for a scalar", "listen: {a: 1}\n", nil, nil,
			"listen", []string{"must be a single value, got a YAML mapping"}},
		{"unknown flag", "", nil, []string{"--nope=1"}, "flags", []string{"-nope"}},
		{"flag without value", "", nil, []string{"--listen"}, "flags", []string{"-listen"}},
		{"positional argument", "", nil, []string{"--listen=:1", "extra"}, "flags", []string{`"extra"`}},
		{"missing config file", "", env{"SIDECAR_CONFIG": "/nonexistent/sidecar.yaml"}, nil,
			"config", []string{"/nonexistent/sidecar.yaml", "no such file"}},
		{"yaml syntax error", "listen: [\n", nil, nil, "config", []string{"sidecar.yaml: yaml: line"}},
		{"two documents", "listen: :1\n---\nlisten: :2\n", nil, nil, "config", []string{"second YAML document"}},
		{"top level list", "- a\n- b\n", nil, nil, "config", []string{"top level must be a mapping"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := load(t, tc.yamlText, tc.e, tc.args...)
			mustFieldError(t, err, tc.field, tc.want...)
		})
	}
}

func TestRangeOnlyCheckedOnMergedValue(t *testing.T) {
	c, err := load(t, "store_timeout: 10ms\n", env{"SIDECAR_STORE_TIMEOUT": "2s"})
	if err != nil {
		t.Fatal(err)
	}
	if c.StoreTimeout != 2*time.Second {
		t.Errorf("StoreTimeout = %v", c.StoreTimeout)
	}
}

func TestFileKeys(t *testing.T) {
	tests := []struct {
		name     string
		yamlText string
		field    string // "" = valid
		want     []string
	}{
		{"unknown key", "listen: :1\nlisten_addr: :2\n", "listen_addr", []string{"unknown key", "line 2", "known keys: api_token_file, breakers"}},
		{"kebab key suggests snake", "store-timeout: 2s\n", "store-timeout", []string{"did you mean store_timeout?"}},
		{"config key not allowed in file", "config: other.yaml\n", "config", []string{"unknown key", "--config or SIDECAR_CONFIG"}},
		{"token itself not allowed", "api_token: hunter2\n", "api_token", []string{"unknown key"}},
		{"odd key is quoted", "\"a b\\n\": 1\n", `"a b\n"`, []string{"unknown key"}},
		{"duplicate key", "namespace: a\nnamespace: b\n", "namespace", []string{"duplicate key", "line 2", "first at line 1"}},
		{"null value is absent", "namespace:\nlisten: ~\n", "", nil},
		{"empty file", "# nothing here\n", "", nil},
		{"unquoted int", "max_message_bytes: 2048\n", "", nil},
		{"anchor and alias", "namespace: &ns shop\nlisten: \"127.0.0.1:7\"\nbreakers: {a: &b {consecutive_failures: 1}, c: *b}\n", "", nil},
		{"breakers not a mapping", "breakers: [a]\n", "breakers", []string{"must be a mapping of names"}},
		{"upstreams duplicate name", "upstreams:\n  a: {}\n  a: {}\n", "upstreams", []string{`duplicate name "a"`}},
		{"null breakers", "breakers:\n", "", nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c, err := load(t, tc.yamlText, nil)
			if tc.field == "" {
				if err != nil {
					t.Fatalf("want valid, got %v", err)
				}
				if c.MaxMessageBytes == 0 {
					t.Error("zero MaxMessageBytes")
				}
				return
			}
			mustFieldError(t, err, tc.field, tc.want...)
		})
	}
}

const designExample = `listen: 127.0.0.1:50051
redis_url: redis://127.0.0.1:6379/0
namespace: orders
breakers:
  default:  {scope: local, consecutive_failures: 5, open_duration: 30s, half_open_max_calls: 1}
  payments: {scope: shared, failure_rate: 0.5, window: 20s, min_calls: 10, open_duration: 30s}
upstreams:
  payments:
    url: http://127.0.0.1:8081
    timeout: 2s
    breaker: payments
    retry: {max_attempts: 3, initial_backoff: 100ms, max_backoff: 2s}
`

func TestDesignExample(t *testing.T) {
	c, err := load(t, designExample, nil)
	if err != nil {
		t.Fatal(err)
	}
	if c.Listen != "127.0.0.1:50051" || c.RedisURL != "redis://127.0.0.1:6379/0" || c.Namespace != "orders" || c.UsesEmbeddedStore() {
		t.Errorf("got %s", c)
	}
	if len(c.Breakers) != 2 || len(c.Upstreams) != 1 {
		t.Fatalf("breakers %d upstreams %d", len(c.Breakers), len(c.Upstreams))
	}
	wantPayments := breaker.Policy{Scope: breaker.Shared, FailureRate: 0.5, Window: 20 * time.Second, MinCalls: 10,
		OpenDuration: 30 * time.Second, HalfOpenMaxCalls: 1, MinReporters: 1}
	if p := c.Breakers["payments"]; p != wantPayments {
		t.Errorf("breakers.payments = %+v, want %+v", p, wantPayments)
	}
	if p := c.Breakers["default"]; p.Scope != breaker.Local || p.ConsecutiveFailures != 5 || p.OpenDuration != 30*time.Second || p.HalfOpenMaxCalls != 1 {
		t.Errorf("breakers.default = %+v", p)
	}
	wantUp := Upstream{Config: upstream.Config{Name: "payments", URL: "http://127.0.0.1:8081", Timeout: 2 * time.Second, Breaker: "payments",
		MaxAttempts: 3, InitialBackoff: 100 * time.Millisecond, MaxBackoff: 2 * time.Second,
		MaxBodyBytes: 4 << 20, MaxConns: 100},
		CompensationRetry: saga.RetryPolicy{MaxAttempts: 10, InitialBackoff: time.Second, MaxBackoff: time.Minute}}
	if u := c.Upstreams["payments"]; u != wantUp {
		t.Errorf("upstreams.payments = %+v, want %+v", u, wantUp)
	}
}

func TestAPITokenFile(t *testing.T) {
	const secret = "s3cr3t-t0ken"
	dir := t.TempDir()
	tests := []struct {
		name    string
		content *string // nil = file missing
		wantErr string
	}{
		{"missing", nil, "no such file"},
		{"empty", ptr(""), "is empty"},
		{"whitespace only", ptr(" \n\t\n"), "is empty"},
		{"ok", ptr(secret), ""},
		{"ok trimmed", ptr("\n  " + secret + " \r\n"), ""},
		{"inner space", ptr(secret + " " + secret), "printable ASCII without spaces"},
		{"inner newline", ptr(secret + "\n" + secret), "printable ASCII without spaces"},
		{"too large", ptr(strings.Repeat("a", maxTokenFileBytes+1)), "larger than"},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := filepath.Join(dir, fmt.Sprintf("token%d", i))
			if tc.content != nil {
				writeFile(t, dir, filepath.Base(p), *tc.content)
			}
			c, err := Load([]string{"--api-token-file", p}, nil, nil)
			if tc.wantErr != "" {
				mustFieldError(t, err, "api_token_file", tc.wantErr, p)
				if strings.Contains(err.Error(), secret) {
					t.Errorf("error leaks the token: %v", err)
				}
				if tc.content == nil && !errors.Is(err, fs.ErrNotExist) {
					t.Errorf("errors.Is(err, fs.ErrNotExist) = false for %v", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if c.APIToken != secret {
				t.Errorf("APIToken = %q", c.APIToken)
			}
			var logged bytes.Buffer
			slog.New(slog.NewJSONHandler(&logged, nil)).Info("start", "config", c)
			for _, s := range []string{c.String(), fmt.Sprintf("%v %+v %#v", c, *c, *c), logged.String()} {
				if strings.Contains(s, secret) {
					t.Errorf("output leaks the token: %s", s)
				}
			}
			if !strings.Contains(c.String(), "api_token_set=true") {
				t.Errorf("String() = %s", c)
			}
		})
	}
}

func ptr(s string) *string { return &s }

func TestRedisPasswordRedacted(t *testing.T) {
	const pw = "hunter2pw"
	tests := []struct {
		name    string
		url     string
		mode    string
		wantErr string // "" = valid
	}{
		{"valid", "redis://app:" + pw + "@localhost:6379/0", "standalone", ""},
		{"valid sentinel with master password", "redis://sent:" + pw + "@h:26379/0?master_name=m&password=" + pw + "x", "sentinel", ""},
		{"bad port (net/url quotes the URL)", "redis://app:" + pw + "@localhost:port/0", "standalone", "malformed URL"},
		{"no @ so the password looks like a port", "redis://app:" + pw + "/0", "standalone", "malformed URL"},
		{"bad escape in password", "redis://app:" + pw + "%zz@localhost/0", "standalone", "malformed URL"},
		{"bad database", "redis://app:" + pw + "@localhost:6379/" + pw, "standalone", "invalid database number"},
		{"unknown option", "redis://app:" + pw + "@localhost:6379/0?" + pw + "=1", "standalone", "unexpected option"},
		{"cluster addr", "redis://app:" + pw + "@localhost:6379?addr=" + pw, "cluster", "unable to parse addr"},
		{"sentinel bad option", "redis://:" + pw + "@h:26379?master_name=m&password=" + pw + "&bogus=1", "sentinel", "unexpected option: bogus"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c, err := Load([]string{"--redis-mode", tc.mode}, env{"SIDECAR_REDIS_URL": tc.url}.get, nil)
			if tc.wantErr != "" {
				mustFieldError(t, err, "redis_url", tc.wantErr, "(from SIDECAR_REDIS_URL)")
				if strings.Contains(err.Error(), pw) {
					t.Errorf("error leaks the password: %v", err)
				}
				for u := errors.Unwrap(err); u != nil; u = errors.Unwrap(u) {
					if strings.Contains(u.Error(), pw) {
						t.Errorf("wrapped error leaks the password: %v", u)
					}
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if c.RedisURL != tc.url {
				t.Errorf("RedisURL = %q, want the URL unchanged", c.RedisURL)
			}
			var logged bytes.Buffer
			slog.New(slog.NewTextHandler(&logged, nil)).Info("start", "config", c)
			for _, s := range []string{c.String(), fmt.Sprintf("%v %+v %#v", c, *c, *c), logged.String()} {
				if strings.Contains(s, pw) {
					t.Errorf("output leaks the password: %s", s)
				}
				if !strings.Contains(s, "xxxxx") {
					t.Errorf("output has no redaction marker: %s", s)
				}
			}
		})
	}
}

func TestRedactURL(t *testing.T) {
	tests := []struct{ in, want string }{
		{"", ""},
		{"redis://localhost:6379/0", "redis://localhost:6379/0"},
		{"redis://user@localhost:6379", "redis://user@localhost:6379"},
		{"redis://user:pw@localhost:6379/0", "redis://user:xxxxx@localhost:6379/0"},
		{"redis://:pw@h?master_name=m&password=pw2", "redis://:xxxxx@h?master_name=m&password=xxxxx"},
		{"redis://u:pw@h:port", "<unparsable URL, redacted>"},
	}
	for _, tc := range tests {
		if got := RedactURL(tc.in); got != tc.want {
			t.Errorf("RedactURL(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

func TestUnixListen(t *testing.T) {
	c, err := Load([]string{"--listen", "unix:///run/sidecar/grpc.sock"}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if n, a := c.ListenNetworkAddress(); n != "unix" || a != "/run/sidecar/grpc.sock" {
		t.Errorf("ListenNetworkAddress() = %q, %q", n, a)
	}
	c, err = Load(nil, env{"SIDECAR_LISTEN": "[::1]:7000"}.get, nil)
	if err != nil {
		t.Fatal(err)
	}
	if n, a := c.ListenNetworkAddress(); n != "tcp" || a != "[::1]:7000" {
		t.Errorf("ListenNetworkAddress() = %q, %q", n, a)
	}
}

func TestSlogLevel(t *testing.T) {
	for lvl, want := range map[string]slog.Level{
		"debug": slog.LevelDebug, "info": slog.LevelInfo, "warn": slog.LevelWarn, "error": slog.LevelError,
	} {
		c, err := Load([]string{"--log-level", lvl}, nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		if c.SlogLevel() != want {
			t.Errorf("%s: SlogLevel() = %v", lvl, c.SlogLevel())
		}
	}
}

func TestHelp(t *testing.T) {
	for _, arg := range []string{"-h", "--help", "-help"} {
		t.Run(arg, func(t *testing.T) {
			var out bytes.Buffer
			c, err := Load([]string{"--namespace=x", arg}, env{"SIDECAR_STORE_TIMEOUT": "bad"}.get, &out)
			if !errors.Is(err, flag.ErrHelp) || c != nil {
				t.Fatalf("Load(%s) = %v, %v; want nil, flag.ErrHelp", arg, c, err)
			}
			for _, want := range []string{"--listen address", "SIDECAR_LISTEN", `default "127.0.0.1:50051"`, "--store-timeout duration", "--config path", "SIDECAR_CONFIG"} {
				if !strings.Contains(out.String(), want) {
					t.Errorf("usage lacks %q:\n%s", want, out.String())
				}
			}
		})
	}
}

func TestFieldErrorOneLine(t *testing.T) {
	e := &FieldError{Field: "a\nb", Msg: "x\ry\u2028z"}
	if got := e.Error(); got != `config: a\nb: x\ry\u2028z` {
		t.Errorf("Error() = %q", got)
	}
}

// FuzzLoadYAML feeds arbitrary bytes as the config file: Load must not
// panic, and must return either a valid Config or a one-line *FieldError.
func FuzzLoadYAML(f *testing.F) {
	f.Add([]byte(designExample))
	// One file, rewritten per input: a fuzz target runs one input at a time
	// per process.
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, data []byte) {
		p := writeFile(t, dir, "fuzz.yaml", string(data))
		c, err := Load([]string{"--config", p}, nil, nil)
		if err != nil {
			var fe *FieldError
			if !errors.As(err, &fe) {
				t.Fatalf("err %v is %T, want *FieldError", err, err)
			}
			if msg := err.Error(); strings.ContainsAny(msg, "\n\r") || !strings.HasPrefix(msg, "config: ") {
				t.Fatalf("bad error line %q", msg)
			}
			return
		}
		if c.StoreTimeout < minStoreTimeout || c.StoreTimeout > maxStoreTimeout ||
			c.MaxMessageBytes < minMessageBytes || c.MaxMessageBytes > maxMessageBytes ||
			checkNamespace(c.Namespace) != nil || checkListen(c.Listen) != nil {
			t.Fatalf("Load accepted an invalid config: %s", c)
		}
		_ = c.String()
	})
}
