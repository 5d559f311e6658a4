package api_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	v1 "github.com/seed-a88e5317/resilience-sidecar/clients/go/resiliencev1"
	"github.com/seed-a88e5317/resilience-sidecar/internal/api"
	"github.com/seed-a88e5317/resilience-sidecar/internal/lock"
	"github.com/seed-a88e5317/resilience-sidecar/internal/server"
	"github.com/seed-a88e5317/resilience-sidecar/internal/store"
	"github.com/seed-a88e5317/resilience-sidecar/internal/testkit"
)

// eventTimeout bounds every wait for something that should happen
// promptly. It only turns a hang into a failure; no test asserts a time.
const eventTimeout = 10 * time.Second

// sidecar is an in-process server.Server with the LockServer registered,
// served over bufconn.
type sidecar struct {
	client v1.LockServiceClient
	conn   *grpc.ClientConn
	store  lock.Store

	cancel   context.CancelFunc // cancels Serve's ctx: graceful shutdown
	served   chan error         // Serve's result
	stopOnce sync.Once
}

// startSidecar serves the lock API on st (a real-time memory store when
// nil). t.Cleanup stops it.
func startSidecar(t *testing.T, st lock.Store) *sidecar {
	t.Helper()
	if st == nil {
		st = lock.NewMemoryStore(nil)
	}
	discard := slog.New(slog.DiscardHandler)
	srv := server.New(server.Options{Log: discard, ShutdownTimeout: 5 * time.Second})
	svc := lock.NewService(st, nil, discard)
	t.Cleanup(svc.Close) // after the server stopped: its hand-back queue ends
	v1.RegisterLockServiceServer(srv.GRPC(), api.NewLockServer(srv.Stopping(), svc, discard))

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
	sc := &sidecar{client: v1.NewLockServiceClient(conn), conn: conn, store: st, cancel: cancel, served: served}
	t.Cleanup(func() { sc.stop(t) })
	return sc
}

// stop shuts the server down gracefully, checks that Serve returned nil,
// and closes the client. It is idempotent.
func (sc *sidecar) stop(t *testing.T) {
	t.Helper()
	sc.stopOnce.Do(func() {
		sc.cancel()
		select {
		case err := <-sc.served:
			if err != nil {
				t.Errorf("Serve returned %v after shutdown; want nil", err)
			}
		case <-time.After(eventTimeout):
			t.Errorf("Serve did not return after shutdown")
		}
		if err := sc.conn.Close(); err != nil {
			t.Errorf("close client: %v", err)
		}
	})
}

func rpcCtx(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), eventTimeout)
	t.Cleanup(cancel)
	return ctx
}

func mustAcquire(t *testing.T, c v1.LockServiceClient, req *v1.AcquireLockRequest) *v1.Lease {
	t.Helper()
	resp, err := c.AcquireLock(rpcCtx(t), req)
	if err != nil || !resp.GetAcquired() {
		t.Fatalf("AcquireLock(%q) = %v, %v; want acquired", req.GetKey(), resp, err)
	}
	return resp.GetLease()
}

func getLock(t *testing.T, c v1.LockServiceClient, key string) *v1.GetLockResponse {
	t.Helper()
	resp, err := c.GetLock(rpcCtx(t), &v1.GetLockRequest{Key: key})
	if err != nil {
		t.Fatalf("GetLock(%q): %v", key, err)
	}
	return resp
}

// waitFree polls GetLock until key is not held.
func waitFree(t *testing.T, c v1.LockServiceClient, key string) {
	t.Helper()
	testkit.EventuallyNil(t, eventTimeout, fmt.Sprintf("lock %q free", key), func() error {
		if resp := getLock(t, c, key); resp.GetHeld() {
			return fmt.Errorf("held by %v", resp.GetHolder())
		}
		return nil
	})
}

func fieldViolations(st *status.Status) []string {
	var fields []string
	for _, d := range st.Details() {
		if br, ok := d.(*errdetails.BadRequest); ok {
			for _, v := range br.GetFieldViolations() {
				fields = append(fields, v.GetField())
			}
		}
	}
	return fields
}

func errorInfo(st *status.Status) *errdetails.ErrorInfo {
	for _, d := range st.Details() {
		if ei, ok := d.(*errdetails.ErrorInfo); ok {
			return ei
		}
	}
	return nil
}

func retryInfo(st *status.Status) *errdetails.RetryInfo {
	for _, d := range st.Details() {
		if ri, ok := d.(*errdetails.RetryInfo); ok {
			return ri
		}
	}
	return nil
}

// wantInvalid checks that err is INVALID_ARGUMENT whose BadRequest names
// exactly fields, in order.
func wantInvalid(t *testing.T, err error, fields ...string) {
	t.Helper()
	st, ok := status.FromError(err)
	if !ok || st.Code() != codes.InvalidArgument {
		t.Fatalf("error = %v; want INVALID_ARGUMENT", err)
	}
	got := fieldViolations(st)
	if strings.Join(got, ",") != strings.Join(fields, ",") {
		t.Fatalf("field violations = %q; want exactly %q (status %q)", got, fields, st.Message())
	}
}

func wantReason(t *testing.T, err error, code codes.Code, reason string) *status.Status {
	t.Helper()
	st, ok := status.FromError(err)
	if !ok || st.Code() != code {
		t.Fatalf("error = %v; want %v", err, code)
	}
	ei := errorInfo(st)
	if ei == nil || ei.GetDomain() != api.ErrorDomain || ei.GetReason() != reason {
		t.Fatalf("ErrorInfo = %v; want domain %q reason %q", ei, api.ErrorDomain, reason)
	}
	return st
}

