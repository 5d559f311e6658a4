package config

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/seed-a88e5317/resilience-sidecar/internal/events"
)

// Events is the file's `events` section (the EventService), with every
// default filled in when the section is present. A Config without the
// section has the zero Events, which means the same defaults.
type Events struct {
	// MaxPayloadBytes bounds a published event's payload plus header names
	// and values (1-16777216, default 1048576).
	MaxPayloadBytes int
	// MaxLen bounds each topic's log, approximately on Redis (MAXLEN ~);
	// older events are dropped, delivered or not (1-1000000000, default
	// 1000000).
	MaxLen int64
	// DedupRetention is how long a publish's idempotency_key is remembered
	// (1s-720h, default 24h).
	DedupRetention time.Duration
	// VisibilityTimeout is the default of subscriptions (100ms-12h,
	// default 30s).
	VisibilityTimeout time.Duration
	// MaxDeliveries is the default of subscriptions (1-1000, default 10).
	MaxDeliveries int
	// Topics, when not empty, are the only topics accepted (with their
	// dead-letter topics), by name.
	Topics map[string]EventTopic
	// Push are the push subscriptions, delivering events to upstreams.
	Push []EventPush
}

// EventTopic is a declared topic.
type EventTopic struct {
	// MaxLen bounds the topic's log (default: events.max_len).
	MaxLen int64
}

// EventPush is one push subscription: the sidecar consumes Topic as Group
// and sends each event to Upstream.
type EventPush struct {
	// Name identifies the subscription in logs (and is its consumer name).
	Name  string
	Topic string
	// Group is the consumer group (default: Name).
	Group string
	// Upstream names an entry of `upstreams`; Path (default "/") and
	// Method (POST, PUT or PATCH; default POST) complete the request.
	Upstream, Path, Method string
	// MaxDeliveries and VisibilityTimeout: as for Subscribe (defaults: the
	// section's).
	MaxDeliveries     int
	VisibilityTimeout time.Duration
	// Concurrency is how many events are sent at once (1-256, default 1;
	// 1 keeps the group's order).
	Concurrency int
	// StartLatest makes a new group start at the end of the topic
	// (start_from: latest); default earliest.
	StartLatest bool
}

var eventsKeys = []string{"dedup_retention", "max_deliveries", "max_len", "max_payload_bytes", "push", "topics", "visibility_timeout"}

var eventTopicKeys = []string{"max_len"}

var eventPushKeys = []string{"concurrency", "group", "max_deliveries", "method", "name", "path", "start_from", "topic", "upstream", "visibility_timeout"}

const (
	maxEventPayloadBytes = 16 << 20
	maxEventMaxLen       = 1_000_000_000
	maxEventConcurrency  = 256
)

// parseEvents types and validates the `events` section; upstreams are the
// parsed `upstreams`, which push subscriptions name.
func parseEvents(path string, n *yaml.Node, upstreams map[string]Upstream) (Events, error) {
	if n == nil || isNull(n) {
		return Events{}, nil
	}
	s := section{path: path, prefix: "events"}
	m, err := s.entries(n, eventsKeys, "topics", "push")
	if err != nil {
		return Events{}, err
	}
	var e Events
	if e.MaxPayloadBytes, err = s.int(m, "max_payload_bytes", events.DefaultMaxPayloadBytes, 1, maxEventPayloadBytes); err != nil {
		return Events{}, err
	}
	maxLen, err := s.int(m, "max_len", events.DefaultMaxLen, 1, maxEventMaxLen)
	if err != nil {
		return Events{}, err
	}
	e.MaxLen = int64(maxLen)
	if e.DedupRetention, err = s.duration(m, "dedup_retention", events.DefaultDedupRetention, time.Second, 30*24*time.Hour); err != nil {
		return Events{}, err
	}
	if e.VisibilityTimeout, err = s.duration(m, "visibility_timeout", events.DefaultVisibility, events.MinVisibility, events.MaxVisibility); err != nil {
		return Events{}, err
	}
	if e.MaxDeliveries, err = s.int(m, "max_deliveries", events.DefaultMaxDeliveries, 1, events.MaxMaxDeliveries); err != nil {
		return Events{}, err
	}
	if e.Topics, err = parseEventTopics(s, m["topics"]); err != nil {
		return Events{}, err
	}
	if e.Push, err = parseEventPush(s, m["push"], e, upstreams); err != nil {
		return Events{}, err
	}
	return e, nil
}

