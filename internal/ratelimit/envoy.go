package ratelimit

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/seed-a88e5317/resilience-sidecar/internal/config/field"
)

// EnvoyConfig is the config file's `envoy_ratelimit` section: the
// configuration of Envoy's rate-limit service API (ShouldRateLimit), in
// envoyproxy/ratelimit's own YAML files.
type EnvoyConfig struct {
	// Files are envoyproxy/ratelimit configuration files, one domain each.
	Files []string `yaml:"files"`
	// ResponseHeaders adds X-RateLimit-Limit, X-RateLimit-Remaining and
	// X-RateLimit-Reset (of the descriptor closest to its limit) to every
	// response with a limit, as envoyproxy/ratelimit does with
	// LIMIT_RESPONSE_HEADERS_ENABLED.
	ResponseHeaders bool `yaml:"response_headers"`
}

// Validate loads every file and reports the first problem, as a
// *field.Error at files[i].
func (c EnvoyConfig) Validate() error {
	_, err := LoadEnvoy(c.Files)
	return err
}

// maxEnvoyFileBytes bounds one envoyproxy/ratelimit file.
const maxEnvoyFileBytes = 1 << 20

// EnvoyLimit is one rate_limit of an envoyproxy/ratelimit file.
type EnvoyLimit struct {
	RequestsPerUnit uint32
	Unit            string        // second, minute, hour, day, week, month, year
	Window          time.Duration // the unit's length (a month is 30 days, a year 365)
	Unlimited       bool
	Name            string   // what replaces names
	Replaces        []string // names of the limits this one replaces when both match
	ShadowMode      bool     // counted and reported, never enforced
}

// envoyUnits are the units of envoyproxy/ratelimit and their windows.
var envoyUnits = map[string]time.Duration{
	"second": time.Second, "minute": time.Minute, "hour": time.Hour, "day": 24 * time.Hour,
	"week": 7 * 24 * time.Hour, "month": 30 * 24 * time.Hour, "year": 365 * 24 * time.Hour,
}

// EnvoyUnitWindow is the window of an envoyproxy/ratelimit unit
// ("minute"), case-insensitive; false for an unknown one.
func EnvoyUnitWindow(unit string) (time.Duration, bool) {
	w, ok := envoyUnits[strings.ToLower(unit)]
	return w, ok
}

type envoyKey struct {
	key, value string
	hasValue   bool
}

// envoyNode is one level of a domain's descriptor tree.
type envoyNode struct {
	children  map[envoyKey]*envoyNode
	wildcards []envoyWildcard // values ending in *, in file order
	limit     *EnvoyLimit
}

type envoyWildcard struct {
	key, prefix string
	node        *envoyNode
}

// EnvoyDomains are the loaded domains by name.
type EnvoyDomains map[string]*envoyNode

// yaml shapes of envoyproxy/ratelimit's files.
type (
	envoyFileYAML struct {
		Domain      string                `yaml:"domain"`
		Descriptors []envoyDescriptorYAML `yaml:"descriptors"`
	}
	envoyDescriptorYAML struct {
		Key            string                `yaml:"key"`
		Value          string                `yaml:"value"`
		RateLimit      *envoyRateLimitYAML   `yaml:"rate_limit"`
		Descriptors    []envoyDescriptorYAML `yaml:"descriptors"`
		ShadowMode     bool                  `yaml:"shadow_mode"`
		DetailedMetric bool                  `yaml:"detailed_metric"` // accepted; metrics are the sidecar's own
	}
	envoyRateLimitYAML struct {
		RequestsPerUnit *uint32 `yaml:"requests_per_unit"`
		Unit            string  `yaml:"unit"`
		Unlimited       bool    `yaml:"unlimited"`
		Name            string  `yaml:"name"`
		Replaces        []struct {
			Name string `yaml:"name"`
		} `yaml:"replaces"`
	}
)