// holdFirst opens a session, sends first and returns the first reply (or
// the stream's error).
func holdFirst(ctx context.Context, c v1.LockServiceClient, first *v1.HoldLockRequest) (*v1.HoldLockResponse, error) {
	stream, err := c.HoldLock(ctx)
	if err != nil {
		return nil, err
	}
	if err := stream.Send(first); err != nil && !errors.Is(err, io.EOF) {
		return nil, err
	}
	return stream.Recv()
}

func holdAcquire(a *v1.HoldLockRequest_Acquire) *v1.HoldLockRequest {
	return &v1.HoldLockRequest{Msg: &v1.HoldLockRequest_Acquire_{Acquire: a}}
}

func holdRelease() *v1.HoldLockRequest {
	return &v1.HoldLockRequest{Msg: &v1.HoldLockRequest_Release_{Release: &v1.HoldLockRequest_Release{}}}
}

// session is an open HoldLock stream that was granted the lock.
type session struct {
	stream v1.LockService_HoldLockClient
	lease  *v1.Lease
	cancel context.CancelFunc
}

func openSession(t *testing.T, c v1.LockServiceClient, a *v1.HoldLockRequest_Acquire) *session {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*eventTimeout)
	t.Cleanup(cancel)
	stream, err := c.HoldLock(ctx)
	if err != nil {
		t.Fatalf("HoldLock: %v", err)
	}
	if err := stream.Send(holdAcquire(a)); err != nil {
		t.Fatalf("send acquire: %v", err)
	}
	resp, err := stream.Recv()
	if err != nil || resp.GetAcquired() == nil {
		t.Fatalf("first event = %v, %v; want acquired", resp, err)
	}
	return &session{stream: stream, lease: resp.GetAcquired(), cancel: cancel}
}

func (s *session) recv(t *testing.T) *v1.HoldLockResponse {
	t.Helper()
	resp, err := s.stream.Recv()
	if err != nil {
		t.Fatalf("session Recv: %v", err)
	}
	return resp
}

func (s *session) wantEOF(t *testing.T) {
	t.Helper()
	if resp, err := s.stream.Recv(); !errors.Is(err, io.EOF) {
		t.Fatalf("after the last event Recv = %v, %v; want io.EOF (stream closed with OK)", resp, err)
	}
}

func wantLost(t *testing.T, resp *v1.HoldLockResponse, reason v1.HoldLockResponse_Lost_Reason) {
	t.Helper()
	if resp.GetLost() == nil || resp.GetLost().GetReason() != reason {
		t.Fatalf("event = %v; want lost %v", resp, reason)
	}
}

// spyStore wraps a lock.Store and reports when an AcquireLock is parked in
// its wait (subscribed and found the lock taken) and when it unsubscribed.
type spyStore struct {
	lock.Store
	waiting   chan struct{} // buffered 1
	unwatched chan struct{} // buffered 1

	mu      sync.Mutex
	watched bool
}

func newSpyStore(inner lock.Store) *spyStore {
	return &spyStore{Store: inner, waiting: make(chan struct{}, 1), unwatched: make(chan struct{}, 1)}
}

func (s *spyStore) TryAcquire(ctx context.Context, key, leaseID, owner string, ttl time.Duration) (lock.Lease, lock.Holder, bool, error) {
	lease, holder, ok, err := s.Store.TryAcquire(ctx, key, leaseID, owner, ttl)
	s.mu.Lock()
	watched := s.watched
	s.mu.Unlock()
	if watched && err == nil && !ok {
		signal(s.waiting)
	}
	return lease, holder, ok, err
}

func (s *spyStore) WatchRelease(ctx context.Context, key string) (<-chan struct{}, func(), error) {
	ch, stop, err := s.Store.WatchRelease(ctx, key)
	if err != nil {
		return ch, stop, err
	}
	s.mu.Lock()
	s.watched = true
	s.mu.Unlock()
	return ch, func() { stop(); signal(s.unwatched) }, nil
}

func signal(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

func waitSignal(t *testing.T, ch <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(eventTimeout):
		t.Fatalf("timed out waiting for %s", what)
	}
}

// downStore is a store whose every call fails as unreachable.
type downStore struct{}

var errBoom = store.Unavailable(errors.New("boom"))

func (downStore) TryAcquire(context.Context, string, string, string, time.Duration) (lock.Lease, lock.Holder, bool, error) {
	return lock.Lease{}, lock.Holder{}, false, errBoom
}
func (downStore) Release(context.Context, string, string) error { return errBoom }
func (downStore) Revoke(context.Context, string, string) error  { return errBoom }
func (downStore) Renew(context.Context, string, string, time.Duration) (time.Time, error) {
	return time.Time{}, errBoom
}
func (downStore) Get(context.Context, string) (lock.Info, error) { return lock.Info{}, errBoom }
func (downStore) WatchRelease(context.Context, string) (<-chan struct{}, func(), error) {
	return nil, nil, errBoom
}

// Bad input ---------------------------------------------------------------

const unknownLease = "0123456789abcdef0123456789abcdef"

func dur(d time.Duration) *durationpb.Duration { return durationpb.New(d) }

type badString struct{ name, s string }

var (
	// Invalid UTF-8 is not here: a Go client cannot marshal it, see
	// TestInvalidUTF8OnTheWireIsInvalidArgument.
	badKeys = []badString{
		{"empty", ""},
		{"513 bytes", strings.Repeat("k", 513)},
		{"NUL", "a\x00b"},
		{"newline", "a\nb"},
		{"DEL", "a\x7fb"},
		{"C1 control", "a\u0085b"},
	}
	badOwners = []badString{
		{"513 bytes", strings.Repeat("o", 513)},
		{"tab", "a\tb"},
		{"C1 control", "\u009b"},
	}
	badLeaseIDs = []badString{
		{"empty", ""},
		{"31 digits", unknownLease[:31]},
		{"33 digits", unknownLease + "0"},
		{"uppercase", strings.ToUpper(unknownLease)},
		{"non-hex", strings.Repeat("g", 32)},
		{"uuid form", "01234567-89ab-cdef-0123-456789abcdef"},
		{"multibyte", strings.Repeat("é", 16)},
	}
)

