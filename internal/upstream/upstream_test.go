package upstream_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/seed-a88e5317/resilience-sidecar/internal/breaker"
	"github.com/seed-a88e5317/resilience-sidecar/internal/testkit"
	"github.com/seed-a88e5317/resilience-sidecar/internal/upstream"
)

// server is a real local HTTP server that counts the requests it sees and
// answers with the handler of the moment.
type server struct {
	*httptest.Server
	hits    atomic.Int32
	mu      sync.Mutex
	seen    []*http.Request
	bodies  []string
	handler http.HandlerFunc
}

func newServer(t *testing.T, h http.HandlerFunc) *server {
	t.Helper()
	s := &server{handler: h}
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.hits.Add(1)
		body, _ := io.ReadAll(r.Body)
		s.mu.Lock()
		s.seen = append(s.seen, r)
		s.bodies = append(s.bodies, string(body))
		h := s.handler
		s.mu.Unlock()
		h(w, r)
	}))
	t.Cleanup(s.Close)
	return s
}

func (s *server) set(h http.HandlerFunc) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.handler = h
}

func (s *server) request(i int) *http.Request {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.seen[i]
}

func status(code int) http.HandlerFunc {
	return func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(code) }
}

// env is a Caller with one upstream "svc" whose breaker is "svc".
type env struct {
	caller *upstream.Caller
	clk    *testkit.Clock // drives the breakers; HTTP timeouts use real time
	svc    *breaker.Service
	waits  *[]time.Duration
}

type envOpt func(*upstream.Config, *breaker.Policy, *upstream.Options)

func newEnv(t *testing.T, url string, opts ...envOpt) env {
	t.Helper()
	clk := testkit.NewClock()
	cfg := upstream.Config{Name: "svc", URL: url, Timeout: 2 * time.Second, InitialBackoff: 10 * time.Millisecond, MaxBackoff: 40 * time.Millisecond}
	pol := breaker.Policy{ConsecutiveFailures: 100, OpenDuration: time.Minute}
	var waits []time.Duration
	var wmu sync.Mutex
	uo := upstream.Options{
		// Record the waits; sleep for real but briefly.
		Sleep: func(ctx context.Context, d time.Duration) error {
			wmu.Lock()
			waits = append(waits, d)
			wmu.Unlock()
			return ctx.Err()
		},
	}
	for _, o := range opts {
		o(&cfg, &pol, &uo)
	}
	svc, err := breaker.NewService(breaker.Options{Policies: map[string]breaker.Policy{"svc": pol}, Now: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(svc.Close)
	uo.Breakers = svc
	c, err := upstream.New([]upstream.Config{cfg}, uo)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return env{caller: c, clk: clk, svc: svc, waits: &waits}
}

func do(t *testing.T, e env, r upstream.Request) (*upstream.Response, error) {
	t.Helper()
	if r.Upstream == "" {
		r.Upstream = "svc"
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return e.caller.Do(ctx, r)
}

func TestGetPassesThrough(t *testing.T) {
	srv := newServer(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Add("X-Multi", "a")
		w.Header().Add("X-Multi", "b")
		w.WriteHeader(201)
		fmt.Fprint(w, "hello")
	})
	e := newEnv(t, srv.URL+"/api/")
	resp, err := do(t, e, upstream.Request{Path: "/v1/items%20x", Query: "a=1&b=two",
		Headers: []upstream.Header{{"x-trace", "t1"}, {"Accept", "text/plain"}}})
	if err != nil {
		t.Fatal(err)
	}
	if resp.Status != 201 || string(resp.Body) != "hello" || resp.Attempts != 1 || resp.BreakerState != breaker.Closed {
		t.Fatalf("response = %+v", resp)
	}
	var multi []string
	for _, h := range resp.Headers {
		if h.Name == "X-Multi" {
			multi = append(multi, h.Value)
		}
	}
	if strings.Join(multi, ",") != "a,b" {
		t.Errorf("repeated response header: %v", multi)
	}
	r := srv.request(0)
	if r.Method != "GET" || r.URL.EscapedPath() != "/api/v1/items%20x" || r.URL.RawQuery != "a=1&b=two" ||
		r.Header.Get("X-Trace") != "t1" || r.Header.Get("Idempotency-Key") != "" {
		t.Fatalf("upstream saw %s %s?%s %v", r.Method, r.URL.EscapedPath(), r.URL.RawQuery, r.Header)
	}
}

func TestRetries(t *testing.T) {
	tests := []struct {
		name      string
		method    string
		key       string
		codes     []int // answers in turn; the last repeats
		wantHits  int32
		wantFinal int
	}{
		{"GET retried on 503 until success", "GET", "", []int{503, 503, 200}, 3, 200},
		{"GET retried at most max_attempts", "GET", "", []int{503}, 3, 503},
		{"GET retried on 502 and 504", "GET", "", []int{502, 504, 204}, 3, 204},
		{"GET not retried on 500", "GET", "", []int{500}, 1, 500},
		{"GET not retried on 404", "GET", "", []int{404}, 1, 404},
		{"PUT, DELETE, HEAD, OPTIONS are retried", "DELETE", "", []int{503, 200}, 2, 200},
		{"POST not retried without a key", "POST", "", []int{503}, 1, 503},
		{"PATCH not retried without a key", "PATCH", "", []int{429}, 1, 429},
		{"POST retried with a key", "POST", "order-42", []int{503, 502, 201}, 3, 201},
		{"POST with a key: at most max_attempts", "POST", "order-43", []int{503}, 3, 503},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var n atomic.Int32
			srv := newServer(t, func(w http.ResponseWriter, r *http.Request) {
				i := int(n.Add(1)) - 1
				w.WriteHeader(tc.codes[min(i, len(tc.codes)-1)])
			})
			e := newEnv(t, srv.URL)
			resp, err := do(t, e, upstream.Request{Method: tc.method, Path: "/x", Body: []byte("payload"), IdempotencyKey: tc.key})
			if err != nil {
				t.Fatal(err)
			}
			if srv.hits.Load() != tc.wantHits || resp.Attempts != int(tc.wantHits) || resp.Status != tc.wantFinal {
				t.Fatalf("hits %d, response %d after %d attempts; want %d hits, status %d", srv.hits.Load(), resp.Status, resp.Attempts, tc.wantHits, tc.wantFinal)
			}
			for i := range int(tc.wantHits) {
				r := srv.request(i)
				if got := r.Header.Get("Idempotency-Key"); got != tc.key {
					t.Errorf("attempt %d: Idempotency-Key %q, want %q", i+1, got, tc.key)
				}
				if srv.bodies[i] != "payload" && tc.method != "HEAD" {
					t.Errorf("attempt %d: body %q", i+1, srv.bodies[i])
				}
			}
		})
	}
}

