package events_test

import (
	"errors"
	"testing"
	"time"

	"github.com/seed-a88e5317/resilience-sidecar/internal/config/field"
	"github.com/seed-a88e5317/resilience-sidecar/internal/events"
)

func TestConfigDefaults(t *testing.T) {
	c := events.Config{Options: events.Options{MaxDeliveries: 4}, Push: []events.PushConfig{{Name: "p", Topic: "t", Upstream: "u", Method: "put"}}}.WithDefaults()
	want := events.PushConfig{Name: "p", Topic: "t", Group: "p", Upstream: "u", Method: "PUT", Path: "/",
		MaxDeliveries: 4, Visibility: events.DefaultVisibility, Concurrency: 1}
	if c.Push[0] != want {
		t.Errorf("push = %+v\n want %+v", c.Push[0], want)
	}
	if c.MaxPayloadBytes != events.DefaultMaxPayloadBytes || c.MaxLen != events.DefaultMaxLen || c.PollInterval != events.DefaultPollInterval {
		t.Errorf("options = %+v", c.Options)
	}
	if err := c.Validate(); err != nil {
		t.Errorf("Validate = %v", err)
	}
}

func TestConfigValidate(t *testing.T) {
	ok := events.Config{
		Options: events.Options{Topics: map[string]events.TopicConfig{"t": {}}},
		Push:    []events.PushConfig{{Name: "p", Topic: "t", Upstream: "u"}},
	}.WithDefaults()
	for _, tc := range []struct {
		path    string
		written string
		f       func(*events.Config)
	}{
		{"max_len", "", func(c *events.Config) { c.MaxLen = 0 }},
		{"visibility_timeout", "", func(c *events.Config) { c.Visibility = time.Hour * 13 }},
		{`topics."a/b"`, "", func(c *events.Config) { c.Topics = map[string]events.TopicConfig{"a/b": {}} }},
		{"topics.t.max_len", "topics.t.max_len", func(*events.Config) {}},
		{"push[0].topic", "", func(c *events.Config) { c.Push[0].Topic = "x" }},
		{"push[0].concurrency", "", func(c *events.Config) { c.Push[0].Concurrency = 0 }},
	} {
		c := ok
		c.Push = append([]events.PushConfig(nil), ok.Push...)
		tc.f(&c)
		var fe *field.Error
		if err := c.ValidateFile(func(p string) bool { return p == tc.written }); !errors.As(err, &fe) || fe.Path != tc.path {
			t.Errorf("%s: ValidateFile = %v", tc.path, err)
		}
	}
	var s events.StartFrom
	if err := s.UnmarshalText([]byte("latest")); err != nil || s != events.Latest {
		t.Errorf("start_from latest: %v, %v", s, err)
	}
}
