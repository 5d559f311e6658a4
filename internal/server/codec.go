package server

import (
	"bytes"
	"crypto/rand"
	"fmt"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/encoding/proto"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protowire"
	gproto "google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	v1 "github.com/seed-a88e5317/resilience-sidecar/clients/go/resiliencev1"
)

// codec is gRPC's proto codec with one fast path: a NextUlidResponse of
// up to 10 000 ULIDs, each a small message with a Timestamp inside, is the
// one response whose generic encoding costs more than the rest of its call
// (about 40% of a NextUlid of 1000). It is written directly in the wire
// format, byte for byte what proto.Marshal writes (codec_test.go checks
// it). Every other message, and every decoding, goes to the proto codec;
// a request that does not decode is marked for the innermost interceptor (unaryEdge.handle, rejectUndecodableStream)
// instead of failing inside gRPC, which would answer INTERNAL.
//
// An ExecuteCallResponse whose body is reserved in the response budget
// (heldBytes) is encoded into a buffer that gives the reservation back
// when gRPC frees it, once it is written.
type codec struct {
	encoding.CodecV2
	held *heldBytes
}

func newCodec(held *heldBytes) codec { return codec{encoding.GetCodecV2(proto.Name), held} }

func (c codec) Marshal(v any) (mem.BufferSlice, error) {
	if r, ok := v.(*v1.ExecuteCallResponse); ok {
		if n, ok := c.held.take(r); ok {
			return c.held.marshal(r, n)
		}
	}
	if r, ok := v.(*v1.NextUlidResponse); ok {
		// A buffer from gRPC's pool, which takes it back once the
		// response is written.
		pool := mem.DefaultBufferPool()
		bp := pool.Get(maxNextUlidResponseSize(r))
		if b, ok := appendNextUlidResponse((*bp)[:0], r); ok && cap(b) == cap(*bp) {
			*bp = b
			return mem.BufferSlice{mem.NewBuffer(bp, pool)}, nil
		}
		pool.Put(bp)
	}
	return c.CodecV2.Marshal(v)
}

// Unmarshal decodes a received message. A request that is not a valid
// encoding of its message is the client's error, INVALID_ARGUMENT, but
// gRPC turns every codec error into INTERNAL ("grpc: failed to unmarshal
// the received message", whatever status the codec returns), and it
// decodes a unary request before any interceptor runs. So a message that
// does not decode is not an error here: it is emptied and marked (one
// unknown field holding this process's random tag and the decoding
// error), and the innermost interceptors (unaryEdge.handle, rejectUndecodableStream) refuse the
// call before its handler sees it. The tag cannot be forged by a client,
// and nothing outlives the message.
func (c codec) Unmarshal(data mem.BufferSlice, v any) error {
	err := c.CodecV2.Unmarshal(data, v)
	if err == nil {
		return nil
	}
	m, ok := v.(gproto.Message)
	if !ok {
		return err
	}
	gproto.Reset(m)
	mark := protowire.AppendTag(nil, undecodableField, protowire.BytesType)
	mark = protowire.AppendBytes(mark, append(undecodableTag[:], err.Error()...))
	m.ProtoReflect().SetUnknown(mark)
	return nil
}

// undecodableField is the field number of the mark, the largest there is
// (no message of the API comes near it).
const undecodableField = protowire.MaxValidNumber

// undecodableTag opens the mark's content: random per process.
var undecodableTag = func() (t [16]byte) {
	_, _ = rand.Read(t[:])
	return t
}()

