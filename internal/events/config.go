package events

import (
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"time"

	"github.com/seed-a88e5317/resilience-sidecar/internal/config/field"
	"github.com/seed-a88e5317/resilience-sidecar/internal/metrics"
	"github.com/seed-a88e5317/resilience-sidecar/internal/upstream"
)

// Bounds of the settings the config file gives.
const (
	MaxMaxPayloadBytes = 16 << 20
	MaxMaxLen          = 1_000_000_000
	MinDedupRetention  = time.Second
	MaxDedupRetention  = 30 * 24 * time.Hour
	MaxPushConcurrency = 256
)

// Config is the config file's `events` section: the Options of the
// service and its push subscriptions, each started with StartPush. The
// yaml tags are the section's keys; a list tagged item is a list of that
// item (and a map so tagged may also be written as a list of its names).
type Config struct {
	Options `yaml:",inline"`
	// Push are the push subscriptions (defaults: see WithDefaults).
	Push []PushConfig `yaml:"push" item:"push subscription"`
}

// Options configure a Service. Zero (or negative) values get the defaults
// noted (WithDefaults); the bounds are those the config file allows.
type Options struct {
	// MaxPayloadBytes bounds payload plus headers (DefaultMaxPayloadBytes;
	// 1-16 MiB).
	MaxPayloadBytes int `yaml:"max_payload_bytes"`
	// MaxLen bounds each topic's log, approximately on Redis (MAXLEN ~);
	// older events are dropped, delivered or not (DefaultMaxLen; 1-1e9).
	MaxLen int64 `yaml:"max_len"`
	// DedupRetention is how long idempotency keys are remembered
	// (DefaultDedupRetention; 1s-720h).
	DedupRetention time.Duration `yaml:"dedup_retention"`
	// Topics, when not empty, are the only topics accepted (with their
	// dead-letter topics), by name.
	Topics map[string]TopicConfig `yaml:"topics" item:"topic"`
	// Visibility and MaxDeliveries are the subscription defaults
	// (DefaultVisibility, 100ms-12h; DefaultMaxDeliveries, 1-1000).
	Visibility    time.Duration `yaml:"visibility_timeout"`
	MaxDeliveries int           `yaml:"max_deliveries"`
	// PollInterval bounds each wait for events (DefaultPollInterval).
	PollInterval time.Duration    `yaml:"-"`
	Log          *slog.Logger     `yaml:"-"`
	Metrics      *metrics.Metrics `yaml:"-"`
}

// TopicConfig is a declared topic.
type TopicConfig struct {
	// MaxLen bounds the topic's log (Options.MaxLen when 0; 1-1e9).
	MaxLen int64 `yaml:"max_len"`
}

// PushConfig is one push subscription: the sidecar consumes Topic as
// consumer Name of Group and sends each event to an upstream.
type PushConfig struct {
	Name  string `yaml:"name"`
	Topic string `yaml:"topic"`
	// Group is the consumer group (Name when empty, in a Config).
	Group string `yaml:"group"`
	// Upstream, Method (POST when empty; POST, PUT or PATCH) and Path ("/"
	// when empty) name the request.
	Upstream string `yaml:"upstream"`
	Method   string `yaml:"method"`
	Path     string `yaml:"path"`
	// MaxDeliveries and Visibility as for a subscription (service defaults
	// when 0). Visibility also bounds each push, retries included.
	MaxDeliveries int           `yaml:"max_deliveries"`
	Visibility    time.Duration `yaml:"visibility_timeout"`
	// Concurrency is how many events are pushed at once (1 when 0; 1-256;
	// 1 keeps the group's order).
	Concurrency int `yaml:"concurrency"`
	// Start is where a new group starts (start_from: earliest or latest).
	Start StartFrom `yaml:"start_from"`
}

// WithDefaults returns o with every zero or negative setting set to its
// default.
func (o Options) WithDefaults() Options {
	if o.MaxPayloadBytes <= 0 {
		o.MaxPayloadBytes = DefaultMaxPayloadBytes
	}
	if o.MaxLen <= 0 {
		o.MaxLen = DefaultMaxLen
	}
	if o.DedupRetention <= 0 {
		o.DedupRetention = DefaultDedupRetention
	}
	if o.Visibility <= 0 {
		o.Visibility = DefaultVisibility
	}
	if o.MaxDeliveries <= 0 {
		o.MaxDeliveries = DefaultMaxDeliveries
	}
	if o.PollInterval <= 0 {
		o.PollInterval = DefaultPollInterval
	}
	return o
}

// WithDefaults returns c with the defaults of its Options and, in every
// push subscription: Group Name, Path "/", Method POST (and upper-cased),
// MaxDeliveries and Visibility the section's, Concurrency 1.
func (c Config) WithDefaults() Config {
	c.Options = c.Options.WithDefaults()
	c.Push = slices.Clone(c.Push)
	for i := range c.Push {
		p := &c.Push[i]
		if p.Group == "" {
			p.Group = p.Name
		}
		if p.Path == "" {
			p.Path = "/"
		}
		if p.Method = strings.ToUpper(p.Method); p.Method == "" {
			p.Method = "POST"
		}
		if p.MaxDeliveries == 0 {
			p.MaxDeliveries = c.MaxDeliveries
		}
		if p.Visibility == 0 {
			p.Visibility = c.Visibility
		}
		if p.Concurrency == 0 {
			p.Concurrency = 1
		}
	}
	return c
}

