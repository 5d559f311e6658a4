// Package linearize records the histories of concurrent tests and checks
// them for linearizability against sequential models of the sidecar's
// services, with github.com/anishathalye/porcupine (DESIGN §8).
//
// A test records each call's invocation and response on one monotonic
// clock (History); Check then looks for an order of the calls, each taking
// effect at one instant between its invocation and its response, that the
// model accepts. When there is none, the test fails with the smallest
// window of the history that shows it (see Check).
//
// A call whose outcome the client never learned (an error that may hide a
// success, a timeout, a sidecar killed mid-call) is recorded with Unknown:
// it may take effect at any instant after its invocation, or never. The
// models accept such a call in any state, at its invocation, and record
// what it may do from then on (a lock may be free from any later instant;
// a lease nobody learned may hold it; a clock may have moved by up to
// count); the later calls whose answers need it use that permission at
// their own instant. Porcupine's own convention, a call that responds at
// the end of time, lets the search place the call anywhere after its
// invocation; the search then tries their subsets, and with some twenty on
// one key (TestIdempotencyRedisOutage) it did not end in 30 s. With
// permissions it stays as fast as without.
//
// The models know time: a lease expires ttl after the instant of its grant,
// which lies between the grant's invocation and response. They reason with
// those bounds and a slack for the store's millisecond clock (see Locks),
// never with wall-clock readings from another process.
package linearize

import (
	"fmt"
	"math"
	"sync"
	"time"
)

// never is the end of time, e.g. the latest expiry of a lease whose
// renewal's outcome is unknown.
const never = math.MaxInt64

// Unknown is the output of a call whose outcome the client does not know:
// Err is what it saw instead (UNAVAILABLE, a deadline, a dropped
// connection), After how long after its invocation.
type Unknown struct {
	Err   string
	After time.Duration
}

// Refused is the output of a call refused before it could change anything
// (INVALID_ARGUMENT, RESOURCE_EXHAUSTED): every model accepts it, in any
// state, without effect.
type Refused struct{ Err string }

// OK is the output of a release, renewal, completion or checkpoint that
// succeeded.
type OK struct{}

// LeaseLost is the output of a call refused with FAILED_PRECONDITION /
// LEASE_LOST.
type LeaseLost struct{}

// History is the record of one concurrent test: every call's client, input,
// invocation time, output and response time. Times are nanoseconds on the
// monotonic clock since NewHistory. It is safe for concurrent use.
type History struct {
	start time.Time

	mu      sync.Mutex
	ops     []op
	clients int
}

type op struct {
	client    int
	input     any
	output    any
	call, ret int64
	returned  bool
}

// NewHistory returns an empty history whose clock starts now.
func NewHistory() *History {
	return &History{start: time.Now()}
}

func (h *History) now() int64 { return int64(time.Since(h.start)) }

// Client returns a new client id: one caller that makes one call at a time
// (a row of the visualization).
func (h *History) Client() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.clients++
	return h.clients - 1
}

// Call is a call in flight: Invoke returned it, and exactly one of Return
// or Unknown ends it.
type Call struct {
	h *History
	i int
}

// Invoke records that client invokes input, now. Call it just before the
// request is sent.
func (h *History) Invoke(client int, input any) Call {
	t := h.now()
	h.mu.Lock()
	defer h.mu.Unlock()
	h.ops = append(h.ops, op{client: client, input: input, call: t})
	return Call{h: h, i: len(h.ops) - 1}
}

// Return records the call's response, now. Call it as soon as the response
// arrived.
func (c Call) Return(output any) {
	t := c.h.now()
	c.h.mu.Lock()
	defer c.h.mu.Unlock()
	o := &c.h.ops[c.i]
	if o.returned {
		panic(fmt.Sprintf("linearize: call %d (%v) ended twice", c.i, o.input))
	}
	o.output, o.ret, o.returned = output, t, true
}

// Unknown records that the call ended without its outcome: it may take
// effect at any time after its invocation, or never.
func (c Call) Unknown(err error) {
	msg := "no response"
	if err != nil {
		msg = err.Error()
	}
	t := c.h.now()
	c.h.mu.Lock()
	defer c.h.mu.Unlock()
	o := &c.h.ops[c.i]
	if o.returned {
		panic(fmt.Sprintf("linearize: call %d (%v) ended twice", c.i, o.input))
	}
	// Checked at its invocation: see the package comment.
	o.output, o.ret, o.returned = Unknown{Err: msg, After: time.Duration(t - o.call)}, o.call, true
}

// Len returns the number of calls invoked so far.
func (h *History) Len() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.ops)
}

// snapshot returns the calls so far; a call still in flight counts as
// Unknown.
func (h *History) snapshot() []op {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := make([]op, len(h.ops))
	copy(out, h.ops)
	for i := range out {
		if !out[i].returned {
			out[i].output, out[i].ret = Unknown{Err: "still in flight when the history was checked"}, out[i].call
		}
	}
	return out
}

// clock formats a time of the history's clock.
func clock(t int64) string {
	if t >= never/2 {
		return "∞"
	}
	return fmt.Sprintf("%.6fs", float64(t)/1e9)
}
