package linearize

import (
	"fmt"
	"strings"
	"time"
)

// Inputs of the idempotency model (IdempotencyService, DESIGN §4).
// LeaseTTL is the lease's lifetime as the sidecar applies it (its default
// when the request has none).
type (
	IdemCheck struct {
		Key, Fingerprint string
		LeaseTTL         time.Duration
	}
	// IdemComplete records Result, the stored result in a canonical
	// form (data and metadata) that compares with ==.
	IdemComplete   struct{ Key, Lease, Result string }
	IdemRelease    struct{ Key, Lease string }
	IdemCheckpoint struct{ Key, Lease string }
)

// Outputs of CheckOrRecordIdempotency (besides Unknown and Refused); the
// other calls answer OK or LeaseLost.
type (
	Started struct {
		Lease   string
		Attempt int
	}
	InProgress struct{ Attempt int }
	// Completed carries the stored result in IdemComplete's form.
	Completed struct{ Result string }
	// Mismatch is FAILED_PRECONDITION/IDEMPOTENCY_KEY_MISMATCH.
	Mismatch struct{}
)

type idemStatus uint8

const (
	absent idemStatus = iota
	running
	completed
)

// mixed is idemState.ghostFP when the claims of unknown outcome had
// different fingerprints.
const mixed = "\x00mixed"

// idemState is one idempotency key. Times are on the history's clock.
type idemState struct {
	now         int64 // as lockState.now
	status      idemStatus
	fingerprint string
	// running: the owner's lease ("" for a lease nobody learned, seen only
	// through an answer naming its attempt; it may have been given back
	// or expired at any instant since), the attempt, the lease's ttl, and
	// its expiry bounds.
	lease            string
	attempt          int
	ttl              int64
	earliest, latest int64
	// completed: the result and the lease that recorded it.
	result, doneBy string
	// Calls of the owner whose outcome is unknown: a completion (with
	// completion) or a release that may take effect at any instant since.
	completing, releasing bool
	completion            string
	// ghosts counts the claims of unknown outcome so far: each may have
	// started (or taken over) the key for a lease nobody learned, whenever
	// it was free; ghostFP is their fingerprint.
	ghosts  int
	ghostFP string
}

// Idempotency is the model of IdempotencyService for one key:
//
//   - CheckOrRecord answers STARTED (attempt 1) only when no record exists,
//     or (attempt + 1, a takeover) when the running lease may have expired;
//     IN_PROGRESS only while a lease runs it that may not have expired, with
//     its attempt; COMPLETED only after a completion, with exactly the
//     recorded result; IDEMPOTENCY_KEY_MISMATCH only for another
//     fingerprint than the record's. So under any number of duplicates one
//     caller at a time owns the key, and everyone sees the one result.
//   - Complete succeeds for the lease owning the key (expired or not, until
//     a takeover) and, repeated, for the lease that completed it;
//     LEASE_LOST otherwise. Release deletes the record of the owning lease;
//     LEASE_LOST otherwise. Checkpoint extends the owner's lease by its ttl.
//
// After a claim of unknown outcome, a lease nobody learned may own the key
// whenever it is free or its lease expired, and the sidecar may give it
// back (deleting the record) at any instant: answers may name its attempt,
// and attempts may run ahead by one per such claim. A completion, release
// or checkpoint of unknown outcome may take effect at any instant after its
// invocation. Records are not forgotten (the retention outlives the test).
// slack is as for Locks.
func Idempotency(slack time.Duration) Model {
	sl := int64(slack)
	return Model{
		name: "idempotency",
		key: func(input any) string {
			switch in := input.(type) {
			case IdemCheck:
				return in.Key
			case IdemComplete:
				return in.Key
			case IdemRelease:
				return in.Key
			case IdemCheckpoint:
				return in.Key
			}
			panic(fmt.Sprintf("linearize: not an idempotency input: %T", input))
		},
		init: idemState{},
		step: func(state any, in event, out result) (any, error) {
			return idemStep(state.(idemState), in, out, sl)
		},
		describe:      describeIdemOp,
		describeState: describeIdemState,
	}
}