// Validate reports the first problem of c as it is (zero settings are not
// defaulted: validate c.WithDefaults() for that), as a *field.Error whose
// path is the setting's key ("push[0].topic", "topics.orders.max_len").
// The upstreams of push subscriptions are not checked: the caller knows
// them.
func (c Config) Validate() error {
	return c.ValidateFile(func(string) bool { return false })
}

// ValidateFile is Validate for a section read from a config file; written
// reports whether the file wrote out the setting at a path. A topic's
// max_len written as 0 is refused: 0 means "the section's", which the
// file says by leaving the key out.
func (c Config) ValidateFile(written func(path string) bool) error {
	for _, err := range []error{
		field.Range("max_payload_bytes", int64(c.MaxPayloadBytes), 1, MaxMaxPayloadBytes),
		field.Range("max_len", c.MaxLen, 1, MaxMaxLen),
		field.Range("dedup_retention", c.DedupRetention, MinDedupRetention, MaxDedupRetention),
		field.Range("visibility_timeout", c.Visibility, MinVisibility, MaxVisibility),
		field.Range("max_deliveries", int64(c.MaxDeliveries), 1, MaxMaxDeliveries),
	} {
		if err != nil {
			return err
		}
	}
	names := make([]string, 0, len(c.Topics))
	for name := range c.Topics {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		path := field.Join("topics", field.Key(name))
		if p, dead := ValidTopicName(name); p != "" {
			return field.Errorf(path, "topic name %s %s", field.Quote(name), p)
		} else if dead {
			return field.Errorf(path, "declare %s, not its dead-letter topic (declared with it)", field.Quote(strings.TrimSuffix(name, DeadSuffix)))
		}
		if n := c.Topics[name].MaxLen; n != 0 || written(field.Join(path, "max_len")) {
			if err := field.Range(field.Join(path, "max_len"), n, 1, MaxMaxLen); err != nil {
				return err
			}
		}
	}
	seen := map[string]bool{}
	for i, p := range c.Push {
		if err := c.checkPush(p, seen); err != nil {
			return field.Within(fmt.Sprintf("push[%d]", i), err)
		}
	}
	return nil
}

// checkPush checks one push subscription; seen holds the names before it.
func (c Config) checkPush(p PushConfig, seen map[string]bool) error {
	if msg := ValidName(p.Name); msg != "" {
		return field.Errorf("name", "%s (group and consumer name rules)", msg)
	}
	if seen[p.Name] {
		return field.Errorf("name", "duplicate push subscription %s", field.Quote(p.Name))
	}
	seen[p.Name] = true
	if msg := ValidName(p.Group); msg != "" {
		return field.Errorf("group", "%s", msg)
	}
	if msg, _ := ValidTopicName(p.Topic); msg != "" {
		return field.Errorf("topic", "%s", msg)
	}
	if base := strings.TrimSuffix(p.Topic, DeadSuffix); len(c.Topics) > 0 {
		if _, ok := c.Topics[base]; !ok {
			return field.Errorf("topic", "topic %s is not declared under events.topics", field.Quote(p.Topic))
		}
	}
	if !strings.HasPrefix(p.Path, "/") {
		return field.Errorf("path", "must start with '/', got %s", field.Quote(p.Path))
	}
	if err := upstream.CheckPath(p.Path); err != nil {
		var re *upstream.RequestError
		if errors.As(err, &re) {
			return field.Errorf("path", "%s, got %s", re.Msg, field.Quote(p.Path))
		}
		return field.Errorf("path", "%v", err)
	}
	switch {
	case p.Method != "POST" && p.Method != "PUT" && p.Method != "PATCH":
		return field.Errorf("method", "must be POST, PUT or PATCH, got %s", field.Quote(p.Method))
	case p.MaxDeliveries < 1 || p.MaxDeliveries > MaxMaxDeliveries:
		return field.Errorf("max_deliveries", "must be between 1 and %d, got %d", MaxMaxDeliveries, p.MaxDeliveries)
	case p.Visibility < MinVisibility || p.Visibility > MaxVisibility:
		return field.Errorf("visibility_timeout", "must be between %v and %v, got %v", MinVisibility, MaxVisibility, p.Visibility)
	case p.Concurrency < 1 || p.Concurrency > MaxPushConcurrency:
		return field.Errorf("concurrency", "must be between 1 and %d, got %d", MaxPushConcurrency, p.Concurrency)
	}
	return nil
}

// UnmarshalText reads a start position as the config file writes it:
// earliest or latest.
func (s *StartFrom) UnmarshalText(b []byte) error {
	switch string(b) {
	case "earliest":
		*s = Earliest
	case "latest":
		*s = Latest
	default:
		return fmt.Errorf("must be earliest or latest, got %s", field.Quote(string(b)))
	}
	return nil
}
