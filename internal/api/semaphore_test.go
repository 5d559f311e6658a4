package api_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/test/bufconn"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	v1 "github.com/seed-a88e5317/resilience-sidecar/clients/go/resiliencev1"
	"github.com/seed-a88e5317/resilience-sidecar/internal/api"
	"github.com/seed-a88e5317/resilience-sidecar/internal/semaphore"
	"github.com/seed-a88e5317/resilience-sidecar/internal/server"
	"github.com/seed-a88e5317/resilience-sidecar/internal/testkit"
)

// semSidecar is an in-process server with the SemaphoreServer on a memory
// store, over bufconn.
type semSidecar struct {
	client v1.SemaphoreServiceClient
	store  *semaphore.MemoryStore
	cancel context.CancelFunc // graceful shutdown
	served chan error
}

func startSemSidecar(t *testing.T) *semSidecar {
	t.Helper()
	discard := slog.New(slog.DiscardHandler)
	st := semaphore.NewMemoryStore(nil)
	srv := server.New(server.Options{Log: discard, ShutdownTimeout: 5 * time.Second})
	svc := semaphore.NewService(st, nil, discard)
	t.Cleanup(svc.Close)
	v1.RegisterSemaphoreServiceServer(srv.GRPC(), api.NewSemaphoreServer(srv.Stopping(), svc, discard))
	lis := bufconn.Listen(1 << 20)
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ctx, lis) }()
	conn, err := grpc.NewClient("passthrough:///bufconn",
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	sc := &semSidecar{client: v1.NewSemaphoreServiceClient(conn), store: st, cancel: cancel, served: served}
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-served:
			if err != nil {
				t.Errorf("Serve = %v", err)
			}
		case <-time.After(eventTimeout):
			t.Error("Serve did not return")
		}
		_ = conn.Close()
	})
	return sc
}

func mustPermit(t *testing.T, c v1.SemaphoreServiceClient, req *v1.AcquirePermitRequest) *v1.Permit {
	t.Helper()
	resp, err := c.AcquirePermit(rpcCtx(t), req)
	if err != nil || !resp.GetAcquired() {
		t.Fatalf("AcquirePermit(%q) = %v, %v; want acquired", req.GetName(), resp, err)
	}
	return resp.GetPermit()
}

func getSem(t *testing.T, c v1.SemaphoreServiceClient, name string) *v1.GetSemaphoreResponse {
	t.Helper()
	resp, err := c.GetSemaphore(rpcCtx(t), &v1.GetSemaphoreRequest{Name: name})
	if err != nil {
		t.Fatalf("GetSemaphore(%q): %v", name, err)
	}
	return resp
}

type semBadCase struct {
	name   string
	fields []string
	call   func(ctx context.Context, c v1.SemaphoreServiceClient, held *v1.Permit) error
}

