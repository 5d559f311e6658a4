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

// tour is the shell code of every README block marked <!-- tour: name -->,
// in order, and the texts its output must contain, in order.
type tour struct {
	name   string
	config string // a config file for the tour's sidecar, from the repository root
	script strings.Builder
	expect []string
}

var tourMarker = regexp.MustCompile(`^<!-- tour: ([a-z0-9-]+)(?: config=([A-Za-z0-9._/-]+))? -->$`)

// readTours parses README.md's tours of one kind: a line marker matches
// (group 1 the tour's name, group 2 an optional config file its sidecar
// runs with, as in <!-- tour: name config=examples/x.yaml -->), then a
// ```sh fenced block; "# => " lines are expected output. Blocks of one
// name are joined in order.
func readTours(t *testing.T, path string, marker *regexp.Regexp) []*tour {
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
				t.Fatalf("README: a tour marker must be followed by a ```sh block, got %q", line)
			}
			awaitingFence, inBlock = false, true
		default:
			if m := marker.FindStringSubmatch(line); m != nil {
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

// TestReadmeTours runs the README's grpcurl tours against the real binary
// on the embedded store (what `make run` starts), with grpcurl from .bin/.
func TestReadmeTours(t *testing.T) {
	root := moduleRoot(t)
	tours := readTours(t, filepath.Join(root, "README.md"), tourMarker)
	if len(tours) == 0 {
		t.Fatal("README has no tours")
	}
	binDir := filepath.Join(root, ".bin")
	if _, err := os.Stat(filepath.Join(binDir, "grpcurl")); err != nil {
		t.Fatalf("grpcurl not in .bin (run `make tools`): %v", err)
	}
	for _, tr := range tours {
		t.Run(tr.name, func(t *testing.T) {
			var args []string
			if tr.config != "" {
				args = []string{"--config", filepath.Join(root, tr.config)}
			}
			sc := testharness.StartSidecar(t, testharness.BuildSidecar(t), args...)
			script := strings.ReplaceAll(tr.script.String(), "localhost:50051", sc.Addr())
			cmd := exec.Command("bash", "-euo", "pipefail", "-c", script)
			cmd.Env = append(os.Environ(), "PATH="+binDir+string(os.PathListSeparator)+os.Getenv("PATH"))
			out, err := cmd.CombinedOutput()
			if err != nil {
				t.Fatalf("tour %q failed: %v\n%s", tr.name, err, out)
			}
			rest := string(out)
			for _, want := range tr.expect {
				i := strings.Index(rest, want)
				if i < 0 {
					t.Fatalf("tour %q: output lacks %q (in order)\n--- output ---\n%s", tr.name, want, out)
				}
				rest = rest[i+len(want):]
			}
		})
	}
}

func moduleRoot(t *testing.T) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("go.mod not found")
		}
		dir = parent
	}
}

// TestReadmeListsEveryFlag keeps the README's configuration table complete:
// every flag the binary's --help lists must appear in it.
func TestReadmeListsEveryFlag(t *testing.T) {
	root := moduleRoot(t)
	readme, err := os.ReadFile(filepath.Join(root, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	out, _ := exec.Command(testharness.BuildSidecar(t), "--help").CombinedOutput()
	flags := regexp.MustCompile(`(?m)^  (--[a-z][a-z-]*)`).FindAllStringSubmatch(string(out), -1)
	if len(flags) < 10 {
		t.Fatalf("--help lists %d flags; output:\n%s", len(flags), out)
	}
	for _, f := range flags {
		if !strings.Contains(string(readme), "`"+f[1]+"`") {
			t.Errorf("README.md does not document %s", f[1])
		}
	}
}
