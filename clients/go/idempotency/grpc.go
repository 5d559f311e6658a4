package idempotency

import (
	"context"
	"fmt"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/protoadapt"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/known/durationpb"

	v1 "github.com/seed-a88e5317/resilience-sidecar/clients/go/resiliencev1"
)

// The metadata entries of a stored gRPC response.
const (
	methodMetadataKey  = "grpc-method"
	messageMetadataKey = "message-type"
)

// UnaryServerInterceptor returns a gRPC unary server interceptor that
// makes the methods it covers idempotent by the "idempotency-key" entry of
// the call's metadata (see the package documentation for what is
// guaranteed). client is usually v1.NewIdempotencyServiceClient of a
// connection from resilience.Dial. Install it with
// grpc.ChainUnaryInterceptor, after interceptors that authenticate (so a
// WithScopeFunc can read who calls).
//
// A covered call (every unary method unless WithGRPCMethods says
// otherwise) that carries the entry is handled so:
//
//   - the key must be one entry of 1-255 printable ASCII characters, else
//     INVALID_ARGUMENT;
//   - the fingerprint is the hex SHA-256 of the full method name, "\n" and
//     the request message marshalled deterministically
//     (proto.MarshalOptions{Deterministic: true}), so a retry must send an
//     equal message;
//   - the first call runs the handler; a response it returns without an
//     error is stored (its bytes, and its message type's full name) and
//     returned; an error or a panic releases the key (the error is
//     returned, the panic goes on): errors are never stored;
//   - a duplicate after it gets the stored response, unmarshalled into a
//     new message of the stored type (found by its full name in
//     protoregistry.GlobalTypes, where generated code registers every
//     message; the fingerprint includes the method, so it is the method's
//     response type), with the header metadata idempotent-replayed: true;
//   - a duplicate while it runs gets ABORTED (the code gRPC and AIP-193
//     give to a concurrency conflict that the caller may retry, as HTTP's
//     409) with a RetryInfo; the key reused with another method or request
//     gets FAILED_PRECONDITION; when the sidecar cannot be asked,
//     UNAVAILABLE with a RetryInfo of 1s, and the handler does not run.
//
// Every error it makes itself carries an ErrorInfo of domain ErrorDomain
// whose reason is one of the Code constants. Calls without the entry pass
// straight through, unless WithKeyRequired (INVALID_ARGUMENT).
//
// UnaryServerInterceptor panics if an option is invalid.
func UnaryServerInterceptor(client v1.IdempotencyServiceClient, opts ...Option) grpc.UnaryServerInterceptor {
	c := newConfig(DefaultGRPCScope, opts)
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		if c.grpcMethods != nil && !c.grpcMethods[info.FullMethod] {
			return handler(ctx, req)
		}
		md, _ := metadata.FromIncomingContext(ctx)
		values := md.Get(MetadataKey)
		switch {
		case len(values) == 0 && !c.required:
			return handler(ctx, req)
		case len(values) == 0:
			return nil, grpcError(codes.InvalidArgument, CodeKeyMissing, "this call must carry the metadata entry "+MetadataKey, 0)
		case len(values) > 1:
			return nil, grpcError(codes.InvalidArgument, CodeKeyInvalid, "the metadata entry "+MetadataKey+" must be given once", 0)
		case !validKey(values[0]):
			return nil, grpcError(codes.InvalidArgument, CodeKeyInvalid, "the metadata entry "+MetadataKey+" must be 1-255 printable ASCII characters", 0)
		}
		msg, ok := req.(proto.Message)
		if !ok {
			return nil, status.Errorf(codes.Internal, "idempotency: the request of %s is a %T, not a protocol buffer message", info.FullMethod, req)
		}
		reqBytes, err := proto.MarshalOptions{Deterministic: true}.Marshal(msg)
		if err != nil {
			return nil, status.Errorf(codes.Internal, "idempotency: marshal the request of %s: %v", info.FullMethod, err)
		}
		storeKey, err := c.storeKey(ctx, values[0])
		if err != nil {
			c.log().ErrorContext(ctx, "idempotency: "+err.Error())
			return nil, grpcError(codes.Unavailable, CodeSidecarUnavailable, "the call's idempotency scope could not be determined", time.Second)
		}
		ck := c.check(ctx, client, storeKey, fingerprint([]byte(info.FullMethod), reqBytes))
		switch ck.outcome {
		case outcomeCompleted:
			return replayGRPC(ctx, info.FullMethod, ck.result)
		case outcomeInProgress:
			d := time.Duration(retryAfterSeconds(ck.retryAfter)) * time.Second
			return nil, grpcError(codes.Aborted, CodeKeyInUse, "a call with this idempotency key is still being processed; retry after the RetryInfo delay", d)
		case outcomeMismatch:
			return nil, grpcError(codes.FailedPrecondition, CodeKeyReused, "this idempotency key was used for a different call (method or request)", 0)
		case outcomeInvalid:
			return nil, grpcError(codes.InvalidArgument, CodeKeyInvalid, "the sidecar refused the idempotency key: "+ck.err.Error(), 0)
		case outcomeUnavailable:
			c.log().WarnContext(ctx, "idempotency: the sidecar could not be asked; the call was refused", "key", storeKey, "error", ck.err)
			return nil, grpcError(codes.Unavailable, CodeSidecarUnavailable, "the idempotency store cannot be reached; the call was not processed", time.Second)
		}
		return c.runGRPC(ctx, client, req, info, handler, storeKey, ck.leaseID)
	}
}

