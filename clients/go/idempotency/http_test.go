package idempotency_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"

	"github.com/seed-a88e5317/resilience-sidecar/clients/go/idempotency"
	"github.com/seed-a88e5317/resilience-sidecar/clients/go/internal/testharness"
	"github.com/seed-a88e5317/resilience-sidecar/clients/go/internal/testkit"
	"github.com/seed-a88e5317/resilience-sidecar/clients/go/resilience"
	v1 "github.com/seed-a88e5317/resilience-sidecar/clients/go/resiliencev1"
)

// app is the handler behind the middleware in the tests: it counts its
// runs and answers what respond says for run n (1 for the first).
type app struct {
	runs    atomic.Int32
	respond func(n int32, w http.ResponseWriter, r *http.Request)
}

func (a *app) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	n := a.runs.Add(1)
	if a.respond != nil {
		a.respond(n, w, r)
		return
	}
	created(n, w, r)
}

// created answers 201 with the run number and the body it got (so tests
// see the body reached the handler unchanged), a header naming the run,
// a cookie and a hop-by-hop header, neither of which may be stored.
func created(n int32, w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Run", strconv.Itoa(int(n)))
	w.Header().Add("X-Multi", "a")
	w.Header().Add("X-Multi", "b")
	w.Header().Set("Set-Cookie", "session=run"+strconv.Itoa(int(n)))
	w.Header().Set("Keep-Alive", "timeout=5")
	w.WriteHeader(http.StatusCreated)
	fmt.Fprintf(w, `{"run":%d,"body":%q}`, n, body)
}

// serve runs h behind Middleware(client, opts...) on a real HTTP server and
// returns its URL.
func serve(t *testing.T, client v1.IdempotencyServiceClient, h http.Handler, opts ...idempotency.Option) string {
	t.Helper()
	srv := httptest.NewUnstartedServer(idempotency.Middleware(client, opts...)(h))
	srv.Config.ErrorLog = log.New(io.Discard, "", 0) // the panic test's handler panics on purpose
	srv.Start()
	t.Cleanup(srv.Close)
	return srv.URL
}

// call is one request of a test and what it must get.
type call struct {
	method, path, body string
	key                string            // the Idempotency-Key header; "-" sends none
	header             map[string]string // more request headers
	status             int               // 0: the request must fail (the handler panicked)
	code               string            // the problem body's code, for an error
	replayed           bool
	run                int // the run whose response this is (X-Run), for a 201
}

type response struct {
	status int
	header http.Header
	body   []byte
}

