package main

import (
	"context"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// The echo service is the baseline of the targets: a bare gRPC-Go server
// (no interceptors, no stats handler) answering a unary call with its
// request. It is served by the floor child process beside the health
// service. The descriptor is what protoc-gen-go-grpc would write for
//
//	service Echo { rpc Echo(google.protobuf.BytesValue) returns (google.protobuf.BytesValue); }

const echoMethod = "/bench.Echo/Echo"

type echoServer interface{}

var echoDesc = grpc.ServiceDesc{
	ServiceName: "bench.Echo",
	HandlerType: (*echoServer)(nil),
	Methods: []grpc.MethodDesc{{
		MethodName: "Echo",
		Handler: func(_ any, ctx context.Context, dec func(any) error, _ grpc.UnaryServerInterceptor) (any, error) {
			in := new(wrapperspb.BytesValue)
			if err := dec(in); err != nil {
				return nil, err
			}
			return in, nil
		},
	}},
}

// echoPayload is about the size of an AcquireLockRequest.
var echoPayload = make([]byte, 40)

// echoOp is one echo call on conn.
func echoOp(conn grpc.ClientConnInterface) func(context.Context) error {
	in, out := &wrapperspb.BytesValue{Value: echoPayload}, new(wrapperspb.BytesValue)
	return func(ctx context.Context) error {
		return conn.Invoke(ctx, echoMethod, in, out)
	}
}
