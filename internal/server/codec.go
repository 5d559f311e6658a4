package server

import (
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/encoding/proto"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/types/known/timestamppb"

	v1 "github.com/seed-a88e5317/resilience-sidecar/clients/go/resiliencev1"
)

// codec is gRPC's proto codec with one fast path: a NextUlidResponse of
// up to 10 000 ULIDs, each a small message with a Timestamp inside, is the
// one response whose generic encoding costs more than the rest of its call
// (about 40% of a NextUlid of 1000). It is written directly in the wire
// format, byte for byte what proto.Marshal writes (codec_test.go checks
// it). Every other message, and every decoding, goes to the proto codec.
type codec struct{ encoding.CodecV2 }

func newCodec() codec { return codec{encoding.GetCodecV2(proto.Name)} }

func (c codec) Marshal(v any) (mem.BufferSlice, error) {
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