func do(t *testing.T, base string, c call) (response, error) {
	t.Helper()
	method := c.method
	if method == "" {
		method = http.MethodPost
	}
	req, err := http.NewRequest(method, base+c.path, strings.NewReader(c.body))
	if err != nil {
		t.Fatal(err)
	}
	if c.key != "-" {
		req.Header.Set(idempotency.HeaderName, c.key)
	}
	for k, v := range c.header {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return response{}, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return response{status: resp.StatusCode, header: resp.Header, body: body}, err
}

// check fails t unless got is what c says.
func check(t *testing.T, i int, c call, got response, err error) {
	t.Helper()
	if c.status == 0 {
		if err == nil {
			t.Fatalf("request %d: %d %s, want the request to fail", i, got.status, got.body)
		}
		return
	}
	if err != nil {
		t.Fatalf("request %d: %v", i, err)
	}
	if got.status != c.status {
		t.Fatalf("request %d: status %d (%s), want %d", i, got.status, got.body, c.status)
	}
	if r := got.header.Get(idempotency.ReplayedHeader) == "true"; r != c.replayed {
		t.Fatalf("request %d: %s=%q, want replayed %t", i, idempotency.ReplayedHeader, got.header.Get(idempotency.ReplayedHeader), c.replayed)
	}
	if c.code != "" {
		var p struct {
			Type, Title, Detail, Code string
			Status                    int
		}
		if ct := got.header.Get("Content-Type"); ct != "application/problem+json" {
			t.Fatalf("request %d: Content-Type %q, want application/problem+json", i, ct)
		}
		if err := json.Unmarshal(got.body, &p); err != nil || p.Code != c.code || p.Status != c.status || p.Type != "about:blank" || p.Title == "" || p.Detail == "" {
			t.Fatalf("request %d: problem %s (%v), want code %s, status %d", i, got.body, err, c.code, c.status)
		}
	}
	if c.run != 0 {
		want := fmt.Sprintf(`{"run":%d,"body":%q}`, c.run, c.body)
		if string(got.body) != want || got.header.Get("X-Run") != strconv.Itoa(c.run) ||
			got.header.Get("Content-Type") != "application/json" || strings.Join(got.header.Values("X-Multi"), ", ") != "a, b" {
			t.Fatalf("request %d: %s %v, want the response of run %d: %s", i, got.body, got.header, c.run, want)
		}
		cookie := got.header.Get("Set-Cookie")
		if c.replayed && (cookie != "" || got.header.Get("Keep-Alive") != "") {
			t.Fatalf("request %d: replayed Set-Cookie %q, Keep-Alive %q: neither may be stored", i, cookie, got.header.Get("Keep-Alive"))
		}
		if !c.replayed && cookie != "session=run"+strconv.Itoa(c.run) {
			t.Fatalf("request %d: Set-Cookie %q, want the handler's own", i, cookie)
		}
	}
}

type tenantKey struct{}

// TestMiddleware sends each case's requests in order through the
// middleware to a handler on a real sidecar on Redis, and checks every
// answer and how often the handler ran.
func TestMiddleware(t *testing.T) {
	failFirst := func(status int) func(int32, http.ResponseWriter, *http.Request) {
		return func(n int32, w http.ResponseWriter, r *http.Request) {
			if n == 1 {
				http.Error(w, "failed", status)
				return
			}
			created(n, w, r)
		}
	}
	long := strings.Repeat("k", 256)
	cases := []struct {
		name    string
		opts    []idempotency.Option
		respond func(int32, http.ResponseWriter, *http.Request)
		wrap    func(http.Handler) http.Handler // runs before the middleware
		calls   []call
		runs    int32
	}{{
		name: "the first request runs once and a duplicate gets its response replayed",
		calls: []call{
			{key: "k", path: "/orders?x=1", body: "pay 10", status: 201, run: 1},
			{key: "k", path: "/orders?x=1", body: "pay 10", status: 201, run: 1, replayed: true},
			{key: "k", path: "/orders?x=1", body: "pay 10", status: 201, run: 1, replayed: true},
		},
		runs: 1,
	}, {
		name: "the key reused with another body, path, query or method is refused with 422",
		calls: []call{
			{key: "k", path: "/orders", body: "pay 10", status: 201, run: 1},
			{key: "k", path: "/orders", body: "pay 11", status: 422, code: idempotency.CodeKeyReused},
			{key: "k", path: "/refunds", body: "pay 10", status: 422, code: idempotency.CodeKeyReused},
			{key: "k", path: "/orders?again", body: "pay 10", status: 422, code: idempotency.CodeKeyReused},
			{key: "k", method: http.MethodPut, path: "/orders", body: "pay 10", status: 422, code: idempotency.CodeKeyReused},
		},
		runs: 1,
	}, {
		name:    "a 5xx is not stored: the key is released and the retry runs again",
		respond: failFirst(http.StatusInternalServerError),
		calls: []call{
			{key: "k", body: "b", status: 500},
			{key: "k", body: "b", status: 201, run: 2},
			{key: "k", body: "b", status: 201, run: 2, replayed: true},
		},
		runs: 2,
	}, {
		name:    "a 4xx is a response like any other: stored and replayed",
		respond: failFirst(http.StatusConflict),
		calls: []call{
			{key: "k", body: "b", status: 409},
			{key: "k", body: "b", status: 409, replayed: true},
		},
		runs: 1,
	}, {
		name: "a panic releases the key and goes on; the retry runs again",
		respond: func(n int32, w http.ResponseWriter, r *http.Request) {
			if n == 1 {
				panic("the handler failed")
			}
			created(n, w, r)
		},
		calls: []call{
			{key: "k", body: "b", status: 0},
			{key: "k", body: "b", status: 201, run: 2},
			{key: "k", body: "b", status: 201, run: 2, replayed: true},
		},
		runs: 2,
	}, {
		name: "a request without the header passes straight through",
		calls: []call{
			{key: "-", body: "b", status: 201, run: 1},
			{key: "-", body: "b", status: 201, run: 2},
		},
		runs: 2,
	}, {
		name: "GET, HEAD and OPTIONS pass straight through, with a key too",
		calls: []call{
			{key: "k", method: http.MethodGet, status: 201, run: 1},
			{key: "k", method: http.MethodGet, status: 201, run: 2},
			{key: "k", method: http.MethodHead, status: 201},
			{key: "k", method: http.MethodOptions, status: 201, run: 4},
		},
		runs: 4,
	}, {
		name: "PUT, PATCH and DELETE are covered",
		calls: []call{
			{key: "put", method: http.MethodPut, status: 201, run: 1},
			{key: "put", method: http.MethodPut, status: 201, run: 1, replayed: true},
			{key: "patch", method: http.MethodPatch, status: 201, run: 2},
			{key: "patch", method: http.MethodPatch, status: 201, run: 2, replayed: true},
			{key: "delete", method: http.MethodDelete, status: 201, run: 3},
			{key: "delete", method: http.MethodDelete, status: 201, run: 3, replayed: true},
		},
		runs: 3,
	}, {
		name: "WithMethods: only the methods given are covered",
		opts: []idempotency.Option{idempotency.WithMethods("put")},
		calls: []call{
			{key: "k", method: http.MethodPost, status: 201, run: 1},
			{key: "k", method: http.MethodPost, status: 201, run: 2},
			{key: "k", method: http.MethodPut, status: 201, run: 3},
			{key: "k", method: http.MethodPut, status: 201, run: 3, replayed: true},
		},
		runs: 3,
	}, {
		name: "WithKeyRequired: a covered request without the header gets 400",
		opts: []idempotency.Option{idempotency.WithKeyRequired()},
		calls: []call{
			{key: "-", status: 400, code: idempotency.CodeKeyMissing},
			{key: "-", method: http.MethodGet, status: 201, run: 1},
		},
		runs: 1,
	}, {
		name: "an invalid key gets 400 naming the header, and the handler does not run",
		calls: []call{
			{key: "", status: 400, code: idempotency.CodeKeyInvalid},
			{key: long, status: 400, code: idempotency.CodeKeyInvalid},
			{key: "ключ", status: 400, code: idempotency.CodeKeyInvalid},
			{key: strings.Repeat("k", 255), body: "b", status: 201, run: 1},
			{key: "a key with spaces and ~!", body: "b", status: 201, run: 2},
		},
		runs: 2,
	}, {
		name: "a body over WithMaxBodyBytes gets 413 and the handler does not run",
		opts: []idempotency.Option{idempotency.WithMaxBodyBytes(8)},
		calls: []call{
			{key: "k", body: "123456789", status: 413, code: idempotency.CodeBodyTooLarge},
			{key: "k", body: "12345678", status: 201, run: 1},
			{key: "-", body: "123456789", status: 201, run: 2},
		},
		runs: 2,
	}, {
		name: "WithScopeFunc keeps tenants apart: the same key runs once per tenant",
		opts: []idempotency.Option{idempotency.WithScopeFunc(func(ctx context.Context) string {
			return "http/" + ctx.Value(tenantKey{}).(string)
		})},
		wrap: func(next http.Handler) http.Handler {
			return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), tenantKey{}, r.Header.Get("X-Tenant"))))
			})
		},
		calls: []call{
			{key: "k", header: map[string]string{"X-Tenant": "a"}, status: 201, run: 1},
			{key: "k", header: map[string]string{"X-Tenant": "b"}, status: 201, run: 2},
			{key: "k", header: map[string]string{"X-Tenant": "a"}, status: 201, run: 1, replayed: true},
			// A scope over 200 characters: the handler does not run.
			{key: "k", header: map[string]string{"X-Tenant": strings.Repeat("t", 200)}, status: 503, code: idempotency.CodeSidecarUnavailable},
		},
		runs: 2,
	}}
	client := idemClient(t, sidecarA)
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			a := &app{respond: tc.respond}
			// A scope of its own per case: the sidecars are shared.
			opts := append([]idempotency.Option{idempotency.WithScope(fmt.Sprintf("test-%d", i))}, tc.opts...)
			opts = append(opts, idempotency.WithLogger(slog.New(slog.NewTextHandler(io.Discard, nil))))
			var h http.Handler = idempotency.Middleware(client, opts...)(a)
			if tc.wrap != nil {
				h = tc.wrap(h)
			}
			srv := httptest.NewUnstartedServer(h)
			srv.Config.ErrorLog = log.New(io.Discard, "", 0) // a handler panics on purpose
			srv.Start()
			defer srv.Close()
			for j, c := range tc.calls {
				got, err := do(t, srv.URL, c)
				check(t, j, c, got, err)
			}
			if n := a.runs.Load(); n != tc.runs {
				t.Fatalf("the handler ran %d times, want %d", n, tc.runs)
			}
		})
	}
}

