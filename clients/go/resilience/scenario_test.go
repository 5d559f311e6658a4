package resilience_test

import (
	"bufio"
	"flag"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"google.golang.org/grpc"

	"github.com/seed-a88e5317/resilience-sidecar/clients/go/internal/testharness"
	"github.com/seed-a88e5317/resilience-sidecar/clients/go/internal/testkit"
	"github.com/seed-a88e5317/resilience-sidecar/clients/go/resilience"
)

// scenariosFile lists the scenarios every client's suite runs against the
// real sidecar on Redis (clients/CONTRACT.md says what each asserts).
var scenariosFile = filepath.Join("..", "..", "scenarios.txt")

var passedScenarios = struct {
	sync.Mutex
	ids map[string]bool
}{ids: map[string]bool{}}

// scenario marks t as the Go test of scenario id: id counts as covered
// when t passes.
func scenario(t *testing.T, id string) {
	t.Helper()
	t.Cleanup(func() {
		if t.Failed() || t.Skipped() {
			return
		}
		passedScenarios.Lock()
		passedScenarios.ids[id] = true
		passedScenarios.Unlock()
	})
}

// checkScenarios fails the run (tb.Fatalf exits with status 1) when a
// scenario of clients/scenarios.txt has no passing test, or a test claims
// an id the file does not list. A run filtered with -run, -skip or -list
// does not run every test and is not checked.
func checkScenarios(tb *testkit.MainTB) {
	for _, name := range []string{"test.run", "test.skip", "test.list"} {
		if f := flag.Lookup(name); f != nil && f.Value.String() != "" {
			return
		}
	}
	want, err := readScenarios(scenariosFile)
	if err != nil {
		tb.Fatalf("scenarios: %v", err)
	}
	passedScenarios.Lock()
	defer passedScenarios.Unlock()
	var missing, unknown []string
	for _, id := range want {
		if !passedScenarios.ids[id] {
			missing = append(missing, id)
		}
	}
	for id := range passedScenarios.ids {
		if !slices.Contains(want, id) {
			unknown = append(unknown, id)
		}
	}
	if len(missing) > 0 || len(unknown) > 0 {
		slices.Sort(unknown)
		tb.Fatalf("FAIL: scenarios of %s without a passing Go test: %v; ids claimed by tests but not listed: %v", scenariosFile, missing, unknown)
	}
}

// readScenarios returns the ids of a scenario file: one per line, '#'
// starts a comment.
func readScenarios(path string) ([]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var ids []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line, _, _ := strings.Cut(sc.Text(), "#")
		if id := strings.TrimSpace(line); id != "" {
			ids = append(ids, id)
		}
	}
	return ids, sc.Err()
}

// redisSidecars starts a redis-server and n sidecars on it, each with
// args, as the scenarios run: the real binary on real Redis.
func redisSidecars(t *testing.T, n int, args ...string) []*testharness.Sidecar {
	t.Helper()
	rd := testharness.StartRedis(t)
	bin := testharness.BuildSidecar(t)
	scs := make([]*testharness.Sidecar, n)
	for i := range scs {
		scs[i] = testharness.StartSidecar(t, bin, append([]string{"--redis-url", rd.URL()}, args...)...)
	}
	return scs
}

// dial returns a connection from resilience.Dial to addr, closed when t
// ends.
func dial(t *testing.T, addr string, opts ...resilience.DialOption) *grpc.ClientConn {
	t.Helper()
	conn, err := resilience.Dial(append([]resilience.DialOption{resilience.WithAddr(addr)}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return conn
}

// configFile writes a sidecar config file and returns its --config args.
func configFile(t *testing.T, yaml string) []string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "sidecar.yaml")
	if err := os.WriteFile(path, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	return []string{"--config", path}
}
