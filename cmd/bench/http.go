package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"

	"github.com/seed-a88e5317/resilience-sidecar/internal/testharness"
)

func init() { groups = append(groups, httpRows) }

// httpRows: the uncontended AcquireLock+ReleaseLock pair of lockRows over
// HTTP/JSON (docs/http.md), on a sidecar of its own on the same Redis
// serving --http-listen; "p50 vs raw" is against the gRPC row of the same
// pair, so it reads as the cost of HTTP/JSON over gRPC.
func httpRows(env *Env) []Row {
	addr := testharness.FreeAddr(env.TB)
	sc := testharness.StartSidecar(env.TB, env.Bin, "--redis-url", env.RedisURL, "--metrics-listen", "", "--http-listen", addr)
	// Keep-alive connections for up to 256 workers, as an app's pool would.
	client := &http.Client{Transport: &http.Transport{MaxIdleConns: 256, MaxIdleConnsPerHost: 256}}
	base := "http://" + addr
	post := func(ctx context.Context, path, body string, out any) error {
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, base+path, bytes.NewBufferString(body))
		if err != nil {
			return err
		}
		req.Header.Set("Content-Type", "application/json")
		resp, err := client.Do(req)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			return err
		}
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("%s: %d %s", path, resp.StatusCode, b)
		}
		return json.Unmarshal(b, out)
	}
	return []Row{{
		Name: "lock pair over HTTP/JSON: sidecar on Redis (raw = gRPC pair)",
		Op: func(ctx context.Context, w, _ int) error {
			key := fmt.Sprintf("bench-http-%d", w)
			var acq struct {
				Acquired bool `json:"acquired"`
				Lease    struct {
					LeaseID string `json:"leaseId"`
				} `json:"lease"`
			}
			if err := post(ctx, "/v1/locks/"+key+":acquire", `{"ttl":"10s"}`, &acq); err != nil {
				return err
			}
			if !acq.Acquired {
				return fmt.Errorf("not acquired")
			}
			var rel struct{}
			return post(ctx, "/v1/locks/"+key+":release", `{"leaseId":"`+acq.Lease.LeaseID+`"}`, &rel)
		},
		Raw:   "lock pair: sidecar on Redis",
		PID:   sc.PID(),
		Floor: "gRPC floor: 2 bare unary calls",
	}}
}
