package upstream_test

import (
	"errors"
	"net/http"
	"strings"
	"testing"

	"github.com/seed-a88e5317/resilience-sidecar/internal/breaker"
	"github.com/seed-a88e5317/resilience-sidecar/internal/upstream"
)

// TestCheckAgreesWithDo: Check refuses exactly what Do refuses before its
// first attempt, with the same error, and sends nothing.
func TestCheckAgreesWithDo(t *testing.T) {
	srv := newServer(t, status(http.StatusOK))
	e := newEnv(t, srv.URL+"/base", func(c *upstream.Config, _ *breaker.Policy, _ *upstream.Options) { c.MaxBodyBytes = 8 })
	cases := []upstream.Request{
		{Upstream: "svc", Method: "POST", Path: "/undo", Headers: []upstream.Header{{Name: "X-A", Value: "1"}}, Body: []byte("12345678"), IdempotencyKey: "s:1"},
		{Upstream: "svc"},
		{Upstream: "nope", Path: "/x"},
		{Upstream: "svc", Method: "BREW", Path: "/x"},
		{Upstream: "svc", Path: "/../x"},
		{Upstream: "svc", Path: "x"},
		{Upstream: "svc", Path: "/x", Query: "a b"},
		{Upstream: "svc", Path: "/x", Headers: []upstream.Header{{Name: "Host", Value: "evil"}}},
		{Upstream: "svc", Path: "/x", Headers: []upstream.Header{{Name: "bad name", Value: "v"}}},
		{Upstream: "svc", Path: "/x", Headers: []upstream.Header{{Name: "Idempotency-Key", Value: "v"}}},
		{Upstream: "svc", Path: "/x", IdempotencyKey: "é"},
		{Upstream: "svc", Path: "/x", Body: []byte("123456789")},
	}
	for i, r := range cases {
		checkErr := e.caller.Check(r)
		before := srv.hits.Load()
		_, doErr := do(t, e, r)
		sent := srv.hits.Load() > before
		if checkErr == nil {
			if !sent {
				t.Errorf("case %d: Check passed but Do sent nothing (%v)", i, doErr)
			}
			continue
		}
		if sent || doErr == nil || doErr.Error() != checkErr.Error() || !errors.Is(checkErr, upstream.ErrInvalidRequest) {
			t.Errorf("case %d: Check = %v; Do = %v (sent %v); want the same refusal, nothing sent", i, checkErr, doErr, sent)
		}
		if strings.Contains(checkErr.Error(), srv.URL) {
			t.Errorf("case %d: error leaks the URL: %v", i, checkErr)
		}
	}
}
