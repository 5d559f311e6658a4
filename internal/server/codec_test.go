package server

import (
	"bytes"
	"math"
	"math/rand/v2"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	v1 "github.com/seed-a88e5317/resilience-sidecar/clients/go/resiliencev1"
	"github.com/seed-a88e5317/resilience-sidecar/internal/clock"
)

// TestCodecNextUlidIsProtoMarshal: the fast encoding of NextUlidResponse
// is byte for byte proto.Marshal's, for real responses and for every
// corner of the fields (empty, nil, zero, negative, extreme values), and
// what it writes decodes back to an equal message.
func TestCodecNextUlidIsProtoMarshal(t *testing.T) {
	ids, err := clock.NewULIDs(nil, nil).Next(1000)
	if err != nil {
		t.Fatal(err)
	}
	real := &v1.NextUlidResponse{}
	for _, id := range ids {
		real.Ulids = append(real.Ulids, &v1.Ulid{Value: id.String(), Time: timestamppb.New(ulidTime(id.Time()))})
	}
	cases := map[string]*v1.NextUlidResponse{
		"real block of 1000": real,
		"empty":              {},
		"corners": {Ulids: []*v1.Ulid{
			{},
			{Value: "x"},
			{Time: &timestamppb.Timestamp{}},
			{Time: &timestamppb.Timestamp{Seconds: -1, Nanos: -1}},
			{Time: &timestamppb.Timestamp{Seconds: math.MaxInt64, Nanos: math.MaxInt32}},
			{Time: &timestamppb.Timestamp{Seconds: math.MinInt64, Nanos: math.MinInt32}},
			{Value: string(bytes.Repeat([]byte{'7'}, 300)), Time: &timestamppb.Timestamp{Nanos: 5}},
		}},
	}
	rng := rand.New(rand.NewPCG(1, 2))
	random := &v1.NextUlidResponse{}
	for range 500 {
		u := &v1.Ulid{Value: string(bytes.Repeat([]byte{'a'}, rng.IntN(200)))}
		if rng.IntN(4) > 0 {
			u.Time = &timestamppb.Timestamp{Seconds: rng.Int64() >> rng.IntN(64), Nanos: rng.Int32() >> rng.IntN(32)}
			if rng.IntN(2) == 0 {
				u.Time.Seconds = -u.Time.Seconds
			}
		}
		random.Ulids = append(random.Ulids, u)
	}
	cases["random"] = random

	c := newCodec(nil)
	for name, r := range cases {
		t.Run(name, func(t *testing.T) {
			want, err := proto.MarshalOptions{Deterministic: true}.Marshal(r)
			if err != nil {
				t.Fatal(err)
			}
			got, err := c.Marshal(r)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got.Materialize(), want) {
				t.Fatalf("fast encoding differs from proto.Marshal:\n got %x\nwant %x", got.Materialize(), want)
			}
			back := &v1.NextUlidResponse{}
			if err := proto.Unmarshal(got.Materialize(), back); err != nil || !proto.Equal(back, r) {
				t.Fatalf("decoded %v, %v; want %v", back, err, r)
			}
		})
	}
}

// TestCodecFallsBack: other messages, and responses with unknown fields,
// take the generic path.
func TestCodecFallsBack(t *testing.T) {
	r := &v1.NextUlidResponse{Ulids: []*v1.Ulid{{Value: "a"}}}
	r.Ulids[0].ProtoReflect().SetUnknown([]byte{0x18, 0x01}) // field 3, varint 1
	if _, ok := appendNextUlidResponse(nil, r); ok {
		t.Fatal("fast path taken for a message with unknown fields")
	}
	got, err := newCodec(nil).Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	want, _ := proto.Marshal(r)
	if !bytes.Equal(got.Materialize(), want) {
		t.Fatalf("got %x, want %x", got.Materialize(), want)
	}
	other := &v1.NextLamportResponse{First: 1, Last: 2}
	got, err = newCodec(nil).Marshal(other)
	if err != nil {
		t.Fatal(err)
	}
	want, _ = proto.Marshal(other)
	if !bytes.Equal(got.Materialize(), want) {
		t.Fatalf("got %x, want %x", got.Materialize(), want)
	}
}

func BenchmarkCodecNextUlid1000(b *testing.B) {
	ids, _ := clock.NewULIDs(nil, nil).Next(1000)
	// As the handler builds it: ULIDs of one millisecond share a Timestamp.
	r := &v1.NextUlidResponse{}
	var ts *timestamppb.Timestamp
	for _, id := range ids {
		if ts == nil || ts.AsTime() != ulidTime(id.Time()) {
			ts = timestamppb.New(ulidTime(id.Time()))
		}
		r.Ulids = append(r.Ulids, &v1.Ulid{Value: id.String(), Time: ts})
	}
	c := newCodec(nil)
	b.Run("fast", func(b *testing.B) {
		for b.Loop() {
			bs, _ := c.Marshal(r)
			bs.Free()
		}
	})
	b.Run("proto", func(b *testing.B) {
		for b.Loop() {
			bs, _ := c.CodecV2.Marshal(r)
			bs.Free()
		}
	})
}

func ulidTime(ms uint64) time.Time { return time.UnixMilli(int64(ms)) }