// undecodable returns the INVALID_ARGUMENT status for a request marked by
// codec.Unmarshal, nil for any other.
func undecodable(v any) error {
	m, ok := v.(gproto.Message)
	if !ok {
		return nil
	}
	u := m.ProtoReflect().GetUnknown()
	num, typ, n := protowire.ConsumeTag(u)
	if n < 0 || num != undecodableField || typ != protowire.BytesType {
		return nil
	}
	b, k := protowire.ConsumeBytes(u[n:])
	if k < 0 || n+k != len(u) || !bytes.HasPrefix(b, undecodableTag[:]) {
		return nil
	}
	name := m.ProtoReflect().Descriptor().FullName()
	desc := fmt.Sprintf("the request is not a valid %s encoding: %s", name, b[len(undecodableTag):])
	st := status.New(codes.InvalidArgument, "invalid argument: "+desc)
	if d, err := st.WithDetails(&errdetails.BadRequest{FieldViolations: []*errdetails.BadRequest_FieldViolation{{Description: desc}}}); err == nil {
		st = d
	}
	return st.Err()
}

// rejectUndecodableStream makes a stream's RecvMsg answer INVALID_ARGUMENT
// for a message that did not decode.
func rejectUndecodableStream(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	return handler(srv, decodingStream{ss})
}

type decodingStream struct{ grpc.ServerStream }

func (s decodingStream) RecvMsg(m any) error {
	if err := s.ServerStream.RecvMsg(m); err != nil {
		return err
	}
	return undecodable(m)
}

// maxNextUlidResponseSize bounds the encoding of r: per ULID, its value,
// a Timestamp of at most 22 bytes and tags and lengths of at most 5 bytes
// each.
func maxNextUlidResponseSize(r *v1.NextUlidResponse) int {
	n := 0
	for _, u := range r.GetUlids() {
		n += len(u.GetValue()) + 22 + 5*6
	}
	return n
}

// appendNextUlidResponse appends r's wire encoding to b; ok is false
// when r carries unknown fields (not written by this server), which it
// leaves to the generic encoder. The ULIDs of one millisecond share one
// Timestamp (api.ulidsPB), so its encoding is reused while it repeats.
func appendNextUlidResponse(b []byte, r *v1.NextUlidResponse) (_ []byte, ok bool) {
	if len(r.ProtoReflect().GetUnknown()) > 0 {
		return b, false
	}
	ulids := r.GetUlids()
	var lastTime *timestamppb.Timestamp
	var timeField []byte // lastTime's field: tag, length, content
	for i, u := range ulids {
		if u == nil || len(u.ProtoReflect().GetUnknown()) > 0 {
			return b, false
		}
		if t := u.GetTime(); i == 0 || t != lastTime {
			if t != nil && len(t.ProtoReflect().GetUnknown()) > 0 {
				return b, false
			}
			lastTime, timeField = t, appendTimeField(timeField[:0], t)
		}
		v := u.GetValue()
		n := len(timeField)
		if v != "" {
			n += 1 + protowire.SizeBytes(len(v))
		}
		b = protowire.AppendTag(b, 1, protowire.BytesType)
		b = protowire.AppendVarint(b, uint64(n))
		if v != "" {
			b = protowire.AppendTag(b, 1, protowire.BytesType)
			b = protowire.AppendString(b, v)
		}
		b = append(b, timeField...)
	}
	return b, true
}

// appendTimeField appends Ulid field 2 (absent when t is nil).
func appendTimeField(b []byte, t *timestamppb.Timestamp) []byte {
	if t == nil {
		return b
	}
	s, ns := t.GetSeconds(), t.GetNanos()
	n := 0
	if s != 0 {
		n += 1 + protowire.SizeVarint(uint64(s))
	}
	if ns != 0 {
		n += 1 + protowire.SizeVarint(uint64(int64(ns)))
	}
	b = protowire.AppendTag(b, 2, protowire.BytesType)
	b = protowire.AppendVarint(b, uint64(n))
	if s != 0 {
		b = protowire.AppendTag(b, 1, protowire.VarintType)
		b = protowire.AppendVarint(b, uint64(s))
	}
	if ns != 0 {
		b = protowire.AppendTag(b, 2, protowire.VarintType)
		b = protowire.AppendVarint(b, uint64(int64(ns)))
	}
	return b
}