// parseEventTopics reads `topics`: a list of names, or a mapping of names
// to settings.
func parseEventTopics(s section, n *yaml.Node) (map[string]EventTopic, error) {
	if n == nil || isNull(n) {
		return nil, nil
	}
	ts := section{path: s.path, prefix: s.prefix + ".topics"}
	out := map[string]EventTopic{}
	add := func(k *yaml.Node, v *yaml.Node) error {
		if k.Kind != yaml.ScalarNode {
			return ts.err("", k.Line, "topic names must be plain strings, got a YAML %s", kindName(k.Kind))
		}
		name := k.Value
		if p, dead := events.ValidTopicName(name); p != "" {
			return ts.err(fieldName(name), k.Line, "topic name %s %s", quoteValue(name), p)
		} else if dead {
			return ts.err(fieldName(name), k.Line, "declare %s, not its dead-letter topic (declared with it)", quoteValue(strings.TrimSuffix(name, events.DeadSuffix)))
		}
		if _, dup := out[name]; dup {
			return ts.err(fieldName(name), k.Line, "duplicate topic")
		}
		var t EventTopic
		if v != nil {
			es := section{path: s.path, prefix: ts.prefix + "." + fieldName(name)}
			m, err := es.entries(v, eventTopicKeys)
			if err != nil {
				return err
			}
			n, err := es.int(m, "max_len", 0, 1, maxEventMaxLen)
			if err != nil {
				return err
			}
			t.MaxLen = int64(n)
		}
		out[name] = t
		return nil
	}
	switch n.Kind {
	case yaml.SequenceNode:
		for _, k := range n.Content {
			if err := add(resolve(k), nil); err != nil {
				return nil, err
			}
		}
	case yaml.MappingNode:
		for i := 0; i+1 < len(n.Content); i += 2 {
			if err := add(n.Content[i], resolve(n.Content[i+1])); err != nil {
				return nil, err
			}
		}
	default:
		return nil, ts.err("", n.Line, "must be a list of topic names or a mapping of names to settings, got a YAML %s", kindName(n.Kind))
	}
	return out, nil
}

// parseEventPush reads `push`: a list of push subscriptions.
func parseEventPush(s section, n *yaml.Node, e Events, upstreams map[string]Upstream) ([]EventPush, error) {
	if n == nil || isNull(n) {
		return nil, nil
	}
	if n.Kind != yaml.SequenceNode {
		return nil, s.err("push", n.Line, "must be a list of push subscriptions, got a YAML %s", kindName(n.Kind))
	}
	var out []EventPush
	names := map[string]bool{}
	for i, item := range n.Content {
		ps := section{path: s.path, prefix: fmt.Sprintf("%s.push[%d]", s.prefix, i)}
		m, err := ps.entries(item, eventPushKeys)
		if err != nil {
			return nil, err
		}
		str := func(key, def string) string {
			if v, ok := m[key]; ok {
				return v.Value
			}
			return def
		}
		line := func(key string) int {
			if v, ok := m[key]; ok {
				return v.Line
			}
			return resolve(item).Line
		}
		p := EventPush{Name: str("name", ""), Topic: str("topic", ""), Upstream: str("upstream", ""), Path: str("path", "/"), Method: strings.ToUpper(str("method", "POST"))}
		p.Group = str("group", p.Name)
		if msg := events.ValidName(p.Name); msg != "" {
			return nil, ps.err("name", line("name"), "%s (group and consumer name rules)", msg)
		}
		if names[p.Name] {
			return nil, ps.err("name", line("name"), "duplicate push subscription %s", quoteValue(p.Name))
		}
		names[p.Name] = true
		if msg := events.ValidName(p.Group); msg != "" {
			return nil, ps.err("group", line("group"), "%s", msg)
		}
		if msg, _ := events.ValidTopicName(p.Topic); msg != "" {
			return nil, ps.err("topic", line("topic"), "%s", msg)
		}
		if base := strings.TrimSuffix(p.Topic, events.DeadSuffix); len(e.Topics) > 0 {
			if _, ok := e.Topics[base]; !ok {
				return nil, ps.err("topic", line("topic"), "topic %s is not declared under events.topics", quoteValue(p.Topic))
			}
		}
		if _, ok := upstreams[p.Upstream]; !ok {
			known := slices.Sorted(func(yield func(string) bool) {
				for k := range upstreams {
					if !yield(k) {
						return
					}
				}
			})
			return nil, ps.err("upstream", line("upstream"), "unknown upstream %s (declared: %s)", quoteValue(p.Upstream), strings.Join(known, ", "))
		}
		if !strings.HasPrefix(p.Path, "/") {
			return nil, ps.err("path", line("path"), "must start with '/', got %s", quoteValue(p.Path))
		}
		if !slices.Contains([]string{"POST", "PUT", "PATCH"}, p.Method) {
			return nil, ps.err("method", line("method"), "must be POST, PUT or PATCH, got %s", quoteValue(p.Method))
		}
		switch str("start_from", "earliest") {
		case "earliest":
		case "latest":
			p.StartLatest = true
		default:
			return nil, ps.err("start_from", line("start_from"), "must be earliest or latest, got %s", quoteValue(str("start_from", "")))
		}
		if p.MaxDeliveries, err = ps.int(m, "max_deliveries", e.MaxDeliveries, 1, events.MaxMaxDeliveries); err != nil {
			return nil, err
		}
		if p.VisibilityTimeout, err = ps.duration(m, "visibility_timeout", e.VisibilityTimeout, events.MinVisibility, events.MaxVisibility); err != nil {
			return nil, err
		}
		if p.Concurrency, err = ps.int(m, "concurrency", 1, 1, maxEventConcurrency); err != nil {
			return nil, err
		}
		out = append(out, p)
	}
	return out, nil
}
