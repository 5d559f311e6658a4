package resilience

import (
	"context"

	v1 "github.com/seed-a88e5317/resilience-sidecar/clients/go/resiliencev1"
)

// LamportClock is a named Lamport clock kept by the sidecar and shared by
// every sidecar in the same namespace on the same store. Stamp what you
// send (or any event you want ordered) with Stamp; pass the stamp of what
// you receive to Observe. If event a happened before event b, a's stamp is
// lower than b's.
//
// All replicas that use the same clock through their sidecars share one
// counter, so their stamps are already ordered and unique; Observe is for
// stamps that come from elsewhere (another namespace or store, an external
// system with its own Lamport clock), to move this clock past them.
//
// Values are uint64 from 1 to 2^63-1 and are never handed out twice. Errors
// are *Error: ErrStoreUnavailable when the store is down (retry after
// Error.RetryDelay), ErrLimitExceeded when the clock is exhausted,
// ErrInvalidArgument for a bad name or stamp. A LamportClock is safe for
// concurrent use.
type LamportClock struct {
	client v1.ClockServiceClient
	name   string
}

// NewLamportClock returns the clock called name (1-512 bytes of UTF-8
// without control characters) on the sidecar behind client.
func NewLamportClock(client v1.ClockServiceClient, name string) *LamportClock {
	return &LamportClock{client: client, name: name}
}

// Name returns the clock's name.
func (c *LamportClock) Name() string { return c.name }

// Stamp returns a new value for an outgoing message or a local event,
// greater than every value the clock handed out before.
func (c *LamportClock) Stamp(ctx context.Context) (uint64, error) {
	first, _, err := c.Reserve(ctx, 1)
	return first, err
}

// Reserve returns a block of n consecutive new values, first..last, in one
// call (n from 1 to 100000; 0 means 1): for stamping a batch of messages.
func (c *LamportClock) Reserve(ctx context.Context, n uint32) (first, last uint64, err error) {
	r, err := c.client.NextLamport(ctx, &v1.NextLamportRequest{Clock: c.name, Count: n})
	if err != nil {
		return 0, 0, FromError(err)
	}
	return r.GetFirst(), r.GetLast(), nil
}

// Observe merges the stamp of an incoming message (at most 2^63-2): the
// clock moves to max(current, stamp) + 1, and that value, the stamp of the
// receive event, is returned.
func (c *LamportClock) Observe(ctx context.Context, stamp uint64) (uint64, error) {
	r, err := c.client.ObserveLamport(ctx, &v1.ObserveLamportRequest{Clock: c.name, Timestamp: stamp})
	if err != nil {
		return 0, FromError(err)
	}
	return r.GetTimestamp(), nil
}

// Current reads the clock without advancing it: the highest value handed
// out so far, 0 if none.
func (c *LamportClock) Current(ctx context.Context) (uint64, error) {
	r, err := c.client.GetLamport(ctx, &v1.GetLamportRequest{Clock: c.name})
	if err != nil {
		return 0, FromError(err)
	}
	return r.GetTimestamp(), nil
}
