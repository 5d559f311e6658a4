package api_test

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"
	"google.golang.org/protobuf/types/known/durationpb"

	v1 "github.com/seed-a88e5317/resilience-sidecar/clients/go/resiliencev1"
	"github.com/seed-a88e5317/resilience-sidecar/internal/api"
	"github.com/seed-a88e5317/resilience-sidecar/internal/breaker"
	"github.com/seed-a88e5317/resilience-sidecar/internal/testharness"
	"github.com/seed-a88e5317/resilience-sidecar/internal/testkit"
	"github.com/seed-a88e5317/resilience-sidecar/internal/upstream"
)

type brkSidecar struct {
	client v1.BreakerServiceClient
	clk    *testkit.Clock
	svc    *breaker.Service
}

// startBreakers serves the breaker API over bufconn with the given
// policies and upstreams; breaker time is a fake clock.
func startBreakers(t *testing.T, policies map[string]breaker.Policy, ups []upstream.Config, opts ...func(*breaker.Options)) *brkSidecar {
	t.Helper()
	clk := testkit.NewClock()
	bo := breaker.Options{Policies: policies, Now: clk.Now}
	for _, o := range opts {
		o(&bo)
	}
	svc, err := breaker.NewService(bo)
	if err != nil {
		t.Fatal(err)
	}
	caller, err := upstream.New(ups, upstream.Options{Breakers: svc,
		Sleep: func(ctx context.Context, _ time.Duration) error { return ctx.Err() }})
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer()
	v1.RegisterBreakerServiceServer(gs, api.NewBreakerServer(svc, caller, slog.New(slog.DiscardHandler)))
	lis := bufconn.Listen(1 << 20)
	go func() { _ = gs.Serve(lis) }()
	conn, err := grpc.NewClient("passthrough:///bufconn",
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		conn.Close()
		gs.Stop()
		caller.Close()
		svc.Close()
	})
	return &brkSidecar{client: v1.NewBreakerServiceClient(conn), clk: clk, svc: svc}
}

// brkStatus checks err's code and ErrorInfo reason ("" for none).
func brkStatus(t *testing.T, err error, code codes.Code, reason string) *status.Status {
	t.Helper()
	st, _ := status.FromError(err)
	if st.Code() != code {
		t.Fatalf("code = %v (%v), want %v", st.Code(), err, code)
	}
	got := ""
	for _, d := range st.Details() {
		if info, ok := d.(*errdetails.ErrorInfo); ok {
			got = info.GetReason()
			if info.GetDomain() != api.ErrorDomain {
				t.Errorf("domain %q", info.GetDomain())
			}
		}
	}
	if got != reason {
		t.Fatalf("reason = %q, want %q (%v)", got, reason, err)
	}
	return st
}

func brkFields(st *status.Status) []string {
	var out []string
	for _, d := range st.Details() {
		if br, ok := d.(*errdetails.BadRequest); ok {
			for _, v := range br.GetFieldViolations() {
				out = append(out, v.GetField())
			}
		}
	}
	return out
}

func retryDelay(st *status.Status) time.Duration {
	for _, d := range st.Details() {
		if ri, ok := d.(*errdetails.RetryInfo); ok {
			return ri.GetRetryDelay().AsDuration()
		}
	}
	return 0
}

