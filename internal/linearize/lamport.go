package linearize

import (
	"fmt"
	"math"
)

// Inputs of the Lamport clock model (ClockService, DESIGN §4). Count is
// the block size as the sidecar applies it (1 when the request has 0).
type (
	LamportNext struct {
		Clock string
		Count uint64
	}
	LamportObserve struct {
		Clock     string
		Timestamp uint64
	}
	LamportGet struct{ Clock string }
)

// Outputs: Values for NextLamport, Value for ObserveLamport and
// GetLamport (besides Unknown and Refused).
type (
	Values struct{ First, Last uint64 }
	Value  struct{ V uint64 }
)

// lamportState is one clock: v is its value as far as the answers so far
// show (the highest value handed out), and up to pool more values may have
// been handed out since by calls of unknown outcome.
type lamportState struct{ v, pool uint64 }

// Lamport is the model of a Lamport clock shared by every sidecar on one
// store (proto/resilience/v1/clock.proto), starting at 0:
//
//   - NextLamport(count) hands out first..last, count consecutive values
//     right after the clock (first = clock + 1), and the clock becomes last;
//   - ObserveLamport(ts) sets the clock to max(clock, ts) + 1 and returns it;
//   - GetLamport returns the clock.
//
// So no value is handed out twice, and values never go backwards in
// real-time order across all sidecars. The proto promises NextLamport only
// values above every earlier one; the service hands out the next ones (one
// INCRBY), and the e2e tests already rely on it (GetLamport is the highest
// value handed out, a restarted sidecar continues right after it). Holding
// the model to it also keeps checking linear: a value fits in one place
// only.
//
// A NextLamport of unknown outcome may hand out its count values at any
// instant after its invocation, and an ObserveLamport of unknown outcome
// may move the clock up to its timestamp + 1: later answers may skip that
// many values (the model does not insist that they skip whole blocks).
func Lamport() Model {
	return Model{
		name: "Lamport clock",
		key: func(input any) string {
			switch in := input.(type) {
			case LamportNext:
				return in.Clock
			case LamportObserve:
				return in.Clock
			case LamportGet:
				return in.Clock
			}
			panic(fmt.Sprintf("linearize: not a Lamport input: %T", input))
		},
		init: lamportState{},
		step: func(state any, in event, out result) (any, error) {
			return lamportStep(state.(lamportState), in, out)
		},
		describe:      describeLamportOp,
		describeState: func(state any) string { return state.(lamportState).String() },
	}
}

func lamportStep(s lamportState, in event, out result) (lamportState, error) {
	if _, ok := out.output.(Refused); ok {
		return s, nil
	}
	// to moves the clock to c, from among the values it may have.
	to := func(c uint64) lamportState { return lamportState{c, s.pool - (c - s.v)} }
	top := satAddU(s.v, s.pool) // the highest value the clock may have
	switch op := in.input.(type) {
	case LamportNext:
		switch o := out.output.(type) {
		case Values:
			switch {
			case o.Last < o.First || o.Last-o.First+1 != op.Count:
				return s, fmt.Errorf("%d..%d is not a block of %d", o.First, o.Last, op.Count)
			case o.First <= s.v:
				return s, fmt.Errorf("%d..%d is not above %s: a value handed out again, or going backwards", o.First, o.Last, s)
			case o.First-1 > top:
				return s, fmt.Errorf("%d..%d does not follow %s", o.First, o.Last, s)
			}
			n := to(o.First - 1)
			n.v = o.Last
			return n, nil
		case Unknown:
			s.pool = satAddU(s.pool, op.Count)
			return s, nil
		}
	case LamportObserve:
		switch o := out.output.(type) {
		case Value:
			// The clock was some c in [v, top] with max(c, ts) + 1 == V.
			switch {
			case o.V <= op.Timestamp:
				return s, fmt.Errorf("%d is not above the observed %d", o.V, op.Timestamp)
			case o.V == op.Timestamp+1 && s.v <= op.Timestamp:
				n := s // c <= ts: nothing need have been handed out
				n.v = o.V
				return n, nil
			case o.V-1 > op.Timestamp && o.V-1 >= s.v && o.V-1 <= top:
				n := to(o.V - 1)
				n.v = o.V
				return n, nil
			}
			return s, fmt.Errorf("%d is not max(clock, %d) + 1 with %s", o.V, op.Timestamp, s)
		case Unknown:
			// It may set the clock to max(c, ts) + 1 <= max(top, ts) + 1.
			s.pool = satAddU(max(top, op.Timestamp), 1) - s.v
			return s, nil
		}
	case LamportGet:
		switch o := out.output.(type) {
		case Value:
			if o.V < s.v || o.V > top {
				return s, fmt.Errorf("read %d, but %s", o.V, s)
			}
			return to(o.V), nil
		case Unknown:
			return s, nil
		}
	}
	return s, fmt.Errorf("unexpected output %T for %T", out.output, in.input)
}

func satAddU(a, b uint64) uint64 {
	if a > math.MaxUint64-b {
		return math.MaxUint64
	}
	return a + b
}

func (s lamportState) String() string {
	if s.pool == 0 {
		return fmt.Sprintf("the clock is %d", s.v)
	}
	return fmt.Sprintf("the clock is %d, or up to %d more after calls of unknown outcome", s.v, s.pool)
}

func describeLamportOp(input, output any) string {
	var call string
	switch in := input.(type) {
	case LamportNext:
		call = fmt.Sprintf("next(%d)", in.Count)
	case LamportObserve:
		call = fmt.Sprintf("observe(%d)", in.Timestamp)
	case LamportGet:
		call = "get()"
	default:
		call = fmt.Sprintf("%v", input)
	}
	return call + " -> " + describeOutput(output)
}