func semBadCases() []semBadCase {
	var cases []semBadCase
	add := func(name string, call func(context.Context, v1.SemaphoreServiceClient, *v1.Permit) error, fields ...string) {
		cases = append(cases, semBadCase{name: name, fields: fields, call: call})
	}
	acquire := func(r *v1.AcquirePermitRequest) func(context.Context, v1.SemaphoreServiceClient, *v1.Permit) error {
		return func(ctx context.Context, c v1.SemaphoreServiceClient, _ *v1.Permit) error {
			_, err := c.AcquirePermit(ctx, r)
			return err
		}
	}
	hold := func(first *v1.HoldPermitRequest) func(context.Context, v1.SemaphoreServiceClient, *v1.Permit) error {
		return func(ctx context.Context, c v1.SemaphoreServiceClient, _ *v1.Permit) error {
			stream, err := c.HoldPermit(ctx)
			if err != nil {
				return err
			}
			if err := stream.Send(first); err != nil {
				return err
			}
			resp, err := stream.Recv()
			if err == nil {
				return errors.New("HoldPermit answered " + resp.String())
			}
			return err
		}
	}
	holdAcq := func(a *v1.HoldPermitRequest_Acquire) *v1.HoldPermitRequest {
		a.Limit = 1
		return &v1.HoldPermitRequest{Msg: &v1.HoldPermitRequest_Acquire_{Acquire: a}}
	}
	release := func(name string, id *string) func(context.Context, v1.SemaphoreServiceClient, *v1.Permit) error {
		return func(ctx context.Context, c v1.SemaphoreServiceClient, held *v1.Permit) error {
			pid := held.GetPermitId()
			if id != nil {
				pid = *id
			}
			_, err := c.ReleasePermit(ctx, &v1.ReleasePermitRequest{Name: name, PermitId: pid})
			return err
		}
	}
	renew := func(name string, id *string, ttl *durationpb.Duration) func(context.Context, v1.SemaphoreServiceClient, *v1.Permit) error {
		return func(ctx context.Context, c v1.SemaphoreServiceClient, held *v1.Permit) error {
			pid := held.GetPermitId()
			if id != nil {
				pid = *id
			}
			_, err := c.RenewPermit(ctx, &v1.RenewPermitRequest{Name: name, PermitId: pid, Ttl: ttl})
			return err
		}
	}
	for _, k := range badKeys {
		add("AcquirePermit/name "+k.name, acquire(&v1.AcquirePermitRequest{Name: k.s, Limit: 1}), "name")
		add("ReleasePermit/name "+k.name, release(k.s, nil), "name")
		add("RenewPermit/name "+k.name, renew(k.s, nil, nil), "name")
		add("GetSemaphore/name "+k.name, func(ctx context.Context, c v1.SemaphoreServiceClient, _ *v1.Permit) error {
			_, err := c.GetSemaphore(ctx, &v1.GetSemaphoreRequest{Name: k.s})
			return err
		}, "name")
		add("HoldPermit/name "+k.name, hold(holdAcq(&v1.HoldPermitRequest_Acquire{Name: k.s})), "acquire.name")
	}
	for _, n := range []uint32{0, api.MaxSemaphoreLimit + 1, 1 << 31} {
		add(fmt.Sprint("AcquirePermit/limit ", n), acquire(&v1.AcquirePermitRequest{Name: "free", Limit: n}), "limit")
		add(fmt.Sprint("HoldPermit/limit ", n), hold(&v1.HoldPermitRequest{Msg: &v1.HoldPermitRequest_Acquire_{Acquire: &v1.HoldPermitRequest_Acquire{Name: "free", Limit: n}}}), "acquire.limit")
	}
	for _, o := range badOwners {
		add("AcquirePermit/owner "+o.name, acquire(&v1.AcquirePermitRequest{Name: "free", Limit: 1, Owner: o.s}), "owner")
		add("HoldPermit/owner "+o.name, hold(holdAcq(&v1.HoldPermitRequest_Acquire{Name: "free", Owner: o.s})), "acquire.owner")
	}
	for _, d := range badTTLs {
		add("AcquirePermit/ttl "+d.name, acquire(&v1.AcquirePermitRequest{Name: "free", Limit: 1, Ttl: d.d}), "ttl")
		add("RenewPermit/ttl "+d.name, renew("held", nil, d.d), "ttl")
		add("HoldPermit/ttl "+d.name, hold(holdAcq(&v1.HoldPermitRequest_Acquire{Name: "free", Ttl: d.d})), "acquire.ttl")
	}
	for _, d := range badWaits {
		add("AcquirePermit/wait_timeout "+d.name, acquire(&v1.AcquirePermitRequest{Name: "free", Limit: 1, WaitTimeout: d.d}), "wait_timeout")
		add("HoldPermit/wait_timeout "+d.name, hold(holdAcq(&v1.HoldPermitRequest_Acquire{Name: "free", WaitTimeout: d.d})), "acquire.wait_timeout")
	}
	for _, d := range badMaxHolds {
		add("HoldPermit/max_hold "+d.name, hold(holdAcq(&v1.HoldPermitRequest_Acquire{Name: "free", MaxHold: d.d})), "acquire.max_hold")
	}
	for _, l := range badLeaseIDs {
		id := l.s
		add("ReleasePermit/permit_id "+l.name, release("held", &id), "permit_id")
		add("RenewPermit/permit_id "+l.name, renew("held", &id, nil), "permit_id")
	}
	add("HoldPermit/first message release", hold(&v1.HoldPermitRequest{Msg: &v1.HoldPermitRequest_Release_{Release: &v1.HoldPermitRequest_Release{}}}), "acquire")
	add("HoldPermit/first message empty", hold(&v1.HoldPermitRequest{}), "acquire")
	add("AcquirePermit/all fields", acquire(&v1.AcquirePermitRequest{Name: "", Limit: 0, Owner: "\x00", Ttl: dur(0), WaitTimeout: dur(-1)}),
		"name", "owner", "limit", "ttl", "wait_timeout")
	add("RenewPermit/all fields", renew("", new("X"), dur(25*time.Hour)), "name", "permit_id", "ttl")
	add("HoldPermit/all fields", hold(&v1.HoldPermitRequest{Msg: &v1.HoldPermitRequest_Acquire_{Acquire: &v1.HoldPermitRequest_Acquire{
		Name: "\x01", Owner: strings.Repeat("o", 600), Ttl: dur(1), WaitTimeout: dur(time.Hour), MaxHold: dur(time.Nanosecond)}}}),
		"acquire.name", "acquire.owner", "acquire.limit", "acquire.ttl", "acquire.wait_timeout", "acquire.max_hold")
	return cases
}

