package api_test

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
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
	"github.com/seed-a88e5317/resilience-sidecar/internal/saga"
	"github.com/seed-a88e5317/resilience-sidecar/internal/testkit"
	"github.com/seed-a88e5317/resilience-sidecar/internal/upstream"
)

// sagaEnv serves the saga API over bufconn on a memory store; the
// compensations go to a real local HTTP server, which records the
// idempotency keys it completed.
type sagaEnv struct {
	client v1.SagaServiceClient
	mu     sync.Mutex
	keys   []string
}

func (e *sagaEnv) completed() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]string(nil), e.keys...)
}

func startSagas(t *testing.T) *sagaEnv {
	t.Helper()
	e := &sagaEnv{}
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		e.mu.Lock()
		e.keys = append(e.keys, r.Header.Get("Idempotency-Key"))
		e.mu.Unlock()
	}))
	t.Cleanup(hs.Close)
	brk, err := breaker.NewService(breaker.Options{})
	if err != nil {
		t.Fatal(err)
	}
	caller, err := upstream.New([]upstream.Config{{Name: "inventory", URL: hs.URL, MaxBodyBytes: 2048}}, upstream.Options{Breakers: brk})
	if err != nil {
		t.Fatal(err)
	}
	svc, err := saga.NewService(saga.Options{Store: saga.NewMemoryStore(nil), Caller: caller,
		RecoveryInterval: 10 * time.Millisecond, MaxBodyBytes: 1024, MaxSteps: 3})
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer()
	v1.RegisterSagaServiceServer(gs, api.NewSagaServer(svc, nil))
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
		svc.Close()
		caller.Close()
		brk.Close()
	})
	e.client = v1.NewSagaServiceClient(conn)
	return e
}

func undo(path string) *v1.Compensation {
	return &v1.Compensation{Upstream: "inventory", Method: "DELETE", Path: path}
}

// sagaErr checks err's code, reason and (when set) the ErrorInfo "state".
func sagaErr(t *testing.T, err error, code codes.Code, reason, state string) {
	t.Helper()
	st := brkStatus(t, err, code, reason)
	for _, d := range st.Details() {
		if info, ok := d.(*errdetails.ErrorInfo); ok && info.GetMetadata()["state"] != state {
			t.Fatalf("state metadata %q, want %q (%v)", info.GetMetadata()["state"], state, err)
		}
	}
}