type badDuration struct {
	name string
	d    *durationpb.Duration
}

var (
	invalidDurations = []badDuration{
		{"nanos out of range", &durationpb.Duration{Seconds: 1, Nanos: 1_000_000_000}},
		{"negative nanos out of range", &durationpb.Duration{Nanos: -1_000_000_000}},
		{"sign mismatch", &durationpb.Duration{Seconds: 1, Nanos: -1}},
		{"seconds out of range", &durationpb.Duration{Seconds: 315_576_000_001}},
	}
	// badTTLs are out of [100ms, 24h] or invalid.
	badTTLs = append([]badDuration{
		{"99ms", dur(99 * time.Millisecond)},
		{"100ms-1ns", dur(100*time.Millisecond - 1)},
		{"24h+1ns", dur(24*time.Hour + 1)},
		{"zero", dur(0)},
		{"negative", dur(-time.Second)},
	}, invalidDurations...)
	// badWaits are out of [0, 5m] or invalid.
	badWaits = append([]badDuration{
		{"5m+1ns", dur(5*time.Minute + 1)},
		{"negative", dur(-1)},
	}, invalidDurations...)
	// badMaxHolds are neither 0 nor in [100ms, 24h], or invalid.
	badMaxHolds = append([]badDuration{
		{"99ms", dur(99 * time.Millisecond)},
		{"1ns", dur(1)},
		{"24h+1ns", dur(24*time.Hour + 1)},
		{"negative", dur(-time.Second)},
	}, invalidDurations...)
)

// badEnv is the lock state the bad requests run against: "held" is held
// (its real lease id is used wherever the lease id is not the bad field),
// "free" is not.
type badEnv struct {
	held *v1.Lease
}

type badCase struct {
	name   string
	fields []string
	call   func(ctx context.Context, c v1.LockServiceClient, env badEnv) error
}

func badCases() []badCase {
	var cases []badCase
	add := func(name string, call func(context.Context, v1.LockServiceClient, badEnv) error, fields ...string) {
		cases = append(cases, badCase{name: name, fields: fields, call: call})
	}
	unary := func(f func(context.Context, v1.LockServiceClient, badEnv) (proto.Message, error)) func(context.Context, v1.LockServiceClient, badEnv) error {
		return func(ctx context.Context, c v1.LockServiceClient, env badEnv) error {
			_, err := f(ctx, c, env)
			return err
		}
	}
	acquire := func(r *v1.AcquireLockRequest) func(context.Context, v1.LockServiceClient, badEnv) error {
		return unary(func(ctx context.Context, c v1.LockServiceClient, _ badEnv) (proto.Message, error) {
			return c.AcquireLock(ctx, r)
		})
	}
	hold := func(first *v1.HoldLockRequest) func(context.Context, v1.LockServiceClient, badEnv) error {
		return func(ctx context.Context, c v1.LockServiceClient, _ badEnv) error {
			resp, err := holdFirst(ctx, c, first)
			if err == nil {
				return errors.New("HoldLock answered " + resp.String())
			}
			return err
		}
	}
	release := func(key, leaseID string) func(context.Context, v1.LockServiceClient, badEnv) error {
		return unary(func(ctx context.Context, c v1.LockServiceClient, env badEnv) (proto.Message, error) {
			if leaseID == "" {
				leaseID = env.held.GetLeaseId()
			}
			return c.ReleaseLock(ctx, &v1.ReleaseLockRequest{Key: key, LeaseId: leaseID})
		})
	}
	renew := func(key string, leaseID *string, ttl *durationpb.Duration) func(context.Context, v1.LockServiceClient, badEnv) error {
		return unary(func(ctx context.Context, c v1.LockServiceClient, env badEnv) (proto.Message, error) {
			id := env.held.GetLeaseId()
			if leaseID != nil {
				id = *leaseID
			}
			return c.RenewLock(ctx, &v1.RenewLockRequest{Key: key, LeaseId: id, Ttl: ttl})
		})
	}

	for _, k := range badKeys {
		add("AcquireLock/key "+k.name, acquire(&v1.AcquireLockRequest{Key: k.s}), "key")
		add("ReleaseLock/key "+k.name, release(k.s, ""), "key")
		add("RenewLock/key "+k.name, renew(k.s, nil, nil), "key")
		add("GetLock/key "+k.name, unary(func(ctx context.Context, c v1.LockServiceClient, _ badEnv) (proto.Message, error) {
			return c.GetLock(ctx, &v1.GetLockRequest{Key: k.s})
		}), "key")
		add("HoldLock/key "+k.name, hold(holdAcquire(&v1.HoldLockRequest_Acquire{Key: k.s})), "acquire.key")
	}
	for _, o := range badOwners {
		add("AcquireLock/owner "+o.name, acquire(&v1.AcquireLockRequest{Key: "free", Owner: o.s}), "owner")
		add("HoldLock/owner "+o.name, hold(holdAcquire(&v1.HoldLockRequest_Acquire{Key: "free", Owner: o.s})), "acquire.owner")
	}
	for _, d := range badTTLs {
		add("AcquireLock/ttl "+d.name, acquire(&v1.AcquireLockRequest{Key: "free", Ttl: d.d}), "ttl")
		add("RenewLock/ttl "+d.name, renew("held", nil, d.d), "ttl")
		add("HoldLock/ttl "+d.name, hold(holdAcquire(&v1.HoldLockRequest_Acquire{Key: "free", Ttl: d.d})), "acquire.ttl")
	}
	for _, d := range badWaits {
		add("AcquireLock/wait_timeout "+d.name, acquire(&v1.AcquireLockRequest{Key: "free", WaitTimeout: d.d}), "wait_timeout")
		add("HoldLock/wait_timeout "+d.name, hold(holdAcquire(&v1.HoldLockRequest_Acquire{Key: "free", WaitTimeout: d.d})), "acquire.wait_timeout")
	}
	for _, d := range badMaxHolds {
		add("HoldLock/max_hold "+d.name, hold(holdAcquire(&v1.HoldLockRequest_Acquire{Key: "free", MaxHold: d.d})), "acquire.max_hold")
	}
	for _, l := range badLeaseIDs {
		id := l.s
		add("ReleaseLock/lease_id "+l.name, unary(func(ctx context.Context, c v1.LockServiceClient, _ badEnv) (proto.Message, error) {
			return c.ReleaseLock(ctx, &v1.ReleaseLockRequest{Key: "held", LeaseId: id})
		}), "lease_id")
		add("RenewLock/lease_id "+l.name, renew("held", &id, nil), "lease_id")
	}
	add("HoldLock/first message release", hold(holdRelease()), "acquire")
	add("HoldLock/first message empty", hold(&v1.HoldLockRequest{}), "acquire")
	// Every violation is reported at once, in field order.
	add("AcquireLock/all fields", acquire(&v1.AcquireLockRequest{Key: "", Owner: "\x00", Ttl: dur(0), WaitTimeout: dur(-1)}),
		"key", "owner", "ttl", "wait_timeout")
	add("RenewLock/all fields", renew("", new("X"), dur(25*time.Hour)), "key", "lease_id", "ttl")
	add("HoldLock/all fields", hold(holdAcquire(&v1.HoldLockRequest_Acquire{Key: "\x01", Owner: strings.Repeat("o", 600), Ttl: dur(1), WaitTimeout: dur(time.Hour), MaxHold: dur(time.Nanosecond)})),
		"acquire.key", "acquire.owner", "acquire.ttl", "acquire.wait_timeout", "acquire.max_hold")
	return cases
}

