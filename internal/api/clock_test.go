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
	"unicode"
	"unicode/utf8"

	"github.com/oklog/ulid/v2"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"
	"google.golang.org/protobuf/types/known/timestamppb"

	v1 "github.com/seed-a88e5317/resilience-sidecar/clients/go/resiliencev1"
	"github.com/seed-a88e5317/resilience-sidecar/internal/api"
	"github.com/seed-a88e5317/resilience-sidecar/internal/clock"
	"github.com/seed-a88e5317/resilience-sidecar/internal/metrics"
	"github.com/seed-a88e5317/resilience-sidecar/internal/server"
	"github.com/seed-a88e5317/resilience-sidecar/internal/store"
)

// clockWall is the manual wall clock of the HLC and the ULID generator.
type clockWall struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clockWall) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

// clockSidecar is an in-process server with the ClockServer registered,
// served over bufconn.
type clockSidecar struct {
	client v1.ClockServiceClient
	wall   *clockWall
}

// startClockSidecar serves the clock API on st (a memory store when nil)
// with a 500ms max offset and opts. t.Cleanup stops it.
func startClockSidecar(t *testing.T, st clock.Store, opts ...api.Option) *clockSidecar {
	t.Helper()
	if st == nil {
		st = clock.NewMemoryStore()
	}
	wall := &clockWall{now: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)}
	discard := slog.New(slog.DiscardHandler)
	srv := server.New(server.Options{Log: discard, ShutdownTimeout: 5 * time.Second})
	v1.RegisterClockServiceServer(srv.GRPC(), api.NewClockServer(
		clock.NewService(st, 0, discard), clock.NewHLC(wall.Now, 500*time.Millisecond), clock.NewULIDs(wall.Now, nil), discard, opts...))

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
	t.Cleanup(func() {
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
	return &clockSidecar{client: v1.NewClockServiceClient(conn), wall: wall}
}

func clockCtx(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// clockWantStatus checks err's code and ErrorInfo reason ("" for none) and
// returns the status.
func clockWantStatus(t *testing.T, err error, code codes.Code, reason string) *status.Status {
	t.Helper()
	st, _ := status.FromError(err)
	if st.Code() != code {
		t.Fatalf("error %v: code %v, want %v", err, st.Code(), code)
	}
	var got string
	for _, d := range st.Details() {
		if info, ok := d.(*errdetails.ErrorInfo); ok {
			if info.GetDomain() != api.ErrorDomain {
				t.Fatalf("ErrorInfo domain %q", info.GetDomain())
			}
			got = info.GetReason()
		}
	}
	if got != reason {
		t.Fatalf("error %v: reason %q, want %q", err, got, reason)
	}
	return st
}

// clockWantInvalid checks err is INVALID_ARGUMENT naming exactly fields.
func clockWantInvalid(t *testing.T, err error, fields ...string) {
	t.Helper()
	st := clockWantStatus(t, err, codes.InvalidArgument, "")
	var got []string
	for _, d := range st.Details() {
		if br, ok := d.(*errdetails.BadRequest); ok {
			for _, f := range br.GetFieldViolations() {
				got = append(got, f.GetField())
			}
		}
	}
	if strings.Join(got, ",") != strings.Join(fields, ",") {
		t.Fatalf("violations %v (%v), want %v", got, err, fields)
	}
}

func TestClockAPILamportFlow(t *testing.T) {
	c := startClockSidecar(t, nil).client
	ctx := clockCtx(t)
	r, err := c.NextLamport(ctx, &v1.NextLamportRequest{Clock: "orders"})
	if err != nil || r.GetFirst() != 1 || r.GetLast() != 1 {
		t.Fatalf("NextLamport default count = %v, %v; want 1..1", r, err)
	}
	r, err = c.NextLamport(ctx, &v1.NextLamportRequest{Clock: "orders", Count: 5})
	if err != nil || r.GetFirst() != 2 || r.GetLast() != 6 {
		t.Fatalf("NextLamport(5) = %v, %v; want 2..6", r, err)
	}
	o, err := c.ObserveLamport(ctx, &v1.ObserveLamportRequest{Clock: "orders", Timestamp: 100})
	if err != nil || o.GetTimestamp() != 101 {
		t.Fatalf("ObserveLamport(100) = %v, %v; want 101", o, err)
	}
	o, err = c.ObserveLamport(ctx, &v1.ObserveLamportRequest{Clock: "orders", Timestamp: 3})
	if err != nil || o.GetTimestamp() != 102 {
		t.Fatalf("ObserveLamport(3) = %v, %v; want 102", o, err)
	}
	for range 2 {
		g, err := c.GetLamport(ctx, &v1.GetLamportRequest{Clock: "orders"})
		if err != nil || g.GetTimestamp() != 102 {
			t.Fatalf("GetLamport = %v, %v; want 102", g, err)
		}
	}
	g, err := c.GetLamport(ctx, &v1.GetLamportRequest{Clock: "other"})
	if err != nil || g.GetTimestamp() != 0 {
		t.Fatalf("GetLamport(other) = %v, %v; want 0", g, err)
	}
}

func TestClockAPIBadInputIsInvalidArgumentAndChangesNothing(t *testing.T) {
	c := startClockSidecar(t, nil).client
	ctx := clockCtx(t)
	long := strings.Repeat("k", api.MaxKeyBytes+1)
	cases := []struct {
		name   string
		call   func() error
		fields []string
	}{
		{"next: empty clock", func() error {
			_, err := c.NextLamport(ctx, &v1.NextLamportRequest{Count: 1})
			return err
		}, []string{"clock"}},
		{"next: long clock and count too high", func() error {
			_, err := c.NextLamport(ctx, &v1.NextLamportRequest{Clock: long, Count: api.MaxLamportCount + 1})
			return err
		}, []string{"clock", "count"}},
		{"next: control character", func() error {
			_, err := c.NextLamport(ctx, &v1.NextLamportRequest{Clock: "c\n"})
			return err
		}, []string{"clock"}},
		{"observe: timestamp past the maximum", func() error {
			_, err := c.ObserveLamport(ctx, &v1.ObserveLamportRequest{Clock: "c", Timestamp: api.MaxObservedLamport + 1})
			return err
		}, []string{"timestamp"}},
		{"observe: uint64 max", func() error {
			_, err := c.ObserveLamport(ctx, &v1.ObserveLamportRequest{Clock: "c", Timestamp: ^uint64(0)})
			return err
		}, []string{"timestamp"}},
		{"get: empty clock", func() error {
			_, err := c.GetLamport(ctx, &v1.GetLamportRequest{})
			return err
		}, []string{"clock"}},
		{"ulid: count too high", func() error {
			_, err := c.NextUlid(ctx, &v1.NextUlidRequest{Count: api.MaxULIDCount + 1})
			return err
		}, []string{"count"}},
		{"hlc: no remote", func() error {
			_, err := c.UpdateHlc(ctx, &v1.UpdateHlcRequest{})
			return err
		}, []string{"remote"}},
		{"hlc: bad text", func() error {
			_, err := c.UpdateHlc(ctx, &v1.UpdateHlcRequest{Remote: &v1.UpdateHlcRequest_Text{Text: "0x0000000000000001"}})
			return err
		}, []string{"text"}},
		{"hlc: empty timestamp", func() error {
			_, err := c.UpdateHlc(ctx, &v1.UpdateHlcRequest{Remote: &v1.UpdateHlcRequest_Timestamp{Timestamp: &v1.HlcTimestamp{Logical: 70000}}})
			return err
		}, []string{"timestamp.wall_time", "timestamp.logical"}},
		{"hlc: nil timestamp (sent as an empty one)", func() error {
			_, err := c.UpdateHlc(ctx, &v1.UpdateHlcRequest{Remote: &v1.UpdateHlcRequest_Timestamp{}})
			return err
		}, []string{"timestamp.wall_time"}},
		{"hlc: before the epoch", func() error {
			_, err := c.UpdateHlc(ctx, &v1.UpdateHlcRequest{Remote: &v1.UpdateHlcRequest_Timestamp{Timestamp: &v1.HlcTimestamp{
				WallTime: timestamppb.New(time.Date(1969, 12, 31, 0, 0, 0, 0, time.UTC))}}})
			return err
		}, []string{"timestamp.wall_time"}},
		{"hlc: invalid wall time", func() error {
			_, err := c.UpdateHlc(ctx, &v1.UpdateHlcRequest{Remote: &v1.UpdateHlcRequest_Timestamp{Timestamp: &v1.HlcTimestamp{
				WallTime: &timestamppb.Timestamp{Seconds: 1, Nanos: -1}}}})
			return err
		}, []string{"timestamp.wall_time"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) { clockWantInvalid(t, tc.call(), tc.fields...) })
	}
	if g, err := c.GetLamport(ctx, &v1.GetLamportRequest{Clock: "c"}); err != nil || g.GetTimestamp() != 0 {
		t.Fatalf("after bad requests clock c = %v, %v; want untouched 0", g, err)
	}
}

func TestClockAPIBoundsAreInclusive(t *testing.T) {
	c := startClockSidecar(t, nil).client
	ctx := clockCtx(t)
	if r, err := c.NextLamport(ctx, &v1.NextLamportRequest{Clock: strings.Repeat("k", api.MaxKeyBytes), Count: api.MaxLamportCount}); err != nil || r.GetLast() != api.MaxLamportCount {
		t.Fatalf("NextLamport at the bounds = %v, %v", r, err)
	}
	if r, err := c.NextUlid(ctx, &v1.NextUlidRequest{Count: api.MaxULIDCount}); err != nil || len(r.GetUlids()) != api.MaxULIDCount {
		t.Fatalf("NextUlid(%d): %d ULIDs, %v", api.MaxULIDCount, len(r.GetUlids()), err)
	}
	o, err := c.ObserveLamport(ctx, &v1.ObserveLamportRequest{Clock: "top", Timestamp: api.MaxObservedLamport})
	if err != nil || o.GetTimestamp() != clock.MaxLamport {
		t.Fatalf("ObserveLamport(max) = %v, %v", o, err)
	}
	// The clock is exhausted: refused, never wrapped.
	_, err = c.NextLamport(ctx, &v1.NextLamportRequest{Clock: "top"})
	clockWantStatus(t, err, codes.OutOfRange, api.ReasonLimitExceeded)
	_, err = c.ObserveLamport(ctx, &v1.ObserveLamportRequest{Clock: "top", Timestamp: 1})
	clockWantStatus(t, err, codes.OutOfRange, api.ReasonLimitExceeded)
	if g, err := c.GetLamport(ctx, &v1.GetLamportRequest{Clock: "top"}); err != nil || g.GetTimestamp() != clock.MaxLamport {
		t.Fatalf("GetLamport at the maximum = %v, %v", g, err)
	}
}

func TestClockAPIRegressionIsInternal(t *testing.T) {
	m := clock.NewMemoryStore()
	c := startClockSidecar(t, m).client
	ctx := clockCtx(t)
	if _, err := c.NextLamport(ctx, &v1.NextLamportRequest{Clock: "c", Count: 10}); err != nil {
		t.Fatal(err)
	}
	m.Set("c", 2) // the store lost writes
	_, err := c.NextLamport(ctx, &v1.NextLamportRequest{Clock: "c"})
	st := clockWantStatus(t, err, codes.Internal, "")
	if !strings.Contains(st.Message(), "went backwards") {
		t.Fatalf("message %q does not say what happened", st.Message())
	}
	_, err = c.GetLamport(ctx, &v1.GetLamportRequest{Clock: "c"})
	clockWantStatus(t, err, codes.Internal, "")
	if o, err := c.ObserveLamport(ctx, &v1.ObserveLamportRequest{Clock: "c", Timestamp: 10}); err != nil || o.GetTimestamp() != 11 {
		t.Fatalf("repairing ObserveLamport(10) = %v, %v", o, err)
	}
}

// downClockStore fails like an unreachable Redis.
type downClockStore struct{}

var errClockDown = store.Unavailable(errors.New("dial tcp: connection refused"))

func (downClockStore) Next(context.Context, string, uint64) (uint64, error) {
	return 0, errClockDown
}

func (downClockStore) Observe(context.Context, string, uint64) (uint64, error) {
	return 0, errClockDown
}

func (downClockStore) Get(context.Context, string) (uint64, error) { return 0, errClockDown }

func TestClockAPIStoreUnavailable(t *testing.T) {
	c := startClockSidecar(t, downClockStore{}).client
	ctx := clockCtx(t)
	calls := map[string]func() error{
		"NextLamport": func() error {
			_, err := c.NextLamport(ctx, &v1.NextLamportRequest{Clock: "c"})
			return err
		},
		"ObserveLamport": func() error {
			_, err := c.ObserveLamport(ctx, &v1.ObserveLamportRequest{Clock: "c", Timestamp: 5})
			return err
		},
		"GetLamport": func() error {
			_, err := c.GetLamport(ctx, &v1.GetLamportRequest{Clock: "c"})
			return err
		},
	}
	for name, call := range calls {
		st := clockWantStatus(t, call(), codes.Unavailable, api.ReasonStoreUnavailable)
		var retry bool
		for _, d := range st.Details() {
			_, ok := d.(*errdetails.RetryInfo)
			retry = retry || ok
		}
		if !retry || strings.Contains(st.Message(), "refused") {
			t.Fatalf("%s: %v: want RetryInfo and no internal cause", name, st.Proto())
		}
	}
	// HLC and ULIDs do not need the store.
	if _, err := c.NowHlc(ctx, &v1.NowHlcRequest{}); err != nil {
		t.Fatalf("NowHlc with the store down: %v", err)
	}
	if _, err := c.NextUlid(ctx, &v1.NextUlidRequest{}); err != nil {
		t.Fatalf("NextUlid with the store down: %v", err)
	}
}

func TestClockAPINextUlid(t *testing.T) {
	sc := startClockSidecar(t, nil)
	ctx := clockCtx(t)
	var prev string
	for _, n := range []uint32{0, 1, 7, 1000} {
		r, err := sc.client.NextUlid(ctx, &v1.NextUlidRequest{Count: n})
		if err != nil {
			t.Fatal(err)
		}
		if want := max(int(n), 1); len(r.GetUlids()) != want {
			t.Fatalf("NextUlid(%d): %d ULIDs", n, len(r.GetUlids()))
		}
		for _, u := range r.GetUlids() {
			id, err := ulid.ParseStrict(u.GetValue())
			if err != nil {
				t.Fatalf("ULID %q: %v", u.GetValue(), err)
			}
			if u.GetValue() <= prev {
				t.Fatalf("ULID %s not above %s as text", u.GetValue(), prev)
			}
			prev = u.GetValue()
			if !u.GetTime().AsTime().Equal(time.UnixMilli(int64(id.Time()))) || !u.GetTime().AsTime().Equal(sc.wall.Now()) {
				t.Fatalf("ULID %s: time %v, ULID ms %d, wall %v", u.GetValue(), u.GetTime().AsTime(), id.Time(), sc.wall.Now())
			}
		}
	}
}

func TestClockAPIHlc(t *testing.T) {
	m := metrics.New()
	sc := startClockSidecar(t, nil, api.WithMetrics(m))
	c := sc.client
	ctx := clockCtx(t)
	n1, err := c.NowHlc(ctx, &v1.NowHlcRequest{})
	if err != nil {
		t.Fatal(err)
	}
	ts := n1.GetTimestamp()
	if !ts.GetWallTime().AsTime().Equal(sc.wall.Now()) || ts.GetLogical() != 0 ||
		ts.GetEncoded() != uint64(sc.wall.Now().UnixMilli())<<16 || len(ts.GetText()) != 16 {
		t.Fatalf("NowHlc = %v at wall %v", ts, sc.wall.Now())
	}
	// The three forms of one remote timestamp give the same result on
	// clocks in the same state; each result is above the previous one.
	remote := clock.Timestamp{WallTime: sc.wall.Now().UnixMilli() + 200, Logical: 9}
	forms := []*v1.UpdateHlcRequest{
		{Remote: &v1.UpdateHlcRequest_Timestamp{Timestamp: &v1.HlcTimestamp{WallTime: timestamppb.New(remote.Time().Add(999 * time.Microsecond)), Logical: 9}}},
		{Remote: &v1.UpdateHlcRequest_Encoded{Encoded: remote.Encode()}},
		{Remote: &v1.UpdateHlcRequest_Text{Text: strings.ToUpper(remote.String())}},
	}
	prev := ts.GetEncoded()
	for i, req := range forms {
		r, err := c.UpdateHlc(ctx, req)
		if err != nil {
			t.Fatalf("form %d: %v", i, err)
		}
		got := r.GetTimestamp()
		want := clock.Timestamp{WallTime: remote.WallTime, Logical: remote.Logical + 1 + uint16(i)}
		if got.GetEncoded() != want.Encode() || got.GetText() != want.String() || got.GetLogical() != uint32(want.Logical) ||
			!got.GetWallTime().AsTime().Equal(want.Time()) || got.GetEncoded() <= prev {
			t.Fatalf("form %d: UpdateHlc = %v, want %v", i, got, want)
		}
		prev = got.GetEncoded()
	}

	_, err = c.UpdateHlc(ctx, &v1.UpdateHlcRequest{Remote: &v1.UpdateHlcRequest_Encoded{
		Encoded: clock.Timestamp{WallTime: sc.wall.Now().Add(2 * time.Second).UnixMilli()}.Encode()}})
	st := clockWantStatus(t, err, codes.FailedPrecondition, api.ReasonClockSkew)
	for _, d := range st.Details() {
		if info, ok := d.(*errdetails.ErrorInfo); ok {
			if info.GetMetadata()["ahead"] != "2s" || info.GetMetadata()["max_offset"] != "500ms" {
				t.Fatalf("skew metadata = %v", info.GetMetadata())
			}
		}
	}
	if v := clockSkewCount(t, m); v != 1 {
		t.Fatalf("%s = %v, want 1", api.ClockSkewMetric, v)
	}
	n2, err := c.NowHlc(ctx, &v1.NowHlcRequest{})
	if err != nil || n2.GetTimestamp().GetEncoded() != prev+1 {
		t.Fatalf("NowHlc after a refused update = %v, %v; want %d (not adopted)", n2, err, prev+1)
	}
}

// clockSkewCount reads the skew counter from m's registry.
func clockSkewCount(t *testing.T, m *metrics.Metrics) float64 {
	t.Helper()
	mfs, err := m.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == api.ClockSkewMetric {
			return mf.GetMetric()[0].GetCounter().GetValue()
		}
	}
	t.Fatalf("%s not registered", api.ClockSkewMetric)
	return 0
}

func TestClockAPICancelled(t *testing.T) {
	c := startClockSidecar(t, nil).client
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := c.NextUlid(ctx, &v1.NextUlidRequest{})
	clockWantStatus(t, err, codes.Canceled, "")
}

// FuzzValidateClock checks the validators against a plain statement of
// the bounds: a request is accepted exactly when every field is within
// them, and a rejection names the fields that are not.
func FuzzValidateClock(f *testing.F) {
	f.Add("orders", uint32(0), uint64(0), "0000000000010002", int64(0), int32(0), uint32(0))
	f.Add("", uint32(100_001), uint64(1<<63-1), "zz", int64(-1), int32(0), uint32(65536))
	f.Add("a\x00b", uint32(100_000), uint64(1<<63-2), "FFFFFFFFFFFFFFFF", int64(253402300799), int32(999_999_999), uint32(65535))
	f.Add(strings.Repeat("é", 257), uint32(10_001), ^uint64(0), "", int64(253402300800), int32(1_000_000_000), uint32(1))
	f.Fuzz(func(t *testing.T, name string, count uint32, ts uint64, text string, sec int64, nanos int32, logical uint32) {
		nameOK := name != "" && len(name) <= api.MaxKeyBytes && utf8.ValidString(name) && !strings.ContainsFunc(name, unicode.IsControl)

		n, err := api.ValidateNextLamport(&v1.NextLamportRequest{Clock: name, Count: count})
		countOK := count <= api.MaxLamportCount
		clockFuzzCheck(t, "NextLamport", err, map[string]bool{"clock": nameOK, "count": countOK})
		if err == nil && n != uint64(max(count, 1)) {
			t.Fatalf("count %d read as %d", count, n)
		}

		err = api.ValidateObserveLamport(&v1.ObserveLamportRequest{Clock: name, Timestamp: ts})
		clockFuzzCheck(t, "ObserveLamport", err, map[string]bool{"clock": nameOK, "timestamp": ts <= api.MaxObservedLamport})

		u, err := api.ValidateNextUlid(&v1.NextUlidRequest{Count: count})
		clockFuzzCheck(t, "NextUlid", err, map[string]bool{"count": count <= api.MaxULIDCount})
		if err == nil && u != int(max(count, 1)) {
			t.Fatalf("ulid count %d read as %d", count, u)
		}

		_, err = api.ValidateUpdateHlc(&v1.UpdateHlcRequest{Remote: &v1.UpdateHlcRequest_Text{Text: text}})
		_, perr := clock.ParseTimestamp(text)
		clockFuzzCheck(t, "UpdateHlc text", err, map[string]bool{"text": perr == nil})

		wall := &timestamppb.Timestamp{Seconds: sec, Nanos: nanos}
		got, err := api.ValidateUpdateHlc(&v1.UpdateHlcRequest{Remote: &v1.UpdateHlcRequest_Timestamp{Timestamp: &v1.HlcTimestamp{WallTime: wall, Logical: logical}}})
		wallOK := wall.CheckValid() == nil && sec >= 0
		clockFuzzCheck(t, "UpdateHlc timestamp", err, map[string]bool{"timestamp.wall_time": wallOK, "timestamp.logical": logical <= 0xFFFF})
		if err == nil && (got.WallTime != wall.AsTime().UnixMilli() || uint32(got.Logical) != logical || got.WallTime > clock.MaxWallTime) {
			t.Fatalf("timestamp %v/%d read as %+v", wall, logical, got)
		}
	})
}

// clockFuzzCheck: err is nil exactly when every field is ok, and otherwise
// names exactly the fields that are not.
func clockFuzzCheck(t *testing.T, what string, err error, ok map[string]bool) {
	t.Helper()
	var bad []string
	for f, good := range ok {
		if !good {
			bad = append(bad, f)
		}
	}
	if len(bad) == 0 {
		if err != nil {
			t.Fatalf("%s: valid request refused: %v", what, err)
		}
		return
	}
	if err == nil {
		t.Fatalf("%s: invalid request (%v) accepted", what, bad)
	}
	for _, f := range bad {
		if !strings.Contains(err.Error(), f+":") {
			t.Fatalf("%s: error %q does not name %s", what, err, f)
		}
	}
}
