package testharness

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// SidecarBinEnv names the environment variable that, when set, makes
// BuildSidecar use an existing binary instead of building one.
const SidecarBinEnv = "SIDECAR_BIN"

// SidecarReadyTimeout bounds how long StartSidecar waits for SERVING.
const SidecarReadyTimeout = 20 * time.Second

// sidecarStartAttempts is how many fresh ports StartSidecar tries when the
// port it picked was taken by someone else in the meantime.
const sidecarStartAttempts = 3

var (
	buildOnce sync.Once
	buildBin  string
	buildErr  error
)

// BuildSidecar returns the path of a sidecar binary. If $SIDECAR_BIN is set
// it is used as is (a relative path is resolved against the working
// directory, then the repository root; `make test-go` sets it to
// .bin/sidecar, built first). Otherwise ./cmd/sidecar is built with
// `go build` in the repository root (the root module's directory, found by
// walking up from the working directory), once per process, into a fresh
// directory under os.TempDir that is left in place, so that a plain
// `go test ./...` in clients/go never runs a stale binary. A build failure
// fails tb (on every call) with the compiler output.
func BuildSidecar(tb TB) string {
	tb.Helper()
	buildOnce.Do(func() { buildBin, buildErr = buildSidecar() })
	if buildErr != nil {
		tb.Fatalf("testharness: %v", buildErr)
	}
	return buildBin
}

func buildSidecar() (string, error) {
	root, rootErr := repoRoot()
	if bin := os.Getenv(SidecarBinEnv); bin != "" {
		return resolveSidecarBin(bin, root)
	}
	if rootErr != nil {
		return "", fmt.Errorf("%s is not set and there is no repository to build the sidecar in: %w", SidecarBinEnv, rootErr)
	}
	goBin, err := exec.LookPath("go")
	if err != nil {
		goroot := os.Getenv("GOROOT")
		if goroot == "" {
			return "", fmt.Errorf("go command not found on PATH and GOROOT unset: %w", err)
		}
		goBin = filepath.Join(goroot, "bin", "go")
	}
	dir, err := os.MkdirTemp("", "testharness-sidecar-bin-")
	if err != nil {
		return "", fmt.Errorf("create build dir: %w", err)
	}
	out := filepath.Join(dir, "sidecar")
	cmd := exec.Command(goBin, "build", "-o", out, "./cmd/sidecar")
	cmd.Dir = root
	if output, err := cmd.CombinedOutput(); err != nil {
		_ = os.RemoveAll(dir)
		return "", fmt.Errorf("go build ./cmd/sidecar (in %s): %v\n%s", root, err, output)
	}
	return out, nil
}

// resolveSidecarBin turns $SIDECAR_BIN into an absolute path of an existing
// file.
func resolveSidecarBin(bin, root string) (string, error) {
	candidates := []string{bin}
	if !filepath.IsAbs(bin) && root != "" {
		candidates = append(candidates, filepath.Join(root, bin))
	}
	for _, c := range candidates {
		if st, err := os.Stat(c); err == nil && !st.IsDir() {
			abs, err := filepath.Abs(c)
			if err != nil {
				return "", err
			}
			return abs, nil
		}
	}
	return "", fmt.Errorf("%s=%q: no such file (tried %s)", SidecarBinEnv, bin, strings.Join(candidates, ", "))
}

// Sidecar is a running sidecar process on a loopback port, owned by one
// test. Its methods are safe for concurrent use.
type Sidecar struct {
	tb      TB
	addr    string
	dir     string
	logPath string
	p       *proc
}

// StartSidecar runs bin on a free loopback address as
//
//	bin --listen 127.0.0.1:PORT --metrics-listen "" --http-listen "" args...
//
// (later args override earlier ones, so args may replace any default),
// with stdout and stderr captured in a log file, and waits up to
// SidecarReadyTimeout until the standard gRPC health service reports SERVING
// for service "". It fails tb with the last log lines if the process exits
// early or never becomes healthy. Cleanup kills the process.
func StartSidecar(tb TB, bin string, args ...string) *Sidecar {
	tb.Helper()
	return startSidecar(tb, bin, true, args)
}

// StartSidecarNoWait is StartSidecar without the health wait: it returns as
// soon as the process has started, for tests of a sidecar that becomes
// reachable later.
func StartSidecarNoWait(tb TB, bin string, args ...string) *Sidecar {
	tb.Helper()
	return startSidecar(tb, bin, false, args)
}

