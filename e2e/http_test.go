package e2e

import (
	"bufio"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/types/known/durationpb"

	v1 "github.com/seed-a88e5317/resilience-sidecar/clients/go/resiliencev1"
	"github.com/seed-a88e5317/resilience-sidecar/internal/testharness"
	"github.com/seed-a88e5317/resilience-sidecar/internal/testkit"
)

// httpToken is the bearer token of the HTTP tests' sidecars.
const httpToken = "s3cret-http-token"

// httpSidecar is a sidecar on Redis serving HTTP/JSON (docs/http.md) at
// base, with a bearer token, a 64 KiB message limit and the config yaml.
type httpSidecar struct {
	*testharness.Sidecar
	base    string // http://host:port
	metrics string // host:port of /metrics
}

func startHTTPSidecar(t *testing.T, yaml string, extra ...string) *httpSidecar {
	t.Helper()
	dir := t.TempDir()
	tok := filepath.Join(dir, "token")
	if err := os.WriteFile(tok, []byte(httpToken+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	args := []string{"--redis-url", testharness.StartRedis(t).URL(), "--api-token-file", tok, "--max-message-bytes", "65536"}
	if yaml != "" {
		cfg := filepath.Join(dir, "sidecar.yaml")
		if err := os.WriteFile(cfg, []byte(yaml), 0o600); err != nil {
			t.Fatal(err)
		}
		args = append(args, "--config", cfg)
	}
	haddr, maddr := testharness.FreeAddr(t), testharness.FreeAddr(t)
	args = append(append(args, "--http-listen", haddr, "--metrics-listen", maddr), extra...)
	return &httpSidecar{Sidecar: testharness.StartSidecar(t, testharness.BuildSidecar(t), args...), base: "http://" + haddr, metrics: maddr}
}

// httpReply is one HTTP response, its body decoded when it is JSON.
type httpReply struct {
	status int
	header http.Header
	raw    string
	json   map[string]any
}

// do sends method path with body (no body when ""), authorised with token
// ("" for none).
func (s *httpSidecar) do(t *testing.T, token, method, path, body string) httpReply {
	t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctxT(t, time.Minute), method, s.base+path, rd)
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	r := httpReply{status: resp.StatusCode, header: resp.Header, raw: string(raw)}
	if strings.HasPrefix(resp.Header.Get("Content-Type"), "application/json") {
		if err := json.Unmarshal(raw, &r.json); err != nil {
			t.Fatalf("%s %s: body is not JSON: %v\n%s", method, path, err, raw)
		}
	}
	return r
}

// field is the value at a dotted path of the reply's JSON ("lease.leaseId";
// a number indexes an array), formatted with %v; "" when absent.
func (r httpReply) field(path string) string {
	var v any = r.json
	for _, p := range strings.Split(path, ".") {
		switch x := v.(type) {
		case map[string]any:
			v = x[p]
		case []any:
			var i int
			if _, err := fmt.Sscan(p, &i); err != nil || i >= len(x) {
				return ""
			}
			v = x[i]
		default:
			return ""
		}
	}
	if v == nil {
		return ""
	}
	return fmt.Sprint(v)
}

// reason is the ErrorInfo reason of an error reply.
func (r httpReply) reason() string {
	details, _ := r.json["details"].([]any)
	for _, d := range details {
		if m, ok := d.(map[string]any); ok && m["@type"] == "type.googleapis.com/google.rpc.ErrorInfo" {
			return fmt.Sprint(m["reason"])
		}
	}
	return ""
}

// httpStep is one request of TestHTTPRoutes. Path and body may name the
// values saved by earlier steps as {name}.
type httpStep struct {
	name   string
	method string
	path   string
	body   string
	token  string // "" the right token; "none" no header; else this one
	status int
	// want are fields that must have these values ("lease.key": "a/b").
	want map[string]string
	// reason is the ErrorInfo reason an error must carry.
	reason string
	// retryAfter: the reply must carry a Retry-After header.
	retryAfter bool
	save       map[string]string // name -> field path
}

// TestHTTPRoutes drives every HTTP/JSON route of the real binary on Redis
// (docs/http.md): each route's success, the error statuses (400, 401,
// 404, 405, 409, 412, 413, 503 with Retry-After), and keys with '/', '%',
// ':' and non-ASCII letters.
func TestHTTPRoutes(t *testing.T) {
	echo := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, r.Method+" "+r.URL.Path)
	}))
	t.Cleanup(echo.Close)
	refused := closedAddr(t)
	s := startHTTPSidecar(t, fmt.Sprintf(`
breakers:
  down: {consecutive_failures: 1, open_duration: 1h}
upstreams:
  echo: {url: %q}
  down: {url: "http://%s", timeout: 2s, retry: {max_attempts: 1}}
events:
  topics: [orders]
ratelimits:
  api: {rate: 1, period: 1h, burst: 1}
`, echo.URL, refused))

	// The key "orders/42/é%x:y" in a URL: '/' as is, the rest escaped.
	const key, keyPath = "orders/42/é%x:y", "orders/42/%C3%A9%25x%3Ay"
	big := `{"owner":"` + strings.Repeat("x", 70000) + `"}`
	steps := []httpStep{
		// Locks.
		{name: "lock acquire", method: "POST", path: "/v1/locks/" + keyPath + ":acquire", body: `{"ttl":"30s","owner":"curl"}`, status: 200,
			want: map[string]string{"acquired": "true", "lease.key": key, "lease.owner": "curl"}, save: map[string]string{"lease": "lease.leaseId", "token": "lease.fencingToken"}},
		{name: "lock get", method: "GET", path: "/v1/locks/" + keyPath, status: 200, want: map[string]string{"held": "true", "holder.owner": "curl", "holder.fencingToken": "{token}"}},
		{name: "lock get, key unescaped but ':'", method: "GET", path: "/v1/locks/orders/42/é%25x%3Ay", status: 200, want: map[string]string{"held": "true"}},
		{name: "lock busy", method: "POST", path: "/v1/locks/" + keyPath + ":acquire", body: `{"ttl":"30s"}`, status: 200, want: map[string]string{"acquired": "false", "holder.fencingToken": "{token}"}},
		{name: "lock renew", method: "POST", path: "/v1/locks/" + keyPath + ":renew", body: `{"leaseId":"{lease}","ttl":"60s"}`, status: 200},
		{name: "lock release, wrong lease: 412", method: "POST", path: "/v1/locks/" + keyPath + ":release", body: `{"leaseId":"00000000000000000000000000000000"}`, status: 412, reason: "LEASE_LOST"},
		{name: "lock release", method: "POST", path: "/v1/locks/" + keyPath + ":release", body: `{"leaseId":"{lease}"}`, status: 200},
		{name: "lock free", method: "GET", path: "/v1/locks/" + keyPath, status: 200, want: map[string]string{"held": "false", "lastFencingToken": "{token}"}},
		{name: "'%2F' is '/'", method: "POST", path: "/v1/locks/a%2Fb:acquire", body: `{"ttl":"30s"}`, status: 200, want: map[string]string{"lease.key": "a/b"}},
		{name: "key with ':' unescaped", method: "POST", path: "/v1/locks/a:b:acquire", body: `{"ttl":"30s"}`, status: 200, want: map[string]string{"lease.key": "a:b"}},
		{name: "no token: 401", method: "POST", path: "/v1/locks/k:acquire", body: `{"ttl":"30s"}`, token: "none", status: 401},
		{name: "wrong token: 401", method: "POST", path: "/v1/locks/k:acquire", body: `{"ttl":"30s"}`, token: "nope", status: 401},
		{name: "invalid field: 400", method: "POST", path: "/v1/locks/k:acquire", body: `{"ttl":"-1s"}`, status: 400, want: map[string]string{"details.0.fieldViolations.0.field": "ttl"}},
		{name: "invalid JSON: 400", method: "POST", path: "/v1/locks/k:acquire", body: `{"ttl":`, status: 400},
		{name: "wrong type: 400", method: "POST", path: "/v1/locks/k:acquire", body: `{"owner":1}`, status: 400},
		{name: "body over the limit: 413", method: "POST", path: "/v1/locks/k:acquire", body: big, status: 413, reason: "LIMIT_EXCEEDED"},
		{name: "method not allowed: 405", method: "DELETE", path: "/v1/locks/k", status: 405},
		{name: "unknown route: 404", method: "GET", path: "/v1/nothing/here", status: 404},
		{name: "gRPC path: 404", method: "POST", path: "/resilience.v1.LockService/GetLock", body: `{}`, status: 404},
		// Semaphores.
		{name: "permit acquire", method: "POST", path: "/v1/semaphores/db/pool:acquire", body: `{"limit":1,"ttl":"30s"}`, status: 200,
			want: map[string]string{"acquired": "true", "permit.name": "db/pool"}, save: map[string]string{"permit": "permit.permitId"}},
		{name: "permit full", method: "POST", path: "/v1/semaphores/db/pool:acquire", body: `{"limit":1,"ttl":"30s"}`, status: 200, want: map[string]string{"acquired": "false"}},
		{name: "semaphore get", method: "GET", path: "/v1/semaphores/db/pool", status: 200},
		{name: "permit renew", method: "POST", path: "/v1/semaphores/db/pool:renew", body: `{"permitId":"{permit}","ttl":"30s"}`, status: 200},
		{name: "permit release", method: "POST", path: "/v1/semaphores/db/pool:release", body: `{"permitId":"{permit}"}`, status: 200},
		{name: "permit release again: 412", method: "POST", path: "/v1/semaphores/db/pool:release", body: `{"permitId":"{permit}"}`, status: 412, reason: "LEASE_LOST"},
		// Idempotency.
		{name: "idem start", method: "POST", path: "/v1/idempotency/pay/ü%25:check", body: `{"fingerprint":"f1","leaseTtl":"30s","retention":"3600s"}`, status: 200,
			want: map[string]string{"outcome": "OUTCOME_STARTED"}, save: map[string]string{"ilease": "leaseId"}},
		{name: "idem checkpoint", method: "POST", path: "/v1/idempotency/pay/ü%25:checkpoint", body: `{"leaseId":"{ilease}","recoveryPoint":"charged","data":"aGk="}`, status: 200},
		{name: "idem get", method: "GET", path: "/v1/idempotency/pay/ü%25?fingerprint=f1", status: 200, want: map[string]string{"state": "STATE_IN_PROGRESS", "fingerprintMatch": "true", "recoveryPoint": "charged"}},
		{name: "idem complete", method: "POST", path: "/v1/idempotency/pay/ü%25:complete", body: `{"leaseId":"{ilease}","result":{"data":"b2s=","metadata":{"status":"201"}}}`, status: 200},
		{name: "idem replay", method: "POST", path: "/v1/idempotency/pay/ü%25:check", body: `{"fingerprint":"f1"}`, status: 200,
			want: map[string]string{"outcome": "OUTCOME_COMPLETED", "result.data": "b2s=", "result.metadata.status": "201"}},
		{name: "idem other fingerprint: 412", method: "POST", path: "/v1/idempotency/pay/ü%25:check", body: `{"fingerprint":"f2"}`, status: 412, reason: "IDEMPOTENCY_KEY_MISMATCH"},
		{name: "idem start 2", method: "POST", path: "/v1/idempotency/k2:check", body: `{"leaseTtl":"30s"}`, status: 200, save: map[string]string{"ilease2": "leaseId"}},
		{name: "idem release", method: "POST", path: "/v1/idempotency/k2:release", body: `{"leaseId":"{ilease2}"}`, status: 200},
		// Clocks.
		{name: "lamport next", method: "POST", path: "/v1/clocks/tenant/a:next", body: `{"count":3}`, status: 200, want: map[string]string{"first": "1", "last": "3"}},
		{name: "lamport observe", method: "POST", path: "/v1/clocks/tenant/a:observe", body: `{"timestamp":"100"}`, status: 200, want: map[string]string{"timestamp": "101"}},
		{name: "lamport get", method: "GET", path: "/v1/clocks/tenant/a", status: 200, want: map[string]string{"timestamp": "101"}},
		{name: "ulids", method: "POST", path: "/v1/ulids:next", body: `{"count":2}`, status: 200, save: map[string]string{"ulid": "ulids.1.value"}},
		{name: "hlc now, no body", method: "POST", path: "/v1/hlc:now", status: 200, save: map[string]string{"hlc": "timestamp.text"}},
		{name: "hlc update", method: "POST", path: "/v1/hlc:update", body: `{"text":"{hlc}"}`, status: 200},
		// Breakers and upstreams.
		{name: "breaker allow", method: "POST", path: "/v1/breakers/pay/eu:allow", body: `{}`, status: 200, want: map[string]string{"allowed": "true"}, save: map[string]string{"permitId": "permitId"}},
		{name: "breaker report", method: "POST", path: "/v1/breakers:report", body: `{"permitId":"{permitId}","outcome":"CALL_OUTCOME_SUCCESS"}`, status: 200, want: map[string]string{"counted": "true"}},
		{name: "breaker report again: 412", method: "POST", path: "/v1/breakers:report", body: `{"permitId":"{permitId}","outcome":"CALL_OUTCOME_SUCCESS"}`, status: 412, reason: "PERMIT_UNKNOWN"},
		{name: "breaker get", method: "GET", path: "/v1/breakers/pay/eu", status: 200, want: map[string]string{"breaker.name": "pay/eu", "breaker.state": "BREAKER_STATE_CLOSED"}},
		{name: "breakers list", method: "GET", path: "/v1/breakers?pageSize=10", status: 200},
		{name: "breaker reset", method: "POST", path: "/v1/breakers/pay/eu:reset", body: `{"reason":"test"}`, status: 200},
		{name: "execute", method: "POST", path: "/v1/upstreams/echo:execute", body: `{"method":"POST","path":"/x"}`, status: 200,
			want: map[string]string{"status": "200", "body": "UE9TVCAveA=="}}, // "POST /x"
		{name: "execute refused: 503", method: "POST", path: "/v1/upstreams/down:execute", body: `{}`, status: 503, reason: "UPSTREAM_UNAVAILABLE"},
		{name: "execute, breaker open: 503 + Retry-After", method: "POST", path: "/v1/upstreams/down:execute", body: `{}`, status: 503, reason: "BREAKER_OPEN", retryAfter: true},
		{name: "execute unknown upstream: 400", method: "POST", path: "/v1/upstreams/nope:execute", body: `{}`, status: 400, reason: "UPSTREAM_UNKNOWN"},
		// Sagas.
		{name: "saga start", method: "POST", path: "/v1/sagas", body: `{"sagaId":"trip/1","name":"trip","timeout":"3600s"}`, status: 200, want: map[string]string{"created": "true", "saga.sagaId": "trip/1"}},
		{name: "saga step", method: "POST", path: "/v1/sagas/trip/1:recordStep", body: `{"step":"hotel","compensation":{"upstream":"echo","method":"POST","path":"/undo"}}`, status: 200},
		{name: "saga get", method: "GET", path: "/v1/sagas/trip/1", status: 200, want: map[string]string{"saga.name": "trip"}},
		{name: "sagas list", method: "GET", path: "/v1/sagas", status: 200},
		{name: "saga complete", method: "POST", path: "/v1/sagas/trip/1:complete", body: `{}`, status: 200},
		{name: "saga abort after complete: 412", method: "POST", path: "/v1/sagas/trip/1:abort", body: `{"reason":"x"}`, status: 412, reason: "SAGA_STATE_CONFLICT"},
		{name: "saga retry compensation after complete: 412", method: "POST", path: "/v1/sagas/trip/1:retryCompensation", body: `{}`, status: 412, reason: "SAGA_STATE_CONFLICT"},
		{name: "saga id taken by another saga: 409", method: "POST", path: "/v1/sagas", body: `{"sagaId":"trip/1","name":"other","timeout":"3600s"}`, status: 409, reason: "SAGA_STATE_CONFLICT"},
		{name: "saga unknown: 404", method: "GET", path: "/v1/sagas/nope", status: 404, reason: "SAGA_NOT_FOUND"},
		{name: "saga start 2", method: "POST", path: "/v1/sagas", body: `{"sagaId":"trip/2","name":"trip","timeout":"3600s"}`, status: 200},
		{name: "saga abort", method: "POST", path: "/v1/sagas/trip/2:abort", body: `{"reason":"user cancelled"}`, status: 200},
		// Events.
		{name: "publish", method: "POST", path: "/v1/topics/orders:publish", body: `{"key":"o1","payload":"e30=","idempotencyKey":"p1"}`, status: 200, save: map[string]string{"event": "eventId"}},
		{name: "publish again: duplicate", method: "POST", path: "/v1/topics/orders:publish", body: `{"key":"o1","payload":"e30=","idempotencyKey":"p1"}`, status: 200, want: map[string]string{"duplicate": "true", "eventId": "{event}"}},
		{name: "publish unknown topic: 404", method: "POST", path: "/v1/topics/nope:publish", body: `{}`, status: 404, reason: "TOPIC_UNKNOWN"},
		{name: "ack", method: "POST", path: "/v1/topics/orders:ack", body: `{"group":"g","eventId":"{event}"}`, status: 200},
		{name: "nack", method: "POST", path: "/v1/topics/orders:nack", body: `{"group":"g","eventId":"{event}"}`, status: 200},
		{name: "subscribe, bad query: 400", method: "GET", path: "/v1/topics/orders:subscribe?maxInFlight=x", status: 400},
		{name: "outbox status", method: "GET", path: "/v1/outbox", status: 200, want: map[string]string{"enabled": "false"}},
		{name: "outbox retry, no outbox: 412", method: "POST", path: "/v1/outbox:retryRefused", status: 412},
		// Rate limits.
		{name: "take", method: "POST", path: "/v1/limiters/api/keys/user/7:take", body: `{}`, status: 200, want: map[string]string{"allowed": "true"}},
		{name: "take again: refused", method: "POST", path: "/v1/limiters/api/keys/user/7:take", body: `{}`, status: 200, want: map[string]string{"allowed": "false"}},
		{name: "limit get", method: "GET", path: "/v1/limiters/api/keys/user/7", status: 200, want: map[string]string{"limiter.name": "api", "allowed": "false"}},
		{name: "take unknown limiter: 404", method: "POST", path: "/v1/limiters/nope/keys/k:take", body: `{}`, status: 404, reason: "LIMITER_UNKNOWN"},
		// The document.
		{name: "openapi", method: "GET", path: "/openapi.json", token: "none", status: 200, want: map[string]string{"openapi": "3.0.3"}},
	}
	saved := map[string]string{}
	for _, st := range steps {
		t.Run(st.name, func(t *testing.T) {
			var subst []string
			for k, v := range saved {
				subst = append(subst, "{"+k+"}", v)
			}
			r := strings.NewReplacer(subst...)
			token := httpToken
			switch st.token {
			case "":
			case "none":
				token = ""
			default:
				token = st.token
			}
			rep := s.do(t, token, st.method, r.Replace(st.path), r.Replace(st.body))
			if rep.status != st.status {
				t.Fatalf("status %d, want %d\n%s", rep.status, st.status, rep.raw)
			}
			if rep.json == nil {
				t.Fatalf("reply is not JSON (Content-Type %q):\n%s", rep.header.Get("Content-Type"), rep.raw)
			}
			if st.status >= 400 {
				if rep.field("code") == "" || rep.field("message") == "" {
					t.Errorf("error body is not a google.rpc.Status: %s", rep.raw)
				}
				if st.reason != "" && rep.reason() != st.reason {
					t.Errorf("reason %q, want %q: %s", rep.reason(), st.reason, rep.raw)
				}
			}
			if got := rep.header.Get("Retry-After"); (got != "") != st.retryAfter {
				t.Errorf("Retry-After %q, want one: %v", got, st.retryAfter)
			}
			for f, want := range st.want {
				if got := rep.field(f); got != r.Replace(want) {
					t.Errorf("%s = %q, want %q\n%s", f, got, r.Replace(want), rep.raw)
				}
			}
			for name, f := range st.save {
				if saved[name] = rep.field(f); saved[name] == "" {
					t.Fatalf("no %s in %s", f, rep.raw)
				}
			}
		})
	}

	// Every route of the OpenAPI document was served (its RPC ran), as the
	// per-route metrics count it; and the gRPC series count the calls.
	scrape := scrapeText(t, s.metrics)
	ok := map[string]bool{}
	for _, m := range regexp.MustCompile(`resilience_http_requests_total\{code="\d+",route="([^"]+)"\}`).FindAllStringSubmatch(scrape, -1) {
		ok[strings.ReplaceAll(m[1], "=**", "")] = true
	}
	doc := s.do(t, "", "GET", "/openapi.json", "")
	paths, _ := doc.json["paths"].(map[string]any)
	n := 0
	for p, ops := range paths {
		for m := range ops.(map[string]any) {
			n++
			if !ok[strings.ToUpper(m)+" "+p] {
				t.Errorf("route %s %s was not requested", strings.ToUpper(m), p)
			}
		}
	}
	if n != 40 {
		t.Errorf("the document has %d routes, want every unary RPC's (39) and Subscribe's", n)
	}
	for _, want := range []string{
		`resilience_http_requests_total{code="412",route="POST /v1/locks/{key=**}:release"}`,
		`resilience_http_requests_total{code="404",route="unmatched"}`,
		`resilience_http_requests_total{code="413",route="unmatched"}`, // refused before routing
		`resilience_http_request_duration_seconds_count{route="GET /v1/locks/{key=**}"}`,
		`grpc_server_handled_total{grpc_code="FailedPrecondition",grpc_method="ReleaseLock"`,
	} {
		if !strings.Contains(scrape, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
}

// closedAddr is a loopback address nothing listens on.
func closedAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

// scrapeText is the sidecar's /metrics text.
func scrapeText(t *testing.T, addr string) string {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatalf("scrape: %v", err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestHTTPAndGRPCShareState: one scenario through both protocols gives
// one state, since both run the same handlers on the same store: a lock
// taken over HTTP refuses a gRPC acquirer (and the reverse), and an
// idempotency key completed over gRPC replays its result over HTTP.
func TestHTTPAndGRPCShareState(t *testing.T) {
	s := startHTTPSidecar(t, "")
	ctx := metadata.AppendToOutgoingContext(ctxT(t, time.Minute), "authorization", "Bearer "+httpToken)
	locks := v1.NewLockServiceClient(s.Conn(t))
	idem := v1.NewIdempotencyServiceClient(s.Conn(t))

	// A lock taken over HTTP blocks gRPC.
	got := s.do(t, httpToken, "POST", "/v1/locks/shared/é:acquire", `{"ttl":"30s","owner":"http"}`)
	if got.status != 200 || got.field("acquired") != "true" {
		t.Fatalf("HTTP acquire: %d %s", got.status, got.raw)
	}
	tok := got.field("lease.fencingToken")
	r, err := locks.AcquireLock(ctx, &v1.AcquireLockRequest{Key: "shared/é", Ttl: durationpb.New(30 * time.Second), Owner: "grpc"})
	if err != nil || r.GetAcquired() || r.GetHolder().GetOwner() != "http" || strconv.FormatUint(r.GetHolder().GetFencingToken(), 10) != tok {
		t.Fatalf("gRPC acquire of the HTTP-held lock: %v, %v; want refused, holder http with token %s", r, err, tok)
	}
	if rel := s.do(t, httpToken, "POST", "/v1/locks/shared/é:release", `{"leaseId":"`+got.field("lease.leaseId")+`"}`); rel.status != 200 {
		t.Fatalf("HTTP release: %d %s", rel.status, rel.raw)
	}
	r, err = locks.AcquireLock(ctx, &v1.AcquireLockRequest{Key: "shared/é", Ttl: durationpb.New(30 * time.Second), Owner: "grpc"})
	if first, _ := strconv.ParseUint(tok, 10, 64); err != nil || !r.GetAcquired() || r.GetLease().GetFencingToken() <= first {
		t.Fatalf("gRPC acquire after the HTTP release: %v, %v; want a grant with a token above %s", r, err, tok)
	}
	// ... and the reverse: the gRPC holder blocks HTTP.
	if busy := s.do(t, httpToken, "POST", "/v1/locks/shared/%C3%A9:acquire", `{"ttl":"30s"}`); busy.field("acquired") != "false" || busy.field("holder.owner") != "grpc" {
		t.Fatalf("HTTP acquire of the gRPC-held lock: %d %s", busy.status, busy.raw)
	}
	// An HTTP release of the gRPC lease works: a lease is the store's.
	if rel := s.do(t, httpToken, "POST", "/v1/locks/shared/é:release", `{"leaseId":"`+r.GetLease().GetLeaseId()+`"}`); rel.status != 200 {
		t.Fatalf("HTTP release of the gRPC lease: %d %s", rel.status, rel.raw)
	}

	// An idempotency key completed over gRPC replays over HTTP.
	st, err := idem.CheckOrRecordIdempotency(ctx, &v1.CheckOrRecordIdempotencyRequest{Key: "pay/1", Fingerprint: "f", LeaseTtl: durationpb.New(30 * time.Second)})
	if err != nil || st.GetOutcome() != v1.CheckOrRecordIdempotencyResponse_OUTCOME_STARTED {
		t.Fatalf("gRPC check: %v, %v", st, err)
	}
	if inProgress := s.do(t, httpToken, "POST", "/v1/idempotency/pay/1:check", `{"fingerprint":"f"}`); inProgress.field("outcome") != "OUTCOME_IN_PROGRESS" {
		t.Fatalf("HTTP check while gRPC holds the lease: %s", inProgress.raw)
	}
	if _, err := idem.CompleteIdempotency(ctx, &v1.CompleteIdempotencyRequest{Key: "pay/1", LeaseId: st.GetLeaseId(),
		Result: &v1.IdempotencyResult{Data: []byte("receipt-7"), Metadata: map[string]string{"status": "201"}}}); err != nil {
		t.Fatalf("gRPC complete: %v", err)
	}
	replay := s.do(t, httpToken, "POST", "/v1/idempotency/pay/1:check", `{"fingerprint":"f"}`)
	if replay.field("outcome") != "OUTCOME_COMPLETED" || replay.field("result.data") != base64.StdEncoding.EncodeToString([]byte("receipt-7")) ||
		replay.field("result.metadata.status") != "201" {
		t.Fatalf("HTTP replay of the gRPC result: %d %s", replay.status, replay.raw)
	}
}

// TestHTTPAdmissionLimit: the gRPC server's admission limits apply to
// HTTP calls, as 429 with the limit named: with max_waiters 1, a second
// waiter is refused while the first waits.
func TestHTTPAdmissionLimit(t *testing.T) {
	s := startHTTPSidecar(t, "", "--max-waiters", "1")
	held := s.do(t, httpToken, "POST", "/v1/locks/busy:acquire", `{"ttl":"60s"}`)
	if held.field("acquired") != "true" {
		t.Fatalf("acquire: %s", held.raw)
	}
	var wg sync.WaitGroup
	var waiter httpReply
	wg.Add(1)
	go func() {
		defer wg.Done()
		// Refused while a probe below holds the one waiter slot: again.
		for waiter.status == 0 || waiter.status == http.StatusTooManyRequests {
			waiter = s.do(t, httpToken, "POST", "/v1/locks/busy:acquire", `{"ttl":"60s","waitTimeout":"60s"}`)
		}
	}()
	var refused httpReply
	testkit.Eventually(t, 30*time.Second, "a second waiter refused with 429", func() bool {
		refused = s.do(t, httpToken, "POST", "/v1/locks/busy:acquire", `{"ttl":"60s","waitTimeout":"0.2s"}`)
		return refused.status == http.StatusTooManyRequests
	})
	if refused.reason() != "LIMIT_EXCEEDED" || !strings.Contains(refused.raw, "max_waiters") {
		t.Errorf("429 body: %s", refused.raw)
	}
	if hasRetry := strings.Contains(refused.raw, "google.rpc.RetryInfo"); hasRetry != (refused.header.Get("Retry-After") != "") {
		t.Errorf("Retry-After %q does not follow the RetryInfo of %s", refused.header.Get("Retry-After"), refused.raw)
	}
	if rel := s.do(t, httpToken, "POST", "/v1/locks/busy:release", `{"leaseId":"`+held.field("lease.leaseId")+`"}`); rel.status != 200 {
		t.Fatalf("release: %s", rel.raw)
	}
	wg.Wait()
	if waiter.field("acquired") != "true" {
		t.Fatalf("the first waiter: %d %s", waiter.status, waiter.raw)
	}
}

// TestHTTPUnixSocket: --http-listen unix:///path serves the same API on a
// unix socket.
func TestHTTPUnixSocket(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "http.sock")
	sc := testharness.StartSidecar(t, testharness.BuildSidecar(t), "--http-listen", "unix://"+sock)
	c := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", sock)
	}}}
	t.Cleanup(c.CloseIdleConnections)
	_ = sc
	resp, err := c.Post("http://sidecar/v1/clocks/c:next", "application/json", strings.NewReader(`{"count":2}`))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 || !strings.Contains(string(b), `"last":"2"`) {
		t.Fatalf("%d %s", resp.StatusCode, b)
	}
}