func TestSemaphoreBadInputIsInvalidArgumentAndChangesNothing(t *testing.T) {
	sc := startSemSidecar(t)
	held := mustPermit(t, sc.client, &v1.AcquirePermitRequest{Name: "held", Limit: 1, Ttl: dur(time.Hour), Owner: "holder"})
	free := mustPermit(t, sc.client, &v1.AcquirePermitRequest{Name: "free", Limit: 1, Ttl: dur(time.Hour)})
	if _, err := sc.client.ReleasePermit(rpcCtx(t), &v1.ReleasePermitRequest{Name: "free", PermitId: free.GetPermitId()}); err != nil {
		t.Fatal(err)
	}
	snapshot := func(t *testing.T) map[string]*v1.GetSemaphoreResponse {
		t.Helper()
		return map[string]*v1.GetSemaphoreResponse{"held": getSem(t, sc.client, "held"), "free": getSem(t, sc.client, "free")}
	}
	seen := map[string]bool{}
	for _, tc := range semBadCases() {
		if seen[tc.name] {
			t.Fatalf("duplicate case name %q", tc.name)
		}
		seen[tc.name] = true
		t.Run(tc.name, func(t *testing.T) {
			before := snapshot(t)
			wantInvalid(t, tc.call(rpcCtx(t), sc.client, held), tc.fields...)
			after := snapshot(t)
			for name := range before {
				if !proto.Equal(before[name], after[name]) {
					t.Errorf("GetSemaphore(%q) changed by a rejected request:\nbefore %v\nafter  %v", name, before[name], after[name])
				}
			}
		})
	}
}

func TestSemaphoreAcquireReleaseAndGet(t *testing.T) {
	sc := startSemSidecar(t)
	c := sc.client
	a := mustPermit(t, c, &v1.AcquirePermitRequest{Name: "db", Limit: 2, Ttl: dur(time.Hour), Owner: "a"})
	b := mustPermit(t, c, &v1.AcquirePermitRequest{Name: "db", Limit: 2, Ttl: dur(time.Minute), Owner: "b"})
	if len(a.GetPermitId()) != 32 || a.GetFencingToken() == 0 || b.GetFencingToken() <= a.GetFencingToken() || a.GetName() != "db" {
		t.Fatalf("permits %v %v", a, b)
	}
	resp, err := c.AcquirePermit(rpcCtx(t), &v1.AcquirePermitRequest{Name: "db", Limit: 2})
	if err != nil || resp.GetAcquired() || resp.GetHeld() != 2 || resp.GetLimit() != 2 || resp.GetPermit() != nil {
		t.Fatalf("third AcquirePermit = %v, %v; want refused, held 2 of 2", resp, err)
	}
	got := getSem(t, c, "db")
	if got.GetLimit() != 2 || got.GetHeld() != 2 || len(got.GetHolders()) != 2 || got.GetLastFencingToken() != b.GetFencingToken() ||
		got.GetHolders()[0].GetOwner() != "b" || got.GetHolders()[1].GetOwner() != "a" {
		t.Fatalf("GetSemaphore = %v", got)
	}
	if strings.Contains(got.String(), a.GetPermitId()) || strings.Contains(got.String(), b.GetPermitId()) {
		t.Fatalf("GetSemaphore shows a permit id: %v", got)
	}
	r, err := c.RenewPermit(rpcCtx(t), &v1.RenewPermitRequest{Name: "db", PermitId: b.GetPermitId(), Ttl: dur(2 * time.Hour)})
	if err != nil || !r.GetExpireTime().AsTime().After(b.GetExpireTime().AsTime()) {
		t.Fatalf("RenewPermit = %v, %v", r, err)
	}
	if _, err := c.ReleasePermit(rpcCtx(t), &v1.ReleasePermitRequest{Name: "db", PermitId: a.GetPermitId()}); err != nil {
		t.Fatal(err)
	}
	_, err = c.ReleasePermit(rpcCtx(t), &v1.ReleasePermitRequest{Name: "db", PermitId: a.GetPermitId()})
	wantReason(t, err, codes.FailedPrecondition, api.ReasonLeaseLost)
	_, err = c.RenewPermit(rpcCtx(t), &v1.RenewPermitRequest{Name: "db", PermitId: unknownLease})
	wantReason(t, err, codes.FailedPrecondition, api.ReasonLeaseLost)
	mustPermit(t, c, &v1.AcquirePermitRequest{Name: "db", Limit: 2})
}