// runGRPC runs handler as the owner of storeKey and stores or releases.
func (c *config) runGRPC(ctx context.Context, client v1.IdempotencyServiceClient, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler, storeKey, leaseID string) (any, error) {
	finished := false
	defer func() {
		if !finished { // the handler panicked: release, and let the panic go on
			c.release(ctx, client, storeKey, leaseID)
		}
	}()
	resp, err := handler(ctx, req)
	finished = true
	if err != nil {
		c.release(ctx, client, storeKey, leaseID)
		return resp, err
	}
	msg, ok := resp.(proto.Message)
	if !ok {
		c.release(ctx, client, storeKey, leaseID)
		c.log().WarnContext(ctx, "idempotency: the response is not a protocol buffer message and was not stored", "key", storeKey, "type", fmt.Sprintf("%T", resp))
		return resp, nil
	}
	data, merr := proto.Marshal(msg)
	if merr != nil {
		c.release(ctx, client, storeKey, leaseID)
		c.log().WarnContext(ctx, "idempotency: the response could not be marshalled and was not stored", "key", storeKey, "error", merr)
		return resp, nil
	}
	c.complete(ctx, client, storeKey, leaseID, &v1.IdempotencyResult{
		Data: data,
		Metadata: map[string]string{
			methodMetadataKey:  info.FullMethod,
			messageMetadataKey: string(msg.ProtoReflect().Descriptor().FullName()),
		},
	})
	return resp, nil
}

// replayGRPC returns a stored response as a new message of its type.
func replayGRPC(ctx context.Context, fullMethod string, res *v1.IdempotencyResult) (any, error) {
	md := res.GetMetadata()
	if md[methodMetadataKey] != fullMethod {
		// Not stored by this interceptor for this method.
		return nil, grpcError(codes.FailedPrecondition, CodeKeyReused, "the result stored under this idempotency key is not a response of "+fullMethod, 0)
	}
	mt, err := protoregistry.GlobalTypes.FindMessageByName(protoreflect.FullName(md[messageMetadataKey]))
	if err != nil {
		return nil, status.Errorf(codes.Internal, "idempotency: the stored response's type %q: %v", md[messageMetadataKey], err)
	}
	msg := mt.New().Interface()
	if err := proto.Unmarshal(res.GetData(), msg); err != nil {
		return nil, status.Errorf(codes.Internal, "idempotency: unmarshal the stored %s: %v", md[messageMetadataKey], err)
	}
	if err := grpc.SetHeader(ctx, metadata.Pairs(ReplayedMetadataKey, "true")); err != nil {
		return nil, status.Errorf(codes.Internal, "idempotency: set the %s header: %v", ReplayedMetadataKey, err)
	}
	return msg, nil
}

// grpcError is a status with an ErrorInfo (domain ErrorDomain, reason
// code) and, when retryAfter > 0, a RetryInfo.
func grpcError(c codes.Code, code, msg string, retryAfter time.Duration) error {
	st := status.New(c, "idempotency: "+msg)
	details := []protoadapt.MessageV1{&errdetails.ErrorInfo{Reason: code, Domain: ErrorDomain}}
	if retryAfter > 0 {
		details = append(details, &errdetails.RetryInfo{RetryDelay: durationpb.New(retryAfter)})
	}
	if withDetails, err := st.WithDetails(details...); err == nil {
		st = withDetails
	}
	return st.Err()
}