// TestShellExample runs examples/shell/lock-and-charge.sh (bash, curl, jq)
// twice against the real binary on Redis, with a bearer token: each run
// takes the lock and writes under a larger fencing token; the charge runs
// once and the second run replays its receipt.
func TestShellExample(t *testing.T) {
	for _, tool := range []string{"curl", "jq"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s not on PATH (run scripts/ensure-jq.sh, or make tools): %v", tool, err)
		}
	}
	s := startHTTPSidecar(t, "")
	script := filepath.Join(moduleRoot(t), "examples", "shell", "lock-and-charge.sh")
	data := t.TempDir()
	run := func() string {
		t.Helper()
		cmd := exec.Command("bash", script, data)
		cmd.Env = append(os.Environ(), "SIDECAR="+s.base, "SIDECAR_TOKEN="+httpToken)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("%s: %v\n%s", script, err, out)
		}
		return string(out)
	}
	tokenRe := regexp.MustCompile(`lock: acquired reports/daily with fencing token (\d+)`)
	receiptRe := regexp.MustCompile(`receipt (ch_\d+)`)
	first, second := run(), run()
	var tokens [2]uint64
	for i, out := range []string{first, second} {
		m := tokenRe.FindStringSubmatch(out)
		if m == nil || !strings.Contains(out, "storage: wrote report with fencing token "+m[1]) || !strings.Contains(out, "lock: released reports/daily") {
			t.Fatalf("run %d: no fenced write under the lock:\n%s", i+1, out)
		}
		tokens[i], _ = strconv.ParseUint(m[1], 10, 64)
	}
	if tokens[1] <= tokens[0] {
		t.Errorf("fencing tokens %d then %d: not increasing", tokens[0], tokens[1])
	}
	r1, r2 := receiptRe.FindStringSubmatch(first), receiptRe.FindStringSubmatch(second)
	if !strings.Contains(first, "charge: done once") || !strings.Contains(second, "charge: replayed") || r1 == nil || r2 == nil || r1[1] != r2[1] {
		t.Fatalf("the charge did not run once and replay:\n--- run 1 ---\n%s--- run 2 ---\n%s", first, second)
	}
	charges, err := os.ReadFile(filepath.Join(data, "charges.log"))
	if err != nil || strings.Count(string(charges), "\n") != 1 {
		t.Fatalf("charges.log %q, %v: want one charge", charges, err)
	}
	// The storage refuses a write under the older token.
	if err := os.WriteFile(filepath.Join(data, "fence"), []byte(strconv.FormatUint(tokens[1]+1000000000, 10)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("bash", script, data)
	cmd.Env = append(os.Environ(), "SIDECAR="+s.base, "SIDECAR_TOKEN="+httpToken)
	out, err := cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(out), "storage: refused a write with stale fencing token") || !strings.Contains(string(out), "lock: released reports/daily") {
		t.Fatalf("a stale token was not refused (or the lock not released): %v\n%s", err, out)
	}
}

