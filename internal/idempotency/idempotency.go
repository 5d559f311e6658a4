// Package idempotency makes retried operations run once, over a Store
// (Redis or in-memory).
//
// A record goes through these states:
//
//	absent --CheckOrRecord--> in progress (lease, attempt 1)
//	in progress --Complete--> completed (result kept for the retention)
//	in progress --Release--> absent
//	in progress, lease expired --CheckOrRecord--> in progress (new lease, attempt+1, checkpoint kept)
//	completed or lease expired, retention over --> absent
//
// Safety rests on every Store making each transition atomic: under any
// number of concurrent callers exactly one gets Started for a record, and a
// lease that was taken over, released or completed never changes the record
// again.
//
// A lease expires only to the next caller: the owner of an expired lease
// that nobody took over may still Complete, Checkpoint or Release it (no
// one else can have started), which saves a needless re-execution. Once it
// is taken over, the old owner gets ErrLeaseLost. The executor of an expired
// lease may have been slow rather than dead, so an operation resumed from a
// checkpoint should tolerate its phases being attempted twice (pass the
// idempotency key on to the systems it calls).
package idempotency

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"time"

	"github.com/seed-a88e5317/resilience-sidecar/internal/admission"
	"github.com/seed-a88e5317/resilience-sidecar/internal/handback"
)

// Errors callers switch on.
var (
	// ErrLeaseLost: the lease no longer owns the record (it was taken over
	// after expiring, released, or the record is completed or gone).
	// Anything done under it may have been done twice.
	ErrLeaseLost = errors.New("idempotency: lease lost")
	// ErrKeyMismatch: the key is recorded with a different fingerprint.
	// The caller reused a key for a different request.
	ErrKeyMismatch = errors.New("idempotency: key reused with a different fingerprint")
)

// Outcome is what CheckOrRecord found.
type Outcome int

// Outcomes of CheckOrRecord.
const (
	// Started: the caller owns the record and must run the operation, then
	// Complete or Release it.
	Started Outcome = iota + 1
	// InProgress: another caller holds a live lease on the record.
	InProgress
	// Completed: the result is stored.
	Completed
)

func (o Outcome) String() string {
	switch o {
	case Started:
		return "STARTED"
	case InProgress:
		return "IN_PROGRESS"
	case Completed:
		return "COMPLETED"
	}
	return fmt.Sprintf("Outcome(%d)", int(o))
}

// State is the state of a record as Get sees it.
type State int

// States of a record.
const (
	Absent State = iota + 1
	// Running: in progress under a live lease.
	Running
	// LeaseExpired: in progress, but the lease expired; the next
	// CheckOrRecord takes over.
	LeaseExpired
	// Done: completed, the result is stored.
	Done
)

// Result is the stored outcome of an operation. The store returns it as it
// was recorded; nil and empty Data (or Metadata) are not distinguished.
type Result struct {
	Data     []byte
	Metadata map[string]string
}

// Size is what Result counts against the size limit: the data plus every
// metadata key and value.
func (r Result) Size() int {
	n := len(r.Data)
	for k, v := range r.Metadata {
		n += len(k) + len(v)
	}
	return n
}

// Checkpoint is a recovery point of a multi-step operation.
type Checkpoint struct {
	// RecoveryPoint names the last finished phase; never empty in a stored
	// checkpoint.
	RecoveryPoint string
	Data          []byte
	// Time is when the store recorded it (ignored when recording).
	Time time.Time
}

// Options are the parameters of one CheckOrRecord.
type Options struct {
	// Fingerprint identifies the request the key was made for.
	Fingerprint string
	// LeaseTTL is the lease lifetime of a Started caller; must be > 0.
	LeaseTTL time.Duration
	// Retention is how long a completed record is kept, and how long an
	// in-progress record is kept after its lease expired; must be > 0.
	Retention time.Duration
	// Wait bounds the wait for a record in progress; 0: answer at once.
	Wait time.Duration
}

// Claim is the answer of CheckOrRecord.
type Claim struct {
	Outcome Outcome
	// LeaseID is the owner's secret (Started only).
	LeaseID string
	// Attempt is the number of the current execution (Started, InProgress):
	// 1, then one more per takeover.
	Attempt int
	// LeaseExpireTime is when the current lease expires (Started,
	// InProgress).
	LeaseExpireTime time.Time
	// LeaseRemaining is the current lease's remaining time by the store's
	// clock (InProgress).
	LeaseRemaining time.Duration
	// RetryAfter is when to check again (InProgress): the lease's remaining
	// time, at most MaxRetryAfter.
	RetryAfter time.Duration
	// Checkpoint is the last checkpoint of the record (Started), for a
	// takeover to resume from; nil when there is none.
	Checkpoint *Checkpoint
	// Result and CompleteTime describe a Completed record.
	Result       Result
	CompleteTime time.Time
}