func startSidecar(tb TB, bin string, wait bool, args []string) *Sidecar {
	tb.Helper()
	dir, err := os.MkdirTemp("", "testharness-sidecar-")
	if err != nil {
		tb.Fatalf("testharness: create sidecar dir: %v", err)
	}
	s := &Sidecar{tb: tb, dir: dir, logPath: filepath.Join(dir, "sidecar.log")}
	tb.Cleanup(s.cleanup)

	for attempt := 1; ; attempt++ {
		addr, err := freeAddr()
		if err != nil {
			tb.Fatalf("testharness: find free port: %v", err)
		}
		full := append([]string{"--listen", addr, "--metrics-listen", "", "--http-listen", ""}, args...)
		offset := logSize(s.logPath)
		p, err := startProc(s.logPath, bin, full...)
		if err != nil {
			tb.Fatalf("testharness: start sidecar %s: %v", bin, err)
		}
		s.addr, s.p = addr, p
		if !wait {
			return s
		}
		err = s.waitHealthy(SidecarReadyTimeout)
		if err == nil {
			return s
		}
		if p.exited() && attempt < sidecarStartAttempts && addrInUse(s.logPath, offset) {
			tb.Logf("testharness: sidecar port %s was taken, retrying on another port", addr)
			continue
		}
		p.kill()
		tb.Fatalf("testharness: sidecar %s %s: %v\nsidecar log (%s), last %d lines:\n%s",
			bin, strings.Join(full, " "), err, s.logPath, logTailLines, tailFile(s.logPath, logTailLines))
		return s
	}
}

// dialOptions are used for every connection to a sidecar: plaintext, and a
// short reconnect backoff so polling and tests do not stall for seconds
// after a refused connection.
func dialOptions() []grpc.DialOption {
	return []grpc.DialOption{
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff: backoff.Config{
				BaseDelay:  20 * time.Millisecond,
				Multiplier: 1.6,
				Jitter:     0.2,
				MaxDelay:   500 * time.Millisecond,
			},
			MinConnectTimeout: time.Second,
		}),
	}
}

// waitHealthy polls the gRPC health service (service "") until it reports
// SERVING, returning nil, or until the process exits or timeout passes,
// returning an error that says which (and the last status or RPC error).
func (s *Sidecar) waitHealthy(timeout time.Duration) error {
	conn, err := grpc.NewClient(s.addr, dialOptions()...)
	if err != nil {
		return fmt.Errorf("grpc.NewClient(%s): %w", s.addr, err)
	}
	defer conn.Close()
	client := healthpb.NewHealthClient(conn)

	deadline := time.Now().Add(timeout)
	var last string
	for {
		if s.p.exited() {
			return fmt.Errorf("sidecar exited before reporting SERVING (%s); last health result: %s",
				s.p.exitDescription(), last)
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		resp, err := client.Check(ctx, &healthpb.HealthCheckRequest{Service: ""})
		cancel()
		switch {
		case err != nil:
			last = err.Error()
		case resp.GetStatus() == healthpb.HealthCheckResponse_SERVING:
			return nil
		default:
			last = "status " + resp.GetStatus().String()
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("sidecar on %s not SERVING within %v; last health result: %s", s.addr, timeout, last)
		}
		time.Sleep(pollInterval)
	}
}

// Addr returns the sidecar's gRPC address, "127.0.0.1:port".
func (s *Sidecar) Addr() string { return s.addr }

// Kill ends the sidecar with SIGKILL and waits for it to exit. Killing a
// sidecar that already exited does nothing.
func (s *Sidecar) Kill() { s.p.kill() }

// Signal sends sig (for example syscall.SIGTERM) to the sidecar, failing the
// test if it cannot be delivered, e.g. because the process already exited.
func (s *Sidecar) Signal(sig os.Signal) {
	s.tb.Helper()
	if err := s.p.signal(sig); err != nil {
		s.tb.Fatalf("testharness: send %v to sidecar (pid %d): %v", sig, s.p.cmd.Process.Pid, err)
	}
}

// cleanup kills the process, reports the log tail if the test failed and
// removes the log directory.
func (s *Sidecar) cleanup() {
	if s.p != nil {
		s.p.kill()
	}
	if s.tb.Failed() {
		s.tb.Logf("sidecar %s log, last %d lines:\n%s",
			s.addr, logTailLines, tailFile(s.logPath, logTailLines))
	}
	_ = os.RemoveAll(s.dir)
}