// LoadEnvoy reads envoyproxy/ratelimit files. Problems are *field.Error
// at files[i], the message naming the file and the descriptor.
func LoadEnvoy(files []string) (EnvoyDomains, error) {
	out := EnvoyDomains{}
	for i, path := range files {
		at := fmt.Sprintf("files[%d]", i)
		f, err := os.Open(path)
		if err != nil {
			return nil, field.Errorf(at, "%v", err)
		}
		data, err := io.ReadAll(io.LimitReader(f, maxEnvoyFileBytes+1))
		f.Close()
		if err == nil && len(data) > maxEnvoyFileBytes {
			err = fmt.Errorf("larger than %d bytes", maxEnvoyFileBytes)
		}
		if err == nil {
			err = ParseEnvoy(data, out)
		}
		if err != nil {
			return nil, field.Errorf(at, "%s: %v", path, err)
		}
	}
	return out, nil
}

// ParseEnvoy adds the domain of one envoyproxy/ratelimit file to into.
// Unknown keys, an empty or duplicate domain, an empty key, a duplicate
// descriptor and an unknown unit are errors, as envoyproxy/ratelimit
// makes them.
func ParseEnvoy(data []byte, into EnvoyDomains) (err error) {
	defer func() {
		if r := recover(); r != nil { // no input may crash the sidecar
			err = fmt.Errorf("YAML parser failed: %v", r)
		}
	}()
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	var root envoyFileYAML
	if err := dec.Decode(&root); err != nil && !errors.Is(err, io.EOF) {
		return err
	}
	if root.Domain == "" {
		return errors.New("the file has no domain")
	}
	if _, dup := into[root.Domain]; dup {
		return fmt.Errorf("domain %s is declared twice", field.Quote(root.Domain))
	}
	top := &envoyNode{children: map[envoyKey]*envoyNode{}}
	if err := top.load(root.Domain, root.Descriptors); err != nil {
		return err
	}
	into[root.Domain] = top
	return nil
}

func (n *envoyNode) load(path string, ds []envoyDescriptorYAML) error {
	for _, d := range ds {
		if d.Key == "" {
			return fmt.Errorf("%s: a descriptor has an empty key", path)
		}
		k := envoyKey{key: d.Key, value: d.Value, hasValue: d.Value != ""}
		p := path + "." + d.Key
		if k.hasValue {
			p += "_" + d.Value
		}
		if n.children[k] != nil {
			return fmt.Errorf("%s: duplicate descriptor", p)
		}
		c := &envoyNode{children: map[envoyKey]*envoyNode{}}
		if r := d.RateLimit; r != nil {
			l := &EnvoyLimit{Unit: strings.ToLower(r.Unit), Unlimited: r.Unlimited, Name: r.Name, ShadowMode: d.ShadowMode}
			for _, x := range r.Replaces {
				if x.Name == "" {
					return fmt.Errorf("%s: replaces needs names", p)
				}
				l.Replaces = append(l.Replaces, x.Name)
			}
			if !r.Unlimited {
				w, ok := EnvoyUnitWindow(r.Unit)
				if !ok {
					return fmt.Errorf("%s: invalid rate limit unit %s (want second, minute, hour, day, week, month or year)", p, field.Quote(r.Unit))
				}
				if r.RequestsPerUnit == nil {
					return fmt.Errorf("%s: rate_limit needs requests_per_unit", p)
				}
				l.Window, l.RequestsPerUnit = w, *r.RequestsPerUnit
			} else if r.RequestsPerUnit != nil || r.Unit != "" {
				return fmt.Errorf("%s: an unlimited rate_limit has no unit or requests_per_unit", p)
			}
			c.limit = l
		}
		if err := c.load(p, d.Descriptors); err != nil {
			return err
		}
		n.children[k] = c
		if prefix, ok := strings.CutSuffix(d.Value, "*"); ok {
			n.wildcards = append(n.wildcards, envoyWildcard{key: d.Key, prefix: prefix, node: c})
		}
	}
	return nil
}

// EnvoyEntry is one entry of a request's descriptor.
type EnvoyEntry struct{ Key, Value string }