// A duplicate that comes while the first request still runs gets 409 with
// Retry-After, and the handler does not run for it; once the first is
// done, a duplicate gets its response.
func TestMiddlewareConcurrentDuplicateGets409(t *testing.T) {
	started, finish := make(chan struct{}), make(chan struct{})
	a := &app{respond: func(n int32, w http.ResponseWriter, r *http.Request) {
		if n == 1 {
			close(started)
			<-finish
		}
		created(n, w, r)
	}}
	base := serve(t, idemClient(t, sidecarA), a, idempotency.WithScope("concurrent"))
	first := make(chan error, 1)
	go func() {
		got, err := do(t, base, call{key: "k", body: "b"})
		if err == nil && got.status != http.StatusCreated {
			err = fmt.Errorf("first request: %d %s", got.status, got.body)
		}
		first <- err
	}()
	<-started
	got, err := do(t, base, call{key: "k", body: "b"})
	check(t, 1, call{body: "b", status: http.StatusConflict, code: idempotency.CodeKeyInUse}, got, err)
	if ra, err := strconv.Atoi(got.header.Get("Retry-After")); err != nil || ra < 1 {
		t.Fatalf("Retry-After %q, want whole seconds, at least 1", got.header.Get("Retry-After"))
	}
	close(finish)
	if err := <-first; err != nil {
		t.Fatal(err)
	}
	got, err = do(t, base, call{key: "k", body: "b"})
	check(t, 2, call{body: "b", status: http.StatusCreated, run: 1, replayed: true}, got, err)
	if n := a.runs.Load(); n != 1 {
		t.Fatalf("the handler ran %d times, want 1", n)
	}
}

