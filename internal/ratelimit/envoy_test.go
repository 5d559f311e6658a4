package ratelimit_test

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/seed-a88e5317/resilience-sidecar/internal/config/field"
	"github.com/seed-a88e5317/resilience-sidecar/internal/ratelimit"
)

func TestParseEnvoyErrors(t *testing.T) {
	cases := []struct{ name, yaml, want string }{
		{"no domain", "descriptors: []\n", "no domain"},
		{"empty key", "domain: d\ndescriptors:\n  - value: v\n", "empty key"},
		{"bad unit", "domain: d\ndescriptors:\n  - key: k\n    rate_limit: {unit: fortnight, requests_per_unit: 1}\n", `invalid rate limit unit "fortnight"`},
		{"no requests_per_unit", "domain: d\ndescriptors:\n  - key: k\n    rate_limit: {unit: second}\n", "needs requests_per_unit"},
		{"unlimited with unit", "domain: d\ndescriptors:\n  - key: k\n    rate_limit: {unlimited: true, unit: second}\n", "unlimited"},
		{"duplicate descriptor", "domain: d\ndescriptors:\n  - key: k\n    value: v\n  - key: k\n    value: v\n", "d.k_v: duplicate descriptor"},
		{"unknown key", "domain: d\ndescriptors:\n  - key: k\n    limit: 5\n", "field limit not found"},
		{"replaces without name", "domain: d\ndescriptors:\n  - key: k\n    rate_limit: {unit: second, requests_per_unit: 1, replaces: [{}]}\n", "replaces needs names"},
		{"not YAML", "domain: [\n", "yaml"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			err := ratelimit.ParseEnvoy([]byte(c.yaml), ratelimit.EnvoyDomains{})
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("got %v, want ...%s...", err, c.want)
			}
		})
	}
	ds := ratelimit.EnvoyDomains{}
	if err := ratelimit.ParseEnvoy([]byte("domain: d\n"), ds); err != nil {
		t.Fatal(err)
	}
	if err := ratelimit.ParseEnvoy([]byte("domain: d\n"), ds); err == nil || !strings.Contains(err.Error(), "declared twice") {
		t.Fatalf("duplicate domain: %v", err)
	}
}

func TestEnvoyConfigValidateNamesTheFile(t *testing.T) {
	dir := t.TempDir()
	good, bad := filepath.Join(dir, "good.yaml"), filepath.Join(dir, "bad.yaml")
	for p, s := range map[string]string{good: "domain: a\n", bad: "domain: b\ndescriptors:\n  - key: k\n    rate_limit: {unit: week, requests_per_unit: 1}\n  - key: \"\"\n"} {
		if err := os.WriteFile(p, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := (ratelimit.EnvoyConfig{Files: []string{good}}).Validate(); err != nil {
		t.Fatal(err)
	}
	for i, files := range [][]string{{good, bad}, {good, filepath.Join(dir, "missing.yaml")}} {
		err := ratelimit.EnvoyConfig{Files: files}.Validate()
		var fe *field.Error
		if !errors.As(err, &fe) || fe.Path != "files[1]" || !strings.Contains(fe.Msg, files[1]) {
			t.Fatalf("case %d: %v, want files[1] naming %s", i, err, files[1])
		}
	}
	if w, ok := ratelimit.EnvoyUnitWindow("Minute"); !ok || w.Seconds() != 60 {
		t.Fatalf("minute: %v %v", w, ok)
	}
}

// FuzzParseEnvoy: no file crashes the parser; a file it accepts adds
// exactly its one domain.
func FuzzParseEnvoy(f *testing.F) {
	f.Add("domain: d\ndescriptors:\n  - key: k\n    value: v*\n    rate_limit: {unit: second, requests_per_unit: 1}\n")
	f.Add("domain: d\ndescriptors:\n  - key: k\n    descriptors:\n      - key: j\n        rate_limit: {unlimited: true}\n")
	f.Add("domain: &a d\ndescriptors: *a\n")
	f.Fuzz(func(t *testing.T, s string) {
		ds := ratelimit.EnvoyDomains{}
		if err := ratelimit.ParseEnvoy([]byte(s), ds); err == nil && len(ds) != 1 {
			t.Fatalf("accepted with %d domains", len(ds))
		}
	})
}
