package events_test

import (
	"errors"
	"testing"

	"github.com/seed-a88e5317/resilience-sidecar/internal/config/field"
	"github.com/seed-a88e5317/resilience-sidecar/internal/events"
)

// TestPushPathChecked: a push subscription's path obeys the rule of every
// upstream call (upstream.CheckPath), refused when the config is loaded
// rather than at each delivery.
func TestPushPathChecked(t *testing.T) {
	for _, tc := range []struct {
		path string
		ok   bool
	}{
		{"/events", true},
		{"/hooks/v1/orders%20in", true},
		{"hooks", false},
		{"/..;/admin", false},
		{"/%2e%2e/admin", false},
		{"/%252e%252e/admin", false},
		{"/%c0%ae%c0%ae/admin", false},
		{"/a\\..\\admin", false},
		{"/./admin", false},
		{"//evil.example/x", false},
		{"/a%2fb", false},
		{"/a;p=1", false},
		{"/a%00", false},
	} {
		c := events.Config{
			Options: events.Options{Topics: map[string]events.TopicConfig{"t": {}}},
			Push:    []events.PushConfig{{Name: "p", Topic: "t", Upstream: "u", Path: tc.path}},
		}.WithDefaults()
		err := c.Validate()
		var fe *field.Error
		switch {
		case tc.ok && err != nil:
			t.Errorf("path %q: Validate = %v, want it accepted", tc.path, err)
		case !tc.ok && (!errors.As(err, &fe) || fe.Path != "push[0].path"):
			t.Errorf("path %q: Validate = %v, want an error on push[0].path", tc.path, err)
		}
	}
}
