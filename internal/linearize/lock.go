package linearize

import (
	"fmt"
	"strings"
	"time"
)

// Inputs of the lock model (LockService, DESIGN §4). TTL is the lease's
// lifetime as the sidecar applies it (its default when the request has
// none).
type (
	LockAcquire struct {
		Key string
		TTL time.Duration
	}
	LockRelease struct{ Key, Lease string }
	LockRenew   struct {
		Key, Lease string
		TTL        time.Duration
	}
)

// Outputs of AcquireLock: Granted, NotGranted (or Unknown, Refused).
type (
	Granted struct {
		Lease string
		Token uint64
	}
	// NotGranted is acquired=false. HolderToken is the fencing token of
	// the holder the response names, 0 when it names none (the lock is
	// free but kept for the next waiter in line).
	NotGranted struct{ HolderToken uint64 }
)

// lockState is one key's lock. Times are on the history's clock.
type lockState struct {
	// now is a lower bound of the instant of the last operation placed:
	// the next one takes effect no earlier.
	now int64
	// maxToken is the highest fencing token known to have been granted;
	// lastGrant the token of the last grant whose response was seen.
	maxToken, lastGrant uint64
	held                bool
	// lease is the holder's lease id; "" for a lease nobody learned (a
	// ghost), seen only through a refusal naming its token. A ghost may
	// have been given back at any instant since: it never keeps the lock
	// from anyone.
	lease string
	token uint64
	// The holder's lease expires within [earliest, latest].
	earliest, latest int64
	// releasing: a release of the holder's lease whose outcome is unknown
	// was invoked; the lock may be free from any instant since.
	releasing bool
	// ghosts: an acquisition whose outcome is unknown was invoked; a lease
	// nobody learned may hold the lock whenever it is free.
	ghosts bool
}

// Locks is the model of LockService for one key:
//
//   - a granted acquisition's fencing token is above every token granted
//     before it;
//   - the lock is granted only while it is free: released, or its lease
//     expired (ttl after its grant, which took effect between its
//     invocation and response) by the instant of the new grant;
//   - a release or renewal succeeds only for the lease holding the lock,
//     not yet expired; LEASE_LOST only for a lease that is not the holder
//     or may have expired;
//   - acquired=false naming a holder names the current one, whose lease
//     may not have expired.
//
// After an acquisition of unknown outcome, a lease nobody learned may hold
// the lock whenever it is free (until the sidecar gives it back, which may
// be at once): a refusal may name it. After a release of unknown outcome
// the lock may be free from its invocation on; after a renewal of unknown
// outcome the lease may last until its new expiry. slack absorbs the
// store's clock: Redis TIME in milliseconds, read by another process than
// the test's.
func Locks(slack time.Duration) Model {
	sl := int64(slack)
	return Model{
		name: "lock",
		key: func(input any) string {
			switch in := input.(type) {
			case LockAcquire:
				return in.Key
			case LockRelease:
				return in.Key
			case LockRenew:
				return in.Key
			}
			panic(fmt.Sprintf("linearize: not a lock input: %T", input))
		},
		init: lockState{},
		step: func(state any, in event, out result) (any, error) {
			return lockStep(state.(lockState), in, out, sl)
		},
		// Grants come in the order of their tokens.
		order: func(input, output any) (uint64, bool) {
			if g, ok := output.(Granted); ok {
				return g.Token, true
			}
			return 0, false
		},
		describe:      describeLockOp,
		describeState: describeLockState,
	}
}