// Info describes a record without its secrets, result or checkpoint data.
type Info struct {
	State       State
	Fingerprint string
	Attempts    int
	CreateTime  time.Time
	UpdateTime  time.Time
	// LeaseExpireTime: in progress only.
	LeaseExpireTime time.Time
	// CompleteTime: completed only.
	CompleteTime time.Time
	// ExpireTime is when the record will be forgotten if nothing changes it.
	ExpireTime time.Time
	// RecoveryPoint is the name of the last checkpoint (in progress only).
	RecoveryPoint string
}

// Store keeps idempotency records. Implementations must make each method
// one atomic transition.
type Store interface {
	// CheckOrRecord records key as in progress under leaseID when it is
	// absent (attempt 1) or in progress under an expired lease (a takeover:
	// attempt+1, the checkpoint kept and returned), and returns Started.
	// A record already in progress under leaseID returns Started again, so
	// a retried call is harmless. A live lease of someone else returns
	// InProgress, a completed record Completed. A record with another
	// fingerprint returns ErrKeyMismatch and is not changed.
	CheckOrRecord(ctx context.Context, key, leaseID string, opts Options) (Claim, error)
	// Complete stores res for the retention and wakes the watchers of key,
	// if leaseID owns the record; a completed record whose result leaseID
	// recorded answers the same again. ErrLeaseLost otherwise. It returns
	// when the record will be forgotten.
	Complete(ctx context.Context, key, leaseID string, res Result) (expireTime time.Time, err error)
	// Checkpoint records cp (cp.Time is ignored) and extends the lease to
	// now+LeaseTTL if leaseID owns the in-progress record. ErrLeaseLost
	// otherwise. It returns the lease's new expiry.
	Checkpoint(ctx context.Context, key, leaseID string, cp Checkpoint) (leaseExpireTime time.Time, err error)
	// Release deletes the in-progress record owned by leaseID and wakes the
	// watchers of key. ErrLeaseLost otherwise.
	Release(ctx context.Context, key, leaseID string) error
	// Revoke gives back a claim by leaseID whose outcome its caller could
	// not learn: it deletes the in-progress record leaseID owns, and makes
	// sure that a claim by leaseID still on its way to the store is
	// refused. It is idempotent, and nil when nothing was or will be held.
	Revoke(ctx context.Context, key, leaseID string) error
	// Get reads the record.
	Get(ctx context.Context, key string) (Info, error)
	// WatchDone subscribes to completions and releases of key. Every one
	// that happens after it returns is signalled on the channel (buffered,
	// coalesced) until stop is called. stop is idempotent.
	WatchDone(ctx context.Context, key string) (done <-chan struct{}, stop func(), err error)
}

// MaxRetryAfter bounds the retry hint of an InProgress answer.
const MaxRetryAfter = time.Second

// minWake keeps a clock difference between sidecar and store from turning
// a wait into a busy loop.
const minWake = 5 * time.Millisecond

// Service runs the idempotency protocol on a Store. It is safe for
// concurrent use.
type Service struct {
	store   Store
	entropy io.Reader
	log     *slog.Logger
	// releaseTimeout bounds the cleanup release of a record claimed for a
	// caller that had already gone away.
	releaseTimeout time.Duration
	// handBack revokes the claims whose outcome is unknown or that could
	// not be delivered, until the store confirms.
	handBack *handback.Queue
}

