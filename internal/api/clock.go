package api

import (
	"context"
	"errors"
	"log/slog"
	"time"
	"unsafe"

	"github.com/oklog/ulid/v2"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/types/known/timestamppb"

	v1 "github.com/seed-a88e5317/resilience-sidecar/clients/go/resiliencev1"
	"github.com/seed-a88e5317/resilience-sidecar/internal/clock"
)

// Bounds of the clock API (DESIGN.md section 4, Clocks).
const (
	MaxLamportCount = 100_000
	MaxULIDCount    = 10_000
	// MaxObservedLamport is the highest timestamp ObserveLamport accepts:
	// the clock then becomes clock.MaxLamport.
	MaxObservedLamport = clock.MaxLamport - 1
)

// ClockServer implements resiliencev1.ClockServiceServer.
type ClockServer struct {
	v1.UnimplementedClockServiceServer
	lamport *clock.Service
	hlc     *clock.HLC
	ulids   *clock.ULIDs
	log     *slog.Logger
}

// ClockSkewMetric counts the remote HLC timestamps UpdateHlc refused with
// CLOCK_SKEW.
const ClockSkewMetric = "resilience_clock_skew_rejected_total"

// NewClockServer serves Lamport clocks from lamport, hybrid logical clock
// timestamps from hlc and ULIDs from ulids. With WithMetrics it registers
// ClockSkewMetric in the metrics' registry, read from hlc's count (once per
// registry: a second server on the same registry keeps the first's).
func NewClockServer(lamport *clock.Service, hlc *clock.HLC, ulids *clock.ULIDs, log *slog.Logger, opts ...Option) *ClockServer {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if o := applyOptions(opts); o.metrics != nil {
		skew := prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: ClockSkewMetric,
			Help: "Remote hybrid logical clock timestamps UpdateHlc refused for being more than max_offset ahead (CLOCK_SKEW).",
		}, func() float64 { return float64(hlc.SkewRejections()) })
		if err := o.metrics.Registry().Register(skew); err != nil && !errors.As(err, new(prometheus.AlreadyRegisteredError)) {
			log.Warn("clock: cannot register metric", "metric", ClockSkewMetric, "error", err)
		}
	}
	return &ClockServer{lamport: lamport, hlc: hlc, ulids: ulids, log: log}
}

func (s *ClockServer) fail(ctx context.Context, err error) error { return toStatus(ctx, s.log, err) }

// clockCount reads an optional count: 0 means 1, else 1..hi.
func (v *violations) clockCount(field string, n uint32, hi uint32) uint32 {
	switch {
	case n == 0:
		return 1
	case n > hi:
		v.add(field, "must be between 1 and %d, got %d", hi, n)
		return 1
	}
	return n
}

// ValidateNextLamport checks a NextLamportRequest and returns the count.
func ValidateNextLamport(r *v1.NextLamportRequest) (uint64, error) {
	var v violations
	v.key("clock", r.GetClock())
	n := v.clockCount("count", r.GetCount(), MaxLamportCount)
	return uint64(n), v.err()
}

// NextLamport implements ClockServiceServer.
func (s *ClockServer) NextLamport(ctx context.Context, r *v1.NextLamportRequest) (*v1.NextLamportResponse, error) {
	n, err := ValidateNextLamport(r)
	if err != nil {
		return nil, s.fail(ctx, err)
	}
	first, last, err := s.lamport.Next(ctx, r.GetClock(), n)
	if err != nil {
		return nil, s.fail(ctx, err)
	}
	return &v1.NextLamportResponse{First: first, Last: last}, nil
}

// ValidateObserveLamport checks an ObserveLamportRequest.
func ValidateObserveLamport(r *v1.ObserveLamportRequest) error {
	var v violations
	v.key("clock", r.GetClock())
	if ts := r.GetTimestamp(); ts > MaxObservedLamport {
		v.add("timestamp", "must be at most %d (Lamport values end at 2^63-1), got %d", uint64(MaxObservedLamport), ts)
	}
	return v.err()
}

// ObserveLamport implements ClockServiceServer.
func (s *ClockServer) ObserveLamport(ctx context.Context, r *v1.ObserveLamportRequest) (*v1.ObserveLamportResponse, error) {
	if err := ValidateObserveLamport(r); err != nil {
		return nil, s.fail(ctx, err)
	}
	ts, err := s.lamport.Observe(ctx, r.GetClock(), r.GetTimestamp())
	if err != nil {
		return nil, s.fail(ctx, err)
	}
	return &v1.ObserveLamportResponse{Timestamp: ts}, nil
}

// ValidateGetLamport checks a GetLamportRequest.
func ValidateGetLamport(r *v1.GetLamportRequest) error {
	var v violations
	v.key("clock", r.GetClock())
	return v.err()
}

// GetLamport implements ClockServiceServer.
func (s *ClockServer) GetLamport(ctx context.Context, r *v1.GetLamportRequest) (*v1.GetLamportResponse, error) {
	if err := ValidateGetLamport(r); err != nil {
		return nil, s.fail(ctx, err)
	}
	ts, err := s.lamport.Get(ctx, r.GetClock())
	if err != nil {
		return nil, s.fail(ctx, err)
	}
	return &v1.GetLamportResponse{Timestamp: ts}, nil
}