func TestBadInputIsInvalidArgumentAndChangesNothing(t *testing.T) {
	sc := startSidecar(t, nil)
	env := badEnv{held: mustAcquire(t, sc.client, &v1.AcquireLockRequest{Key: "held", Ttl: dur(time.Hour), Owner: "holder"})}
	// "free" has history but no holder: a wrongly accepted acquire shows.
	free := mustAcquire(t, sc.client, &v1.AcquireLockRequest{Key: "free", Ttl: dur(time.Hour)})
	if _, err := sc.client.ReleaseLock(rpcCtx(t), &v1.ReleaseLockRequest{Key: "free", LeaseId: free.GetLeaseId()}); err != nil {
		t.Fatalf("ReleaseLock: %v", err)
	}
	snapshot := func(t *testing.T) map[string]*v1.GetLockResponse {
		t.Helper()
		return map[string]*v1.GetLockResponse{"held": getLock(t, sc.client, "held"), "free": getLock(t, sc.client, "free")}
	}
	for _, tc := range badCases() {
		t.Run(tc.name, func(t *testing.T) {
			before := snapshot(t)
			err := tc.call(rpcCtx(t), sc.client, env)
			wantInvalid(t, err, tc.fields...)
			after := snapshot(t)
			for key := range before {
				if !proto.Equal(before[key], after[key]) {
					t.Errorf("GetLock(%q) changed by a rejected request:\nbefore %v\nafter  %v", key, before[key], after[key])
				}
			}
		})
	}
}

// TestBoundsAreInclusive: the limits themselves are accepted.
func TestBoundsAreInclusive(t *testing.T) {
	sc := startSidecar(t, nil)
	c := sc.client
	cases := []struct {
		name string
		req  *v1.AcquireLockRequest
		ttl  time.Duration // expected lease lifetime
	}{
		{"ttl 100ms", &v1.AcquireLockRequest{Key: "a", Ttl: dur(100 * time.Millisecond)}, 100 * time.Millisecond},
		{"ttl 24h", &v1.AcquireLockRequest{Key: "b", Ttl: dur(24 * time.Hour)}, 24 * time.Hour},
		{"ttl default", &v1.AcquireLockRequest{Key: "c"}, api.DefaultLockTTL},
		{"wait 5m on a free lock", &v1.AcquireLockRequest{Key: "d", WaitTimeout: dur(5 * time.Minute)}, api.DefaultLockTTL},
		{"wait 0", &v1.AcquireLockRequest{Key: "e", WaitTimeout: dur(0)}, api.DefaultLockTTL},
		{"key 512 bytes", &v1.AcquireLockRequest{Key: strings.Repeat("k", 512)}, api.DefaultLockTTL},
		{"key 512 bytes multibyte", &v1.AcquireLockRequest{Key: strings.Repeat("€", 170) + "ab"}, api.DefaultLockTTL},
		{"owner 512 bytes", &v1.AcquireLockRequest{Key: "f", Owner: strings.Repeat("o", 512)}, api.DefaultLockTTL},
		{"unicode key", &v1.AcquireLockRequest{Key: "заказ/42 🚀"}, api.DefaultLockTTL},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before := time.Now()
			lease := mustAcquire(t, c, tc.req)
			after := time.Now()
			exp := lease.GetExpireTime().AsTime()
			if exp.Before(before.Add(tc.ttl)) || exp.After(after.Add(tc.ttl)) {
				t.Errorf("expire_time %v not now+%v", exp, tc.ttl)
			}
			if lease.GetKey() != tc.req.GetKey() || lease.GetOwner() != tc.req.GetOwner() || len(lease.GetLeaseId()) != 32 {
				t.Errorf("lease = %v", lease)
			}
			if got := getLock(t, c, tc.req.GetKey()); !got.GetHeld() || got.GetHolder().GetFencingToken() != lease.GetFencingToken() {
				t.Errorf("GetLock = %v; want held with token %d", got, lease.GetFencingToken())
			}
		})
	}
	t.Run("renew ttl bounds", func(t *testing.T) {
		lease := mustAcquire(t, c, &v1.AcquireLockRequest{Key: "renew", Ttl: dur(time.Hour)})
		for _, ttl := range []time.Duration{100 * time.Millisecond, 24 * time.Hour} {
			if _, err := c.RenewLock(rpcCtx(t), &v1.RenewLockRequest{Key: "renew", LeaseId: lease.GetLeaseId(), Ttl: dur(ttl)}); err != nil {
				t.Fatalf("RenewLock ttl %v: %v", ttl, err)
			}
		}
	})
	t.Run("hold max_hold bounds", func(t *testing.T) {
		for i, mh := range []*durationpb.Duration{dur(0), dur(100 * time.Millisecond), dur(24 * time.Hour)} {
			key := "hold-" + string(rune('a'+i))
			s := openSession(t, c, &v1.HoldLockRequest_Acquire{Key: key, Ttl: dur(time.Hour), MaxHold: mh})
			if err := s.stream.Send(holdRelease()); err != nil {
				t.Fatalf("send release: %v", err)
			}
			// A 100ms max_hold may win the race against the release.
			if ev := s.recv(t); ev.GetReleased() == nil && ev.GetLost().GetReason() != v1.HoldLockResponse_Lost_REASON_MAX_HOLD {
				t.Fatalf("max_hold %v: event %v; want released", mh.AsDuration(), ev)
			}
		}
	})
}

