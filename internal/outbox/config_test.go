package outbox_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/seed-a88e5317/resilience-sidecar/internal/config/field"
	"github.com/seed-a88e5317/resilience-sidecar/internal/outbox"
)

func TestOptionsConfig(t *testing.T) {
	ok := outbox.Options{URL: "postgres://app:s3cret@db/app"}.WithDefaults()
	if !ok.Enabled() || ok.Table != outbox.DefaultTable || ok.OnPublish != outbox.Mark || ok.BatchSize != outbox.DefaultBatchSize {
		t.Fatalf("WithDefaults = %+v", ok)
	}
	if err := ok.Validate(); err != nil {
		t.Fatalf("Validate = %v", err)
	}
	for path, f := range map[string]func(*outbox.Options){
		"postgres_url":   func(o *outbox.Options) { o.URL = "postgres://app:s3cret@db:port/app" },
		"table":          func(o *outbox.Options) { o.Table = "Outbox" },
		"notify_channel": func(o *outbox.Options) { o.NotifyChannel = "a.b" },
		"on_publish":     func(o *outbox.Options) { o.OnPublish = "archive" },
		"batch_size":     func(o *outbox.Options) { o.BatchSize = 0 },
		"poll_interval":  func(o *outbox.Options) { o.PollInterval = 0 },
	} {
		o := ok
		f(&o)
		var fe *field.Error
		err := o.Validate()
		if !errors.As(err, &fe) || fe.Path != path {
			t.Errorf("%s: Validate = %v", path, err)
		}
		if err != nil && strings.Contains(err.Error(), "s3cret") {
			t.Errorf("%s: error leaks the password: %v", path, err)
		}
	}
}
