package e2e

import (
	"bufio"
	"os"
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

// readCurlTours parses README.md's curl tours: a curl-tour marker line,
// then a ```sh fenced block; "# => " lines are expected output.
func readCurlTours(t *testing.T, path string) []*tour {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	byName := map[string]*tour{}
	var order []*tour
	var cur *tour
	inBlock, awaitingFence := false, false
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		switch {
		case inBlock && line == "```":
			inBlock = false
		case inBlock:
			cur.script.WriteString(line + "\n")
			if exp, ok := strings.CutPrefix(strings.TrimSpace(line), "# => "); ok {
				cur.expect = append(cur.expect, exp)
			}
		case awaitingFence:
			if line != "```sh" {
				t.Fatalf("README: a curl-tour marker must be followed by a ```sh block, got %q", line)
			}
			awaitingFence, inBlock = false, true
		default:
			if m := curlTourMarker.FindStringSubmatch(line); m != nil {
				cur = byName[m[1]]
				if cur == nil {
					cur = &tour{name: m[1], config: m[2]}
					byName[m[1]] = cur
					order = append(order, cur)
				}
				awaitingFence = true
			}
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return order
}

// TestReadmeCurlTours runs the README's curl tours (one per service)
// against the real binary on the embedded store, as `make run` starts it
// but with --http-listen on a free port, with the machine's curl and jq
// (scripts/ensure-jq.sh installs them; make tools runs it).
func TestReadmeCurlTours(t *testing.T) {
	root := moduleRoot(t)
	tours := readCurlTours(t, filepath.Join(root, "README.md"))
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