func TestUnknownLeaseIsLeaseLost(t *testing.T) {
	sc := startSidecar(t, nil)
	c := sc.client
	held := mustAcquire(t, c, &v1.AcquireLockRequest{Key: "held", Ttl: dur(time.Hour)})
	other := mustAcquire(t, c, &v1.AcquireLockRequest{Key: "other", Ttl: dur(time.Hour)})
	released := mustAcquire(t, c, &v1.AcquireLockRequest{Key: "released", Ttl: dur(time.Hour)})
	if _, err := c.ReleaseLock(rpcCtx(t), &v1.ReleaseLockRequest{Key: "released", LeaseId: released.GetLeaseId()}); err != nil {
		t.Fatalf("ReleaseLock: %v", err)
	}
	cases := []struct{ name, key, leaseID string }{
		{"held by another lease", "held", unknownLease},
		{"lease of another key", "held", other.GetLeaseId()},
		{"never held", "nobody", unknownLease},
		{"already released", "released", released.GetLeaseId()},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before := getLock(t, c, tc.key)
			_, err := c.ReleaseLock(rpcCtx(t), &v1.ReleaseLockRequest{Key: tc.key, LeaseId: tc.leaseID})
			wantReason(t, err, codes.FailedPrecondition, api.ReasonLeaseLost)
			_, err = c.RenewLock(rpcCtx(t), &v1.RenewLockRequest{Key: tc.key, LeaseId: tc.leaseID, Ttl: dur(time.Hour)})
			wantReason(t, err, codes.FailedPrecondition, api.ReasonLeaseLost)
			if after := getLock(t, c, tc.key); !proto.Equal(before, after) {
				t.Errorf("GetLock changed:\nbefore %v\nafter  %v", before, after)
			}
		})
	}
	if got := getLock(t, c, "held"); got.GetHolder().GetFencingToken() != held.GetFencingToken() {
		t.Errorf("held lock changed hands: %v", got)
	}
}

func TestGetLockNeverShowsLeaseID(t *testing.T) {
	sc := startSidecar(t, nil)
	lease := mustAcquire(t, sc.client, &v1.AcquireLockRequest{Key: "k", Ttl: dur(time.Hour), Owner: "me"})
	got := getLock(t, sc.client, "k")
	want := &v1.GetLockResponse{Held: true, LastFencingToken: lease.GetFencingToken(),
		Holder: &v1.Holder{Owner: "me", FencingToken: lease.GetFencingToken(), ExpireTime: lease.GetExpireTime()}}
	if !proto.Equal(got, want) {
		t.Fatalf("GetLock = %v; want %v", got, want)
	}
	b, err := proto.Marshal(got)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(b), lease.GetLeaseId()) {
		t.Fatal("GetLock response contains the lease id")
	}
}

func TestHugeMessageIsResourceExhausted(t *testing.T) {
	sc := startSidecar(t, nil)
	_, err := sc.client.AcquireLock(rpcCtx(t), &v1.AcquireLockRequest{Key: strings.Repeat("k", 5<<20)})
	if status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("5 MiB key: %v; want RESOURCE_EXHAUSTED", err)
	}
	// The server and the connection still serve.
	lease := mustAcquire(t, sc.client, &v1.AcquireLockRequest{Key: "after", Ttl: dur(time.Hour)})
	if got := getLock(t, sc.client, "after"); got.GetHolder().GetFencingToken() != lease.GetFencingToken() {
		t.Fatalf("GetLock after the huge message = %v", got)
	}
}

// rawCodec sends pre-encoded bytes, so a test can put on the wire what the
// Go protobuf runtime refuses to marshal (invalid UTF-8 in a string field),
// as a client in another language or a hand-made request can.
type rawCodec struct{}

type rawMsg struct{ b []byte }

func (rawCodec) Marshal(v any) ([]byte, error) { return v.(*rawMsg).b, nil }
func (rawCodec) Unmarshal(data []byte, v any) error {
	v.(*rawMsg).b = append([]byte(nil), data...)
	return nil
}
func (rawCodec) Name() string { return "proto" }