// TestHTTPShutdown: at SIGTERM an HTTP call waiting for a lock is answered
// 503 SHUTTING_DOWN with Retry-After (the HTTP front drains before gRPC,
// which would cut it), and the process exits 0.
func TestHTTPShutdown(t *testing.T) {
	s := startHTTPSidecar(t, "")
	if r := s.do(t, httpToken, "POST", "/v1/locks/w:acquire", `{"ttl":"60s"}`); r.field("acquired") != "true" {
		t.Fatalf("acquire: %s", r.raw)
	}
	done := make(chan httpReply, 1)
	go func() { done <- s.do(t, httpToken, "POST", "/v1/locks/w:acquire", `{"ttl":"60s","waitTimeout":"60s"}`) }()
	// Signal once the waiter's call has started in the server (a call
	// that has not reached its wait when shutdown begins is refused with
	// SHUTTING_DOWN as well).
	testkit.Eventually(t, 30*time.Second, "the HTTP waiter waits", func() bool {
		return metricCount(scrapeText(t, s.metrics), `grpc_server_started_total{grpc_method="AcquireLock"`) >= 2
	})
	s.Signal(syscall.SIGTERM)
	r := <-done
	if r.status != http.StatusServiceUnavailable || r.reason() != "SHUTTING_DOWN" || r.header.Get("Retry-After") == "" {
		t.Fatalf("waiter at shutdown: %d %v %s", r.status, r.header, r.raw)
	}
	if code, err := s.Wait(30 * time.Second); err != nil || code != 0 {
		t.Fatalf("exit %d, %v", code, err)
	}
}