func idemStep(s idemState, in event, out result, slack int64) (idemState, error) {
	if out.ret < s.now {
		return s, fmt.Errorf("responded at %s, before %s, when the calls placed before it took effect", clock(out.ret), clock(s.now))
	}
	at := max(s.now, in.call)
	if _, ok := out.output.(Refused); ok {
		return s, nil
	}
	known := s.status == running && s.lease != ""
	ghostOwned := s.status == running && s.lease == ""
	// expired tells whether the known owner's lease can have expired by
	// the time the call responds, and moves at past its earliest expiry.
	expired := func() bool {
		if out.ret < s.earliest-slack {
			return false
		}
		at = max(at, s.earliest-slack)
		return true
	}
	// ghost makes a lease nobody learned the owner, with attempt.
	ghost := func(fp string, attempt int) {
		s.status, s.fingerprint, s.lease, s.attempt = running, fp, "", attempt
		s.earliest, s.latest = 0, never
		s.completing, s.releasing = false, false
	}
	// clear deletes the record.
	clear := func() {
		s.status, s.fingerprint, s.lease, s.attempt = absent, "", "", 0
		s.completing, s.releasing = false, false
	}
	switch op := in.input.(type) {
	case IdemCheck:
		fp := op.Fingerprint
		other := (known || s.status == completed) && s.fingerprint != fp
		ghostFP := s.ghosts > 0 && (s.ghostFP == fp || s.ghostFP == mixed)
		switch o := out.output.(type) {
		case Started:
			// fits tells whether the attempt is base, the attempt of a
			// fresh start or takeover, or within what the claims of
			// unknown outcome may have added to it.
			fits := func(base int) bool {
				return o.Attempt == base || s.ghosts > 0 && o.Attempt >= 1 && o.Attempt <= base+s.ghosts
			}
			switch {
			case other:
				return s, fmt.Errorf("STARTED for fingerprint %q, but %s", fp, s.describe())
			case s.status == completed:
				return s, fmt.Errorf("STARTED, but %s", s.describe())
			case s.status == absent:
				if !fits(1) {
					return s, fmt.Errorf("STARTED attempt %d, want 1: %s", o.Attempt, s.describe())
				}
			case ghostOwned: // given back, or expired
				if !fits(1) && !fits(s.attempt+1) {
					return s, fmt.Errorf("STARTED attempt %d, want 1 or %d: %s", o.Attempt, s.attempt+1, s.describe())
				}
			case s.releasing && fits(1): // the owner's release happened
			case !expired():
				return s, fmt.Errorf("STARTED while %s: two owners at once", s.describe())
			case !fits(s.attempt + 1):
				return s, fmt.Errorf("STARTED attempt %d, want %d: %s", o.Attempt, s.attempt+1, s.describe())
			}
			s.status, s.fingerprint, s.lease, s.attempt = running, fp, o.Lease, o.Attempt
			s.ttl, s.earliest, s.latest = int64(op.LeaseTTL), at+int64(op.LeaseTTL), out.ret+int64(op.LeaseTTL)
			s.completing, s.releasing = false, false
		case InProgress:
			switch {
			case s.status == completed || other:
				return s, fmt.Errorf("IN_PROGRESS, but %s", s.describe())
			case known && at <= satAdd(s.latest, slack) && (o.Attempt == 0 || o.Attempt == s.attempt):
				// the owner runs it
			case ghostOwned && (o.Attempt == 0 || o.Attempt >= 1 && o.Attempt <= s.attempt+1+s.ghosts):
				s.attempt = max(o.Attempt, 1)
			case !ghostFP:
				if known && at > satAdd(s.latest, slack) {
					return s, fmt.Errorf("IN_PROGRESS, but the owner's lease expired by %s", clock(s.latest))
				}
				return s, fmt.Errorf("IN_PROGRESS attempt %d, but %s", o.Attempt, s.describe())
			case known && !s.releasing && !expired():
				return s, fmt.Errorf("IN_PROGRESS attempt %d, not that of %s", o.Attempt, s.describe())
			case o.Attempt < 0 || o.Attempt > s.attempt+1+s.ghosts:
				return s, fmt.Errorf("IN_PROGRESS attempt %d, beyond what %d claims of unknown outcome explain: %s", o.Attempt, s.ghosts, s.describe())
			default:
				ghost(fp, max(o.Attempt, 1))
			}
		case Completed:
			switch {
			case s.status == completed && !other && o.Result == s.result:
			case s.status == completed && !other:
				return s, fmt.Errorf("COMPLETED %q, but the recorded result is %q", o.Result, s.result)
			case known && !other && s.completing && o.Result == s.completion:
				s.status, s.result, s.doneBy = completed, s.completion, s.lease
			default:
				return s, fmt.Errorf("COMPLETED %q, but %s", o.Result, s.describe())
			}
		case Mismatch:
			if !other && !(s.ghosts > 0 && s.ghostFP != fp) {
				return s, fmt.Errorf("IDEMPOTENCY_KEY_MISMATCH for fingerprint %q, but %s", fp, s.describe())
			}
		case Unknown:
			switch {
			case s.ghosts == 0:
				s.ghostFP = fp
			case s.ghostFP != fp:
				s.ghostFP = mixed
			}
			s.ghosts++
		default:
			return s, fmt.Errorf("unexpected output %T for %T", out.output, in.input)
		}
		s.now = at
		return s, nil
	}
	var lease string
	switch op := in.input.(type) {
	case IdemComplete:
		lease = op.Lease
	case IdemRelease:
		lease = op.Lease
	case IdemCheckpoint:
		lease = op.Lease
	default:
		return s, fmt.Errorf("unexpected input %T", in.input)
	}
	owns := known && s.lease == lease
	did := s.status == completed && s.doneBy == lease
	// lost is LEASE_LOST for the owner: right if a call of its of unknown
	// outcome released or completed the key, or if its lease can have
	// expired and a claim of unknown outcome taken it over.
	lost := func() error {
		switch {
		case s.releasing:
			clear()
		case s.completing:
			s.status, s.result, s.doneBy = completed, s.completion, s.lease
		case s.ghosts > 0 && expired():
			ghost(s.fingerprint, s.attempt+1)
		default:
			return fmt.Errorf("LEASE_LOST for lease %s, but %s", short(lease), s.describe())
		}
		return nil
	}
	switch op := in.input.(type) {
	case IdemComplete:
		switch out.output.(type) {
		case OK:
			switch {
			case owns:
				s.status, s.result, s.doneBy = completed, op.Result, lease
			case !did:
				return s, fmt.Errorf("completed with lease %s, but %s", short(lease), s.describe())
			}
		case LeaseLost:
			if did {
				return s, fmt.Errorf("LEASE_LOST for lease %s, but %s", short(lease), s.describe())
			}
			if owns {
				if err := lost(); err != nil {
					return s, err
				}
			}
		case Unknown:
			if owns {
				s.completing, s.completion = true, op.Result
			}
		default:
			return s, fmt.Errorf("unexpected output %T for %T", out.output, in.input)
		}
	case IdemRelease:
		switch out.output.(type) {
		case OK:
			if !owns {
				return s, fmt.Errorf("released with lease %s, but %s", short(lease), s.describe())
			}
			clear()
		case LeaseLost:
			if owns {
				if err := lost(); err != nil {
					return s, err
				}
			}
		case Unknown:
			if owns {
				s.releasing = true
			}
		default:
			return s, fmt.Errorf("unexpected output %T for %T", out.output, in.input)
		}
	case IdemCheckpoint:
		switch out.output.(type) {
		case OK:
			if !owns {
				return s, fmt.Errorf("checkpoint with lease %s, but %s", short(lease), s.describe())
			}
			s.earliest, s.latest = at+s.ttl, out.ret+s.ttl
		case LeaseLost:
			if owns {
				if err := lost(); err != nil {
					return s, err
				}
			}
		case Unknown:
			if owns {
				s.latest = never
			}
		default:
			return s, fmt.Errorf("unexpected output %T for %T", out.output, in.input)
		}
	}
	s.now = at
	return s, nil
}

