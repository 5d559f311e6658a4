package config

import (
	"testing"
	"time"

	"github.com/seed-a88e5317/resilience-sidecar/internal/events"
)

func TestEventsSection(t *testing.T) {
	c, err := load(t, `
upstreams:
  billing: {url: "http://127.0.0.1:8081"}
events:
  max_payload_bytes: 2048
  max_len: 5000
  dedup_retention: 1h
  visibility_timeout: 5s
  max_deliveries: 4
  topics:
    orders: {max_len: 100}
    payments:
  push:
    - {name: bill, topic: orders, upstream: billing, path: /events, concurrency: 4}
    - {name: ops, topic: payments.dead, group: ops-team, upstream: billing, method: put, max_deliveries: 2, visibility_timeout: 1m, start_from: latest}
`, nil)
	if err != nil {
		t.Fatal(err)
	}
	e := c.Events
	if e.MaxPayloadBytes != 2048 || e.MaxLen != 5000 || e.DedupRetention != time.Hour || e.Visibility != 5*time.Second || e.MaxDeliveries != 4 {
		t.Fatalf("events = %+v", e)
	}
	if len(e.Topics) != 2 || e.Topics["orders"].MaxLen != 100 || e.Topics["payments"].MaxLen != 0 {
		t.Fatalf("topics = %+v", e.Topics)
	}
	want := []events.PushConfig{
		{Name: "bill", Topic: "orders", Group: "bill", Upstream: "billing", Path: "/events", Method: "POST", MaxDeliveries: 4, Visibility: 5 * time.Second, Concurrency: 4},
		{Name: "ops", Topic: "payments.dead", Group: "ops-team", Upstream: "billing", Path: "/", Method: "PUT", MaxDeliveries: 2, Visibility: time.Minute, Concurrency: 1, Start: events.Latest},
	}
	if len(e.Push) != 2 || e.Push[0] != want[0] || e.Push[1] != want[1] {
		t.Fatalf("push = %+v\nwant %+v", e.Push, want)
	}

	// Defaults, and a list of topic names.
	c, err = load(t, "events:\n  topics: [a, b.c]\n", nil)
	if err != nil {
		t.Fatal(err)
	}
	if c.Events.MaxPayloadBytes != 1<<20 || c.Events.MaxLen != 1_000_000 || c.Events.DedupRetention != 24*time.Hour ||
		c.Events.Visibility != 30*time.Second || c.Events.MaxDeliveries != 10 || len(c.Events.Topics) != 2 {
		t.Fatalf("defaults = %+v", c.Events)
	}
	if c, err := load(t, "log_level: info\n", nil); err != nil || c.Events.Topics != nil || c.Events.Push != nil {
		t.Fatalf("no section: %+v, %v", c.Events, err)
	}
}

func TestEventsSectionErrors(t *testing.T) {
	const ups = "upstreams:\n  billing: {url: \"http://127.0.0.1:8081\"}\n"
	for _, tc := range []struct{ yaml, field, want string }{
		{"events: 3\n", "events", "must be a mapping"},
		{"events: {color: red}\n", "events.color", "unknown key"},
		{"events: {max_payload_bytes: 0}\n", "events.max_payload_bytes", "must be between 1 and 16777216"},
		{"events: {max_len: -1}\n", "events.max_len", "must be between"},
		{"events: {dedup_retention: 100ms}\n", "events.dedup_retention", "must be between 1s and 720h0m0s"},
		{"events: {visibility_timeout: 13h}\n", "events.visibility_timeout", "must be between 100ms and 12h0m0s"},
		{"events: {max_deliveries: 1001}\n", "events.max_deliveries", "must be between 1 and 1000"},
		{"events: {topics: 3}\n", "events.topics", "must be a list of topic names or a mapping"},
		{"events: {topics: [a/b]}\n", `events.topics."a/b"`, "must contain only [A-Za-z0-9._-]"},
		{"events: {topics: [.a]}\n", "events.topics..a", "must not start with '.'"},
		{"events: {topics: [a.dead]}\n", "events.topics.a.dead", "declare \"a\", not its dead-letter topic"},
		{"events: {topics: [a, a]}\n", "events.topics.a", "duplicate topic"},
		{"events: {topics: {a: {max_len: 0}}}\n", "events.topics.a.max_len", "must be between 1 and"},
		{"events: {push: {a: 1}}\n", "events.push", "must be a list of push subscriptions"},
		{ups + "events: {push: [{topic: t, upstream: billing}]}\n", "events.push[0].name", "must not be empty"},
		{ups + "events: {push: [{name: a, topic: t, upstream: billing}, {name: a, topic: t, upstream: billing}]}\n", "events.push[1].name", "duplicate push subscription"},
		{ups + "events: {push: [{name: a, topic: t, upstream: nope}]}\n", "events.push[0].upstream", "unknown upstream \"nope\" (declared: billing)"},
		{ups + "events: {topics: [x], push: [{name: a, topic: t, upstream: billing}]}\n", "events.push[0].topic", "not declared under events.topics"},
		{ups + "events: {push: [{name: a, topic: '', upstream: billing}]}\n", "events.push[0].topic", "must not be empty"},
		{ups + "events: {push: [{name: a, topic: t, upstream: billing, path: x}]}\n", "events.push[0].path", "must start with '/'"},
		{ups + "events: {push: [{name: a, topic: t, upstream: billing, method: GET}]}\n", "events.push[0].method", "must be POST, PUT or PATCH"},
		{ups + "events: {push: [{name: a, topic: t, upstream: billing, concurrency: 0}]}\n", "events.push[0].concurrency", "must be between 1 and 256"},
		{ups + "events: {push: [{name: a, topic: t, upstream: billing, start_from: middle}]}\n", "events.push[0].start_from", "must be earliest or latest"},
		{ups + "events: {push: [{name: a, group: 'g h', topic: t, upstream: billing}]}\n", "events.push[0].group", "must contain only"},
	} {
		_, err := load(t, tc.yaml, nil)
		mustFieldError(t, err, tc.field, tc.want)
	}
}