// metricCount sums the samples of the series whose line starts with prefix.
func metricCount(scrape, prefix string) float64 {
	var sum float64
	for _, line := range strings.Split(scrape, "\n") {
		if strings.HasPrefix(line, prefix) {
			if i := strings.LastIndexByte(line, ' '); i > 0 {
				v, _ := strconv.ParseFloat(line[i+1:], 64)
				sum += v
			}
		}
	}
	return sum
}

// TestHTTPSubscribe: Subscribe as server-sent events, with ack and nack
// by HTTP calls: the stream says it subscribed, delivers what was
// published, redelivers a nacked event, and an unauthorised or bad
// request is an HTTP error before any event.
func TestHTTPSubscribe(t *testing.T) {
	s := startHTTPSidecar(t, "events:\n  topics: [orders.eu]\n")
	for _, k := range []string{"a", "b"} {
		if r := s.do(t, httpToken, "POST", "/v1/topics/orders.eu:publish", `{"key":"`+k+`","payload":"e30="}`); r.status != 200 {
			t.Fatalf("publish: %s", r.raw)
		}
	}
	const sub = "/v1/topics/orders.eu:subscribe?group=g&consumer=c1&startFrom=START_FROM_EARLIEST&visibilityTimeout=60s"
	if r := s.do(t, "", "GET", sub, ""); r.status != 401 {
		t.Fatalf("without a token: %d %s", r.status, r.raw)
	}
	if r := s.do(t, httpToken, "GET", sub+"&maxInFlight=x", ""); r.status != 400 {
		t.Fatalf("bad query: %d %s", r.status, r.raw)
	}
	ctx, cancel := context.WithCancel(ctxT(t, time.Minute))
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, "GET", s.base+sub, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+httpToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "text/event-stream" {
		t.Fatalf("subscribe: %d %v", resp.StatusCode, resp.Header)
	}
	events := bufio.NewReader(resp.Body)
	next := func() (name string, data map[string]any) {
		t.Helper()
		for {
			line, err := events.ReadString('\n')
			if err != nil {
				t.Fatalf("event stream: %v", err)
			}
			line = strings.TrimRight(line, "\n")
			switch {
			case strings.HasPrefix(line, "event: "):
				name = strings.TrimPrefix(line, "event: ")
			case strings.HasPrefix(line, "data: "):
				if err := json.Unmarshal([]byte(strings.TrimPrefix(line, "data: ")), &data); err != nil {
					t.Fatalf("data %q: %v", line, err)
				}
			case line == "" && name != "":
				return name, data
			}
		}
	}
	if name, _ := next(); name != "subscribed" {
		t.Fatalf("first event %q, want subscribed", name)
	}
	var ids []string
	for _, want := range []string{"a", "b"} {
		name, ev := next()
		if name != "event" || ev["key"] != want || ev["topic"] != "orders.eu" {
			t.Fatalf("event %q %v, want key %s", name, ev, want)
		}
		ids = append(ids, fmt.Sprint(ev["eventId"]))
	}
	if r := s.do(t, httpToken, "POST", "/v1/topics/orders.eu:ack", `{"group":"g","eventId":"`+ids[0]+`"}`); r.field("acked") != "true" {
		t.Fatalf("ack: %s", r.raw)
	}
	if r := s.do(t, httpToken, "POST", "/v1/topics/orders.eu:nack", `{"group":"g","eventId":"`+ids[1]+`"}`); r.field("requeued") != "true" {
		t.Fatalf("nack: %s", r.raw)
	}
	if name, ev := next(); name != "event" || ev["eventId"] != ids[1] || fmt.Sprint(ev["deliveryCount"]) != "2" {
		t.Fatalf("after the nack: %q %v, want %s redelivered", name, ev, ids[1])
	}
	cancel() // the client goes away: the subscription ends
	testkit.Eventually(t, 30*time.Second, "the subscription ends with its client", func() bool {
		return strings.Contains(scrapeText(t, s.metrics), `resilience_http_requests_total{code="200",route="GET /v1/topics/{topic=**}:subscribe"} 1`)
	})
}

// TestHTTPTraceparent: a traceparent header is the call's parent trace
// context, as gRPC metadata is: the call's log record carries its trace id.
func TestHTTPTraceparent(t *testing.T) {
	s := startHTTPSidecar(t, "")
	const traceID = "4bf92f3577b34da6a3ce929d0e0e4736"
	req, err := http.NewRequestWithContext(ctxT(t, time.Minute), "POST", s.base+"/v1/locks/k:release", strings.NewReader(`{"leaseId":"00000000000000000000000000000000"}`))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+httpToken)
	req.Header.Set("Traceparent", "00-"+traceID+"-00f067aa0ba902b7-01")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusPreconditionFailed {
		t.Fatalf("status %d", resp.StatusCode)
	}
	// The record is written as the call ends, which may be just after the
	// response reached the client.
	testkit.Eventually(t, 10*time.Second, "the call's log record with its trace id", func() bool {
		for _, line := range strings.Split(s.Log(), "\n") {
			if strings.Contains(line, `"grpc.method":"ReleaseLock"`) && strings.Contains(line, `"trace_id":"`+traceID+`"`) {
				return true
			}
		}
		return false
	})
}
