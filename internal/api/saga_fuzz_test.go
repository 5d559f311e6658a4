package api

import (
	"context"
	"log/slog"
	"slices"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	v1 "github.com/seed-a88e5317/resilience-sidecar/clients/go/resiliencev1"
)

// FuzzValidateStartSaga checks StartSaga's validation against an oracle
// restating the bounds: saga_id and name are keys, timeout 100ms-720h
// (default 1h), metadata keys 1-128 bytes and values at most 512, both
// UTF-8 without control characters. A refusal names exactly the fields at
// fault, through the status a client sees.
func FuzzValidateStartSaga(f *testing.F) {
	f.Add("order-1", "place-order", int64(60), int32(0), true, "customer", "c-42")
	f.Add("", "", int64(0), int32(99_000_000), true, "", "")
	f.Add("a\x00b", "n", int64(2_592_000), int32(1), true, "k", "v\n")
	f.Add("ok", "ok", int64(-1), int32(0), false, "k", "v")
	f.Add("\xff", "ok", int64(0), int32(100_000_000), true, "\u0085", "v")
	f.Fuzz(func(t *testing.T, id, name string, sec int64, nanos int32, withTimeout bool, mdKey, mdVal string) {
		r := &v1.StartSagaRequest{SagaId: id, Name: name, Metadata: map[string]string{mdKey: mdVal}}
		if withTimeout {
			r.Timeout = &durationpb.Duration{Seconds: sec, Nanos: nanos}
		}
		var want []string
		if !oracleText(id, true) {
			want = append(want, "saga_id")
		}
		if !oracleText(name, true) {
			want = append(want, "name")
		}
		timeout := time.Hour
		if withTimeout {
			d := time.Duration(sec)*time.Second + time.Duration(nanos)
			if !oracleDurationValid(sec, nanos) || sec > 1<<33 || d < 100*time.Millisecond || d > 720*time.Hour {
				want = append(want, "timeout")
			} else {
				timeout = d
			}
		}
		if !oracleText(mdKey, true) || len(mdKey) > 128 || !oracleText(mdVal, false) {
			want = append(want, "metadata")
		}

		n, err := ValidateStartSaga(r)
		if len(want) == 0 {
			if err != nil {
				t.Fatalf("valid request refused: %v", err)
			}
			if n.ID != id || n.Name != name || n.Timeout != timeout || n.Metadata[mdKey] != mdVal {
				t.Fatalf("validated %+v", n)
			}
			return
		}
		st, _ := status.FromError(toStatus(context.Background(), slog.New(slog.DiscardHandler), err))
		if st.Code() != codes.InvalidArgument {
			t.Fatalf("code %v, want InvalidArgument (want fields %v)", st.Code(), want)
		}
		var got []string
		for _, d := range st.Details() {
			if br, ok := d.(*errdetails.BadRequest); ok {
				for _, v := range br.GetFieldViolations() {
					if !slices.Contains(got, v.GetField()) {
						got = append(got, v.GetField())
					}
				}
			}
		}
		if !slices.Equal(got, want) {
			t.Fatalf("fields %v, want %v", got, want)
		}
	})
}