// checkCounter is an IdempotencyServiceClient that counts the
// CheckOrRecord calls that have been sent and not answered yet.
type checkCounter struct {
	v1.IdempotencyServiceClient
	pending atomic.Int32
}

func (c *checkCounter) CheckOrRecordIdempotency(ctx context.Context, in *v1.CheckOrRecordIdempotencyRequest, opts ...grpc.CallOption) (*v1.CheckOrRecordIdempotencyResponse, error) {
	c.pending.Add(1)
	defer c.pending.Add(-1)
	return c.IdempotencyServiceClient.CheckOrRecordIdempotency(ctx, in, opts...)
}

// WithWait: a duplicate that comes while the first request runs waits for
// it and gets its response, instead of 409.
func TestMiddlewareWithWaitReplaysToTheWaitingDuplicate(t *testing.T) {
	started, finish := make(chan struct{}), make(chan struct{})
	a := &app{respond: func(n int32, w http.ResponseWriter, r *http.Request) {
		if n == 1 {
			close(started)
			<-finish
		}
		created(n, w, r)
	}}
	cc := &checkCounter{IdempotencyServiceClient: idemClient(t, sidecarA)}
	base := serve(t, cc, a, idempotency.WithScope("wait"), idempotency.WithWait(time.Minute))
	var wg sync.WaitGroup
	results := make([]response, 2)
	errs := make([]error, 2)
	wg.Add(1)
	go func() {
		defer wg.Done()
		results[0], errs[0] = do(t, base, call{key: "k", body: "b"})
	}()
	<-started
	wg.Add(1)
	go func() {
		defer wg.Done()
		results[1], errs[1] = do(t, base, call{key: "k", body: "b"})
	}()
	// The duplicate asks the sidecar, which waits, while the first runs.
	testkit.Eventually(t, 30*time.Second, "the duplicate to wait in CheckOrRecord", func() bool { return cc.pending.Load() == 1 })
	close(finish)
	wg.Wait()
	check(t, 0, call{body: "b", status: http.StatusCreated, run: 1}, results[0], errs[0])
	check(t, 1, call{body: "b", status: http.StatusCreated, run: 1, replayed: true}, results[1], errs[1])
	if n := a.runs.Load(); n != 1 {
		t.Fatalf("the handler ran %d times, want 1", n)
	}
}