// NewService returns a Service on store. entropy is read for lease ids
// (crypto/rand when nil).
func NewService(store Store, entropy io.Reader, log *slog.Logger) *Service {
	if entropy == nil {
		entropy = rand.Reader
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Service{store: store, entropy: entropy, log: log, releaseTimeout: 2 * time.Second}
	s.handBack = handback.New("idempotency", store.Revoke, s.releaseTimeout, log)
	return s
}

// Close tries once more to give back the claims not yet confirmed given
// back, and stops doing so. It is idempotent.
func (s *Service) Close() { s.handBack.Close() }

// NewLeaseID returns a fresh 128-bit lease id as 32 lowercase hex digits.
func (s *Service) NewLeaseID() (string, error) {
	var b [16]byte
	if _, err := io.ReadFull(s.entropy, b[:]); err != nil {
		return "", fmt.Errorf("idempotency: lease id: %w", err)
	}
	return hex.EncodeToString(b[:]), nil
}

// CheckOrRecord claims key or reports who has it. When the record is in
// progress it waits up to opts.Wait, woken by its completion or release or
// by the expiry of its lease, and then returns the last InProgress answer.
// It returns ErrKeyMismatch for a key recorded with another fingerprint.
// Cancelling ctx stops the wait and returns ctx's error.
//
// A call that fails leaves nothing in progress: a claim whose outcome is
// unknown (the store failed or ctx ended mid-call), or made too close to
// ctx's deadline to reach the caller (handback.Margin), is given back in
// the background until the store confirms.
func (s *Service) CheckOrRecord(ctx context.Context, key string, opts Options) (Claim, error) {
	leaseID, err := s.NewLeaseID()
	if err != nil {
		return Claim{}, err
	}
	c, err := s.store.CheckOrRecord(ctx, key, leaseID, opts)
	if err != nil || c.Outcome != InProgress || opts.Wait <= 0 {
		return s.settle(ctx, key, leaseID, opts.LeaseTTL, c, err)
	}

	// A waiter counts under max_waiters until it returns; past the limit
	// it is refused before it subscribes.
	endWait, err := admission.BeginWait(ctx)
	if err != nil {
		return Claim{}, err
	}
	defer endWait()
	deadline := time.Now().Add(opts.Wait)
	// Subscribe before the next try: a completion between that try and the
	// wait is then delivered instead of lost.
	done, stop, err := s.store.WatchDone(ctx, key)
	if err != nil {
		return Claim{}, err
	}
	defer stop()
	timer := time.NewTimer(opts.Wait)
	defer timer.Stop()
	for {
		c, err = s.store.CheckOrRecord(ctx, key, leaseID, opts)
		if err != nil || c.Outcome != InProgress {
			return s.settle(ctx, key, leaseID, opts.LeaseTTL, c, err)
		}
		remaining := time.Until(deadline)
		if remaining <= 0 {
			return withRetryAfter(c), nil
		}
		// Also wake when the lease would expire: a dead executor never
		// completes.
		timer.Reset(min(remaining, max(c.LeaseRemaining, minWake)))
		select {
		case <-done:
		case <-timer.C:
		case <-ctx.Done():
			return Claim{}, ctx.Err()
		}
	}
}

// settle returns the answer of a try by leaseID, giving back a claim
// nobody will see: after an error the store may have made it.
func (s *Service) settle(ctx context.Context, key, leaseID string, ttl time.Duration, c Claim, err error) (Claim, error) {
	if err != nil {
		if !errors.Is(err, ErrKeyMismatch) { // a mismatch is an answer: nothing was claimed
			s.handBack.GiveBack(key, leaseID, ttl, err)
		}
		return Claim{}, err
	}
	if c.Outcome == Started && !handback.Deliverable(ctx) {
		s.handBack.GiveBack(key, leaseID, ttl, nil)
		return Claim{}, handback.Undeliverable(ctx)
	}
	return withRetryAfter(c), nil
}

func withRetryAfter(c Claim) Claim {
	if c.Outcome == InProgress {
		c.RetryAfter = min(max(c.LeaseRemaining, time.Millisecond), MaxRetryAfter)
	}
	return c
}

// Complete stores the result of the operation run under leaseID and wakes
// the waiting duplicates. ErrLeaseLost when leaseID does not own the record.
// Repeating a successful Complete with the same lease answers the same.
func (s *Service) Complete(ctx context.Context, key, leaseID string, res Result) (time.Time, error) {
	return s.store.Complete(ctx, key, leaseID, res)
}

// Checkpoint records a recovery point and extends the lease. ErrLeaseLost
// when leaseID does not own the in-progress record.
func (s *Service) Checkpoint(ctx context.Context, key, leaseID string, cp Checkpoint) (time.Time, error) {
	return s.store.Checkpoint(ctx, key, leaseID, cp)
}

// Release gives the key back: the operation did not happen and a retry
// may run it. ErrLeaseLost when leaseID does not own the in-progress record.
func (s *Service) Release(ctx context.Context, key, leaseID string) error {
	return s.store.Release(ctx, key, leaseID)
}

// Get reads the record without changing it.
func (s *Service) Get(ctx context.Context, key string) (Info, error) {
	return s.store.Get(ctx, key)
}
