package main

import (
	"bytes"
	"context"
	"os"
	"strings"
	"testing"

	"github.com/seed-a88e5317/resilience-sidecar/internal/version"
)

// TestVersionFlag: --version prints the release VERSION names, and that is
// the number version_gen.go carries (make generate writes it).
func TestVersionFlag(t *testing.T) {
	var out, errs bytes.Buffer
	if code := run(context.Background(), []string{"--version"}, func(string) string { return "" }, &out, &errs); code != 0 {
		t.Fatalf("exit %d, stderr %q", code, errs.String())
	}
	if got, want := out.String(), "sidecar "+version.Number+"\n"; got != want {
		t.Errorf("--version printed %q, want %q", got, want)
	}
	file, err := os.ReadFile("../../VERSION")
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.TrimSpace(string(file)); got != version.Number {
		t.Errorf("VERSION says %q, the binary %q: run make generate", got, version.Number)
	}
}
