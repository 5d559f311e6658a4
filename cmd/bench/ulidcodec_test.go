package main

import (
	"testing"
	"time"

	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	v1 "github.com/seed-a88e5317/resilience-sidecar/clients/go/resiliencev1"
	"github.com/seed-a88e5317/resilience-sidecar/internal/clock"
)

// TestLeanULIDCodec: the generator's decoder gives what proto.Unmarshal
// gives, and refuses ULIDs out of order.
func TestLeanULIDCodec(t *testing.T) {
	ids, err := clock.NewULIDs(nil, nil).Next(1000)
	if err != nil {
		t.Fatal(err)
	}
	want := &v1.NextUlidResponse{}
	for _, id := range ids {
		want.Ulids = append(want.Ulids, &v1.Ulid{Value: id.String(), Time: timestamppb.New(time.UnixMilli(int64(id.Time())))})
	}
	data, err := proto.Marshal(want)
	if err != nil {
		t.Fatal(err)
	}
	c := leanULIDCodec{}
	got := &v1.NextUlidResponse{}
	if err := c.Unmarshal(mem.BufferSlice{mem.SliceBuffer(data)}, got); err != nil {
		t.Fatal(err)
	}
	if !proto.Equal(got, want) {
		t.Fatal("lean decoding differs from proto.Unmarshal")
	}
	want.Ulids[1], want.Ulids[2] = want.Ulids[2], want.Ulids[1]
	data, _ = proto.Marshal(want)
	if err := c.Unmarshal(mem.BufferSlice{mem.SliceBuffer(data)}, &v1.NextUlidResponse{}); err == nil {
		t.Fatal("ULIDs out of order accepted")
	}
}
