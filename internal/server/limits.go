package server

import (
	"log/slog"
	"strings"
	"sync"

	"google.golang.org/grpc"
	"google.golang.org/grpc/mem"
	gproto "google.golang.org/protobuf/proto"

	v1 "github.com/seed-a88e5317/resilience-sidecar/clients/go/resiliencev1"
	"github.com/seed-a88e5317/resilience-sidecar/internal/admission"
	"github.com/seed-a88e5317/resilience-sidecar/internal/api"
)

// streamLimits admits the streams that stay open: Hold* sessions
// (HoldLock, HoldPermit) under max_sessions and Subscribe under
// max_subscriptions. An admitted stream carries its ticket in its
// context, so that a wait it starts (HoldLock's) counts under max_waiters;
// other streams are not limited. A refused stream ends at once with RESOURCE_EXHAUSTED/
// LIMIT_EXCEEDED, before its handler reads anything.
func streamLimits(l *admission.Limits, log *slog.Logger) grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		if !methodNeedsAuth(info.FullMethod) {
			return handler(srv, ss) // health and reflection are exempt
		}
		begin := l.BeginSession
		switch {
		case info.FullMethod == v1.EventService_Subscribe_FullMethodName:
			begin = l.BeginSubscription
		case !isSession(info.FullMethod):
			return handler(srv, ss)
		}
		ctx, t, err := begin(ss.Context())
		if err != nil {
			return api.Status(ctx, log, err)
		}
		defer t.End()
		return handler(srv, &contextStream{ServerStream: ss, ctx: ctx})
	}
}

// isSession reports whether fullMethod is a Hold* session stream
// ("/resilience.v1.LockService/HoldLock").
func isSession(fullMethod string) bool {
	_, method := splitMethod(fullMethod)
	return strings.HasPrefix(method, "Hold")
}

// heldBytes are the ExecuteCall responses whose upstream body is still
// reserved in the response budget (max_response_bytes_in_flight) after
// their handler returned: gRPC encodes a response and writes it after
// the interceptor, and a slow reader keeps the encoding in memory until
// then, so the reservation moves from the call to the encoded buffer.
type heldBytes struct {
	budget *admission.Budget
	m      sync.Map // *v1.ExecuteCallResponse -> int64 bytes reserved
}

// hold keeps n reserved bytes for resp until codec.Marshal encodes it; a
// failed call, or any other response, gives them back now.
func (h *heldBytes) hold(resp any, err error, n int64) {
	if r, ok := resp.(*v1.ExecuteCallResponse); ok && err == nil && r != nil {
		h.m.Store(r, n)
		return
	}
	h.budget.Release(n)
}

// take removes r's reservation, if it has one.
func (h *heldBytes) take(r *v1.ExecuteCallResponse) (int64, bool) {
	if h == nil || h.budget == nil {
		return 0, false
	}
	n, ok := h.m.LoadAndDelete(r)
	if !ok {
		return 0, false
	}
	return n.(int64), true
}

// marshal encodes r into a pooled buffer that releases n bytes of the
// budget when gRPC frees it (after writing it).
func (h *heldBytes) marshal(r *v1.ExecuteCallResponse, n int64) (mem.BufferSlice, error) {
	size := gproto.Size(r)
	if mem.IsBelowBufferPoolingThreshold(size) {
		h.budget.Release(n) // such a buffer is never given back to a pool
		b, err := gproto.Marshal(r)
		return mem.BufferSlice{mem.SliceBuffer(b)}, err
	}
	pool := mem.DefaultBufferPool()
	bp := pool.Get(size)
	b, err := gproto.MarshalOptions{}.MarshalAppend((*bp)[:0], r)
	if err != nil {
		pool.Put(bp)
		h.budget.Release(n)
		return nil, err
	}
	*bp = b
	return mem.BufferSlice{mem.NewBuffer(bp, &releasingPool{BufferPool: pool, budget: h.budget, n: n})}, nil
}

// releasingPool takes one buffer back into its pool and gives its
// reservation back to the budget.
type releasingPool struct {
	mem.BufferPool
	budget *admission.Budget
	n      int64
}

func (p *releasingPool) Put(b *[]byte) {
	p.budget.Release(p.n)
	p.BufferPool.Put(b)
}
