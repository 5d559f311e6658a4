package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	rlcommon "github.com/envoyproxy/go-control-plane/envoy/extensions/common/ratelimit/v3"
	rlsv3 "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"

	"github.com/seed-a88e5317/resilience-sidecar/internal/testharness"
)

// envoyproxy/ratelimit, the baseline of the rate-limit comparison
// (ratelimit_compare.go): its own server binary, built from its Go module at
// the version the Makefile pins (scripts/build-envoy-ratelimit.sh, cached
// in .bin/), run on the bench's Redis with its limits in a runtime
// directory, as its README describes.

// envoyRateLimitBinEnv names the environment variable that, when set, is
// used as the envoyproxy/ratelimit binary instead of building one.
const envoyRateLimitBinEnv = "ENVOY_RATELIMIT_BIN"

// envoyRateLimitBin returns the path of the envoyproxy/ratelimit server:
// $ENVOY_RATELIMIT_BIN, or what scripts/build-envoy-ratelimit.sh builds (or
// finds cached) in the module root's .bin/.
func envoyRateLimitBin(tb *benchTB) string {
	if bin := os.Getenv(envoyRateLimitBinEnv); bin != "" {
		return bin
	}
	root, err := benchModuleRoot()
	if err != nil {
		tb.Fatalf("bench: %v", err)
	}
	cmd := exec.Command(filepath.Join(root, "scripts", "build-envoy-ratelimit.sh"))
	cmd.Dir = root
	cmd.Stderr = os.Stderr
	out, err := cmd.Output()
	if err != nil {
		tb.Fatalf("bench: build envoyproxy/ratelimit (scripts/build-envoy-ratelimit.sh): %v", err)
	}
	return strings.TrimSpace(string(out))
}

// benchModuleRoot is the directory of the go.mod above the working
// directory.
func benchModuleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", fmt.Errorf("module root: %w", err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("module root: no go.mod above the working directory")
		}
		dir = parent
	}
}

// envoyRL is one running envoyproxy/ratelimit server.
type envoyRL struct {
	addr string // its gRPC address
	pid  int
}

// startEnvoyRateLimit runs bin on loopback ports against the Redis at
// redisAddr with one config file (domainYAML) in its runtime directory,
// statsd off, and env (NAME=value) on top; it returns once a
// ShouldRateLimit of probe in that domain answers OK, which means the
// config is loaded. The bench's cleanup kills it.
func startEnvoyRateLimit(tb *benchTB, bin, redisAddr, domainYAML string, probe *rlsv3.RateLimitRequest, env ...string) *envoyRL {
	dir, err := os.MkdirTemp("", "bench-envoy-ratelimit-")
	if err != nil {
		tb.Fatalf("bench: %v", err)
	}
	tb.Cleanup(func() { _ = os.RemoveAll(dir) })
	// Files are read from RUNTIME_ROOT/RUNTIME_SUBDIRECTORY/RUNTIME_APPDIRECTORY/*.yaml.
	cfgDir := filepath.Join(dir, "runtime", "ratelimit", "config")
	if err := os.MkdirAll(cfgDir, 0o755); err != nil {
		tb.Fatalf("bench: %v", err)
	}
	if err := os.WriteFile(filepath.Join(cfgDir, "bench.yaml"), []byte(domainYAML), 0o600); err != nil {
		tb.Fatalf("bench: %v", err)
	}
	port := func() string {
		_, p, _ := strings.Cut(testharness.FreeAddr(tb), ":")
		return p
	}
	grpcPort := port()
	cmd := exec.Command(bin)
	cmd.Env = append(os.Environ(),
		"HOST=127.0.0.1", "PORT="+port(),
		"DEBUG_HOST=127.0.0.1", "DEBUG_PORT="+port(),
		"GRPC_HOST=127.0.0.1", "GRPC_PORT="+grpcPort,
		"USE_STATSD=false", "LOG_LEVEL=warn",
		"REDIS_SOCKET_TYPE=tcp", "REDIS_URL="+redisAddr,
		"RUNTIME_ROOT="+filepath.Join(dir, "runtime"), "RUNTIME_SUBDIRECTORY=ratelimit",
		"RUNTIME_WATCH_ROOT=false")
	cmd.Env = append(cmd.Env, env...)
	logPath := filepath.Join(dir, "ratelimit.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		tb.Fatalf("bench: %v", err)
	}
	defer logFile.Close()
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		tb.Fatalf("bench: start %s: %v", bin, err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	tb.Cleanup(func() { _ = cmd.Process.Kill(); <-exited })

	e := &envoyRL{addr: "127.0.0.1:" + grpcPort, pid: cmd.Process.Pid}
	client := rlsv3.NewRateLimitServiceClient(dial(tb, e.addr))
	deadline := time.Now().Add(20 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		r, err := client.ShouldRateLimit(ctx, probe)
		cancel()
		if err == nil && r.GetOverallCode() == rlsv3.RateLimitResponse_OK && len(r.GetStatuses()) > 0 && r.GetStatuses()[0].GetCurrentLimit() != nil {
			return e
		}
		select {
		case <-exited:
			tb.Fatalf("bench: envoyproxy/ratelimit exited: %s", tailOf(logPath))
		default:
		}
		if time.Now().After(deadline) {
			tb.Fatalf("bench: envoyproxy/ratelimit not ready after 20s (last answer %v, %v): %s", r, err, tailOf(logPath))
		}
		time.Sleep(20 * time.Millisecond) // real time: the server starts and loads its config
	}
}

// tailOf is the last lines of a log file.
func tailOf(path string) string {
	b, _ := os.ReadFile(path)
	lines := bytes.Split(bytes.TrimSpace(b), []byte("\n"))
	return string(bytes.Join(lines[max(0, len(lines)-20):], []byte("\n")))
}

// descriptorRequest is a ShouldRateLimit of one descriptor {key: value} in
// domain.
func descriptorRequest(domain, key, value string) *rlsv3.RateLimitRequest {
	return &rlsv3.RateLimitRequest{Domain: domain, Descriptors: []*rlcommon.RateLimitDescriptor{
		{Entries: []*rlcommon.RateLimitDescriptor_Entry{{Key: key, Value: value}}}}}
}