func TestBreakerAPIAllowReport(t *testing.T) {
	sc := startBreakers(t, map[string]breaker.Policy{"pay": {ConsecutiveFailures: 2, OpenDuration: 10 * time.Second}}, nil)
	ctx := rpcCtx(t)
	for i := range 2 {
		a, err := sc.client.AllowCall(ctx, &v1.AllowCallRequest{Breaker: "pay", PermitTtl: durationpb.New(time.Second)})
		if err != nil || !a.GetAllowed() || a.GetPermitId() == "" || a.GetState() != v1.BreakerState_BREAKER_STATE_CLOSED ||
			!a.GetPermitExpireTime().AsTime().Equal(sc.clk.Now().Add(time.Second)) {
			t.Fatalf("AllowCall = %v, %v", a, err)
		}
		r, err := sc.client.ReportCall(ctx, &v1.ReportCallRequest{PermitId: a.GetPermitId(), Outcome: v1.CallOutcome_CALL_OUTCOME_FAILURE,
			Duration: durationpb.New(5 * time.Millisecond)})
		if err != nil || !r.GetCounted() {
			t.Fatalf("ReportCall = %v, %v", r, err)
		}
		if i == 1 && r.GetState() != v1.BreakerState_BREAKER_STATE_OPEN {
			t.Fatalf("after 2 failures: %v", r.GetState())
		}
		// The same permit again: refused, counted once.
		_, err = sc.client.ReportCall(ctx, &v1.ReportCallRequest{PermitId: a.GetPermitId(), Outcome: v1.CallOutcome_CALL_OUTCOME_FAILURE})
		if i == 0 {
			brkStatus(t, err, codes.FailedPrecondition, api.ReasonPermitUnknown)
		}
	}
	a, err := sc.client.AllowCall(ctx, &v1.AllowCallRequest{Breaker: "pay"})
	if err != nil || a.GetAllowed() || a.GetPermitId() != "" || a.GetState() != v1.BreakerState_BREAKER_STATE_OPEN ||
		a.GetRetryAfter().AsDuration() != 10*time.Second {
		t.Fatalf("AllowCall while open = %v, %v; want allowed false with retry_after 10s", a, err)
	}
	g, err := sc.client.GetBreaker(ctx, &v1.GetBreakerRequest{Breaker: "pay"})
	if err != nil {
		t.Fatal(err)
	}
	b := g.GetBreaker()
	if b.GetState() != v1.BreakerState_BREAKER_STATE_OPEN || !b.GetDeclared() || b.GetPolicy().GetConsecutiveFailures() != 2 ||
		!b.GetNextTransitionTime().AsTime().Equal(sc.clk.Now().Add(10*time.Second)) || b.GetPolicy().GetScope() != v1.BreakerScope_BREAKER_SCOPE_LOCAL {
		t.Fatalf("GetBreaker = %v", b)
	}
	rs, err := sc.client.ResetBreaker(ctx, &v1.ResetBreakerRequest{Breaker: "pay", Reason: "upstream fixed"})
	if err != nil || rs.GetBreaker().GetState() != v1.BreakerState_BREAKER_STATE_CLOSED {
		t.Fatalf("ResetBreaker = %v, %v", rs, err)
	}
}

func TestBreakerAPIInvalid(t *testing.T) {
	sc := startBreakers(t, nil, nil)
	ctx := rpcCtx(t)
	cases := []struct {
		name   string
		call   func() error
		fields []string
	}{
		{"allow: empty name, ttl too long", func() error {
			_, err := sc.client.AllowCall(ctx, &v1.AllowCallRequest{PermitTtl: durationpb.New(time.Hour)})
			return err
		}, []string{"breaker", "permit_ttl"}},
		{"allow: name too long", func() error {
			_, err := sc.client.AllowCall(ctx, &v1.AllowCallRequest{Breaker: strings.Repeat("x", 513)})
			return err
		}, []string{"breaker"}},
		{"report: no permit, no outcome, negative duration", func() error {
			_, err := sc.client.ReportCall(ctx, &v1.ReportCallRequest{Duration: durationpb.New(-time.Second)})
			return err
		}, []string{"permit_id", "outcome", "duration"}},
		{"report: garbage permit", func() error {
			_, err := sc.client.ReportCall(ctx, &v1.ReportCallRequest{PermitId: "abc", Outcome: v1.CallOutcome_CALL_OUTCOME_SUCCESS})
			return err
		}, []string{"permit_id"}},
		{"list: page size", func() error {
			_, err := sc.client.ListBreakers(ctx, &v1.ListBreakersRequest{PageSize: 1000, PageToken: "%%%"})
			return err
		}, []string{"page_size", "page_token"}},
		{"execute: empty upstream, bad timeout", func() error {
			_, err := sc.client.ExecuteCall(ctx, &v1.ExecuteCallRequest{Timeout: durationpb.New(time.Hour)})
			return err
		}, []string{"upstream", "timeout"}},
		{"reset: control characters", func() error {
			_, err := sc.client.ResetBreaker(ctx, &v1.ResetBreakerRequest{Breaker: "a\x00b", Reason: "r\n"})
			return err
		}, []string{"breaker", "reason"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			st := brkStatus(t, tc.call(), codes.InvalidArgument, "")
			if got := strings.Join(brkFields(st), ","); got != strings.Join(tc.fields, ",") {
				t.Fatalf("fields = %s, want %s", got, strings.Join(tc.fields, ","))
			}
		})
	}
}

