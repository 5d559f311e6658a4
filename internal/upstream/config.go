package upstream

import (
	"fmt"
	"net/url"
	"strings"
	"time"

	"github.com/seed-a88e5317/resilience-sidecar/internal/config/field"
)

// Defaults and bounds of an upstream's settings.
const (
	DefaultTimeout        = 10 * time.Second
	MinTimeout            = time.Millisecond
	MaxTimeout            = 5 * time.Minute
	DefaultMaxAttempts    = 3
	MaxMaxAttempts        = 10
	DefaultInitialBackoff = 100 * time.Millisecond
	DefaultMaxBackoff     = 2 * time.Second
	MinBackoff            = time.Millisecond
	MaxBackoff            = 5 * time.Minute
	DefaultMaxBodyBytes   = 4 << 20
	MaxMaxBodyBytes       = 64 << 20
	DefaultMaxConns       = 100
	MaxMaxConns           = 10_000
)

// Config is one upstream. Zero values get the defaults noted (WithDefaults).
// The yaml tags are the keys of one entry of the config file's `upstreams`
// section, whose name is Name; a dotted tag is a key of a nested mapping
// (retry: {max_attempts: 3}).
type Config struct {
	// Name is the upstream's name, which requests give; required.
	Name string `yaml:"-"`
	// URL is the base URL: http or https, a host, an optional path prefix;
	// no credentials, query or fragment. Calls stay under it. Required.
	URL string `yaml:"url"`
	// Timeout bounds one attempt (DefaultTimeout; 1ms-5m).
	Timeout time.Duration `yaml:"timeout"`
	// Breaker names the upstream's circuit breaker (default: Name).
	Breaker string `yaml:"breaker"`
	// MaxAttempts counts the first try (DefaultMaxAttempts; 1-10).
	MaxAttempts int `yaml:"retry.max_attempts"`
	// InitialBackoff and MaxBackoff shape the retry delay: attempt n waits
	// a uniform random time in [0, min(MaxBackoff, InitialBackoff*2^(n-1))]
	// (DefaultInitialBackoff, 1ms-5m; DefaultMaxBackoff or InitialBackoff
	// if longer, InitialBackoff-5m).
	InitialBackoff time.Duration `yaml:"retry.initial_backoff"`
	MaxBackoff     time.Duration `yaml:"retry.max_backoff"`
	// MaxBodyBytes bounds request and response bodies
	// (DefaultMaxBodyBytes; 1-64 MiB).
	MaxBodyBytes int64 `yaml:"max_body_bytes"`
	// MaxConns bounds the connections to the upstream (DefaultMaxConns;
	// 1-10000).
	MaxConns int `yaml:"max_connections"`
}

// WithDefaults returns c with every zero setting set to its default.
func (c Config) WithDefaults() Config {
	def := func(v *time.Duration, d time.Duration) {
		if *v == 0 {
			*v = d
		}
	}
	def(&c.Timeout, DefaultTimeout)
	def(&c.InitialBackoff, DefaultInitialBackoff)
	def(&c.MaxBackoff, max(DefaultMaxBackoff, c.InitialBackoff))
	if c.Breaker == "" {
		c.Breaker = c.Name
	}
	if c.MaxAttempts == 0 {
		c.MaxAttempts = DefaultMaxAttempts
	}
	if c.MaxBodyBytes == 0 {
		c.MaxBodyBytes = DefaultMaxBodyBytes
	}
	if c.MaxConns == 0 {
		c.MaxConns = DefaultMaxConns
	}
	return c
}

// Validate reports the first problem of c as it is (zero fields are not
// defaulted: validate c.WithDefaults() for that), as a *field.Error whose
// path is the setting's config file key ("retry.max_attempts"). Messages
// never quote a URL that holds credentials.
func (c Config) Validate() error {
	if c.Name == "" {
		return field.Errorf("name", "must not be empty")
	}
	if c.URL == "" {
		return field.Errorf("url", "must be set: the upstream's base URL, e.g. http://127.0.0.1:8081")
	}
	if _, err := baseURL(c.URL); err != nil {
		return field.Within("url", err)
	}
	for _, err := range []error{
		field.Range("timeout", c.Timeout, MinTimeout, MaxTimeout),
		field.Range("max_body_bytes", c.MaxBodyBytes, 1, MaxMaxBodyBytes),
		field.Range("max_connections", int64(c.MaxConns), 1, MaxMaxConns),
		field.Range("retry.max_attempts", int64(c.MaxAttempts), 1, MaxMaxAttempts),
		field.Range("retry.initial_backoff", c.InitialBackoff, MinBackoff, MaxBackoff),
		field.Range("retry.max_backoff", c.MaxBackoff, c.InitialBackoff, MaxBackoff),
	} {
		if err != nil {
			return err
		}
	}
	return nil
}

// baseURL parses an upstream's base URL: absolute http or https with a
// host, no user info, query or fragment. The path, without a trailing
// slash, is a prefix every request stays under.
func baseURL(raw string) (*url.URL, error) {
	u, err := url.Parse(raw)
	switch {
	case err != nil:
		return nil, fmt.Errorf("not a valid URL: %s", field.DropQuoted(err.Error()))
	case u.User != nil:
		return nil, fmt.Errorf("must not contain credentials: send them as headers")
	case u.Scheme != "http" && u.Scheme != "https":
		return nil, fmt.Errorf("must be an http:// or https:// URL, got %s", field.Quote(raw))
	case u.Hostname() == "":
		return nil, fmt.Errorf("must name a host, got %s", field.Quote(raw))
	case u.RawQuery != "" || u.ForceQuery || u.Fragment != "" || strings.Contains(raw, "#"):
		return nil, fmt.Errorf("must not have a query or fragment (the request gives the query), got %s", field.Quote(raw))
	case u.Opaque != "":
		return nil, fmt.Errorf("must be a hierarchical URL, got %s", field.Quote(raw))
	}
	u.Path = strings.TrimSuffix(u.Path, "/")
	u.RawPath = strings.TrimSuffix(u.RawPath, "/")
	return u, nil
}