func wireString(b []byte, field protowire.Number, s string) []byte {
	b = protowire.AppendTag(b, field, protowire.BytesType)
	return protowire.AppendString(b, s)
}

// TestInvalidUTF8OnTheWireIsInvalidArgument: DESIGN.md section 3 requires
// keys and labels to be UTF-8, with INVALID_ARGUMENT naming the field
// otherwise. Such a request must not come back as INTERNAL.
func TestInvalidUTF8OnTheWireIsInvalidArgument(t *testing.T) {
	sc := startSidecar(t, nil)
	const bad = "a\xffb"
	unary := func(method string, msg []byte) func(ctx context.Context) error {
		return func(ctx context.Context) error {
			return sc.conn.Invoke(ctx, method, &rawMsg{msg}, &rawMsg{}, grpc.ForceCodec(rawCodec{}))
		}
	}
	acquireMsg := wireString(nil, 1, bad)
	cases := []struct {
		name  string
		call  func(ctx context.Context) error
		field string
	}{
		{"AcquireLock key", unary(v1.LockService_AcquireLock_FullMethodName, wireString(nil, 1, bad)), "key"},
		{"AcquireLock owner", unary(v1.LockService_AcquireLock_FullMethodName, wireString(wireString(nil, 1, "k"), 4, bad)), "owner"},
		{"ReleaseLock key", unary(v1.LockService_ReleaseLock_FullMethodName, wireString(wireString(nil, 1, bad), 2, unknownLease)), "key"},
		{"RenewLock key", unary(v1.LockService_RenewLock_FullMethodName, wireString(wireString(nil, 1, bad), 2, unknownLease)), "key"},
		{"GetLock key", unary(v1.LockService_GetLock_FullMethodName, wireString(nil, 1, bad)), "key"},
		{"HoldLock acquire.key", func(ctx context.Context) error {
			stream, err := sc.conn.NewStream(ctx, &v1.LockService_ServiceDesc.Streams[0], v1.LockService_HoldLock_FullMethodName, grpc.ForceCodec(rawCodec{}))
			if err != nil {
				return err
			}
			if err := stream.SendMsg(&rawMsg{protowire.AppendBytes(protowire.AppendTag(nil, 1, protowire.BytesType), acquireMsg)}); err != nil && !errors.Is(err, io.EOF) {
				return err
			}
			var out rawMsg
			if err := stream.RecvMsg(&out); err != nil {
				return err
			}
			return errors.New("HoldLock answered")
		}, "acquire.key"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			wantInvalid(t, tc.call(rpcCtx(t)), tc.field)
		})
	}
	if got := getLock(t, sc.client, "k"); got.GetHeld() || got.GetLastFencingToken() != 0 {
		t.Errorf("GetLock(k) = %v; the rejected request touched the lock", got)
	}
}

// HoldLock sessions -------------------------------------------------------

func TestHoldLockAcquireThenRelease(t *testing.T) {
	sc := startSidecar(t, nil)
	s := openSession(t, sc.client, &v1.HoldLockRequest_Acquire{Key: "k", Ttl: dur(time.Hour), Owner: "app"})
	if s.lease.GetKey() != "k" || s.lease.GetOwner() != "app" || len(s.lease.GetLeaseId()) != 32 || s.lease.GetFencingToken() == 0 {
		t.Fatalf("acquired lease = %v", s.lease)
	}
	if got := getLock(t, sc.client, "k"); !got.GetHeld() || got.GetHolder().GetFencingToken() != s.lease.GetFencingToken() {
		t.Fatalf("GetLock during the session = %v", got)
	}
	if err := s.stream.Send(holdRelease()); err != nil {
		t.Fatalf("send release: %v", err)
	}
	if ev := s.recv(t); ev.GetReleased() == nil {
		t.Fatalf("event = %v; want released", ev)
	}
	s.wantEOF(t)
	if got := getLock(t, sc.client, "k"); got.GetHeld() {
		t.Fatalf("lock held after release: %v", got)
	}
}

func TestHoldLockRenewsInBackground(t *testing.T) {
	sc := startSidecar(t, nil)
	const ttl = 300 * time.Millisecond
	start := time.Now()
	s := openSession(t, sc.client, &v1.HoldLockRequest_Acquire{Key: "k", Ttl: dur(ttl)})
	renewals := 0
	last := s.lease.GetExpireTime().AsTime()
	for time.Since(start) <= 5*ttl {
		ev := s.recv(t)
		r := ev.GetRenewed()
		if r == nil {
			t.Fatalf("event = %v; want renewed", ev)
		}
		if exp := r.GetExpireTime().AsTime(); !exp.After(last) {
			t.Fatalf("renewal %d: expire_time %v not after %v", renewals+1, exp, last)
		}
		last = r.GetExpireTime().AsTime()
		renewals++
	}
	if renewals < 3 {
		t.Fatalf("%d renewals in 5 TTLs; want several", renewals)
	}
	got := getLock(t, sc.client, "k")
	if !got.GetHeld() || got.GetHolder().GetFencingToken() != s.lease.GetFencingToken() {
		t.Fatalf("after 5 TTLs GetLock = %v; want still held with token %d", got, s.lease.GetFencingToken())
	}
	if err := s.stream.Send(holdRelease()); err != nil {
		t.Fatal(err)
	}
	for {
		ev := s.recv(t)
		if ev.GetRenewed() != nil {
			continue
		}
		if ev.GetReleased() == nil {
			t.Fatalf("event = %v; want released", ev)
		}
		break
	}
	s.wantEOF(t)
}

