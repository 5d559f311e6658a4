package idempotency_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"testing"

	"github.com/seed-a88e5317/resilience-sidecar/clients/go/resilience"
)

// The runnable example of the repository, examples/go (a module of its
// own that uses this one through a replace), run with `go run . -demo`
// against the real sidecar: its retry is replayed, the key reused with
// another body is refused, and the order is paid once per key.
func TestExampleProgram(t *testing.T) {
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("the go command is needed to run examples/go: %v", err)
	}
	dir, err := filepath.Abs(filepath.Join("..", "..", "..", "examples", "go"))
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(goBin, "run", ".", "-demo")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), resilience.EnvAddr+"="+sidecarA)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("go run . -demo in %s: %v\n%s", dir, err, out)
	}
	want := regexp.MustCompile(`^first: 201 \{"order":"42","payment":1,"amount":"9.99"\} replayed=false
retry: 201 \{"order":"42","payment":1,"amount":"9.99"\} replayed=true
same key, other body: 422 IDEMPOTENCY_KEY_REUSED replayed=false
new key: 201 \{"order":"42","payment":2,"amount":"9.99"\} replayed=false
payments of order 42: 2
$`)
	if !want.Match(out) {
		t.Fatalf("go run . -demo printed:\n%s\nwant:\n%s", out, want)
	}
}
