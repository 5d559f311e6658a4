package config

import (
	"fmt"
	"math"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"gopkg.in/yaml.v3"

	"github.com/seed-a88e5317/resilience-sidecar/internal/breaker"
	"github.com/seed-a88e5317/resilience-sidecar/internal/upstream"
)

// BreakerPolicy is one entry of the file's `breakers` section, with every
// default filled in. The bounds are internal/breaker's. The entry named
// "default" is the policy of the breakers the file does not declare.
type BreakerPolicy struct {
	// Scope is "local" (default) or "shared".
	Scope string
	// ConsecutiveFailures trips after this many failures in a row; 0 is
	// off. Default 5 when neither failure_rate nor slow_call_rate is set,
	// else 0.
	ConsecutiveFailures int
	// FailureRate in (0,1] trips on failures/calls over Window once
	// MinCalls calls were seen; 0 is off.
	FailureRate float64
	// Window is the sliding window of the rates (1s-1h, default 1m).
	Window time.Duration
	// MinCalls (1-1000000, default 10).
	MinCalls int
	// SlowCallDuration and SlowCallRate go together; 0 is off.
	SlowCallDuration time.Duration
	SlowCallRate     float64
	// OpenDuration (100ms-24h, default 30s).
	OpenDuration time.Duration
	// HalfOpenMaxCalls (1-1000, default 1).
	HalfOpenMaxCalls int
	// MinReporters (1-1000, default 1; above 1 only with scope shared).
	MinReporters int
}

// Upstream is one entry of the file's `upstreams` section, with every
// default filled in. The bounds are internal/upstream's.
type Upstream struct {
	// URL is the base URL (http or https, no credentials, query or
	// fragment); calls stay under it.
	URL string
	// Timeout bounds one attempt (1ms-5m, default 10s).
	Timeout time.Duration
	// Breaker names the upstream's breaker: the upstream's own name by
	// default, else a breaker declared under `breakers`.
	Breaker string
	Retry   Retry
	// MaxBodyBytes bounds request and response bodies (1-67108864,
	// default 4194304; a response must also fit max_message_bytes).
	MaxBodyBytes int64
	// MaxConnections bounds the pool to the upstream (1-10000, default 100).
	MaxConnections int
	// CompensationRetry is how a saga compensation on the upstream is
	// retried, each try being one call with Retry: max_attempts 1-1000
	// (default 10), initial_backoff 1ms-1h (default 1s), max_backoff
	// initial-1h (default 1m).
	CompensationRetry Retry
}

// Retry is an upstream's retry policy.
type Retry struct {
	// MaxAttempts counts the first try (1-10, default 3).
	MaxAttempts int
	// InitialBackoff (1ms-5m, default 100ms) and MaxBackoff (initial-5m,
	// default 2s) bound the full-jitter backoff.
	InitialBackoff, MaxBackoff time.Duration
}

// maxNameBytes bounds breaker and upstream names, like every name of the API.
const maxNameBytes = 512

var breakerKeys = []string{"consecutive_failures", "failure_rate", "half_open_max_calls", "min_calls", "min_reporters",
	"open_duration", "scope", "slow_call_duration", "slow_call_rate", "window"}

var upstreamKeys = []string{"breaker", "compensation_retry", "max_body_bytes", "max_connections", "retry", "timeout", "url"}

var retryKeys = []string{"initial_backoff", "max_attempts", "max_backoff"}

// section reads one mapping of settings, naming errors by field prefix.
type section struct {
	path   string // config file
	prefix string // e.g. "breakers.payments"
}

func (s section) err(key string, line int, format string, args ...any) *FieldError {
	field := s.prefix
	if key != "" {
		field += "." + key
	}
	return &FieldError{Field: field, Msg: fmt.Sprintf(format, args...) + fmt.Sprintf(" (from %s line %d)", s.path, line)}
}