func TestSagaAPIFlow(t *testing.T) {
	e := startSagas(t)
	ctx := rpcCtx(t)
	start, err := e.client.StartSaga(ctx, &v1.StartSagaRequest{SagaId: "order-1", Name: "place-order",
		Timeout: durationpb.New(time.Minute), Metadata: map[string]string{"customer": "c-7"}})
	if err != nil || !start.GetCreated() || start.GetSaga().GetState() != v1.SagaState_SAGA_STATE_RUNNING ||
		start.GetSaga().GetTimeout().AsDuration() != time.Minute || start.GetSaga().GetMetadata()["customer"] != "c-7" ||
		start.GetSaga().GetDeadline() == nil || start.GetSaga().GetEndTime() != nil {
		t.Fatalf("start: %v %v", start, err)
	}
	again, err := e.client.StartSaga(ctx, &v1.StartSagaRequest{SagaId: "order-1", Name: "place-order"})
	if err != nil || again.GetCreated() {
		t.Fatalf("start again: %v %v", again, err)
	}
	_, err = e.client.StartSaga(ctx, &v1.StartSagaRequest{SagaId: "order-1", Name: "refund"})
	sagaErr(t, err, codes.AlreadyExists, api.ReasonSagaStateConflict, "SAGA_STATE_RUNNING")

	for i, step := range []string{"reserve", "charge"} {
		r, err := e.client.RecordStep(ctx, &v1.RecordStepRequest{SagaId: "order-1", Step: step, Compensation: undo("/" + step)})
		if err != nil || r.GetIndex() != uint32(i+1) || !r.GetCreated() {
			t.Fatalf("record %s: %v %v", step, r, err)
		}
	}
	r, err := e.client.RecordStep(ctx, &v1.RecordStepRequest{SagaId: "order-1", Step: "charge", Compensation: undo("/charge")})
	if err != nil || r.GetIndex() != 2 || r.GetCreated() {
		t.Fatalf("record again: %v %v", r, err)
	}
	_, err = e.client.RecordStep(ctx, &v1.RecordStepRequest{SagaId: "order-1", Step: "charge", Compensation: undo("/refund")})
	sagaErr(t, err, codes.AlreadyExists, api.ReasonSagaStateConflict, "SAGA_STATE_RUNNING")
	if _, err := e.client.RecordStep(ctx, &v1.RecordStepRequest{SagaId: "order-1", Step: "ship", Compensation: undo("/ship")}); err != nil {
		t.Fatal(err)
	}
	_, err = e.client.RecordStep(ctx, &v1.RecordStepRequest{SagaId: "order-1", Step: "notify", Compensation: undo("/notify")})
	sagaErr(t, err, codes.ResourceExhausted, api.ReasonLimitExceeded, "")

	ab, err := e.client.AbortSaga(ctx, &v1.AbortSagaRequest{SagaId: "order-1", Reason: "card declined"})
	if err != nil || ab.GetSaga().GetReason() != "card declined" {
		t.Fatalf("abort: %v %v", ab, err)
	}
	var got *v1.Saga
	testkit.EventuallyNil(t, 10*time.Second, "saga order-1 compensated", func() error {
		g, err := e.client.GetSaga(ctx, &v1.GetSagaRequest{SagaId: "order-1"})
		if err != nil {
			t.Fatal(err)
		}
		if got = g.GetSaga(); got.GetState() != v1.SagaState_SAGA_STATE_COMPENSATED {
			return fmt.Errorf("saga %v", got)
		}
		return nil
	})
	if len(got.GetSteps()) != 3 || got.GetExpireTime() == nil {
		t.Fatalf("saga %v", got)
	}
	for _, st := range got.GetSteps() {
		if st.GetStatus() != v1.CompensationStatus_COMPENSATION_STATUS_SUCCEEDED || st.GetAttempts() != 1 ||
			st.GetCompensateTime() == nil || st.GetCompensation().GetMethod() != "DELETE" {
			t.Fatalf("step %v", st)
		}
	}
	if keys := strings.Join(e.completed(), " "); keys != "order-1:ship order-1:charge order-1:reserve" {
		t.Fatalf("compensations %s", keys)
	}
	_, err = e.client.CompleteSaga(ctx, &v1.CompleteSagaRequest{SagaId: "order-1"})
	sagaErr(t, err, codes.FailedPrecondition, api.ReasonSagaStateConflict, "SAGA_STATE_COMPENSATED")
	_, err = e.client.RetryCompensation(ctx, &v1.RetryCompensationRequest{SagaId: "order-1"})
	sagaErr(t, err, codes.FailedPrecondition, api.ReasonSagaStateConflict, "SAGA_STATE_COMPENSATED")

	// Completed sagas, and listing by state across pages.
	for _, id := range []string{"order-2", "order-3", "order-4"} {
		if _, err := e.client.StartSaga(ctx, &v1.StartSagaRequest{SagaId: id, Name: "place-order"}); err != nil {
			t.Fatal(err)
		}
		if c, err := e.client.CompleteSaga(ctx, &v1.CompleteSagaRequest{SagaId: id}); err != nil || c.GetSaga().GetState() != v1.SagaState_SAGA_STATE_COMPLETED {
			t.Fatalf("complete %s: %v %v", id, c, err)
		}
	}
	_, err = e.client.RecordStep(ctx, &v1.RecordStepRequest{SagaId: "order-2", Step: "late", Compensation: undo("/late")})
	sagaErr(t, err, codes.FailedPrecondition, api.ReasonSagaStateConflict, "SAGA_STATE_COMPLETED")
	_, err = e.client.AbortSaga(ctx, &v1.AbortSagaRequest{SagaId: "order-2"})
	sagaErr(t, err, codes.FailedPrecondition, api.ReasonSagaStateConflict, "SAGA_STATE_COMPLETED")
	var ids []string
	tok := ""
	for range 5 {
		l, err := e.client.ListSagas(ctx, &v1.ListSagasRequest{State: v1.SagaState_SAGA_STATE_COMPLETED, PageSize: 2, PageToken: tok})
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range l.GetSagas() {
			if len(s.GetSteps()) != 0 {
				t.Fatal("ListSagas returned steps")
			}
			ids = append(ids, s.GetSagaId())
		}
		if tok = l.GetNextPageToken(); tok == "" {
			break
		}
	}
	if strings.Join(ids, " ") != "order-2 order-3 order-4" {
		t.Fatalf("listed %v", ids)
	}
	all, err := e.client.ListSagas(ctx, &v1.ListSagasRequest{})
	if err != nil || len(all.GetSagas()) != 4 || all.GetNextPageToken() != "" {
		t.Fatalf("list all: %v %v", all, err)
	}

	_, err = e.client.GetSaga(ctx, &v1.GetSagaRequest{SagaId: "order-9"})
	sagaErr(t, err, codes.NotFound, api.ReasonSagaNotFound, "")
	_, err = e.client.AbortSaga(ctx, &v1.AbortSagaRequest{SagaId: "order-9"})
	sagaErr(t, err, codes.NotFound, api.ReasonSagaNotFound, "")
}