// ValidateNextUlid checks a NextUlidRequest and returns the count.
func ValidateNextUlid(r *v1.NextUlidRequest) (int, error) {
	var v violations
	n := v.clockCount("count", r.GetCount(), MaxULIDCount)
	return int(n), v.err()
}

// NextUlid implements ClockServiceServer.
func (s *ClockServer) NextUlid(ctx context.Context, r *v1.NextUlidRequest) (*v1.NextUlidResponse, error) {
	n, err := ValidateNextUlid(r)
	if err != nil {
		return nil, s.fail(ctx, err)
	}
	if err := ctx.Err(); err != nil {
		return nil, s.fail(ctx, err)
	}
	ids, err := s.ulids.Next(n)
	if err != nil {
		return nil, s.fail(ctx, err)
	}
	return &v1.NextUlidResponse{Ulids: ulidsPB(ids)}, nil
}

// ulidsPB builds the response's messages with a handful of allocations
// whatever their number (a block of 1000 was 4000): the messages share one
// backing array, the texts are slices of one string, and ULIDs of the same
// millisecond share one (read-only) Timestamp.
func ulidsPB(ids []ulid.ULID) []*v1.Ulid {
	text := make([]byte, len(ids)*ulid.EncodedSize)
	for i, id := range ids {
		_ = id.MarshalTextTo(text[i*ulid.EncodedSize : (i+1)*ulid.EncodedSize]) // cannot fail: the size is exact
	}
	// text is not written again: the strings can share it.
	all := unsafe.String(unsafe.SliceData(text), len(text))
	msgs := make([]v1.Ulid, len(ids))
	out := make([]*v1.Ulid, len(ids))
	var ts *timestamppb.Timestamp
	var tsMS uint64
	for i, id := range ids {
		if ts == nil || id.Time() != tsMS {
			tsMS = id.Time()
			ts = timestamppb.New(time.UnixMilli(int64(tsMS)))
		}
		m := &msgs[i]
		m.Value, m.Time = all[i*ulid.EncodedSize:(i+1)*ulid.EncodedSize], ts
		out[i] = m
	}
	return out
}

// NowHlc implements ClockServiceServer.
func (s *ClockServer) NowHlc(ctx context.Context, _ *v1.NowHlcRequest) (*v1.NowHlcResponse, error) {
	if err := ctx.Err(); err != nil {
		return nil, s.fail(ctx, err)
	}
	return &v1.NowHlcResponse{Timestamp: hlcPB(s.hlc.Now())}, nil
}

// ValidateUpdateHlc checks an UpdateHlcRequest and returns the remote
// timestamp in whichever form it was sent.
func ValidateUpdateHlc(r *v1.UpdateHlcRequest) (clock.Timestamp, error) {
	var v violations
	var ts clock.Timestamp
	switch rem := r.GetRemote().(type) {
	case *v1.UpdateHlcRequest_Timestamp:
		ts = v.hlcTimestamp("timestamp", rem.Timestamp)
	case *v1.UpdateHlcRequest_Encoded:
		ts = clock.DecodeTimestamp(rem.Encoded)
	case *v1.UpdateHlcRequest_Text:
		var err error
		if ts, err = clock.ParseTimestamp(rem.Text); err != nil {
			v.add("text", "must be 16 hexadecimal digits (the text form of an HLC timestamp)")
		}
	default:
		v.add("remote", "one of timestamp, encoded or text is required")
	}
	return ts, v.err()
}

// hlcTimestamp reads the structured form of an HLC timestamp: wall_time
// required, valid and not before the Unix epoch (so below clock.MaxWallTime,
// since a valid Timestamp ends with year 9999), truncated to the
// millisecond; logical 0-65535.
func (v *violations) hlcTimestamp(field string, t *v1.HlcTimestamp) clock.Timestamp {
	if t == nil {
		v.add(field, "must be set")
		return clock.Timestamp{}
	}
	var ts clock.Timestamp
	switch w := t.GetWallTime(); {
	case w == nil:
		v.add(field+".wall_time", "must be set")
	case w.CheckValid() != nil:
		v.add(field+".wall_time", "invalid timestamp: %v", w.CheckValid())
	case w.GetSeconds() < 0:
		v.add(field+".wall_time", "must not be before 1970-01-01T00:00:00Z")
	default:
		ts.WallTime = w.AsTime().UnixMilli()
	}
	if l := t.GetLogical(); l > 0xFFFF {
		v.add(field+".logical", "must be between 0 and 65535, got %d", l)
	} else {
		ts.Logical = uint16(l)
	}
	return ts
}

// UpdateHlc implements ClockServiceServer.
func (s *ClockServer) UpdateHlc(ctx context.Context, r *v1.UpdateHlcRequest) (*v1.UpdateHlcResponse, error) {
	remote, err := ValidateUpdateHlc(r)
	if err != nil {
		return nil, s.fail(ctx, err)
	}
	if err := ctx.Err(); err != nil {
		return nil, s.fail(ctx, err)
	}
	ts, err := s.hlc.Update(remote)
	if err != nil {
		return nil, s.fail(ctx, err)
	}
	return &v1.UpdateHlcResponse{Timestamp: hlcPB(ts)}, nil
}

func hlcPB(t clock.Timestamp) *v1.HlcTimestamp {
	return &v1.HlcTimestamp{
		WallTime: timestamppb.New(t.Time()),
		Logical:  uint32(t.Logical),
		Encoded:  t.Encode(),
		Text:     t.String(),
	}
}
