package upstream_test

import (
	"errors"
	"testing"
	"time"

	"github.com/seed-a88e5317/resilience-sidecar/internal/config/field"
	"github.com/seed-a88e5317/resilience-sidecar/internal/upstream"
)

func TestConfigDefaults(t *testing.T) {
	c := upstream.Config{Name: "pay", URL: "http://h", InitialBackoff: 3 * time.Second}.WithDefaults()
	want := upstream.Config{Name: "pay", URL: "http://h", Timeout: upstream.DefaultTimeout, Breaker: "pay",
		MaxAttempts: upstream.DefaultMaxAttempts, InitialBackoff: 3 * time.Second, MaxBackoff: 3 * time.Second,
		MaxBodyBytes: upstream.DefaultMaxBodyBytes, MaxConns: upstream.DefaultMaxConns}
	if c != want {
		t.Errorf("WithDefaults = %+v\n want %+v", c, want)
	}
	if err := c.Validate(); err != nil {
		t.Errorf("Validate = %v", err)
	}
}

// TestConfigValidate: each problem is a *field.Error at the setting's key
// in the config file, zero settings checked as they are.
func TestConfigValidate(t *testing.T) {
	ok := upstream.Config{Name: "pay", URL: "http://h"}.WithDefaults()
	for path, f := range map[string]func(*upstream.Config){
		"name":                  func(c *upstream.Config) { c.Name = "" },
		"url":                   func(c *upstream.Config) { c.URL = "http://u:secret@h" },
		"timeout":               func(c *upstream.Config) { c.Timeout = 0 },
		"max_body_bytes":        func(c *upstream.Config) { c.MaxBodyBytes = 0 },
		"max_connections":       func(c *upstream.Config) { c.MaxConns = upstream.MaxMaxConns + 1 },
		"retry.max_attempts":    func(c *upstream.Config) { c.MaxAttempts = 0 },
		"retry.initial_backoff": func(c *upstream.Config) { c.InitialBackoff = 0 },
		"retry.max_backoff":     func(c *upstream.Config) { c.MaxBackoff = c.InitialBackoff - 1 },
	} {
		c := ok
		f(&c)
		var fe *field.Error
		if err := c.Validate(); !errors.As(err, &fe) || fe.Path != path {
			t.Errorf("%s: Validate = %v", path, err)
		}
	}
}