// entries returns the key -> value pairs of a mapping node, refusing
// unknown and duplicate keys and non-scalar values (except the keys in
// nested). A null node has no entries.
func (s section) entries(n *yaml.Node, known []string, nested ...string) (map[string]*yaml.Node, error) {
	n = resolve(n)
	if isNull(n) {
		return map[string]*yaml.Node{}, nil
	}
	if n.Kind != yaml.MappingNode {
		return nil, s.err("", n.Line, "must be a mapping of settings, got a YAML %s", kindName(n.Kind))
	}
	out := map[string]*yaml.Node{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], resolve(n.Content[i+1])
		if k.Kind != yaml.ScalarNode {
			return nil, s.err("", k.Line, "keys must be plain names, got a YAML %s", kindName(k.Kind))
		}
		if !slices.Contains(known, k.Value) {
			return nil, s.err(fieldName(k.Value), k.Line, "unknown key (known keys: %s)", strings.Join(known, ", "))
		}
		if _, dup := out[k.Value]; dup {
			return nil, s.err(k.Value, k.Line, "duplicate key")
		}
		if isNull(v) {
			continue
		}
		if v.Kind != yaml.ScalarNode && !slices.Contains(nested, k.Value) {
			return nil, s.err(k.Value, v.Line, "must be a single value, got a YAML %s", kindName(v.Kind))
		}
		out[k.Value] = v
	}
	return out, nil
}

func (s section) int(m map[string]*yaml.Node, key string, def, lo, hi int) (int, error) {
	v, ok := m[key]
	if !ok {
		return def, nil
	}
	n, err := strconv.ParseInt(v.Value, 10, 64)
	if err != nil {
		return 0, s.err(key, v.Line, "must be a whole number, got %s", quoteValue(v.Value))
	}
	if n < int64(lo) || n > int64(hi) {
		return 0, s.err(key, v.Line, "must be between %d and %d, got %s", lo, hi, v.Value)
	}
	return int(n), nil
}

// rate reads a number in (0,1]; absent is 0 (off).
func (s section) rate(m map[string]*yaml.Node, key string) (float64, error) {
	v, ok := m[key]
	if !ok {
		return 0, nil
	}
	f, err := strconv.ParseFloat(v.Value, 64)
	if err != nil || math.IsNaN(f) || math.IsInf(f, 0) {
		return 0, s.err(key, v.Line, "must be a number in (0,1], got %s", quoteValue(v.Value))
	}
	if !(f > 0 && f <= 1) {
		return 0, s.err(key, v.Line, "must be in (0,1], got %s", v.Value)
	}
	return f, nil
}

func (s section) duration(m map[string]*yaml.Node, key string, def, lo, hi time.Duration) (time.Duration, error) {
	v, ok := m[key]
	if !ok {
		return def, nil
	}
	var d Duration
	if err := d.UnmarshalText([]byte(v.Value)); err != nil {
		return 0, s.err(key, v.Line, "%v", err)
	}
	if time.Duration(d) < lo || time.Duration(d) > hi {
		return 0, s.err(key, v.Line, "must be between %v and %v, got %v", lo, hi, time.Duration(d))
	}
	return time.Duration(d), nil
}

// checkName checks a breaker or upstream name: 1-512 bytes of UTF-8
// without control characters, as the API requires of names.
func checkName(path, sectionName, name string, line int) error {
	if name == "" || len(name) > maxNameBytes || !utf8.ValidString(name) || strings.ContainsFunc(name, unicode.IsControl) {
		return &FieldError{Field: sectionName, Msg: fmt.Sprintf("name %s must be 1-%d bytes of UTF-8 without control characters (from %s line %d)",
			quoteValue(name), maxNameBytes, path, line)}
	}
	return nil
}