func TestBackoffFullJitterBounds(t *testing.T) {
	srv := newServer(t, status(503))
	for _, r := range []float64{0, 0.5, 0.999999} {
		e := newEnv(t, srv.URL, func(c *upstream.Config, _ *breaker.Policy, o *upstream.Options) {
			c.MaxAttempts = 6
			c.InitialBackoff, c.MaxBackoff = 10*time.Millisecond, 50*time.Millisecond
			o.Rand = func() float64 { return r }
		})
		if _, err := do(t, e, upstream.Request{}); err != nil {
			t.Fatal(err)
		}
		ceilings := []time.Duration{10, 20, 40, 50, 50}
		if len(*e.waits) != len(ceilings) {
			t.Fatalf("rand %v: %d waits (%v), want %d", r, len(*e.waits), *e.waits, len(ceilings))
		}
		for i, w := range *e.waits {
			ceil := ceilings[i] * time.Millisecond
			want := time.Duration(r * float64(ceil))
			if w != want || w < 0 || w > ceil {
				t.Errorf("rand %v: wait %d = %v, want %v (ceiling %v)", r, i+1, w, want, ceil)
			}
		}
	}
}

func TestBackoffRealSleep(t *testing.T) {
	var n atomic.Int32
	srv := newServer(t, func(w http.ResponseWriter, _ *http.Request) {
		if n.Add(1) < 3 {
			w.WriteHeader(503)
			return
		}
		w.WriteHeader(200)
	})
	e := newEnv(t, srv.URL, func(_ *upstream.Config, _ *breaker.Policy, o *upstream.Options) { o.Sleep = nil })
	resp, err := do(t, e, upstream.Request{})
	if err != nil || resp.Status != 200 || resp.Attempts != 3 {
		t.Fatalf("%+v, %v", resp, err)
	}
}

