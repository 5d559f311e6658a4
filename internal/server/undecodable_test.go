package server_test

import (
	"context"
	"strings"
	"sync/atomic"
	"testing"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	v1 "github.com/seed-a88e5317/resilience-sidecar/clients/go/resiliencev1"
	"github.com/seed-a88e5317/resilience-sidecar/internal/server"
)

// rawCodec sends *[]byte as they are and keeps what it receives: a client
// that can put any bytes on the wire.
type rawCodec struct{}

func (rawCodec) Marshal(v any) (mem.BufferSlice, error) {
	return mem.BufferSlice{mem.SliceBuffer(*v.(*[]byte))}, nil
}

func (rawCodec) Unmarshal(data mem.BufferSlice, v any) error {
	*v.(*[]byte) = data.Materialize()
	return nil
}

func (rawCodec) Name() string { return "proto" }

// garbage is not a protobuf encoding: field 1, length-delimited, says 5
// bytes follow and one does.
var garbage = []byte{0x0a, 0x05, 'k'}

// wantUndecodable checks err is INVALID_ARGUMENT with a BadRequest naming
// the request's message.
func wantUndecodable(t *testing.T, what string, err error, msg string) {
	t.Helper()
	st, _ := status.FromError(err)
	if st.Code() != codes.InvalidArgument || !strings.Contains(st.Message(), msg) {
		t.Fatalf("%s with undecodable bytes: %v; want INVALID_ARGUMENT naming %s", what, err, msg)
	}
	for _, d := range st.Details() {
		if br, ok := d.(*errdetails.BadRequest); ok && len(br.GetFieldViolations()) == 1 &&
			strings.Contains(br.GetFieldViolations()[0].GetDescription(), msg) {
			return
		}
	}
	t.Fatalf("%s: no BadRequest detail in %v", what, st.Details())
}

// TestUndecodableRequestIsInvalidArgument: bytes that do not decode as the
// request are the client's error, for unary and streaming calls alike
// (gRPC's own answer would be INTERNAL), and no handler sees them.
func TestUndecodableRequestIsInvalidArgument(t *testing.T) {
	var handled atomic.Int32
	stub := &stubLock{
		acquire: func(context.Context, *v1.AcquireLockRequest) (*v1.AcquireLockResponse, error) {
			handled.Add(1)
			return &v1.AcquireLockResponse{Acquired: true}, nil
		},
		hold: func(s v1.LockService_HoldLockServer) error {
			if _, err := s.Recv(); err != nil {
				return err
			}
			handled.Add(1)
			return s.Send(&v1.HoldLockResponse{Event: &v1.HoldLockResponse_Released_{Released: &v1.HoldLockResponse_Released{}}})
		},
	}
	r := start(t, server.Options{}, registerLock(stub))
	ctx := callCtx(t)
	raw := grpc.ForceCodecV2(rawCodec{})

	t.Run("unary", func(t *testing.T) {
		var out []byte
		in := append([]byte(nil), garbage...)
		err := r.conn.Invoke(ctx, "/resilience.v1.LockService/AcquireLock", &in, &out, raw)
		wantUndecodable(t, "AcquireLock", err, "resilience.v1.AcquireLockRequest")
		// The same client with a valid encoding is served.
		in, _ = proto.Marshal(&v1.AcquireLockRequest{Key: "k"})
		if err := r.conn.Invoke(ctx, "/resilience.v1.LockService/AcquireLock", &in, &out, raw); err != nil {
			t.Fatalf("AcquireLock with a valid encoding: %v", err)
		}
	})

	t.Run("stream", func(t *testing.T) {
		desc := &grpc.StreamDesc{StreamName: "HoldLock", ClientStreams: true, ServerStreams: true}
		st, err := r.conn.NewStream(ctx, desc, "/resilience.v1.LockService/HoldLock", raw)
		if err != nil {
			t.Fatal(err)
		}
		in := append([]byte(nil), garbage...)
		if err := st.SendMsg(&in); err != nil {
			t.Fatal(err)
		}
		var out []byte
		err = st.RecvMsg(&out)
		if err == nil {
			t.Fatalf("HoldLock with undecodable bytes answered %x", out)
		}
		wantUndecodable(t, "HoldLock", err, "resilience.v1.HoldLockRequest")
	})

	if n := handled.Load(); n != 1 {
		t.Fatalf("handlers ran %d times; want once (the valid request only)", n)
	}
}