// lookup is the limit of entries in domain d, as envoyproxy/ratelimit
// finds it: at each level the entry's key and value, then a value
// matching a trailing-* wildcard, then the key alone; the limit applies
// only when the descriptor ends at a node that has one.
func (d EnvoyDomains) lookup(domain string, entries []EnvoyEntry) *EnvoyLimit {
	n := d[domain]
	var found *EnvoyLimit
	for i, e := range entries {
		if n == nil {
			break
		}
		next := n.children[envoyKey{e.Key, e.Value, true}]
		for _, w := range n.wildcards {
			if next == nil && w.key == e.Key && strings.HasPrefix(e.Value, w.prefix) {
				next = w.node
			}
		}
		if next == nil {
			next = n.children[envoyKey{key: e.Key}]
		}
		if next != nil && next.limit != nil && i == len(entries)-1 {
			found = next.limit
		}
		n = next
	}
	return found
}

// counterKey names a descriptor's counter: its entries, each quoted.
func counterKey(entries []EnvoyEntry) string {
	var b strings.Builder
	for _, e := range entries {
		b.WriteString(strconv.Quote(e.Key))
		b.WriteByte('=')
		b.WriteString(strconv.Quote(e.Value))
		b.WriteByte(';')
	}
	return b.String()
}

// EnvoyDescriptor is one descriptor of a ShouldRateLimit request.
type EnvoyDescriptor struct {
	Entries []EnvoyEntry
	// Override, when set, is the request's own limit for the descriptor
	// (RequestsPerUnit, Unit, Window), used instead of the file's.
	Override *EnvoyLimit
	// Hits is the descriptor's hits_addend, -1 when unset (the request's
	// applies).
	Hits int64
}

// EnvoyStatus is the answer for one descriptor.
type EnvoyStatus struct {
	// Limit is the limit that applied; nil when none did (no match, an
	// unknown domain, an unlimited or replaced limit).
	Limit *EnvoyLimit
	// OverLimit is set when the descriptor is over its limit and not in
	// shadow mode.
	OverLimit bool
	// ShadowOver is set when a shadow-mode limit was exceeded: allowed,
	// reported here.
	ShadowOver bool
	Remaining  int64
	ResetAfter time.Duration
}

// ShouldRateLimit answers Envoy's rate-limit request for domain: each
// descriptor's limit is looked up in the loaded files (a limit replaced by
// another matching one is skipped), and hits (0 means 1) are counted in a
// fixed window of the limit's unit, aligned to the Unix epoch, in the
// store. An unknown domain or a descriptor without a limit is OK. A store
// error is returned (Envoy's failure_mode_deny then decides).
func (s *Service) ShouldRateLimit(ctx context.Context, domain string, descs []EnvoyDescriptor, hits uint32) ([]EnvoyStatus, error) {
	limits := make([]*EnvoyLimit, len(descs))
	replaced := map[string]bool{}
	for i, d := range descs {
		limits[i] = d.Override
		if limits[i] == nil {
			limits[i] = s.envoy.lookup(domain, d.Entries)
		}
		if limits[i] != nil {
			for _, name := range limits[i].Replaces {
				replaced[name] = true
			}
		}
	}
	out := make([]EnvoyStatus, len(descs))
	for i, d := range descs {
		l := limits[i]
		if l == nil || l.Unlimited || l.Name != "" && replaced[l.Name] {
			continue
		}
		cost := int64(max(hits, 1))
		if d.Hits >= 0 {
			cost = d.Hits
		}
		lim := Limiter{Algorithm: FixedWindow, Limit: int64(l.RequestsPerUnit), Window: l.Window, MaxCost: math.MaxInt64}
		r, err := s.check(ctx, "envoy/"+domain, counterKey(d.Entries), lim, cost)
		if err != nil {
			return nil, err
		}
		st := EnvoyStatus{Limit: l, Remaining: max(r.Remaining, 0), ResetAfter: r.ResetAfter}
		if !r.Allowed {
			st.Remaining, st.ResetAfter = 0, max(r.ResetAfter, r.RetryAfter)
			if l.ShadowMode {
				st.ShadowOver = true
				s.log.InfoContext(ctx, "rate limit exceeded in shadow mode: allowed", "domain", domain, "descriptor", counterKey(d.Entries))
			} else {
				st.OverLimit = true
			}
		}
		out[i] = st
	}
	return out, nil
}

// sortedDomains lists the loaded domains, for the log.
func (d EnvoyDomains) sortedDomains() []string {
	names := make([]string, 0, len(d))
	for n := range d {
		names = append(names, n)
	}
	slices.Sort(names)
	return names
}