func TestSagaAPIBadInput(t *testing.T) {
	e := startSagas(t)
	ctx := rpcCtx(t)
	if _, err := e.client.StartSaga(ctx, &v1.StartSagaRequest{SagaId: "s", Name: "n"}); err != nil {
		t.Fatal(err)
	}
	manyMD := map[string]string{}
	for i := range 33 {
		manyMD[strings.Repeat("k", i+1)] = "v"
	}
	for _, tc := range []struct {
		name   string
		call   func() error
		fields []string
		reason string
	}{
		{"empty start", func() error { _, err := e.client.StartSaga(ctx, &v1.StartSagaRequest{}); return err }, []string{"saga_id", "name"}, ""},
		{"timeout too short", func() error {
			_, err := e.client.StartSaga(ctx, &v1.StartSagaRequest{SagaId: "x", Name: "n", Timeout: durationpb.New(99 * time.Millisecond)})
			return err
		}, []string{"timeout"}, ""},
		{"timeout too long", func() error {
			_, err := e.client.StartSaga(ctx, &v1.StartSagaRequest{SagaId: "x", Name: "n", Timeout: durationpb.New(31 * 24 * time.Hour)})
			return err
		}, []string{"timeout"}, ""},
		{"negative timeout", func() error {
			_, err := e.client.StartSaga(ctx, &v1.StartSagaRequest{SagaId: "x", Name: "n", Timeout: &durationpb.Duration{Seconds: -1}})
			return err
		}, []string{"timeout"}, ""},
		{"control character and long id", func() error {
			_, err := e.client.StartSaga(ctx, &v1.StartSagaRequest{SagaId: strings.Repeat("x", 513), Name: "a\nb"})
			return err
		}, []string{"saga_id", "name"}, ""},
		{"metadata", func() error {
			_, err := e.client.StartSaga(ctx, &v1.StartSagaRequest{SagaId: "x", Name: "n", Metadata: manyMD})
			return err
		}, []string{"metadata"}, ""},
		{"no compensation", func() error {
			_, err := e.client.RecordStep(ctx, &v1.RecordStepRequest{SagaId: "s", Step: "a"})
			return err
		}, []string{"compensation"}, ""},
		{"unknown upstream", func() error {
			_, err := e.client.RecordStep(ctx, &v1.RecordStepRequest{SagaId: "s", Step: "a", Compensation: &v1.Compensation{Upstream: "payments", Path: "/x"}})
			return err
		}, []string{"compensation.upstream"}, api.ReasonUpstreamUnknown},
		{"path leaves the upstream", func() error {
			_, err := e.client.RecordStep(ctx, &v1.RecordStepRequest{SagaId: "s", Step: "a", Compensation: undo("/%2e%2e/admin")})
			return err
		}, []string{"compensation.path"}, api.ReasonUpstreamUnknown},
		{"oversize body", func() error {
			c := undo("/x")
			c.Body = make([]byte, 1025)
			_, err := e.client.RecordStep(ctx, &v1.RecordStepRequest{SagaId: "s", Step: "a", Compensation: c})
			return err
		}, []string{"compensation.body"}, ""},
		{"forbidden header", func() error {
			c := undo("/x")
			c.Headers = []*v1.HttpHeader{{Name: "Idempotency-Key", Value: "mine"}}
			_, err := e.client.RecordStep(ctx, &v1.RecordStepRequest{SagaId: "s", Step: "a", Compensation: c})
			return err
		}, []string{"compensation.headers"}, ""},
		{"bad method", func() error {
			c := undo("/x")
			c.Method = "TRACE"
			_, err := e.client.RecordStep(ctx, &v1.RecordStepRequest{SagaId: "s", Step: "a", Compensation: c})
			return err
		}, []string{"compensation.method"}, ""},
		{"empty step and upstream", func() error {
			_, err := e.client.RecordStep(ctx, &v1.RecordStepRequest{SagaId: "s", Compensation: &v1.Compensation{}})
			return err
		}, []string{"step", "compensation.upstream"}, ""},
		{"long reason", func() error {
			_, err := e.client.AbortSaga(ctx, &v1.AbortSagaRequest{SagaId: "s", Reason: strings.Repeat("r", 513)})
			return err
		}, []string{"reason"}, ""},
		{"list", func() error {
			_, err := e.client.ListSagas(ctx, &v1.ListSagasRequest{State: 42, PageSize: 101, PageToken: "!!"})
			return err
		}, []string{"state", "page_size", "page_token"}, ""},
		{"get without id", func() error { _, err := e.client.GetSaga(ctx, &v1.GetSagaRequest{}); return err }, []string{"saga_id"}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.call()
			st := brkStatus(t, err, codes.InvalidArgument, tc.reason)
			if got := strings.Join(brkFields(st), ","); got != strings.Join(tc.fields, ",") {
				t.Fatalf("fields %s, want %s (%v)", got, strings.Join(tc.fields, ","), err)
			}
		})
	}
	g, err := e.client.GetSaga(ctx, &v1.GetSagaRequest{SagaId: "s"})
	if err != nil || g.GetSaga().GetStepCount() != 0 {
		t.Fatalf("a refused request changed the saga: %v %v", g, err)
	}
	if _, err := e.client.GetSaga(ctx, &v1.GetSagaRequest{SagaId: "x"}); status.Code(err) != codes.NotFound {
		t.Fatalf("a refused start created the saga: %v", err)
	}
}
