package resilience_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"testing"
	"time"

	"github.com/seed-a88e5317/resilience-sidecar/clients/go/resilience"
	v1 "github.com/seed-a88e5317/resilience-sidecar/clients/go/resiliencev1"
)

// ExecuteCall returns the upstream's response, whatever its status, with
// the request's method, path, query, headers, body and idempotency key
// passed through; once the upstream's 503s open its breaker, the call is
// not made and the error carries the retry delay and the breaker's name.
func TestExecuteCall(t *testing.T) {
	scenario(t, "execute-call")
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		if r.URL.Path == "/down" {
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		w.Header().Set("X-Echo-Method", r.Method)
		w.Header().Add("X-Multi", "1")
		w.Header().Add("X-Multi", "2")
		w.WriteHeader(http.StatusCreated)
		fmt.Fprintf(w, "%s?%s %s %s key=%s", r.URL.Path, r.URL.RawQuery, r.Header.Get("X-Req"), body, r.Header.Get("Idempotency-Key"))
	}))
	defer up.Close()
	cfg := configFile(t, fmt.Sprintf(`upstreams:
  echo: {url: %q, retry: {max_attempts: 1}}
breakers:
  echo: {consecutive_failures: 2, open_duration: 30s}
`, up.URL))
	breakers := v1.NewBreakerServiceClient(dial(t, redisSidecars(t, 1, cfg...)[0].Addr()))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	resp, err := resilience.ExecuteCall(ctx, breakers, "echo", http.MethodPost, "/orders", []byte("hello"),
		resilience.WithCallHeader("X-Req", "r1"), resilience.WithCallQuery(url.Values{"id": {"42"}}),
		resilience.WithCallIdempotencyKey("order-42"), resilience.WithUpstreamTimeout(5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	if resp.Status != http.StatusCreated || string(resp.Body) != "/orders?id=42 r1 hello key=order-42" ||
		resp.Header.Get("X-Echo-Method") != "POST" || len(resp.Header.Values("X-Multi")) != 2 ||
		resp.Attempts != 1 || resp.BreakerState != v1.BreakerState_BREAKER_STATE_CLOSED {
		t.Fatalf("response %+v (body %q)", resp, resp.Body)
	}

	for range 2 { // a 503 is a response, and a failure for the breaker
		resp, err := resilience.ExecuteCall(ctx, breakers, "echo", "", "/down", nil)
		if err != nil || resp.Status != http.StatusServiceUnavailable {
			t.Fatalf("call to /down: %+v, %v; want the 503", resp, err)
		}
	}
	_, err = resilience.ExecuteCall(ctx, breakers, "echo", "", "/orders", nil)
	var e *resilience.Error
	if !errors.Is(err, resilience.ErrBreakerOpen) || !errors.As(err, &e) || e.RetryDelay <= 0 || e.RetryDelay > 30*time.Second || e.Metadata["breaker"] != "echo" {
		t.Fatalf("call with the breaker open: %v; want ErrBreakerOpen with a retry delay up to 30s and the breaker's name", err)
	}

	if _, err := resilience.ExecuteCall(ctx, breakers, "elsewhere", "", "/", nil); !errors.Is(err, resilience.ErrUpstreamUnknown) {
		t.Fatalf("unknown upstream: %v; want ErrUpstreamUnknown", err)
	}
}
