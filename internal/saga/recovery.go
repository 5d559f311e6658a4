package saga

import (
	"context"
	"errors"
	"time"
)

// Bounds of one recovery scan.
const (
	dueBatch        = 100
	maxBatchesATick = 10
)

// recoveryLoop is the recovery worker: every RecoveryInterval it refreshes
// the stuck gauge and looks for due sagas (a read); when there are some, it
// takes or keeps the namespace's recovery lock and, while it holds it,
// visits them: RUNNING ones past their deadline are aborted and
// COMPENSATING ones whose executor lease ran out are taken over, both run
// by executors of this process. An idle namespace costs reads only. It ends
// when the service closes, giving the lock up.
//
// The lock only keeps the sidecars from doing the same work twice: every
// claim is an atomic compare in the store, so two workers at once (a lock
// that ran out during a long scan) would still never both claim a saga.
func (s *Service) recoveryLoop() {
	defer s.wg.Done()
	w := &worker{s: s}
	defer w.resign()
	t := time.NewTicker(s.opts.RecoveryInterval)
	defer t.Stop()
	for {
		w.tick()
		select {
		case <-s.ctx.Done():
			return
		case <-t.C:
		}
	}
}

// worker is the recovery loop's state.
type worker struct {
	s       *Service
	leaseID string
	leader  bool
	renewed time.Time
	// announced: the first election was logged.
	announced bool
	lastDown  time.Time
}

// electionTTL is the recovery lock's lifetime: renewed every interval while
// there is work, so a few intervals, and at least the executor lease.
func (w *worker) electionTTL() time.Duration {
	return max(w.s.opts.Lease, 3*w.s.opts.RecoveryInterval)
}

func (w *worker) tick() {
	s := w.s
	ctx := s.ctx
	if n, err := s.store.CountFailed(ctx); err == nil {
		if s.opts.Metrics != nil {
			s.opts.Metrics.SagaStuck.Set(float64(n))
		}
	} else if ctx.Err() == nil {
		w.storeDown(err)
	}
	for batch := 0; batch < maxBatchesATick; batch++ {
		ids, err := s.store.Due(ctx, dueBatch)
		if err != nil {
			if ctx.Err() == nil {
				w.storeDown(err)
			}
			return
		}
		if len(ids) == 0 {
			// Nothing to do: stop renewing; the lock runs out by itself
			// (and is taken again, by this process or another, when
			// there is work).
			w.leader = w.leader && batch > 0
			return
		}
		if batch == 0 && !w.elect(ctx) {
			return
		}
		for _, id := range ids {
			if !w.visit(ctx, id) {
				return
			}
		}
		if len(ids) < dueBatch {
			return
		}
	}
}

// visit lets the store abort or hand over a due saga. It returns false
// when this process has no executor free (the rest waits for the next
// tick) or the service is closing.
func (w *worker) visit(ctx context.Context, id string) bool {
	s := w.s
	p, reserved := s.reserve()
	if !reserved {
		return false
	}
	out, err := s.store.Recover(ctx, id, p)
	s.handBackIfUnknown(id, p, err)
	if err != nil && !errors.Is(err, ErrNotFound) {
		if ctx.Err() == nil {
			w.storeDown(err)
		}
		<-s.slots
		return ctx.Err() == nil
	}
	if out.Claimed {
		reason := "its executor's lease ran out"
		if out.Prev == Running {
			reason = "its timeout passed"
		}
		s.log.Info("saga: recovery worker compensates the saga: "+reason, "saga_id", id)
	}
	s.settle(out, p, true)
	return true
}

// elect takes or keeps the recovery lock; true while this process holds it.
// Taking it again after a pause is harmless: the lock store grants a lease
// id the lock it already holds.
func (w *worker) elect(ctx context.Context) bool {
	s := w.s
	if s.opts.Elector == nil {
		return true
	}
	ttl := w.electionTTL()
	if w.leader {
		ok, err := s.opts.Elector.Renew(ctx, RecoveryLockKey, w.leaseID, ttl)
		switch {
		case err == nil && ok:
			w.renewed = time.Now()
			return true
		case err == nil || time.Since(w.renewed) > ttl*2/3:
			s.log.Warn("saga: recovery worker lost its lock; another sidecar takes over", "error", err)
			w.leader = false
			return false
		}
		return true // a failed renewal, with time left on the lock
	}
	if w.leaseID == "" {
		id, err := randomHex(16)
		if err != nil {
			return false
		}
		w.leaseID = id
	}
	ok, err := s.opts.Elector.TryAcquire(ctx, RecoveryLockKey, w.leaseID, s.opts.Owner, ttl)
	if err != nil || !ok {
		return false
	}
	w.leader, w.renewed = true, time.Now()
	if !w.announced {
		w.announced = true
		s.log.Info("saga: this sidecar is acting as the namespace's recovery worker")
	}
	return true
}

// resign gives the recovery lock up (if this process may still hold it)
// so that another sidecar takes over at once.
func (w *worker) resign() {
	if w.leaseID == "" || w.s.opts.Elector == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), releaseTimeout)
	defer cancel()
	_ = w.s.opts.Elector.Release(ctx, RecoveryLockKey, w.leaseID)
	w.leader = false
}

// storeDown logs a store failure at most once a minute.
func (w *worker) storeDown(err error) {
	if time.Since(w.lastDown) < time.Minute {
		return
	}
	w.lastDown = time.Now()
	w.s.log.Warn("saga: recovery worker cannot reach the store; it keeps trying", "error", err)
}