// satAdd is a+b, saturating at never.
func satAdd(a, b int64) int64 {
	if a >= never-b {
		return never
	}
	return a + b
}

func (s idemState) describe() string {
	var b strings.Builder
	switch s.status {
	case running:
		if s.lease == "" {
			fmt.Fprintf(&b, "the key runs under a lease nobody learned (fingerprint %q, attempt %d)", s.fingerprint, s.attempt)
		} else {
			fmt.Fprintf(&b, "the key runs under lease %s (fingerprint %q, attempt %d), expiring in [%s, %s]",
				short(s.lease), s.fingerprint, s.attempt, clock(s.earliest), clock(s.latest))
		}
		if s.completing {
			fmt.Fprintf(&b, "; its completion with %q may have happened", s.completion)
		}
		if s.releasing {
			b.WriteString("; its release may have happened")
		}
	case completed:
		fmt.Fprintf(&b, "the key is completed by lease %s (fingerprint %q) with %q", short(s.doneBy), s.fingerprint, s.result)
	default:
		b.WriteString("the key has no record")
	}
	if s.ghosts > 0 {
		fmt.Fprintf(&b, "; %d claims of unknown outcome", s.ghosts)
	}
	return b.String()
}

func describeIdemOp(input, output any) string {
	var call string
	switch in := input.(type) {
	case IdemCheck:
		call = fmt.Sprintf("check(%q, lease ttl %v)", in.Fingerprint, in.LeaseTTL)
	case IdemComplete:
		call = fmt.Sprintf("complete(%s, %q)", short(in.Lease), in.Result)
	case IdemRelease:
		call = fmt.Sprintf("release(%s)", short(in.Lease))
	case IdemCheckpoint:
		call = fmt.Sprintf("checkpoint(%s)", short(in.Lease))
	default:
		call = fmt.Sprintf("%v", input)
	}
	return call + " -> " + describeOutput(output)
}

func describeIdemState(state any) string { return state.(idemState).describe() }