func TestHoldLockMaxHold(t *testing.T) {
	sc := startSidecar(t, nil)
	s := openSession(t, sc.client, &v1.HoldLockRequest_Acquire{Key: "k", Ttl: dur(time.Hour), MaxHold: dur(300 * time.Millisecond)})
	wantLost(t, s.recv(t), v1.HoldLockResponse_Lost_REASON_MAX_HOLD)
	s.wantEOF(t)
	if got := getLock(t, sc.client, "k"); got.GetHeld() {
		t.Fatalf("lock held after max_hold: %v", got)
	}
}

func TestHoldLockClientCancelReleases(t *testing.T) {
	sc := startSidecar(t, nil)
	s := openSession(t, sc.client, &v1.HoldLockRequest_Acquire{Key: "k", Ttl: dur(time.Hour)})
	s.cancel()
	waitFree(t, sc.client, "k")
}

func TestHoldLockClientCloseSendReleases(t *testing.T) {
	sc := startSidecar(t, nil)
	s := openSession(t, sc.client, &v1.HoldLockRequest_Acquire{Key: "k", Ttl: dur(time.Hour)})
	if err := s.stream.CloseSend(); err != nil {
		t.Fatal(err)
	}
	// A client that closed its sending side still reads: it is told.
	if ev := s.recv(t); ev.GetReleased() == nil {
		t.Fatalf("event after CloseSend = %v; want released", ev)
	}
	s.wantEOF(t)
	if got := getLock(t, sc.client, "k"); got.GetHeld() {
		t.Fatalf("lock held after the client closed its side: %v", got)
	}
}

func TestHoldLockServerShutdownReleases(t *testing.T) {
	sc := startSidecar(t, nil)
	s := openSession(t, sc.client, &v1.HoldLockRequest_Acquire{Key: "k", Ttl: dur(time.Hour)})
	sc.cancel() // graceful shutdown begins
	wantLost(t, s.recv(t), v1.HoldLockResponse_Lost_REASON_SHUTDOWN)
	s.wantEOF(t)
	sc.stop(t) // Serve returns nil
	info, err := sc.store.Get(context.Background(), "k")
	if err != nil {
		t.Fatal(err)
	}
	if info.Held {
		t.Fatalf("lock still held in the store after shutdown: %+v", info)
	}
}

func TestHoldLockSecondAcquireIsInvalid(t *testing.T) {
	sc := startSidecar(t, nil)
	s := openSession(t, sc.client, &v1.HoldLockRequest_Acquire{Key: "k", Ttl: dur(time.Hour)})
	if err := s.stream.Send(holdAcquire(&v1.HoldLockRequest_Acquire{Key: "k2"})); err != nil {
		t.Fatal(err)
	}
	_, err := s.stream.Recv()
	if status.Code(err) != codes.InvalidArgument {
		t.Fatalf("second acquire: %v; want INVALID_ARGUMENT", err)
	}
	// The session ended: its lock was released, and nothing was taken for k2.
	waitFree(t, sc.client, "k")
	if got := getLock(t, sc.client, "k2"); got.GetHeld() || got.GetLastFencingToken() != 0 {
		t.Fatalf("k2 touched by the rejected acquire: %v", got)
	}
}

// TestHoldLockSecondAcquireNamesField: DESIGN.md section 3 says every
// INVALID_ARGUMENT carries BadRequest field violations naming the field.
func TestHoldLockSecondAcquireNamesField(t *testing.T) {
	sc := startSidecar(t, nil)
	s := openSession(t, sc.client, &v1.HoldLockRequest_Acquire{Key: "k", Ttl: dur(time.Hour)})
	if err := s.stream.Send(holdAcquire(&v1.HoldLockRequest_Acquire{Key: "k"})); err != nil {
		t.Fatal(err)
	}
	_, err := s.stream.Recv()
	wantInvalid(t, err, "acquire")
}

