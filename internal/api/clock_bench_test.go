package api_test

import (
	"context"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	v1 "github.com/seed-a88e5317/resilience-sidecar/clients/go/resiliencev1"
	"github.com/seed-a88e5317/resilience-sidecar/internal/api"
	"github.com/seed-a88e5317/resilience-sidecar/internal/clock"
)

// BenchmarkNextUlid1000 is the sidecar's share of a NextUlid call of 1000:
// the handler and the response's encoding.
func BenchmarkNextUlid1000(b *testing.B) {
	s := api.NewClockServer(nil, clock.NewHLC(nil, time.Second), clock.NewULIDs(nil, nil), nil)
	req := &v1.NextUlidRequest{Count: 1000}
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		r, err := s.NextUlid(ctx, req)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := proto.Marshal(r); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)*1000/b.Elapsed().Seconds(), "ulids/s")
}
