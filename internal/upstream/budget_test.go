package upstream_test

import (
	"context"
	"errors"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/seed-a88e5317/resilience-sidecar/internal/admission"
	"github.com/seed-a88e5317/resilience-sidecar/internal/breaker"
	"github.com/seed-a88e5317/resilience-sidecar/internal/upstream"
)

// TestResponseBudget: a response is reserved in the shared byte budget
// before it is read; one that does not fit is refused with a LimitError
// (not a breaker failure, not retried); a response returned to a call
// stays reserved until the call ends, and anything dropped is given back.
func TestResponseBudget(t *testing.T) {
	const budget = 1 << 20
	for _, tc := range []struct {
		name    string
		chunked bool
		method  string
	}{{"content-length", false, "GET"}, {"chunked", true, "GET"}, {"head", false, "HEAD"}} {
		t.Run(tc.name, func(t *testing.T) {
			srv := newServer(t, func(w http.ResponseWriter, r *http.Request) {
				n, _ := strconv.Atoi(strings.TrimPrefix(r.URL.Path, "/"))
				if !tc.chunked {
					w.Header().Set("Content-Length", strconv.Itoa(n))
				}
				if r.Method != http.MethodHead {
					_, _ = w.Write(make([]byte, n))
				}
			})
			lim := admission.New(admission.Config{Calls: 10, Waiters: 1, Sessions: 1, Subscriptions: 1, ResponseBytes: budget}, nil)
			e := newEnv(t, srv.URL, func(c *upstream.Config, _ *breaker.Policy, o *upstream.Options) {
				c.MaxBodyBytes = 4 << 20
				c.MaxAttempts = 3
				o.Budget = lim.Budget()
			})
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()

			// Without a call in ctx the reservation ends with Do.
			resp, err := e.caller.Do(ctx, upstream.Request{Upstream: "svc", Method: tc.method, Path: "/600000"})
			if err != nil || (tc.method == "GET" && len(resp.Body) != 600000) {
				t.Fatalf("fitting response: %v", err)
			}
			if got := lim.InUse(admission.ResponseBytes); got != 0 {
				t.Fatalf("reserved after Do without a call: %d", got)
			}

			// A call keeps its response reserved until it ends.
			cctx, call, err := lim.BeginCall(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := e.caller.Do(cctx, upstream.Request{Upstream: "svc", Method: tc.method, Path: "/600000"}); err != nil {
				t.Fatal(err)
			}
			held := lim.InUse(admission.ResponseBytes)
			if tc.method == "GET" && held < 600000 {
				t.Fatalf("reserved while the call holds its response: %d", held)
			}
			hits := srv.hits.Load()
			_, err = e.caller.Do(ctx, upstream.Request{Upstream: "svc", Method: tc.method, Path: "/600000"})
			if tc.method == "HEAD" {
				if err != nil {
					t.Fatalf("HEAD has no body to reserve: %v", err)
				}
			} else {
				var le *admission.LimitError
				if !errors.As(err, &le) || le.Limit != admission.ResponseBytes {
					t.Fatalf("response past the budget: %v; want a LimitError", err)
				}
				if srv.hits.Load() != hits+1 {
					t.Fatalf("refused response retried: %d attempts", srv.hits.Load()-hits)
				}
				if info, err := e.svc.Get(ctx, "svc"); err != nil || info.Counts.ConsecutiveFailures != 0 {
					t.Fatalf("breaker counted a refusal of ours as a failure: %+v %v", info.Counts, err)
				}
			}
			if got := lim.InUse(admission.ResponseBytes); got != held {
				t.Fatalf("a refused response left %d bytes reserved", got-held)
			}
			call.End()
			if got := lim.InUse(admission.ResponseBytes); got != 0 {
				t.Fatalf("reserved after the call ended: %d", got)
			}
			// Too large for the upstream's limit: refused as before, nothing
			// held (a chunked one may pass the budget first while it is read).
			if tc.method == "GET" {
				_, err := e.caller.Do(ctx, upstream.Request{Upstream: "svc", Path: "/5000000"})
				if !errors.Is(err, upstream.ErrResponseTooLarge) && !(tc.chunked && errors.Is(err, admission.ErrLimitExceeded)) {
					t.Fatalf("oversize response: %v", err)
				}
				if got := lim.InUse(admission.ResponseBytes); got != 0 {
					t.Fatalf("reserved after an oversize response: %d", got)
				}
			}
		})
	}
}