func TestHoldLockNotAcquired(t *testing.T) {
	sc := startSidecar(t, nil)
	held := mustAcquire(t, sc.client, &v1.AcquireLockRequest{Key: "k", Ttl: dur(time.Hour), Owner: "holder"})
	ctx := rpcCtx(t)
	stream, err := sc.client.HoldLock(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(holdAcquire(&v1.HoldLockRequest_Acquire{Key: "k", WaitTimeout: dur(50 * time.Millisecond)})); err != nil {
		t.Fatal(err)
	}
	resp, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	h := resp.GetNotAcquired().GetHolder()
	if h.GetOwner() != "holder" || h.GetFencingToken() != held.GetFencingToken() {
		t.Fatalf("event = %v; want not_acquired with the holder", resp)
	}
	if resp, err := stream.Recv(); !errors.Is(err, io.EOF) {
		t.Fatalf("after not_acquired: %v, %v; want EOF", resp, err)
	}
}

// AcquireLock waiting -----------------------------------------------------

func TestAcquireLockWaiterWokenByRelease(t *testing.T) {
	spy := newSpyStore(lock.NewMemoryStore(nil))
	sc := startSidecar(t, spy)
	holder := mustAcquire(t, sc.client, &v1.AcquireLockRequest{Key: "k", Ttl: dur(time.Hour), Owner: "holder"})

	type result struct {
		resp *v1.AcquireLockResponse
		err  error
	}
	res := make(chan result, 1)
	go func() {
		// wait_timeout and the holder's TTL both outlast eventTimeout:
		// only the release can grant the lock in time.
		resp, err := sc.client.AcquireLock(rpcCtx(t), &v1.AcquireLockRequest{Key: "k", Ttl: dur(time.Hour), WaitTimeout: dur(time.Minute), Owner: "waiter"})
		res <- result{resp, err}
	}()
	waitSignal(t, spy.waiting, "the waiter to park")
	if _, err := sc.client.ReleaseLock(rpcCtx(t), &v1.ReleaseLockRequest{Key: "k", LeaseId: holder.GetLeaseId()}); err != nil {
		t.Fatalf("ReleaseLock: %v", err)
	}
	var r result
	select {
	case r = <-res:
	case <-time.After(eventTimeout):
		t.Fatal("waiter not granted after the release")
	}
	if r.err != nil || !r.resp.GetAcquired() {
		t.Fatalf("waiter = %v, %v; want acquired", r.resp, r.err)
	}
	if l := r.resp.GetLease(); l.GetOwner() != "waiter" || l.GetFencingToken() <= holder.GetFencingToken() {
		t.Fatalf("waiter lease = %v; want owner waiter, token > %d", l, holder.GetFencingToken())
	}
}

func TestAcquireLockWaitTimesOutWithHolder(t *testing.T) {
	sc := startSidecar(t, nil)
	holder := mustAcquire(t, sc.client, &v1.AcquireLockRequest{Key: "k", Ttl: dur(time.Hour), Owner: "holder"})
	resp, err := sc.client.AcquireLock(rpcCtx(t), &v1.AcquireLockRequest{Key: "k", WaitTimeout: dur(200 * time.Millisecond), Owner: "waiter"})
	if err != nil {
		t.Fatalf("AcquireLock: %v", err)
	}
	want := &v1.AcquireLockResponse{Holder: &v1.Holder{Owner: "holder", FencingToken: holder.GetFencingToken(), ExpireTime: holder.GetExpireTime()}}
	if !proto.Equal(resp, want) {
		t.Fatalf("AcquireLock = %v; want %v", resp, want)
	}
}

func TestAcquireLockWaiterCancelled(t *testing.T) {
	leaks := goleak.IgnoreCurrent()
	spy := newSpyStore(lock.NewMemoryStore(nil))
	sc := startSidecar(t, spy)
	mustAcquire(t, sc.client, &v1.AcquireLockRequest{Key: "k", Ttl: dur(time.Hour)})

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	errc := make(chan error, 1)
	go func() {
		_, err := sc.client.AcquireLock(ctx, &v1.AcquireLockRequest{Key: "k", WaitTimeout: dur(time.Minute)})
		errc <- err
	}()
	waitSignal(t, spy.waiting, "the waiter to park")
	cancel()
	select {
	case err := <-errc:
		if status.Code(err) != codes.Canceled {
			t.Fatalf("cancelled waiter: %v; want CANCELED", err)
		}
	case <-time.After(eventTimeout):
		t.Fatal("cancelled waiter did not return")
	}
	// The server side of the wait ended too, before any shutdown.
	waitSignal(t, spy.unwatched, "the server to stop waiting")
	if got := getLock(t, sc.client, "k"); got.GetHolder().GetOwner() != "" || !got.GetHeld() {
		t.Fatalf("GetLock = %v; want the original holder", got)
	}
	sc.stop(t)
	goleak.VerifyNone(t, leaks)
}

func TestAcquireLockWaiterEndsOnShutdown(t *testing.T) {
	spy := newSpyStore(lock.NewMemoryStore(nil))
	sc := startSidecar(t, spy)
	mustAcquire(t, sc.client, &v1.AcquireLockRequest{Key: "k", Ttl: dur(time.Hour)})
	errc := make(chan error, 1)
	go func() {
		_, err := sc.client.AcquireLock(rpcCtx(t), &v1.AcquireLockRequest{Key: "k", WaitTimeout: dur(time.Minute)})
		errc <- err
	}()
	waitSignal(t, spy.waiting, "the waiter to park")
	sc.cancel() // shutdown: the wait ends instead of holding up the drain
	select {
	case err := <-errc:
		st := wantReason(t, err, codes.Unavailable, api.ReasonShuttingDown)
		if retryInfo(st) == nil {
			t.Errorf("no RetryInfo on %v", st)
		}
	case <-time.After(eventTimeout):
		t.Fatal("waiter not ended by the shutdown")
	}
	sc.stop(t)
}

// Store outage ------------------------------------------------------------

func TestStoreUnavailableMapping(t *testing.T) {
	sc := startSidecar(t, downStore{})
	c := sc.client
	cases := []struct {
		name string
		call func(ctx context.Context) error
	}{
		{"AcquireLock", func(ctx context.Context) error {
			_, err := c.AcquireLock(ctx, &v1.AcquireLockRequest{Key: "k"})
			return err
		}},
		{"AcquireLock waiting", func(ctx context.Context) error {
			_, err := c.AcquireLock(ctx, &v1.AcquireLockRequest{Key: "k", WaitTimeout: dur(time.Minute)})
			return err
		}},
		{"ReleaseLock", func(ctx context.Context) error {
			_, err := c.ReleaseLock(ctx, &v1.ReleaseLockRequest{Key: "k", LeaseId: unknownLease})
			return err
		}},
		{"RenewLock", func(ctx context.Context) error {
			_, err := c.RenewLock(ctx, &v1.RenewLockRequest{Key: "k", LeaseId: unknownLease})
			return err
		}},
		{"GetLock", func(ctx context.Context) error {
			_, err := c.GetLock(ctx, &v1.GetLockRequest{Key: "k"})
			return err
		}},
		{"HoldLock", func(ctx context.Context) error {
			resp, err := holdFirst(ctx, c, holdAcquire(&v1.HoldLockRequest_Acquire{Key: "k"}))
			if err == nil {
				return errors.New("HoldLock answered " + resp.String())
			}
			return err
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			st := wantReason(t, tc.call(rpcCtx(t)), codes.Unavailable, api.ReasonStoreUnavailable)
			ri := retryInfo(st)
			if ri == nil || ri.GetRetryDelay().AsDuration() <= 0 {
				t.Errorf("RetryInfo = %v; want a positive retry delay", ri)
			}
			if strings.Contains(st.Message(), "boom") {
				t.Errorf("message %q leaks the internal cause", st.Message())
			}
		})
	}
}
