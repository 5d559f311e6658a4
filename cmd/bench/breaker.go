package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"time"

	v1 "github.com/seed-a88e5317/resilience-sidecar/clients/go/resiliencev1"
	"github.com/seed-a88e5317/resilience-sidecar/internal/breaker"
	"github.com/seed-a88e5317/resilience-sidecar/internal/testharness"
)

func init() { groups = append(groups, breakerRows) }

// breakerRows: an AllowCall+ReportCall pair on a local and on a shared
// breaker (one hot breaker each, as one dependency would be), against the
// same two Lua scripts called from Go (raw) and two bare unary calls
// (floor); and ExecuteCall GET through the sidecar to an HTTP server in
// this process, against the same GET made directly (the overhead the
// sidecar adds: a gRPC hop, the breaker, the second HTTP client).
//
// The scenario starts its own sidecar on the bench's Redis, with a config
// file declaring the two policies and the upstream.
func breakerRows(env *Env) []Row {
	const (
		floor  = "gRPC floor: 2 bare unary calls" // lock.go's row
		rawLua = "breaker pair: raw Redis Lua (baseline)"
		direct = "HTTP GET: direct from the load generator (baseline)"
	)
	body := []byte(`{"ok":true}`)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		env.TB.Fatalf("bench: listen: %v", err)
	}
	hs := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(body)
	}), ReadHeaderTimeout: 5 * time.Second}
	served := make(chan struct{})
	go func() {
		defer close(served)
		if err := hs.Serve(lis); err != nil && !errors.Is(err, http.ErrServerClosed) {
			fmt.Fprintln(os.Stderr, "bench: upstream server:", err)
		}
	}()
	env.TB.Cleanup(func() { _ = hs.Close(); <-served })
	upURL := "http://" + lis.Addr().String()

	dir, err := os.MkdirTemp("", "bench-breaker-")
	if err != nil {
		env.TB.Fatalf("bench: %v", err)
	}
	env.TB.Cleanup(func() { _ = os.RemoveAll(dir) })
	cfg := filepath.Join(dir, "sidecar.yaml")
	err = os.WriteFile(cfg, []byte(fmt.Sprintf(`
breakers:
  bench-local:  {scope: local, consecutive_failures: 1000000}
  bench-shared: {scope: shared, consecutive_failures: 1000000}
upstreams:
  bench: {url: %q, max_connections: 256, breaker: bench-local}
`, upURL)), 0o600)
	if err != nil {
		env.TB.Fatalf("bench: %v", err)
	}
	sc := testharness.StartSidecar(env.TB, testharness.BuildSidecar(env.TB),
		"--config", cfg, "--redis-url", "redis://"+env.Redis.Options().Addr, "--log-level", "error")
	client := v1.NewBreakerServiceClient(sc.Conn(env.TB))

	pair := func(name string) func(context.Context, int, int) error {
		return func(ctx context.Context, _, _ int) error {
			a, err := client.AllowCall(ctx, &v1.AllowCallRequest{Breaker: name})
			if err != nil {
				return err
			}
			if !a.GetAllowed() {
				return fmt.Errorf("refused in %v", a.GetState())
			}
			_, err = client.ReportCall(ctx, &v1.ReportCallRequest{PermitId: a.GetPermitId(), Outcome: v1.CallOutcome_CALL_OUTCOME_SUCCESS})
			return err
		}
	}

	rawStore := breaker.NewRedisStore(env.Redis, "bench-raw", 5*time.Second)
	rawPolicy := breaker.Policy{Scope: breaker.Shared, ConsecutiveFailures: 1_000_000}
	rawPair := func(ctx context.Context, w, i int) error {
		var n breaker.Nonce
		for j := range 4 {
			n[j], n[4+j] = byte(w>>(8*j)), byte(i>>(8*j))
		}
		a, err := rawStore.Allow(ctx, "bench", rawPolicy, breaker.AllowArgs{Nonce: n, TTL: time.Minute})
		if err != nil || !a.Allowed {
			return fmt.Errorf("raw allow: %+v %v", a, err)
		}
		_, err = rawStore.Report(ctx, "bench", rawPolicy, breaker.PermitRef{Generation: a.Generation, Issued: a.Issued, Nonce: n}, breaker.Success, time.Millisecond)
		return err
	}

	httpClient := &http.Client{Transport: &http.Transport{MaxIdleConns: 256, MaxIdleConnsPerHost: 256}}
	env.TB.Cleanup(httpClient.CloseIdleConnections)
	get := func(ctx context.Context, _, _ int) error {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, upURL+"/item", nil)
		if err != nil {
			return err
		}
		resp, err := httpClient.Do(req)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		if _, err := io.Copy(io.Discard, resp.Body); err != nil {
			return err
		}
		if resp.StatusCode != 200 {
			return fmt.Errorf("status %d", resp.StatusCode)
		}
		return nil
	}
	execute := func(ctx context.Context, _, _ int) error {
		r, err := client.ExecuteCall(ctx, &v1.ExecuteCallRequest{Upstream: "bench", Path: "/item"})
		if err == nil && r.GetStatus() != 200 {
			err = fmt.Errorf("status %d", r.GetStatus())
		}
		return err
	}

	return []Row{
		{Name: "breaker pair: local scope", Op: pair("bench-local"), Floor: floor},
		{Name: "breaker pair: shared scope (Redis)", Op: pair("bench-shared"), Raw: rawLua, Floor: floor},
		{Name: rawLua, Op: rawPair},
		{Name: "ExecuteCall GET: sidecar -> local HTTP server", Op: execute, Raw: direct},
		{Name: direct, Op: get},
	}
}