// semSession is an open HoldPermit stream that was granted.
type semSession struct {
	stream v1.SemaphoreService_HoldPermitClient
	permit *v1.Permit
	cancel context.CancelFunc
}

func (s *semSession) recv(t *testing.T) *v1.HoldPermitResponse {
	t.Helper()
	type res struct {
		m   *v1.HoldPermitResponse
		err error
	}
	ch := make(chan res, 1)
	go func() { m, err := s.stream.Recv(); ch <- res{m, err} }()
	select {
	case r := <-ch:
		if r.err != nil {
			t.Fatalf("Recv: %v", r.err)
		}
		return r.m
	case <-time.After(eventTimeout):
		s.cancel()
		t.Fatal("no event")
		return nil
	}
}

func openPermitSession(t *testing.T, c v1.SemaphoreServiceClient, a *v1.HoldPermitRequest_Acquire) *semSession {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	stream, err := c.HoldPermit(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&v1.HoldPermitRequest{Msg: &v1.HoldPermitRequest_Acquire_{Acquire: a}}); err != nil {
		t.Fatal(err)
	}
	s := &semSession{stream: stream, cancel: cancel}
	ev := s.recv(t)
	if ev.GetAcquired() == nil {
		t.Fatalf("first event = %v; want acquired", ev)
	}
	s.permit = ev.GetAcquired()
	return s
}

