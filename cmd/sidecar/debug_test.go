package main

import (
	"context"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/seed-a88e5317/resilience-sidecar/internal/testharness"
)

// TestDebugListenServesPprof runs the real binary: with --debug-listen it
// serves net/http/pprof there (TCP or a unix socket); by default nothing
// serves pprof, neither a debug listener nor the metrics endpoint.
func TestDebugListenServesPprof(t *testing.T) {
	bin := testharness.BuildSidecar(t)
	sock := filepath.Join(t.TempDir(), "debug.sock")
	tcp := testharness.FreeAddr(t)
	cases := []struct {
		name  string
		debug string // --debug-listen; "" leaves the default
		// dial reaches the debug listener; nil when there is none.
		dial func(ctx context.Context, _, _ string) (net.Conn, error)
	}{
		{name: "default: off"},
		{name: "tcp", debug: tcp, dial: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "tcp", tcp)
		}},
		{name: "unix socket", debug: "unix://" + sock, dial: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", sock)
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			metrics := testharness.FreeAddr(t)
			args := []string{"--metrics-listen", metrics}
			if tc.debug != "" {
				args = append(args, "--debug-listen", tc.debug)
			}
			sc := testharness.StartSidecar(t, bin, args...)

			// The metrics endpoint never serves pprof.
			if code, _ := httpGet(t, http.DefaultClient, "http://"+metrics+"/debug/pprof/"); code != http.StatusNotFound {
				t.Fatalf("metrics endpoint /debug/pprof/: status %d; want 404", code)
			}
			if tc.dial == nil {
				if strings.Contains(sc.Log(), "net/http/pprof") {
					t.Fatalf("pprof served by default; log:\n%s", sc.Log())
				}
				return
			}
			c := &http.Client{Transport: &http.Transport{DialContext: tc.dial}}
			t.Cleanup(c.CloseIdleConnections)
			code, body := httpGet(t, c, "http://debug/debug/pprof/")
			if code != http.StatusOK || !strings.Contains(body, "goroutine") {
				t.Fatalf("/debug/pprof/: status %d, body %.200q; want 200 and the profile index", code, body)
			}
			code, body = httpGet(t, c, "http://debug/debug/pprof/goroutine?debug=1")
			if code != http.StatusOK || !strings.Contains(body, "goroutine profile:") {
				t.Fatalf("/debug/pprof/goroutine: status %d, body %.200q", code, body)
			}
			code, body = httpGet(t, c, "http://debug/debug/pprof/profile?seconds=1")
			if code != http.StatusOK || len(body) == 0 {
				t.Fatalf("/debug/pprof/profile: status %d, %d bytes", code, len(body))
			}
		})
	}
}

func httpGet(t *testing.T, c *http.Client, url string) (int, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	return resp.StatusCode, string(b)
}