func lockStep(s lockState, in event, out result, slack int64) (lockState, error) {
	if out.ret < s.now {
		return s, fmt.Errorf("responded at %s, before %s, when the calls placed before it took effect", clock(out.ret), clock(s.now))
	}
	// at is the earliest instant the call can take effect.
	at := max(s.now, in.call)
	if _, ok := out.output.(Refused); ok {
		return s, nil
	}
	ghost := s.held && s.lease == ""
	// gone tells whether the known holder can have stopped holding the
	// lock by the time the call responds (released by a call of unknown
	// outcome, or expired), and if only by expiring, moves at past its
	// earliest expiry.
	gone := func() bool {
		switch {
		case !s.held || ghost || s.releasing:
			return true
		case out.ret < s.earliest-slack:
			return false
		}
		at = max(at, s.earliest-slack)
		return true
	}
	switch op := in.input.(type) {
	case LockAcquire:
		switch o := out.output.(type) {
		case Granted:
			switch {
			case o.Token <= s.maxToken:
				return s, fmt.Errorf("token %d is not above %d, granted before", o.Token, s.maxToken)
			case in.ordered && in.prev != s.lastGrant:
				// Not wrong yet, but the grant of token in.prev, which
				// must come before, has not.
				return s, fmt.Errorf("tokens order the grants: the grant of token %d must come first", in.prev)
			case !gone():
				return s, fmt.Errorf("granted while %s: two holders at once", s.holder())
			}
			s.held, s.lease, s.token, s.releasing = true, o.Lease, o.Token, false
			s.earliest, s.latest = at+int64(op.TTL), out.ret+int64(op.TTL)
			s.maxToken, s.lastGrant = o.Token, o.Token
		case NotGranted:
			switch h := o.HolderToken; {
			case h == 0: // none named
			case s.held && s.token == h:
				if s.lease != "" && at > satAdd(s.latest, slack) {
					return s, fmt.Errorf("names the holder %s, whose lease expired by %s", s.who(), clock(s.latest))
				}
			case !s.ghosts:
				return s, fmt.Errorf("names a holder with token %d, but %s", h, s.holder())
			case h <= s.lastGrant:
				// A lease nobody learned that holds the lock now was
				// granted after every grant before now.
				return s, fmt.Errorf("names a holder with token %d, not above %d, granted before", h, s.lastGrant)
			case !gone():
				return s, fmt.Errorf("names a holder with token %d, a lease nobody learned, but %s", h, s.holder())
			default: // a lease nobody learned holds it
				s.held, s.lease, s.token, s.releasing = true, "", h, false
				s.earliest, s.latest = 0, never
				s.maxToken = max(s.maxToken, h)
			}
		case Unknown:
			s.ghosts = true
		default:
			return s, fmt.Errorf("unexpected output %T for %T", out.output, in.input)
		}
	case LockRelease:
		mine := s.held && s.lease != "" && s.lease == op.Lease
		switch out.output.(type) {
		case OK:
			switch {
			case !mine:
				return s, fmt.Errorf("released a lease that does not hold the lock: %s", s.holder())
			case at > satAdd(s.latest, slack):
				return s, fmt.Errorf("released a lease that expired by %s", clock(s.latest))
			}
			s.held = false
		case LeaseLost:
			if mine {
				if !gone() {
					return s, fmt.Errorf("LEASE_LOST for the holder's lease, which cannot have expired before %s", clock(s.earliest))
				}
				s.held = false // a release clears an expired lease too
			}
		case Unknown:
			if mine {
				s.releasing = true
			}
		default:
			return s, fmt.Errorf("unexpected output %T for %T", out.output, in.input)
		}
	case LockRenew:
		mine := s.held && s.lease != "" && s.lease == op.Lease
		switch out.output.(type) {
		case OK:
			switch {
			case !mine:
				return s, fmt.Errorf("renewed a lease that does not hold the lock: %s", s.holder())
			case at > satAdd(s.latest, slack):
				return s, fmt.Errorf("renewed a lease that expired by %s", clock(s.latest))
			}
			s.earliest, s.latest = at+int64(op.TTL), out.ret+int64(op.TTL)
		case LeaseLost:
			if mine {
				switch {
				case s.releasing:
					s.held = false
				case !gone():
					return s, fmt.Errorf("LEASE_LOST for the holder's lease, which cannot have expired before %s", clock(s.earliest))
				default:
					s.latest = min(s.latest, out.ret) // it had expired by then
				}
			}
		case Unknown:
			if mine && at <= satAdd(s.latest, slack) {
				s.latest = never
			}
		default:
			return s, fmt.Errorf("unexpected output %T for %T", out.output, in.input)
		}
	default:
		return s, fmt.Errorf("unexpected input %T", in.input)
	}
	s.now = at
	return s, nil
}

// holder describes who holds the lock.
func (s lockState) holder() string {
	if !s.held {
		return "the lock is free"
	}
	if s.lease == "" {
		return "the lock is held by " + s.who()
	}
	return fmt.Sprintf("the lock is held by %s, expiring in [%s, %s]", s.who(), clock(s.earliest), clock(s.latest))
}

func (s lockState) who() string {
	if s.lease == "" {
		return fmt.Sprintf("a lease nobody learned (token %d)", s.token)
	}
	return fmt.Sprintf("lease %s (token %d)", short(s.lease), s.token)
}

func short(lease string) string {
	if len(lease) > 8 {
		return lease[:8]
	}
	return lease
}

func describeLockOp(input, output any) string {
	var call string
	switch in := input.(type) {
	case LockAcquire:
		call = fmt.Sprintf("acquire(ttl %v)", in.TTL)
	case LockRelease:
		call = fmt.Sprintf("release(%s)", short(in.Lease))
	case LockRenew:
		call = fmt.Sprintf("renew(%s, ttl %v)", short(in.Lease), in.TTL)
	default:
		call = fmt.Sprintf("%v", input)
	}
	return call + " -> " + describeOutput(output)
}

func describeOutput(output any) string {
	switch o := output.(type) {
	case Granted:
		return fmt.Sprintf("granted %s token %d", short(o.Lease), o.Token)
	case NotGranted:
		if o.HolderToken == 0 {
			return "not granted"
		}
		return fmt.Sprintf("not granted, held with token %d", o.HolderToken)
	case OK:
		return "ok"
	case LeaseLost:
		return "LEASE_LOST"
	case Unknown:
		return fmt.Sprintf("unknown after %v (%s)", o.After.Round(time.Microsecond), o.Err)
	case Refused:
		return "refused (" + o.Err + ")"
	case Started:
		return fmt.Sprintf("STARTED %s attempt %d", short(o.Lease), o.Attempt)
	case InProgress:
		return fmt.Sprintf("IN_PROGRESS attempt %d", o.Attempt)
	case Completed:
		return fmt.Sprintf("COMPLETED %q", o.Result)
	case Mismatch:
		return "IDEMPOTENCY_KEY_MISMATCH"
	case Values:
		return fmt.Sprintf("%d..%d", o.First, o.Last)
	case Value:
		return fmt.Sprint(o.V)
	}
	return fmt.Sprintf("%v", output)
}

func describeLockState(state any) string {
	s := state.(lockState)
	var b strings.Builder
	if !s.held {
		b.WriteString("free")
	} else {
		b.WriteString(s.holder()[len("the lock is "):])
	}
	fmt.Fprintf(&b, "; highest token %d", s.maxToken)
	if s.releasing {
		b.WriteString("; its release may have happened")
	}
	if s.ghosts {
		b.WriteString("; a lease nobody learned may take it")
	}
	return b.String()
}