func TestRetryAfter(t *testing.T) {
	t.Run("honoured", func(t *testing.T) {
		var n atomic.Int32
		srv := newServer(t, func(w http.ResponseWriter, _ *http.Request) {
			if n.Add(1) == 1 {
				w.Header().Set("Retry-After", "3")
				w.WriteHeader(429)
				return
			}
			w.WriteHeader(200)
		})
		e := newEnv(t, srv.URL)
		resp, err := do(t, e, upstream.Request{Timeout: time.Minute})
		if err != nil || resp.Status != 200 || resp.Attempts != 2 {
			t.Fatalf("%+v, %v", resp, err)
		}
		if len(*e.waits) != 1 || (*e.waits)[0] != 3*time.Second {
			t.Fatalf("waits = %v, want [3s] (Retry-After beats the 10ms backoff)", *e.waits)
		}
	})
	t.Run("longer than the call's budget: the 429 is the answer", func(t *testing.T) {
		srv := newServer(t, func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Retry-After", "120")
			w.WriteHeader(503)
		})
		e := newEnv(t, srv.URL)
		resp, err := do(t, e, upstream.Request{Timeout: 5 * time.Second})
		if err != nil || resp.Status != 503 || resp.Attempts != 1 || srv.hits.Load() != 1 || len(*e.waits) != 0 {
			t.Fatalf("%+v, %v, hits %d, waits %v", resp, err, srv.hits.Load(), *e.waits)
		}
	})
	t.Run("HTTP date", func(t *testing.T) {
		var n atomic.Int32
		srv := newServer(t, func(w http.ResponseWriter, _ *http.Request) {
			if n.Add(1) == 1 {
				w.Header().Set("Retry-After", time.Now().Add(4*time.Second).UTC().Format(http.TimeFormat))
				w.WriteHeader(503)
				return
			}
			w.WriteHeader(200)
		})
		e := newEnv(t, srv.URL)
		resp, err := do(t, e, upstream.Request{Timeout: time.Minute})
		if err != nil || resp.Status != 200 || len(*e.waits) != 1 || (*e.waits)[0] < 2*time.Second || (*e.waits)[0] > 5*time.Second {
			t.Fatalf("%+v, %v, waits %v", resp, err, *e.waits)
		}
	})
}

func TestTimeouts(t *testing.T) {
	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	srv := newServer(t, func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-r.Context().Done():
		case <-release:
		}
	})
	e := newEnv(t, srv.URL, func(c *upstream.Config, p *breaker.Policy, _ *upstream.Options) {
		c.Timeout = 50 * time.Millisecond
		c.MaxAttempts = 2
	})
	_, err := do(t, e, upstream.Request{})
	var ce *upstream.CallError
	if !errors.Is(err, upstream.ErrTimeout) || !errors.As(err, &ce) || ce.Attempts != 2 || srv.hits.Load() != 2 {
		t.Fatalf("err = %v, hits %d; want ErrTimeout after 2 attempts", err, srv.hits.Load())
	}
	info, _ := e.svc.Get(context.Background(), "svc")
	if info.Counts.Failures != 2 {
		t.Fatalf("breaker counts after 2 timeouts = %+v", info.Counts)
	}
	// The call's own timeout bounds the attempts too, and so does the
	// caller's deadline. (On a very slow machine the deadline may pass
	// before the first attempt: then it is the context's error.)
	timedOut := func(err error) bool {
		return errors.Is(err, upstream.ErrTimeout) || errors.Is(err, context.DeadlineExceeded)
	}
	if _, err = do(t, e, upstream.Request{Timeout: 30 * time.Millisecond}); !timedOut(err) {
		t.Fatalf("call timeout: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if _, err := e.caller.Do(ctx, upstream.Request{Upstream: "svc"}); !timedOut(err) {
		t.Fatalf("caller deadline: %v", err)
	}
}

func TestConnectErrorsRetried(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close() // nothing listens there now
	e := newEnv(t, "http://"+addr)
	_, err = do(t, e, upstream.Request{})
	var ce *upstream.CallError
	if !errors.Is(err, upstream.ErrUnavailable) || !errors.As(err, &ce) || ce.Attempts != 3 || strings.Contains(err.Error(), addr) {
		t.Fatalf("err = %v; want ErrUnavailable after 3 attempts, without the address", err)
	}
	// POST: not retried without a key, even on a connect error.
	if _, err := do(t, e, upstream.Request{Method: "POST"}); !errors.As(err, &ce) || ce.Attempts != 1 {
		t.Fatalf("POST: %v", err)
	}
}

