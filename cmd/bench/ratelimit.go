package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"time"

	rlcommon "github.com/envoyproxy/go-control-plane/envoy/extensions/common/ratelimit/v3"
	rlsv3 "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"

	v1 "github.com/seed-a88e5317/resilience-sidecar/clients/go/resiliencev1"
	"github.com/seed-a88e5317/resilience-sidecar/internal/ratelimit"
	"github.com/seed-a88e5317/resilience-sidecar/internal/testharness"
)

func init() { groups = append(groups, rateLimitRows) }

// rateLimitRows: Take on one hot key and spread over 10 000 keys, on a
// GCRA limiter that allows every call (each Take is one script on Redis)
// and on one held at 1 000/s (most Takes on the hot key are refused, from
// the sidecar's memory of the exhausted key); Envoy's ShouldRateLimit on
// one and on 10 000 descriptors (a fixed window each); against the GCRA
// script called from Go (raw) and a bare unary call (floor).
//
// The scenario starts its own sidecar on the bench's Redis, with a config
// file declaring the limiters.
func rateLimitRows(env *Env) []Row {
	const (
		floor  = "gRPC floor: 1 bare unary call" // idempotency.go's row
		rawLua = "ratelimit Take: raw Redis Lua (baseline)"
		keys   = 10000
	)
	dir, err := os.MkdirTemp("", "bench-ratelimit-")
	if err != nil {
		env.TB.Fatalf("bench: %v", err)
	}
	env.TB.Cleanup(func() { _ = os.RemoveAll(dir) })
	cfg, envoyCfg := filepath.Join(dir, "sidecar.yaml"), filepath.Join(dir, "envoy.yaml")
	err = os.WriteFile(envoyCfg, []byte(`
domain: bench
descriptors:
  - key: user
    rate_limit: {unit: second, requests_per_unit: 1000000000}
`), 0o600)
	if err == nil {
		err = os.WriteFile(cfg, []byte(fmt.Sprintf(`
ratelimits:
  open: {rate: 1000000000, burst: 1000000000}
  held: {rate: 1000, burst: 100}
envoy_ratelimit:
  files: [%q]
`, envoyCfg)), 0o600)
	}
	if err != nil {
		env.TB.Fatalf("bench: %v", err)
	}
	sc := testharness.StartSidecar(env.TB, testharness.BuildSidecar(env.TB),
		"--config", cfg, "--redis-url", "redis://"+env.Redis.Options().Addr, "--log-level", "error")
	client := v1.NewRateLimitServiceClient(sc.Conn(env.TB))
	envoy := rlsv3.NewRateLimitServiceClient(sc.Conn(env.TB))
	should := func(spread bool) func(context.Context, int, int) error {
		return func(ctx context.Context, w, i int) error {
			user := "hot"
			if spread {
				user = strconv.Itoa((w*7919 + i) % keys)
			}
			r, err := envoy.ShouldRateLimit(ctx, &rlsv3.RateLimitRequest{Domain: "bench", Descriptors: []*rlcommon.RateLimitDescriptor{
				{Entries: []*rlcommon.RateLimitDescriptor_Entry{{Key: "user", Value: user}}}}})
			if err == nil && r.GetOverallCode() != rlsv3.RateLimitResponse_OK {
				err = fmt.Errorf("over limit: %v", r)
			}
			return err
		}
	}
	take := func(limiter string, spread bool) func(context.Context, int, int) error {
		return func(ctx context.Context, w, i int) error {
			key := "hot"
			if spread {
				key = strconv.Itoa((w*7919 + i) % keys)
			}
			_, err := client.Take(ctx, &v1.TakeRequest{Limiter: limiter, Key: key})
			return err
		}
	}
	raw := ratelimit.NewRedisStore(env.Redis, "bench-raw", 5*time.Second)
	open := ratelimit.Limiter{Rate: 1e9, Burst: 1e9}.WithDefaults()
	rawTake := func(ctx context.Context, _, _ int) error {
		r, err := raw.Take(ctx, "open", "hot", open, 1)
		if err == nil && !r.Allowed {
			err = fmt.Errorf("refused: %+v", r)
		}
		return err
	}
	return []Row{
		{Name: "ratelimit Take: hot key, allowed (Redis)", Op: take("open", false), Raw: rawLua, Floor: floor},
		{Name: "ratelimit Take: 10k keys, allowed (Redis)", Op: take("open", true), Raw: rawLua, Floor: floor},
		{Name: "ratelimit Take: hot key held at 1000/s", Op: take("held", false), Floor: floor},
		{Name: "ratelimit Take: 10k keys held at 1000/s each", Op: take("held", true), Floor: floor},
		{Name: "envoy ShouldRateLimit: hot descriptor (Redis)", Op: should(false), Raw: rawLua, Floor: floor},
		{Name: "envoy ShouldRateLimit: 10k descriptors (Redis)", Op: should(true), Raw: rawLua, Floor: floor},
		{Name: rawLua, Op: rawTake},
	}
}