// parseBreakers types and validates the `breakers` section. A policy that
// cannot trip or never closes is an error.
func parseBreakers(path string, raw map[string]yaml.Node) (map[string]BreakerPolicy, error) {
	if raw == nil {
		return nil, nil
	}
	out := make(map[string]BreakerPolicy, len(raw))
	for _, name := range sortedKeys(raw) {
		n := raw[name]
		if err := checkName(path, "breakers", name, n.Line); err != nil {
			return nil, err
		}
		s := section{path: path, prefix: "breakers." + fieldName(name)}
		m, err := s.entries(&n, breakerKeys)
		if err != nil {
			return nil, err
		}
		var p BreakerPolicy
		p.Scope = "local"
		if v, ok := m["scope"]; ok {
			if err := checkOneOf(v.Value, "local", "shared"); err != nil {
				return nil, s.err("scope", v.Line, "%v", err)
			}
			p.Scope = v.Value
		}
		if p.FailureRate, err = s.rate(m, "failure_rate"); err != nil {
			return nil, err
		}
		if p.SlowCallRate, err = s.rate(m, "slow_call_rate"); err != nil {
			return nil, err
		}
		defCF := 0
		if p.FailureRate == 0 && p.SlowCallRate == 0 {
			defCF = breaker.DefaultConsecutiveFailures
		}
		if p.ConsecutiveFailures, err = s.int(m, "consecutive_failures", defCF, 0, breaker.MaxCount); err != nil {
			return nil, err
		}
		if p.Window, err = s.duration(m, "window", breaker.DefaultWindow, breaker.MinWindow, breaker.MaxWindow); err != nil {
			return nil, err
		}
		if p.MinCalls, err = s.int(m, "min_calls", breaker.DefaultMinCalls, 1, breaker.MaxCount); err != nil {
			return nil, err
		}
		if p.SlowCallDuration, err = s.duration(m, "slow_call_duration", 0, breaker.MinSlowCallDuration, breaker.MaxSlowCallDuration); err != nil {
			return nil, err
		}
		if p.OpenDuration, err = s.duration(m, "open_duration", breaker.DefaultOpenDuration, breaker.MinOpenDuration, breaker.MaxOpenDuration); err != nil {
			return nil, err
		}
		if p.HalfOpenMaxCalls, err = s.int(m, "half_open_max_calls", breaker.DefaultHalfOpenMaxCalls, 1, breaker.MaxHalfOpenMaxCalls); err != nil {
			return nil, err
		}
		if p.MinReporters, err = s.int(m, "min_reporters", 1, 1, breaker.MaxMinReporters); err != nil {
			return nil, err
		}
		switch {
		case p.SlowCallRate != 0 && p.SlowCallDuration == 0:
			return nil, s.err("slow_call_rate", m["slow_call_rate"].Line, "needs slow_call_duration: without it no call is slow and this condition cannot trip")
		case p.SlowCallDuration != 0 && p.SlowCallRate == 0:
			return nil, s.err("slow_call_duration", m["slow_call_duration"].Line, "needs slow_call_rate: without it slow calls cannot trip the breaker")
		case p.MinReporters > 1 && p.Scope != "shared":
			return nil, s.err("min_reporters", m["min_reporters"].Line, "above 1 needs scope shared: a local breaker has one reporter and could never trip")
		case p.ConsecutiveFailures == 0 && p.FailureRate == 0 && p.SlowCallRate == 0:
			return nil, s.err("", n.Line, "cannot trip: consecutive_failures is 0 and neither failure_rate nor slow_call_rate is set")
		}
		// The breaker package has the last word on what can trip and close.
		if err := p.Policy().Validate(); err != nil {
			return nil, s.err("", n.Line, "%s", strings.TrimPrefix(err.Error(), "breaker: "))
		}
		out[name] = p
	}
	return out, nil
}

// Policy returns p for internal/breaker.
func (p BreakerPolicy) Policy() breaker.Policy {
	scope := breaker.Local
	if p.Scope == "shared" {
		scope = breaker.Shared
	}
	return breaker.Policy{
		Scope: scope, ConsecutiveFailures: p.ConsecutiveFailures, FailureRate: p.FailureRate, Window: p.Window,
		MinCalls: p.MinCalls, SlowCallDuration: p.SlowCallDuration, SlowCallRate: p.SlowCallRate,
		OpenDuration: p.OpenDuration, HalfOpenMaxCalls: p.HalfOpenMaxCalls, MinReporters: p.MinReporters,
	}
}