func TestBreakerOpensAndRecovers(t *testing.T) {
	srv := newServer(t, status(500))
	e := newEnv(t, srv.URL, func(_ *upstream.Config, p *breaker.Policy, _ *upstream.Options) {
		p.ConsecutiveFailures = 3
		p.OpenDuration = 30 * time.Second
	})
	for i := range 3 {
		resp, err := do(t, e, upstream.Request{})
		if err != nil || resp.Status != 500 {
			t.Fatalf("call %d: %+v, %v", i, resp, err)
		}
		if want := map[bool]breaker.State{true: breaker.Open, false: breaker.Closed}[i == 2]; resp.BreakerState != want {
			t.Fatalf("call %d: breaker %v, want %v", i, resp.BreakerState, want)
		}
	}
	_, err := do(t, e, upstream.Request{})
	var open *breaker.OpenError
	if !errors.Is(err, breaker.ErrOpen) || !errors.As(err, &open) || open.RetryAfter != 30*time.Second || open.Breaker != "svc" {
		t.Fatalf("after the threshold: %v, want an OpenError with RetryAfter 30s", err)
	}
	if srv.hits.Load() != 3 {
		t.Fatalf("the open breaker let a request through: %d hits", srv.hits.Load())
	}
	// Half-open: a failing probe reopens, a succeeding one closes.
	e.clk.Advance(30 * time.Second)
	if resp, err := do(t, e, upstream.Request{}); err != nil || resp.Status != 500 || resp.BreakerState != breaker.Open {
		t.Fatalf("failed probe: %+v, %v", resp, err)
	}
	e.clk.Advance(30 * time.Second)
	srv.set(status(200))
	resp, err := do(t, e, upstream.Request{})
	if err != nil || resp.Status != 200 || resp.BreakerState != breaker.Closed {
		t.Fatalf("successful probe: %+v, %v", resp, err)
	}
}

func TestBreakerOpensMidRetries(t *testing.T) {
	srv := newServer(t, status(503))
	e := newEnv(t, srv.URL, func(c *upstream.Config, p *breaker.Policy, _ *upstream.Options) {
		c.MaxAttempts = 5
		p.ConsecutiveFailures = 2
	})
	resp, err := do(t, e, upstream.Request{})
	if err != nil || resp.Status != 503 || resp.Attempts != 2 || resp.BreakerState != breaker.Open || srv.hits.Load() != 2 {
		t.Fatalf("%+v, %v, hits %d: want the second 503 back once the breaker opened", resp, err, srv.hits.Load())
	}
}

func Test4xxAreNotFailures(t *testing.T) {
	srv := newServer(t, status(404))
	e := newEnv(t, srv.URL, func(_ *upstream.Config, p *breaker.Policy, _ *upstream.Options) { p.ConsecutiveFailures = 2 })
	for range 5 {
		if resp, err := do(t, e, upstream.Request{}); err != nil || resp.Status != 404 || resp.BreakerState != breaker.Closed {
			t.Fatalf("%+v, %v", resp, err)
		}
	}
}

func TestCancelledCallIsIgnored(t *testing.T) {
	started := make(chan struct{}, 10)
	srv := newServer(t, func(w http.ResponseWriter, r *http.Request) {
		started <- struct{}{}
		<-r.Context().Done()
	})
	e := newEnv(t, srv.URL, func(_ *upstream.Config, p *breaker.Policy, _ *upstream.Options) { p.ConsecutiveFailures = 1 })
	ctx, cancel := context.WithCancel(context.Background())
	go func() { <-started; cancel() }()
	if _, err := e.caller.Do(ctx, upstream.Request{Upstream: "svc"}); !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}
	if info, _ := e.svc.Get(context.Background(), "svc"); info.State != breaker.Closed || info.Counts.Calls != 0 {
		t.Fatalf("a call the caller cancelled was counted: %+v", info)
	}
}

