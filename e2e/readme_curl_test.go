package e2e

import (
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/seed-a88e5317/resilience-sidecar/internal/testharness"
)

// curlTourMarker marks the README's curl tour blocks (HTTP/JSON), as
// tourMarker marks the grpcurl ones.
var curlTourMarker = regexp.MustCompile(`^<!-- curl-tour: ([a-z0-9-]+)(?: config=([A-Za-z0-9._/-]+))? -->$`)

// TestReadmeCurlTours runs the README's curl tours (one per service)
// against the real binary on the embedded store, as `make run` starts it
// but with --http-listen on a free port, with the machine's curl and jq
// (scripts/ensure-jq.sh installs them; make tools runs it).
func TestReadmeCurlTours(t *testing.T) {
	root := moduleRoot(t)
	tours := readTours(t, filepath.Join(root, "README.md"), curlTourMarker)
	want := []string{"locks", "idempotency", "semaphores", "clocks", "breakers", "sagas", "events", "ratelimits"}
	var names []string
	for _, tr := range tours {
		names = append(names, tr.name)
	}
	if strings.Join(names, ",") != strings.Join(want, ",") {
		t.Fatalf("README curl tours %v, want one per service %v", names, want)
	}
	for _, tool := range []string{"curl", "jq"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s not on PATH (run scripts/ensure-jq.sh, or make tools): %v", tool, err)
		}
	}
	for _, tr := range tours {
		t.Run(tr.name, func(t *testing.T) {
			haddr := testharness.FreeAddr(t)
			args := []string{"--http-listen", haddr}
			if tr.config != "" {
				args = append(args, "--config", filepath.Join(root, tr.config))
			}
			testharness.StartSidecar(t, testharness.BuildSidecar(t), args...)
			script := strings.ReplaceAll(tr.script.String(), "localhost:50080", haddr)
			out, err := exec.Command("bash", "-euo", "pipefail", "-c", script).CombinedOutput()
			if err != nil {
				t.Fatalf("curl tour %q failed: %v\n%s", tr.name, err, out)
			}
			rest := string(out)
			for _, want := range tr.expect {
				i := strings.Index(rest, want)
				if i < 0 {
					t.Fatalf("curl tour %q: output lacks %q (in order)\n--- output ---\n%s", tr.name, want, out)
				}
				rest = rest[i+len(want):]
			}
		})
	}
}
