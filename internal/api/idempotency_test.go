package api_test

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	v1 "github.com/seed-a88e5317/resilience-sidecar/clients/go/resiliencev1"
	"github.com/seed-a88e5317/resilience-sidecar/internal/api"
	"github.com/seed-a88e5317/resilience-sidecar/internal/idempotency"
	"github.com/seed-a88e5317/resilience-sidecar/internal/metrics"
	"github.com/seed-a88e5317/resilience-sidecar/internal/server"
	"github.com/seed-a88e5317/resilience-sidecar/internal/store"
	"github.com/seed-a88e5317/resilience-sidecar/internal/testkit"
)

// idemSidecar is an in-process server with the IdempotencyServer
// registered, served over bufconn.
type idemSidecar struct {
	client v1.IdempotencyServiceClient
	clock  *testkit.Clock
	mem    *idempotency.MemoryStore
	// watching receives a value each time a CheckOrRecord starts waiting
	// (memory store only).
	watching chan struct{}
	// shutdown stops the server gracefully (idempotent).
	shutdown func()
}

const idemMaxResult = 4096

// startIdem serves the idempotency API on st, or on a memory store with a
// fake clock when st is nil, with a result limit of idemMaxResult bytes.
func startIdem(t *testing.T, st idempotency.Store, opts ...api.Option) *idemSidecar {
	t.Helper()
	sc := &idemSidecar{clock: testkit.NewClock()}
	if st == nil {
		sc.mem = idempotency.NewMemoryStore(sc.clock.Now)
		sc.watching = make(chan struct{}, 64)
		st = &idemWatchStore{Store: sc.mem, watching: sc.watching}
	}
	discard := slog.New(slog.DiscardHandler)
	srv := server.New(server.Options{Log: discard, ShutdownTimeout: 5 * time.Second})
	svc := idempotency.NewService(st, nil, discard)
	t.Cleanup(svc.Close) // after the server stopped: its hand-back queue ends
	v1.RegisterIdempotencyServiceServer(srv.GRPC(),
		api.NewIdempotencyServer(srv.Stopping(), svc, discard, idemMaxResult, opts...))
	lis := bufconn.Listen(1 << 20)
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ctx, lis) }()
	conn, err := grpc.NewClient("passthrough:///bufconn",
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()),
	)
	if err != nil {
		cancel()
		t.Fatalf("grpc.NewClient: %v", err)
	}
	var once sync.Once
	sc.shutdown = func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-served:
				if err != nil {
					t.Errorf("Serve: %v", err)
				}
			case <-time.After(10 * time.Second):
				t.Errorf("Serve did not return after shutdown")
			}
			_ = conn.Close()
		})
	}
	t.Cleanup(sc.shutdown)
	sc.client = v1.NewIdempotencyServiceClient(conn)
	return sc
}

// idemWatchStore signals each WatchDone.
type idemWatchStore struct {
	idempotency.Store
	watching chan struct{}
}

func (s *idemWatchStore) WatchDone(ctx context.Context, key string) (<-chan struct{}, func(), error) {
	ch, stop, err := s.Store.WatchDone(ctx, key)
	select {
	case s.watching <- struct{}{}:
	default:
	}
	return ch, stop, err
}