func TestHoldPermitRenewsAndReleases(t *testing.T) {
	sc := startSemSidecar(t)
	s := openPermitSession(t, sc.client, &v1.HoldPermitRequest_Acquire{Name: "db", Limit: 1, Ttl: dur(150 * time.Millisecond), Owner: "app"})
	last := s.permit.GetExpireTime().AsTime()
	for range 3 {
		ev := s.recv(t)
		if ev.GetRenewed() == nil || !ev.GetRenewed().GetExpireTime().AsTime().After(last) {
			t.Fatalf("event = %v; want renewed past %v", ev, last)
		}
		last = ev.GetRenewed().GetExpireTime().AsTime()
	}
	if got := getSem(t, sc.client, "db"); got.GetHeld() != 1 || got.GetHolders()[0].GetFencingToken() != s.permit.GetFencingToken() {
		t.Fatalf("after renewals past the TTL: %v", got)
	}
	if err := s.stream.Send(&v1.HoldPermitRequest{Msg: &v1.HoldPermitRequest_Release_{Release: &v1.HoldPermitRequest_Release{}}}); err != nil {
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
	if _, err := s.stream.Recv(); !errors.Is(err, io.EOF) {
		t.Fatalf("after released: %v; want EOF", err)
	}
	if got := getSem(t, sc.client, "db"); got.GetHeld() != 0 {
		t.Fatalf("held after release: %v", got)
	}
}

func TestHoldPermitEnds(t *testing.T) {
	for _, tc := range []struct {
		name string
		end  func(t *testing.T, sc *semSidecar, s *semSession)
		lost v1.HoldPermitResponse_Lost_Reason // unspecified: no event expected
	}{
		{name: "client cancels", end: func(_ *testing.T, _ *semSidecar, s *semSession) { s.cancel() }},
		{name: "client closes its side", end: func(t *testing.T, _ *semSidecar, s *semSession) {
			if err := s.stream.CloseSend(); err != nil {
				t.Fatal(err)
			}
			if ev := s.recv(t); ev.GetReleased() == nil {
				t.Fatalf("event = %v; want released", ev)
			}
		}},
		{name: "max hold", lost: v1.HoldPermitResponse_Lost_REASON_MAX_HOLD},
		{name: "permit released behind its back", lost: v1.HoldPermitResponse_Lost_REASON_LEASE_LOST, end: func(t *testing.T, sc *semSidecar, s *semSession) {
			if err := sc.store.Release(rpcCtx(t), "db", s.permit.GetPermitId()); err != nil {
				t.Fatal(err)
			}
		}},
		{name: "sidecar shuts down", lost: v1.HoldPermitResponse_Lost_REASON_SHUTDOWN, end: func(_ *testing.T, sc *semSidecar, _ *semSession) { sc.cancel() }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sc := startSemSidecar(t)
			a := &v1.HoldPermitRequest_Acquire{Name: "db", Limit: 1, Ttl: dur(time.Hour)}
			if tc.lost == v1.HoldPermitResponse_Lost_REASON_MAX_HOLD {
				a.MaxHold = dur(200 * time.Millisecond)
			}
			if tc.lost == v1.HoldPermitResponse_Lost_REASON_LEASE_LOST {
				a.Ttl = dur(300 * time.Millisecond) // renewal finds it gone soon
			}
			s := openPermitSession(t, sc.client, a)
			if tc.end != nil {
				tc.end(t, sc, s)
			}
			if tc.lost != v1.HoldPermitResponse_Lost_REASON_UNSPECIFIED {
				ev := s.recv(t)
				if ev.GetLost().GetReason() != tc.lost || ev.GetLost().GetMessage() == "" {
					t.Fatalf("event = %v; want lost %v", ev, tc.lost)
				}
			}
			testkit.EventuallyNil(t, eventTimeout, "permit given back", func() error {
				info, err := sc.store.Get(context.Background(), "db")
				if err == nil && info.Held != 0 {
					err = errors.New("still held")
				}
				return err
			})
		})
	}
}

func TestHoldPermitNotAcquired(t *testing.T) {
	sc := startSemSidecar(t)
	mustPermit(t, sc.client, &v1.AcquirePermitRequest{Name: "db", Limit: 1, Ttl: dur(time.Hour)})
	stream, err := sc.client.HoldPermit(rpcCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&v1.HoldPermitRequest{Msg: &v1.HoldPermitRequest_Acquire_{Acquire: &v1.HoldPermitRequest_Acquire{
		Name: "db", Limit: 1, WaitTimeout: dur(100 * time.Millisecond)}}}); err != nil {
		t.Fatal(err)
	}
	ev, err := stream.Recv()
	if err != nil || ev.GetNotAcquired() == nil || ev.GetNotAcquired().GetHeld() != 1 || ev.GetNotAcquired().GetLimit() != 1 {
		t.Fatalf("event = %v, %v; want not_acquired, held 1 of 1", ev, err)
	}
	if _, err := stream.Recv(); !errors.Is(err, io.EOF) {
		t.Fatalf("after not_acquired: %v; want EOF", err)
	}
}

func TestSemaphoreWaitEndsWithShutdown(t *testing.T) {
	sc := startSemSidecar(t)
	mustPermit(t, sc.client, &v1.AcquirePermitRequest{Name: "db", Limit: 1, Ttl: dur(time.Hour)})
	errc := make(chan error, 1)
	go func() {
		_, err := sc.client.AcquirePermit(rpcCtx(t), &v1.AcquirePermitRequest{Name: "db", Limit: 1, WaitTimeout: dur(time.Minute)})
		errc <- err
	}()
	testkit.EventuallyNil(t, eventTimeout, "waiter", func() error {
		if getSem(t, sc.client, "db").GetWaiters() != 1 {
			return errors.New("no waiter")
		}
		return nil
	})
	sc.cancel()
	wantReason(t, <-errc, codes.Unavailable, api.ReasonShuttingDown)
}