func TestBreakerAPILimit(t *testing.T) {
	sc := startBreakers(t, nil, nil, func(o *breaker.Options) { o.MaxBreakers = 1 })
	ctx := rpcCtx(t)
	if _, err := sc.client.AllowCall(ctx, &v1.AllowCallRequest{Breaker: "a"}); err != nil {
		t.Fatal(err)
	}
	_, err := sc.client.AllowCall(ctx, &v1.AllowCallRequest{Breaker: "b"})
	brkStatus(t, err, codes.ResourceExhausted, api.ReasonLimitExceeded)
}

func TestBreakerAPIList(t *testing.T) {
	sc := startBreakers(t, map[string]breaker.Policy{"declared": {ConsecutiveFailures: 1}}, nil)
	ctx := rpcCtx(t)
	for i := range 4 {
		if _, err := sc.client.AllowCall(ctx, &v1.AllowCallRequest{Breaker: fmt.Sprint("b", i)}); err != nil {
			t.Fatal(err)
		}
	}
	var names []string
	tok := ""
	for {
		r, err := sc.client.ListBreakers(ctx, &v1.ListBreakersRequest{PageSize: 2, PageToken: tok})
		if err != nil {
			t.Fatal(err)
		}
		for _, b := range r.GetBreakers() {
			names = append(names, b.GetName())
		}
		if tok = r.GetNextPageToken(); tok == "" {
			break
		}
	}
	if got := strings.Join(names, ","); got != "b0,b1,b2,b3,declared" {
		t.Fatalf("listed %s", got)
	}
}