func TestTargetsRefused(t *testing.T) {
	srv := newServer(t, status(200))
	e := newEnv(t, srv.URL+"/api")
	tests := []struct {
		r      upstream.Request
		field  string
		target bool
	}{
		{upstream.Request{Upstream: "other"}, "upstream", true},
		{upstream.Request{Path: "http://evil.example/x"}, "path", true},
		{upstream.Request{Path: "evil.example/x"}, "path", true},
		{upstream.Request{Path: "//evil.example/x"}, "path", true},
		{upstream.Request{Path: "/../admin"}, "path", true},
		{upstream.Request{Path: "/a/../../admin"}, "path", true},
		{upstream.Request{Path: "/%2e%2e/admin"}, "path", true},
		{upstream.Request{Path: "/a/%2E%2E%2Fadmin"}, "path", true},
		{upstream.Request{Path: "/a/..%2f..%2fadmin"}, "path", true},
		{upstream.Request{Path: "/a\\..\\admin"}, "path", true},
		{upstream.Request{Path: "/./x"}, "path", true},
		{upstream.Request{Path: "/a b"}, "path", false},
		{upstream.Request{Path: "/a?b=1"}, "path", false},
		{upstream.Request{Path: "/a#frag"}, "path", false},
		{upstream.Request{Path: "/a%zz"}, "path", false},
		{upstream.Request{Query: "a=1#x"}, "query", false},
		{upstream.Request{Query: "a=%zz"}, "query", false},
		{upstream.Request{Method: "CONNECT"}, "method", false},
		{upstream.Request{Method: "get"}, "method", false},
		{upstream.Request{Headers: []upstream.Header{{"Host", "evil"}}}, "headers", false},
		{upstream.Request{Headers: []upstream.Header{{"Transfer-Encoding", "chunked"}}}, "headers", false},
		{upstream.Request{Headers: []upstream.Header{{"Idempotency-Key", "k"}}}, "headers", false},
		{upstream.Request{Headers: []upstream.Header{{"Bad Name", "v"}}}, "headers", false},
		{upstream.Request{Headers: []upstream.Header{{"X-A", "v\r\nX-Injected: 1"}}}, "headers", false},
		{upstream.Request{IdempotencyKey: "bad\nkey"}, "idempotency_key", false},
	}
	for _, tc := range tests {
		_, err := do(t, e, tc.r)
		var re *upstream.RequestError
		if !errors.As(err, &re) || re.Field != tc.field || re.Target != tc.target ||
			errors.Is(err, upstream.ErrUnknownTarget) != tc.target || !errors.Is(err, upstream.ErrInvalidRequest) {
			t.Errorf("%+v: err = %#v, want a RequestError on %s (target %v)", tc.r, err, tc.field, tc.target)
		}
	}
	if srv.hits.Load() != 0 {
		t.Fatalf("a refused request reached the upstream (%d hits)", srv.hits.Load())
	}
	// Legitimate paths under the base.
	for _, p := range []string{"", "/", "/a/b.c/..d/x..", "/%E2%82%AC"} {
		if resp, err := do(t, e, upstream.Request{Path: p}); err != nil || resp.Status != 200 {
			t.Errorf("path %q: %+v, %v", p, resp, err)
		}
	}
	last := srv.request(int(srv.hits.Load()) - 1)
	if !strings.HasPrefix(last.URL.EscapedPath(), "/api/") {
		t.Errorf("request left the base path: %s", last.URL.EscapedPath())
	}
}

func TestBodyLimits(t *testing.T) {
	big := strings.Repeat("x", 2048)
	srv := newServer(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/big" {
			fmt.Fprint(w, big)
			return
		}
		fmt.Fprint(w, big[:1024])
	})
	e := newEnv(t, srv.URL, func(c *upstream.Config, _ *breaker.Policy, _ *upstream.Options) { c.MaxBodyBytes = 1024 })
	var re *upstream.RequestError
	if _, err := do(t, e, upstream.Request{Method: "POST", Body: []byte(big)}); !errors.As(err, &re) || re.Field != "body" {
		t.Fatalf("oversize request body: %v", err)
	}
	if srv.hits.Load() != 0 {
		t.Fatal("an oversize request body was sent")
	}
	if resp, err := do(t, e, upstream.Request{}); err != nil || len(resp.Body) != 1024 {
		t.Fatalf("body of exactly the limit: %v", err)
	}
	if _, err := do(t, e, upstream.Request{Path: "/big"}); !errors.Is(err, upstream.ErrResponseTooLarge) {
		t.Fatalf("oversize response body: %v, want ErrResponseTooLarge", err)
	}
}

func TestRedirectsNotFollowed(t *testing.T) {
	other := newServer(t, status(200))
	srv := newServer(t, func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, other.URL+"/elsewhere", http.StatusFound)
	})
	e := newEnv(t, srv.URL)
	resp, err := do(t, e, upstream.Request{})
	if err != nil || resp.Status != 302 || other.hits.Load() != 0 {
		t.Fatalf("%+v, %v, other hits %d", resp, err, other.hits.Load())
	}
}

func TestConfigChecked(t *testing.T) {
	svc, err := breaker.NewService(breaker.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer svc.Close()
	for _, tc := range []struct {
		cfg  upstream.Config
		want string
	}{
		{upstream.Config{Name: "a", URL: "ftp://h"}, "http:// or https://"},
		{upstream.Config{Name: "a", URL: "http://u:p@h"}, "credentials"},
		{upstream.Config{Name: "a", URL: "http://h/?q=1"}, "query"},
		{upstream.Config{Name: "a", URL: "http:///x"}, "host"},
		{upstream.Config{Name: "a", URL: "http://h", MaxAttempts: 11}, "max_attempts"},
		{upstream.Config{Name: "a", URL: "http://h", InitialBackoff: time.Second, MaxBackoff: time.Millisecond}, "max_backoff"},
	} {
		if _, err := upstream.New([]upstream.Config{tc.cfg}, upstream.Options{Breakers: svc}); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: %v, want %q", tc.cfg, err, tc.want)
		}
	}
}