// A duplicate sent through a second sidecar on the same Redis (another
// replica of the service) is replayed too.
func TestMiddlewareDuplicateThroughSecondSidecarIsReplayed(t *testing.T) {
	a := &app{}
	opt := idempotency.WithScope("two-sidecars")
	viaA := serve(t, idemClient(t, sidecarA), a, opt)
	viaB := serve(t, idemClient(t, sidecarB), a, opt)
	got, err := do(t, viaA, call{key: "k", body: "b"})
	check(t, 0, call{body: "b", status: 201, run: 1}, got, err)
	got, err = do(t, viaB, call{key: "k", body: "b"})
	check(t, 1, call{body: "b", status: 201, run: 1, replayed: true}, got, err)
	got, err = do(t, viaB, call{key: "k", body: "other"})
	check(t, 2, call{status: 422, code: idempotency.CodeKeyReused}, got, err)
	if n := a.runs.Load(); n != 1 {
		t.Fatalf("the handler ran %d times, want 1", n)
	}
}

// When the sidecar is stopped, a request with a key gets 503 with
// Retry-After: 1 and the handler does not run; one without a key still
// passes.
func TestMiddlewareSidecarStoppedGets503(t *testing.T) {
	sc := testharness.StartSidecar(t, testharness.BuildSidecar(t))
	a := &app{}
	base := serve(t, idemClient(t, sc.Addr(), resilience.WithConnectWait(100*time.Millisecond)), a,
		idempotency.WithLogger(slog.New(slog.NewTextHandler(io.Discard, nil))))
	got, err := do(t, base, call{key: "k", body: "b"})
	check(t, 0, call{body: "b", status: 201, run: 1}, got, err)
	sc.Kill()
	got, err = do(t, base, call{key: "k2", body: "b"})
	check(t, 1, call{status: 503, code: idempotency.CodeSidecarUnavailable}, got, err)
	if ra := got.header.Get("Retry-After"); ra != "1" {
		t.Fatalf("Retry-After %q, want 1", ra)
	}
	if n := a.runs.Load(); n != 1 {
		t.Fatalf("the handler ran %d times, want 1: it must not run while the sidecar is away", n)
	}
	got, err = do(t, base, call{key: "-", body: "b"})
	check(t, 2, call{body: "b", status: 201, run: 2}, got, err)
}

// Invalid options are programming errors: the constructors panic naming
// the option.
func TestInvalidOptionsPanic(t *testing.T) {
	cases := map[string]idempotency.Option{
		"WithScope":        idempotency.WithScope(""),
		"WithMaxBodyBytes": idempotency.WithMaxBodyBytes(0),
		"WithLeaseTTL":     idempotency.WithLeaseTTL(time.Millisecond),
		"WithRetention":    idempotency.WithRetention(721 * time.Hour),
		"WithWait":         idempotency.WithWait(-time.Second),
		"WithMethods":      idempotency.WithMethods(),
	}
	for name, opt := range cases {
		for _, construct := range []func(){
			func() { idempotency.Middleware(nil, opt) },
			func() { idempotency.UnaryServerInterceptor(nil, opt) },
		} {
			func() {
				defer func() {
					if r := recover(); r == nil || !strings.Contains(fmt.Sprint(r), name) {
						t.Fatalf("%s: recovered %v, want a panic naming %s", name, r, name)
					}
				}()
				construct()
			}()
		}
	}
}