// parseUpstreams types and validates the `upstreams` section. A breaker
// named explicitly must be declared under `breakers`.
func parseUpstreams(path string, raw map[string]yaml.Node, breakers map[string]BreakerPolicy) (map[string]Upstream, error) {
	if raw == nil {
		return nil, nil
	}
	out := make(map[string]Upstream, len(raw))
	for _, name := range sortedKeys(raw) {
		n := raw[name]
		if err := checkName(path, "upstreams", name, n.Line); err != nil {
			return nil, err
		}
		s := section{path: path, prefix: "upstreams." + fieldName(name)}
		m, err := s.entries(&n, upstreamKeys, "retry", "compensation_retry")
		if err != nil {
			return nil, err
		}
		var u Upstream
		v, ok := m["url"]
		if !ok {
			return nil, s.err("url", n.Line, "must be set: the upstream's base URL, e.g. http://127.0.0.1:8081")
		}
		if u.URL, err = checkUpstreamURL(v.Value); err != nil {
			return nil, s.err("url", v.Line, "%v", err)
		}
		if u.Timeout, err = s.duration(m, "timeout", upstream.DefaultTimeout, upstream.MinTimeout, upstream.MaxTimeout); err != nil {
			return nil, err
		}
		u.Breaker = name
		if v, ok := m["breaker"]; ok {
			if _, declared := breakers[v.Value]; !declared {
				return nil, s.err("breaker", v.Line, "breaker %s is not declared under breakers (leave breaker out to use one named after the upstream)", quoteValue(v.Value))
			}
			u.Breaker = v.Value
		}
		maxBody, err := s.int(m, "max_body_bytes", upstream.DefaultMaxBodyBytes, 1, upstream.MaxMaxBodyBytes)
		if err != nil {
			return nil, err
		}
		u.MaxBodyBytes = int64(maxBody)
		if u.MaxConnections, err = s.int(m, "max_connections", upstream.DefaultMaxConns, 1, upstream.MaxMaxConns); err != nil {
			return nil, err
		}
		rs := section{path: path, prefix: s.prefix + ".retry"}
		rm, err := rs.entries(m["retry"], retryKeys)
		if err != nil {
			return nil, err
		}
		if u.Retry.MaxAttempts, err = rs.int(rm, "max_attempts", upstream.DefaultMaxAttempts, 1, upstream.MaxMaxAttempts); err != nil {
			return nil, err
		}
		if u.Retry.InitialBackoff, err = rs.duration(rm, "initial_backoff", upstream.DefaultInitialBackoff, upstream.MinBackoff, upstream.MaxBackoff); err != nil {
			return nil, err
		}
		if u.Retry.MaxBackoff, err = rs.duration(rm, "max_backoff", max(upstream.DefaultMaxBackoff, u.Retry.InitialBackoff), u.Retry.InitialBackoff, upstream.MaxBackoff); err != nil {
			return nil, err
		}
		if u.CompensationRetry, err = parseCompensationRetry(s, m["compensation_retry"]); err != nil {
			return nil, err
		}
		out[name] = u
	}
	return out, nil
}

// checkUpstreamURL checks a base URL. Messages never quote a URL that
// may hold credentials.
func checkUpstreamURL(raw string) (string, error) {
	u, err := url.Parse(raw)
	switch {
	case err != nil:
		return "", fmt.Errorf("not a valid URL: %s", dropQuoted(err.Error()))
	case u.User != nil:
		return "", fmt.Errorf("must not contain credentials: send them as headers")
	case u.Scheme != "http" && u.Scheme != "https":
		return "", fmt.Errorf("must be an http:// or https:// URL, got %s", quoteValue(raw))
	case u.Hostname() == "":
		return "", fmt.Errorf("must name a host, got %s", quoteValue(raw))
	case u.RawQuery != "" || u.ForceQuery || u.Fragment != "" || strings.Contains(raw, "#"):
		return "", fmt.Errorf("must not have a query or fragment (the request gives the query), got %s", quoteValue(raw))
	}
	return raw, nil
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