func idemCtx(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func (sc *idemSidecar) start(t *testing.T, key, fp string) *v1.CheckOrRecordIdempotencyResponse {
	t.Helper()
	resp, err := sc.client.CheckOrRecordIdempotency(idemCtx(t), &v1.CheckOrRecordIdempotencyRequest{Key: key, Fingerprint: fp})
	if err != nil || resp.GetOutcome() != v1.CheckOrRecordIdempotencyResponse_OUTCOME_STARTED {
		t.Fatalf("CheckOrRecord(%q) = %v, %v; want STARTED", key, resp, err)
	}
	return resp
}

func (sc *idemSidecar) get(t *testing.T, key, fp string) *v1.GetIdempotencyResponse {
	t.Helper()
	resp, err := sc.client.GetIdempotency(idemCtx(t), &v1.GetIdempotencyRequest{Key: key, Fingerprint: fp})
	if err != nil {
		t.Fatalf("GetIdempotency(%q): %v", key, err)
	}
	return resp
}

// idemStatus checks err's code and ErrorInfo reason ("" for none) and
// returns its status.
func idemStatus(t *testing.T, err error, code codes.Code, reason string) *status.Status {
	t.Helper()
	st, ok := status.FromError(err)
	if !ok || st.Code() != code {
		t.Fatalf("err = %v; want %v", err, code)
	}
	var got string
	for _, d := range st.Details() {
		if ei, ok := d.(*errdetails.ErrorInfo); ok {
			if ei.GetDomain() != api.ErrorDomain {
				t.Errorf("ErrorInfo domain %q", ei.GetDomain())
			}
			got = ei.GetReason()
		}
	}
	if got != reason {
		t.Fatalf("reason = %q, want %q (err %v)", got, reason, err)
	}
	return st
}

// idemInvalid checks err is INVALID_ARGUMENT naming exactly fields.
func idemInvalid(t *testing.T, err error, fields ...string) {
	t.Helper()
	st := idemStatus(t, err, codes.InvalidArgument, "")
	got := map[string]bool{}
	for _, d := range st.Details() {
		if br, ok := d.(*errdetails.BadRequest); ok {
			for _, v := range br.GetFieldViolations() {
				got[v.GetField()] = true
			}
		}
	}
	want := map[string]bool{}
	for _, f := range fields {
		want[f] = true
	}
	if len(got) != len(want) {
		t.Fatalf("violations %v, want %v (%v)", got, want, err)
	}
	for f := range want {
		if !got[f] {
			t.Fatalf("violations %v, want %v (%v)", got, want, err)
		}
	}
}

func idemDur(d time.Duration) *durationpb.Duration { return durationpb.New(d) }

func TestIdempotencyAPIFlow(t *testing.T) {
	sc := startIdem(t, nil)
	ctx := idemCtx(t)
	first := sc.start(t, "order-1", "sha256:aa")
	if first.GetAttempt() != 1 || len(first.GetLeaseId()) != 32 || first.GetCheckpoint() != nil ||
		!first.GetLeaseExpireTime().AsTime().Equal(sc.clock.Now().Add(api.DefaultIdempotencyLeaseTTL)) {
		t.Fatalf("STARTED = %v", first)
	}

	dup, err := sc.client.CheckOrRecordIdempotency(ctx, &v1.CheckOrRecordIdempotencyRequest{Key: "order-1", Fingerprint: "sha256:aa"})
	if err != nil || dup.GetOutcome() != v1.CheckOrRecordIdempotencyResponse_OUTCOME_IN_PROGRESS ||
		dup.GetLeaseId() != "" || dup.GetRetryAfter().AsDuration() != idempotency.MaxRetryAfter || dup.GetAttempt() != 1 {
		t.Fatalf("duplicate = %v, %v; want IN_PROGRESS", dup, err)
	}

	cp, err := sc.client.CheckpointIdempotency(ctx, &v1.CheckpointIdempotencyRequest{
		Key: "order-1", LeaseId: first.GetLeaseId(), RecoveryPoint: "charged", Data: []byte("ch_1")})
	if err != nil || cp.GetLeaseExpireTime() == nil {
		t.Fatalf("Checkpoint = %v, %v", cp, err)
	}
	g := sc.get(t, "order-1", "sha256:aa")
	if g.GetState() != v1.GetIdempotencyResponse_STATE_IN_PROGRESS || !g.GetFingerprintMatch() || g.GetAttempts() != 1 ||
		g.GetRecoveryPoint() != "charged" || g.GetCreateTime() == nil || g.GetLeaseExpireTime() == nil || g.GetCompleteTime() != nil {
		t.Fatalf("Get in progress = %v", g)
	}
	if g := sc.get(t, "order-1", "sha256:bb"); g.GetFingerprintMatch() {
		t.Fatalf("Get with another fingerprint matched: %v", g)
	}

	result := &v1.IdempotencyResult{Data: []byte(`{"id":1}`), Metadata: map[string]string{"status": "201", "content-type": "application/json"}}
	done, err := sc.client.CompleteIdempotency(ctx, &v1.CompleteIdempotencyRequest{Key: "order-1", LeaseId: first.GetLeaseId(), Result: result})
	if err != nil || !done.GetExpireTime().AsTime().Equal(sc.clock.Now().Add(api.DefaultIdempotencyRetention)) {
		t.Fatalf("Complete = %v, %v", done, err)
	}
	again, err := sc.client.CheckOrRecordIdempotency(ctx, &v1.CheckOrRecordIdempotencyRequest{Key: "order-1", Fingerprint: "sha256:aa"})
	if err != nil || again.GetOutcome() != v1.CheckOrRecordIdempotencyResponse_OUTCOME_COMPLETED ||
		!proto.Equal(again.GetResult(), result) || again.GetCompleteTime() == nil || again.GetLeaseId() != "" {
		t.Fatalf("after completion = %v, %v", again, err)
	}
	g = sc.get(t, "order-1", "sha256:aa")
	if g.GetState() != v1.GetIdempotencyResponse_STATE_COMPLETED || g.GetCompleteTime() == nil ||
		!g.GetExpireTime().AsTime().Equal(done.GetExpireTime().AsTime()) || g.GetRecoveryPoint() != "" || g.GetLeaseExpireTime() != nil {
		t.Fatalf("Get completed = %v", g)
	}
	if g := sc.get(t, "order-2", ""); g.GetState() != v1.GetIdempotencyResponse_STATE_ABSENT || g.GetFingerprintMatch() || g.GetCreateTime() != nil {
		t.Fatalf("Get absent = %v", g)
	}
}

func TestIdempotencyAPIMismatch(t *testing.T) {
	sc := startIdem(t, nil)
	ctx := idemCtx(t)
	running := sc.start(t, "running", "fp-1")
	completed := sc.start(t, "completed", "fp-1")
	if _, err := sc.client.CompleteIdempotency(ctx, &v1.CompleteIdempotencyRequest{Key: "completed", LeaseId: completed.GetLeaseId()}); err != nil {
		t.Fatal(err)
	}
	for _, key := range []string{"running", "completed"} {
		before := sc.get(t, key, "fp-1")
		_, err := sc.client.CheckOrRecordIdempotency(ctx, &v1.CheckOrRecordIdempotencyRequest{Key: key, Fingerprint: "fp-2"})
		idemStatus(t, err, codes.FailedPrecondition, api.ReasonIdempotencyKeyMismatch)
		if after := sc.get(t, key, "fp-1"); !proto.Equal(before, after) {
			t.Fatalf("%s changed by a mismatched call:\n%v\n%v", key, before, after)
		}
	}
	if _, err := sc.client.ReleaseIdempotency(ctx, &v1.ReleaseIdempotencyRequest{Key: "running", LeaseId: running.GetLeaseId()}); err != nil {
		t.Fatalf("owner's release after a refused duplicate: %v", err)
	}
}

func TestIdempotencyAPILeaseLost(t *testing.T) {
	sc := startIdem(t, nil)
	ctx := idemCtx(t)
	dead := sc.start(t, "k", "fp")
	if _, err := sc.client.CheckpointIdempotency(ctx, &v1.CheckpointIdempotencyRequest{Key: "k", LeaseId: dead.GetLeaseId(), RecoveryPoint: "step-1", Data: []byte{1}}); err != nil {
		t.Fatal(err)
	}
	sc.clock.Advance(api.DefaultIdempotencyLeaseTTL + time.Millisecond)
	if g := sc.get(t, "k", "fp"); g.GetState() != v1.GetIdempotencyResponse_STATE_LEASE_EXPIRED {
		t.Fatalf("after expiry: %v", g)
	}
	takeover := sc.start(t, "k", "fp")
	if takeover.GetAttempt() != 2 || takeover.GetCheckpoint().GetRecoveryPoint() != "step-1" ||
		string(takeover.GetCheckpoint().GetData()) != "\x01" || takeover.GetCheckpoint().GetCreateTime() == nil {
		t.Fatalf("takeover = %v", takeover)
	}
	_, err := sc.client.CompleteIdempotency(ctx, &v1.CompleteIdempotencyRequest{Key: "k", LeaseId: dead.GetLeaseId(), Result: &v1.IdempotencyResult{Data: []byte("stale")}})
	idemStatus(t, err, codes.FailedPrecondition, api.ReasonLeaseLost)
	_, err = sc.client.CheckpointIdempotency(ctx, &v1.CheckpointIdempotencyRequest{Key: "k", LeaseId: dead.GetLeaseId(), RecoveryPoint: "stale"})
	idemStatus(t, err, codes.FailedPrecondition, api.ReasonLeaseLost)
	_, err = sc.client.ReleaseIdempotency(ctx, &v1.ReleaseIdempotencyRequest{Key: "k", LeaseId: dead.GetLeaseId()})
	idemStatus(t, err, codes.FailedPrecondition, api.ReasonLeaseLost)
	if g := sc.get(t, "k", "fp"); g.GetState() != v1.GetIdempotencyResponse_STATE_IN_PROGRESS || g.GetAttempts() != 2 || g.GetRecoveryPoint() != "step-1" {
		t.Fatalf("stale calls changed the record: %v", g)
	}
}

func TestIdempotencyAPIInvalid(t *testing.T) {
	sc := startIdem(t, nil)
	ctx := idemCtx(t)
	owner := sc.start(t, "k", "fp")
	lease := owner.GetLeaseId()
	before := sc.get(t, "k", "fp")
	long := strings.Repeat("x", 513)

	checks := []struct {
		name   string
		req    *v1.CheckOrRecordIdempotencyRequest
		fields []string
	}{
		{"empty key", &v1.CheckOrRecordIdempotencyRequest{}, []string{"key"}},
		{"long key", &v1.CheckOrRecordIdempotencyRequest{Key: long}, []string{"key"}},
		{"control key", &v1.CheckOrRecordIdempotencyRequest{Key: "a\nb"}, []string{"key"}},
		{"long fingerprint", &v1.CheckOrRecordIdempotencyRequest{Key: "n", Fingerprint: strings.Repeat("f", 129)}, []string{"fingerprint"}},
		{"control fingerprint", &v1.CheckOrRecordIdempotencyRequest{Key: "n", Fingerprint: "a\x00"}, []string{"fingerprint"}},
		{"short lease", &v1.CheckOrRecordIdempotencyRequest{Key: "n", LeaseTtl: idemDur(999 * time.Millisecond)}, []string{"lease_ttl"}},
		{"long lease", &v1.CheckOrRecordIdempotencyRequest{Key: "n", LeaseTtl: idemDur(time.Hour + 1)}, []string{"lease_ttl"}},
		{"zero lease", &v1.CheckOrRecordIdempotencyRequest{Key: "n", LeaseTtl: idemDur(0)}, []string{"lease_ttl"}},
		{"zero retention", &v1.CheckOrRecordIdempotencyRequest{Key: "n", Retention: idemDur(0)}, []string{"retention"}},
		{"long retention", &v1.CheckOrRecordIdempotencyRequest{Key: "n", Retention: idemDur(31 * 24 * time.Hour)}, []string{"retention"}},
		{"negative wait", &v1.CheckOrRecordIdempotencyRequest{Key: "n", WaitTimeout: idemDur(-time.Second)}, []string{"wait_timeout"}},
		{"long wait", &v1.CheckOrRecordIdempotencyRequest{Key: "n", WaitTimeout: idemDur(5*time.Minute + 1)}, []string{"wait_timeout"}},
		{"malformed duration", &v1.CheckOrRecordIdempotencyRequest{Key: "n", LeaseTtl: &durationpb.Duration{Seconds: 5, Nanos: -1}}, []string{"lease_ttl"}},
		{"everything", &v1.CheckOrRecordIdempotencyRequest{Fingerprint: long, LeaseTtl: idemDur(0), Retention: idemDur(-1), WaitTimeout: idemDur(time.Hour)},
			[]string{"key", "fingerprint", "lease_ttl", "retention", "wait_timeout"}},
	}
	for _, tc := range checks {
		_, err := sc.client.CheckOrRecordIdempotency(ctx, tc.req)
		idemInvalid(t, err, tc.fields...)
	}
	if n := sc.mem.Len(); n != 1 {
		t.Fatalf("%d records after refused requests, want 1", n)
	}

	meta := map[string]string{}
	for i := range api.MaxResultMetadataEntries + 1 {
		meta[string(rune('A'+i))] = ""
	}
	completes := []struct {
		name   string
		req    *v1.CompleteIdempotencyRequest
		fields []string
	}{
		{"no key", &v1.CompleteIdempotencyRequest{LeaseId: lease}, []string{"key"}},
		{"bad lease", &v1.CompleteIdempotencyRequest{Key: "k", LeaseId: "ABC"}, []string{"lease_id"}},
		{"oversize data", &v1.CompleteIdempotencyRequest{Key: "k", LeaseId: lease,
			Result: &v1.IdempotencyResult{Data: make([]byte, idemMaxResult+1)}}, []string{"result"}},
		{"oversize with metadata", &v1.CompleteIdempotencyRequest{Key: "k", LeaseId: lease,
			Result: &v1.IdempotencyResult{Data: make([]byte, idemMaxResult-3), Metadata: map[string]string{"ab": "cd"}}}, []string{"result"}},
		{"too many entries", &v1.CompleteIdempotencyRequest{Key: "k", LeaseId: lease, Result: &v1.IdempotencyResult{Metadata: meta}}, []string{"result.metadata"}},
		{"empty metadata key", &v1.CompleteIdempotencyRequest{Key: "k", LeaseId: lease, Result: &v1.IdempotencyResult{Metadata: map[string]string{"": "x"}}}, []string{"result.metadata"}},
		{"control metadata key", &v1.CompleteIdempotencyRequest{Key: "k", LeaseId: lease, Result: &v1.IdempotencyResult{Metadata: map[string]string{"a\tb": "x"}}}, []string{"result.metadata"}},
		{"long metadata key", &v1.CompleteIdempotencyRequest{Key: "k", LeaseId: lease, Result: &v1.IdempotencyResult{Metadata: map[string]string{strings.Repeat("k", 257): "x"}}}, []string{"result.metadata"}},
	}
	for _, tc := range completes {
		_, err := sc.client.CompleteIdempotency(ctx, tc.req)
		idemInvalid(t, err, tc.fields...)
	}
	_, err := sc.client.CheckpointIdempotency(ctx, &v1.CheckpointIdempotencyRequest{Key: "k", LeaseId: lease, Data: make([]byte, api.MaxCheckpointBytes+1)})
	idemInvalid(t, err, "recovery_point", "data")
	_, err = sc.client.ReleaseIdempotency(ctx, &v1.ReleaseIdempotencyRequest{Key: "k"})
	idemInvalid(t, err, "lease_id")
	_, err = sc.client.GetIdempotency(ctx, &v1.GetIdempotencyRequest{Fingerprint: long})
	idemInvalid(t, err, "key", "fingerprint")

	if after := sc.get(t, "k", "fp"); !proto.Equal(before, after) {
		t.Fatalf("refused requests changed the record:\n%v\n%v", before, after)
	}
	// The exact limit is accepted.
	if _, err := sc.client.CompleteIdempotency(ctx, &v1.CompleteIdempotencyRequest{Key: "k", LeaseId: lease,
		Result: &v1.IdempotencyResult{Data: make([]byte, idemMaxResult-4), Metadata: map[string]string{"ab": "cd"}}}); err != nil {
		t.Fatalf("result of exactly the limit: %v", err)
	}
}

// downIdemStore fails every call as an unreachable Redis does.
type downIdemStore struct{}

var errIdemDown = store.Unavailable(errors.New("dial tcp: connection refused"))

func (downIdemStore) CheckOrRecord(context.Context, string, string, idempotency.Options) (idempotency.Claim, error) {
	return idempotency.Claim{}, errIdemDown
}
func (downIdemStore) Complete(context.Context, string, string, idempotency.Result) (time.Time, error) {
	return time.Time{}, errIdemDown
}
func (downIdemStore) Checkpoint(context.Context, string, string, idempotency.Checkpoint) (time.Time, error) {
	return time.Time{}, errIdemDown
}
func (downIdemStore) Release(context.Context, string, string) error { return errIdemDown }
func (downIdemStore) Revoke(context.Context, string, string) error  { return errIdemDown }
func (downIdemStore) Get(context.Context, string) (idempotency.Info, error) {
	return idempotency.Info{}, errIdemDown
}
func (downIdemStore) WatchDone(context.Context, string) (<-chan struct{}, func(), error) {
	return nil, nil, errIdemDown
}

func TestIdempotencyAPIStoreUnavailable(t *testing.T) {
	sc := startIdem(t, downIdemStore{})
	ctx := idemCtx(t)
	lease := strings.Repeat("a", 32)
	calls := map[string]func() error{
		"CheckOrRecord": func() error {
			_, err := sc.client.CheckOrRecordIdempotency(ctx, &v1.CheckOrRecordIdempotencyRequest{Key: "k", WaitTimeout: idemDur(time.Second)})
			return err
		},
		"Complete": func() error {
			_, err := sc.client.CompleteIdempotency(ctx, &v1.CompleteIdempotencyRequest{Key: "k", LeaseId: lease})
			return err
		},
		"Checkpoint": func() error {
			_, err := sc.client.CheckpointIdempotency(ctx, &v1.CheckpointIdempotencyRequest{Key: "k", LeaseId: lease, RecoveryPoint: "p"})
			return err
		},
		"Release": func() error {
			_, err := sc.client.ReleaseIdempotency(ctx, &v1.ReleaseIdempotencyRequest{Key: "k", LeaseId: lease})
			return err
		},
		"Get": func() error {
			_, err := sc.client.GetIdempotency(ctx, &v1.GetIdempotencyRequest{Key: "k"})
			return err
		},
	}
	for name, call := range calls {
		st := idemStatus(t, call(), codes.Unavailable, api.ReasonStoreUnavailable)
		var retry bool
		for _, d := range st.Details() {
			_, ok := d.(*errdetails.RetryInfo)
			retry = retry || ok
		}
		if !retry || strings.Contains(st.Message(), "refused") {
			t.Errorf("%s: status %v: want RetryInfo and no internal cause", name, st)
		}
	}
}

// A wait in flight when the sidecar shuts down ends with UNAVAILABLE.
func TestIdempotencyAPIShutdownEndsWait(t *testing.T) {
	sc := startIdem(t, nil)
	sc.start(t, "k", "fp")
	errc := make(chan error, 1)
	go func() {
		_, err := sc.client.CheckOrRecordIdempotency(context.Background(),
			&v1.CheckOrRecordIdempotencyRequest{Key: "k", Fingerprint: "fp", WaitTimeout: idemDur(5 * time.Minute)})
		errc <- err
	}()
	select {
	case <-sc.watching:
	case <-time.After(10 * time.Second):
		t.Fatal("call did not start waiting")
	}
	go sc.shutdown()
	select {
	case err := <-errc:
		idemStatus(t, err, codes.Unavailable, api.ReasonShuttingDown)
	case <-time.After(10 * time.Second):
		t.Fatal("wait not ended by shutdown")
	}
}

func TestIdempotencyAPIMetrics(t *testing.T) {
	m := metrics.New()
	sc := startIdem(t, nil, api.WithMetrics(m))
	ctx := idemCtx(t)
	owner := sc.start(t, "k", "fp")
	req := &v1.CheckOrRecordIdempotencyRequest{Key: "k", Fingerprint: "fp"}
	if _, err := sc.client.CheckOrRecordIdempotency(ctx, req); err != nil {
		t.Fatal(err)
	}
	if _, err := sc.client.CompleteIdempotency(ctx, &v1.CompleteIdempotencyRequest{Key: "k", LeaseId: owner.GetLeaseId()}); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if _, err := sc.client.CheckOrRecordIdempotency(ctx, req); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := sc.client.CheckOrRecordIdempotency(ctx, &v1.CheckOrRecordIdempotencyRequest{Key: "k", Fingerprint: "other"}); err == nil {
		t.Fatal("mismatch accepted")
	}
	for outcome, want := range map[string]float64{"started": 1, "in_progress": 1, "completed": 2, "mismatch": 1} {
		if got := testutil.ToFloat64(m.IdempotencyOutcome.WithLabelValues(outcome)); got != want {
			t.Errorf("outcome %s counted %v, want %v", outcome, got, want)
		}
	}
}