func TestBreakerAPIExecuteCall(t *testing.T) {
	var mu sync.Mutex
	code := 200
	hits := 0
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		c := code
		hits++
		mu.Unlock()
		switch r.URL.Path {
		case "/api/big":
			fmt.Fprint(w, strings.Repeat("x", 2048))
			return
		case "/api/slow":
			<-r.Context().Done()
			return
		}
		w.Header().Set("X-Seen-Key", r.Header.Get("Idempotency-Key"))
		w.WriteHeader(c)
		fmt.Fprintf(w, "%s %s", r.Method, r.URL.RequestURI())
	}))
	t.Cleanup(srv.Close)
	dead, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	deadURL := "http://" + dead.Addr().String()
	dead.Close()

	sc := startBreakers(t, map[string]breaker.Policy{"pay": {ConsecutiveFailures: 2, OpenDuration: 7 * time.Second}},
		[]upstream.Config{
			{Name: "pay", URL: srv.URL + "/api", MaxBodyBytes: 1024, Timeout: time.Second},
			{Name: "dead", URL: deadURL, MaxAttempts: 2},
		})
	ctx := rpcCtx(t)

	resp, err := sc.client.ExecuteCall(ctx, &v1.ExecuteCallRequest{Upstream: "pay", Method: "POST", Path: "/orders", Query: "a=1",
		Headers: []*v1.HttpHeader{{Name: "Content-Type", Value: "application/json"}}, Body: []byte(`{}`), IdempotencyKey: "k1"})
	if err != nil || resp.GetStatus() != 200 || string(resp.GetBody()) != "POST /api/orders?a=1" || resp.GetAttempts() != 1 ||
		resp.GetBreakerState() != v1.BreakerState_BREAKER_STATE_CLOSED {
		t.Fatalf("ExecuteCall = %v, %v", resp, err)
	}
	seen := ""
	for _, h := range resp.GetHeaders() {
		if h.GetName() == "X-Seen-Key" {
			seen = h.GetValue()
		}
	}
	if seen != "k1" {
		t.Fatalf("upstream saw Idempotency-Key %q", seen)
	}

	t.Run("refused targets", func(t *testing.T) {
		for _, tc := range []struct {
			req   *v1.ExecuteCallRequest
			field string
		}{
			{&v1.ExecuteCallRequest{Upstream: "nope"}, "upstream"},
			{&v1.ExecuteCallRequest{Upstream: "pay", Path: "/../admin"}, "path"},
			{&v1.ExecuteCallRequest{Upstream: "pay", Path: "http://169.254.169.254/latest"}, "path"},
		} {
			_, err := sc.client.ExecuteCall(ctx, tc.req)
			st := brkStatus(t, err, codes.InvalidArgument, api.ReasonUpstreamUnknown)
			if f := brkFields(st); len(f) != 1 || f[0] != tc.field {
				t.Errorf("%v: fields %v, want %s", tc.req, f, tc.field)
			}
		}
		_, err := sc.client.ExecuteCall(ctx, &v1.ExecuteCallRequest{Upstream: "pay", Method: "POST", Body: make([]byte, 1025)})
		if f := brkFields(brkStatus(t, err, codes.InvalidArgument, "")); len(f) != 1 || f[0] != "body" {
			t.Errorf("oversize body: fields %v", f)
		}
	})
	t.Run("oversize response", func(t *testing.T) {
		_, err := sc.client.ExecuteCall(ctx, &v1.ExecuteCallRequest{Upstream: "pay", Path: "/big"})
		brkStatus(t, err, codes.ResourceExhausted, api.ReasonLimitExceeded)
	})
	t.Run("upstream timeout and no connection", func(t *testing.T) {
		_, err := sc.client.ExecuteCall(ctx, &v1.ExecuteCallRequest{Upstream: "pay", Path: "/slow", Method: "POST"})
		brkStatus(t, err, codes.DeadlineExceeded, api.ReasonUpstreamTimeout)
		_, err = sc.client.ExecuteCall(ctx, &v1.ExecuteCallRequest{Upstream: "dead"})
		st := brkStatus(t, err, codes.Unavailable, api.ReasonUpstreamUnavailable)
		if strings.Contains(st.Message(), deadURL) || !strings.Contains(st.Message(), "2 attempt") {
			t.Errorf("message %q", st.Message())
		}
		if _, err := sc.client.ResetBreaker(ctx, &v1.ResetBreakerRequest{Breaker: "pay"}); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("breaker opens: fast BREAKER_OPEN with RetryInfo", func(t *testing.T) {
		mu.Lock()
		code, hits = 500, 0
		mu.Unlock()
		for range 2 {
			r, err := sc.client.ExecuteCall(ctx, &v1.ExecuteCallRequest{Upstream: "pay"})
			if err != nil || r.GetStatus() != 500 {
				t.Fatalf("%v, %v", r, err)
			}
		}
		_, err := sc.client.ExecuteCall(ctx, &v1.ExecuteCallRequest{Upstream: "pay"})
		st := brkStatus(t, err, codes.Unavailable, api.ReasonBreakerOpen)
		if d := retryDelay(st); d != 7*time.Second {
			t.Fatalf("RetryInfo %v, want 7s (time until half-open)", d)
		}
		mu.Lock()
		if hits != 2 {
			t.Errorf("upstream hits %d, want 2", hits)
		}
		code = 200
		mu.Unlock()
		sc.clk.Advance(7 * time.Second)
		r, err := sc.client.ExecuteCall(ctx, &v1.ExecuteCallRequest{Upstream: "pay"})
		if err != nil || r.GetStatus() != 200 || r.GetBreakerState() != v1.BreakerState_BREAKER_STATE_CLOSED {
			t.Fatalf("probe through half-open: %v, %v", r, err)
		}
	})
}

// FuzzValidateBreaker: the validators never panic and refuse only with
// field violations.
func FuzzValidateBreaker(f *testing.F) {
	f.Add("pay", int64(1), int32(0), "", int32(1), "GET", "/x", "a=1", "k")
	f.Add("", int64(-1), int32(-5), "AQ", int32(0), "get", "../x", "#", "\n")
	f.Add(strings.Repeat("é", 300), int64(700), int32(1), strings.Repeat("A", 2000), int32(9), "POST", "//h", "%zz", strings.Repeat("k", 600))
	f.Fuzz(func(t *testing.T, name string, sec int64, nanos int32, permit string, outcome int32, method, path, query, key string) {
		d := &durationpb.Duration{Seconds: sec, Nanos: nanos}
		check := func(err error) {
			if err == nil {
				return
			}
			st, _ := status.FromError(err)
			if !strings.HasPrefix(err.Error(), "invalid argument: ") || st == nil {
				t.Fatalf("not a violation: %v", err)
			}
		}
		_, err := api.ValidateAllowCall(&v1.AllowCallRequest{Breaker: name, PermitTtl: d})
		check(err)
		_, _, err = api.ValidateReportCall(&v1.ReportCallRequest{PermitId: permit, Outcome: v1.CallOutcome(outcome), Duration: d})
		check(err)
		_, err = api.ValidateExecuteCall(&v1.ExecuteCallRequest{Upstream: name, Method: method, Path: path, Query: query, Timeout: d, IdempotencyKey: key})
		check(err)
	})
}

// waitProbe polls AllowCall until breaker name admits a half-open probe
// (within `within`, far less than the minute-long permit TTL), and reports
// it a success.
func waitProbe(t *testing.T, c v1.BreakerServiceClient, name string, within time.Duration) {
	t.Helper()
	ctx := rpcCtx(t)
	testkit.EventuallyNil(t, within, "a half-open probe admitted (the failed call's permit holds the slot)", func() error {
		a, err := c.AllowCall(ctx, &v1.AllowCallRequest{Breaker: name, PermitTtl: durationpb.New(time.Minute)})
		if err != nil {
			t.Fatal(err)
		}
		if !a.GetAllowed() {
			b, _ := c.GetBreaker(ctx, &v1.GetBreakerRequest{Breaker: name})
			return fmt.Errorf("refused: %v", b.GetBreaker().GetCounts())
		}
		if a.GetState() != v1.BreakerState_BREAKER_STATE_HALF_OPEN {
			t.Fatalf("admitted in %v, want a half-open probe", a.GetState())
		}
		if _, err := c.ReportCall(ctx, &v1.ReportCallRequest{PermitId: a.GetPermitId(), Outcome: v1.CallOutcome_CALL_OUTCOME_SUCCESS}); err != nil {
			t.Fatal(err)
		}
		return nil
	})
}

// TestAllowCallPastDeadlineLeavesNoPermit: AllowCall on a half-open shared
// breaker (one probe) whose Redis is paused: the caller's deadline expires
// with the script sent; when Redis resumes and grants the probe, the
// sidecar hands it back, so the next probe is admitted at once.
func TestAllowCallPastDeadlineLeavesNoPermit(t *testing.T) {
	r := testharness.StartRedis(t)
	pol := breaker.Policy{Scope: breaker.Shared, ConsecutiveFailures: 1, OpenDuration: 200 * time.Millisecond, HalfOpenMaxCalls: 1}
	sc := startBreakers(t, map[string]breaker.Policy{"probe": pol}, nil, func(o *breaker.Options) {
		o.Shared = breaker.NewRedisStore(r.Client(t), "api", 300*time.Millisecond)
		o.RecoveryInterval = 50 * time.Millisecond
	})
	ctx := rpcCtx(t)
	a, err := sc.client.AllowCall(ctx, &v1.AllowCallRequest{Breaker: "probe"})
	if err != nil || !a.GetAllowed() {
		t.Fatalf("AllowCall = %v, %v", a, err)
	}
	if _, err := sc.client.ReportCall(ctx, &v1.ReportCallRequest{PermitId: a.GetPermitId(), Outcome: v1.CallOutcome_CALL_OUTCOME_FAILURE}); err != nil {
		t.Fatal(err)
	}
	testkit.RedisTime(pol.OpenDuration + 50*time.Millisecond) // the open duration passes on Redis time

	r.Pause()
	short, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	_, err = sc.client.AllowCall(short, &v1.AllowCallRequest{Breaker: "probe", PermitTtl: durationpb.New(time.Minute)})
	cancel()
	// Real time: the handler, past its caller's deadline, is still waiting
	// on the frozen Redis.
	time.Sleep(300 * time.Millisecond)
	r.Resume()
	if status.Code(err) != codes.DeadlineExceeded {
		t.Fatalf("AllowCall on a paused Redis: %v, want DEADLINE_EXCEEDED", err)
	}
	waitProbe(t, sc.client, "probe", 5*time.Second)
}

// TestExecuteCallCancelledLeavesNoPermit: an ExecuteCall probing a
// half-open breaker whose caller cancels mid-call hands its permit back
// (not counted): the next probe is admitted at once.
func TestExecuteCallCancelledLeavesNoPermit(t *testing.T) {
	var block atomic.Bool
	block.Store(true)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if block.Load() {
			<-r.Context().Done()
			return
		}
		w.WriteHeader(http.StatusInternalServerError)
	}))
	t.Cleanup(srv.Close)
	pol := breaker.Policy{ConsecutiveFailures: 1, OpenDuration: 5 * time.Second, HalfOpenMaxCalls: 1}
	sc := startBreakers(t, map[string]breaker.Policy{"up": pol}, []upstream.Config{{Name: "up", URL: srv.URL, Timeout: 10 * time.Second}})
	ctx := rpcCtx(t)
	block.Store(false)
	if r, err := sc.client.ExecuteCall(ctx, &v1.ExecuteCallRequest{Upstream: "up"}); err != nil || r.GetBreakerState() != v1.BreakerState_BREAKER_STATE_OPEN {
		t.Fatalf("failing call = %v, %v; want the breaker open", r, err)
	}
	sc.clk.Advance(pol.OpenDuration)
	block.Store(true)
	// The caller gives up (a cancellation: an expired deadline would be
	// the upstream's timeout, a failure).
	short, cancel := context.WithCancel(ctx)
	time.AfterFunc(200*time.Millisecond, cancel)
	_, err := sc.client.ExecuteCall(short, &v1.ExecuteCallRequest{Upstream: "up"})
	cancel()
	if status.Code(err) != codes.Canceled {
		t.Fatalf("ExecuteCall cancelled by its caller: %v", err)
	}
	testkit.EventuallyNil(t, 5*time.Second, "the cancelled probe's slot freed", func() error {
		b, err := sc.client.GetBreaker(ctx, &v1.GetBreakerRequest{Breaker: "up"})
		if err != nil {
			t.Fatal(err)
		}
		if c := b.GetBreaker().GetCounts(); b.GetBreaker().GetState() != v1.BreakerState_BREAKER_STATE_HALF_OPEN ||
			c.GetHalfOpenInFlight() != 0 || c.GetOutstandingPermits() != 0 {
			return fmt.Errorf("breaker %v", b.GetBreaker())
		}
		return nil
	})
	waitProbe(t, sc.client, "up", 0)
}
