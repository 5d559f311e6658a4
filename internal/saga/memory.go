package saga

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"sync"
	"time"
)

// MemoryStore is the embedded, single-process Store: the same semantics as
// the Redis store, not shared between processes and not durable. It is
// safe for concurrent use.
type MemoryStore struct {
	now func() time.Time

	mu    sync.Mutex
	sagas map[string]*memSaga
}

type memSaga struct {
	Saga // summary fields, cursor and lease expiry; Steps unused
	exec string
	// released is the executor id last handed back by Release while it
	// did not hold the saga: a claim for it arriving later claims nothing.
	released string
	steps    []memStep
	index    map[string]int // step name -> index
}

type memStep struct {
	Step
	enc string // encodeStep, for recognising a retried RecordStep
}

// NewMemoryStore returns an empty store reading time from now (time.Now
// when nil).
func NewMemoryStore(now func() time.Time) *MemoryStore {
	if now == nil {
		now = time.Now
	}
	return &MemoryStore{now: now, sagas: map[string]*memSaga{}}
}

// getLocked returns the saga, dropping it when its retention ended.
func (m *MemoryStore) getLocked(id string, now time.Time) *memSaga {
	s := m.sagas[id]
	if s != nil && !s.ExpireTime.IsZero() && !now.Before(s.ExpireTime) {
		delete(m.sagas, id)
		return nil
	}
	return s
}

// outcome reports s after a write.
func (s *memSaga) outcome(prev State, claimed bool) Outcome {
	out := Outcome{Saga: cloneSaga(s.Saga), Prev: prev, Claimed: claimed}
	if s.State == Compensating && s.cursor > 0 {
		st := cloneStep(s.steps[s.cursor-1].Step)
		out.Next = &st
	}
	return out
}

// timeoutIfDue moves a RUNNING saga past its deadline to COMPENSATING.
func (s *memSaga) timeoutIfDue(now time.Time, p Params) bool {
	if s.State == Running && !now.Before(s.Deadline) {
		return s.compensate("timeout", now, p)
	}
	return false
}

// compensate starts compensating (claimed by p.ExecID when set); a saga
// without steps is compensated at once.
func (s *memSaga) compensate(reason string, now time.Time, p Params) bool {
	s.Reason = reason
	if s.StepCount == 0 {
		s.finish(Compensated, now, p)
		return false
	}
	s.State, s.UpdateTime = Compensating, now
	s.cursor = 0
	for i := len(s.steps); i >= 1; i-- {
		if s.steps[i-1].Status != StepSucceeded {
			s.cursor = i
			break
		}
	}
	return s.claim(now, p)
}

// claim hands the saga to p.ExecID (none when empty, or handed back
// already: the lease is left expired, for the recovery worker).
func (s *memSaga) claim(now time.Time, p Params) bool {
	s.exec, s.leaseExpire = p.ExecID, time.Time{}
	if p.ExecID == "" || p.ExecID == s.released {
		s.exec = ""
		return false
	}
	s.leaseExpire = now.Add(p.Lease)
	return true
}

// claimIfOrphan claims a COMPENSATING saga whose executor lease expired.
func (s *memSaga) claimIfOrphan(now time.Time, p Params) bool {
	if s.State == Compensating && p.ExecID != "" && !now.Before(s.leaseExpire) {
		return s.claim(now, p)
	}
	return false
}

func (s *memSaga) finish(st State, now time.Time, p Params) {
	s.State, s.EndTime, s.UpdateTime = st, now, now
	s.exec, s.leaseExpire, s.cursor = "", time.Time{}, 0
	if st != CompensationFailed {
		s.ExpireTime = now.Add(p.Retention)
	}
}

func conflict(s *memSaga, format string, args ...any) *ConflictError {
	return &ConflictError{State: s.State, Msg: fmt.Sprintf(format, args...)}
}

// Start implements Store.
func (m *MemoryStore) Start(ctx context.Context, n NewSaga, p Params) (Outcome, bool, error) {
	if err := ctx.Err(); err != nil {
		return Outcome{}, false, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	now := m.now()
	if s := m.getLocked(n.ID, now); s != nil {
		prev := s.State
		claimed := s.timeoutIfDue(now, p)
		return s.outcome(prev, claimed), false, nil
	}
	s := &memSaga{Saga: Saga{
		ID: n.ID, Name: n.Name, State: Running, Metadata: cloneSaga(Saga{Metadata: n.Metadata}).Metadata,
		Timeout: n.Timeout, CreateTime: now, UpdateTime: now, Deadline: now.Add(n.Timeout),
	}, index: map[string]int{}}
	m.sagas[n.ID] = s
	return s.outcome(0, false), true, nil
}

// RecordStep implements Store.
func (m *MemoryStore) RecordStep(ctx context.Context, id string, step Step, maxSteps int, p Params) (Outcome, int, bool, error) {
	if err := ctx.Err(); err != nil {
		return Outcome{}, 0, false, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	now := m.now()
	s := m.getLocked(id, now)
	if s == nil {
		return Outcome{}, 0, false, ErrNotFound
	}
	prev := s.State
	claimed := s.timeoutIfDue(now, p)
	if s.State != Running {
		return s.outcome(prev, claimed), 0, false, conflict(s, "saga is %v: steps can only be recorded while it is RUNNING", s.State)
	}
	enc := encodeStep(step.Name, step.Compensation)
	if i, ok := s.index[step.Name]; ok {
		if s.steps[i-1].enc != enc {
			e := conflict(s, "step %q was recorded with a different compensation", step.Name)
			e.Exists = true
			return s.outcome(prev, false), i, false, e
		}
		return s.outcome(prev, false), i, false, nil
	}
	if s.StepCount >= maxSteps {
		return s.outcome(prev, false), 0, false, ErrTooManySteps
	}
	st := cloneStep(step)
	st.Index, st.Status, st.Attempts, st.LastError = s.StepCount+1, StepPending, 0, ""
	st.RecordTime, st.CompensateTime = now, time.Time{}
	s.steps = append(s.steps, memStep{Step: st, enc: enc})
	s.index[step.Name] = st.Index
	s.StepCount, s.UpdateTime = st.Index, now
	return s.outcome(prev, false), st.Index, true, nil
}

// Complete implements Store.
func (m *MemoryStore) Complete(ctx context.Context, id string, p Params) (Outcome, error) {
	return m.write(ctx, id, func(s *memSaga, now time.Time) (bool, error) {
		claimed := s.timeoutIfDue(now, p)
		switch s.State {
		case Completed:
		case Running:
			s.finish(Completed, now, p)
		default:
			return claimed, conflict(s, "saga is %v: it can no longer complete", s.State)
		}
		return claimed, nil
	})
}

// Abort implements Store.
func (m *MemoryStore) Abort(ctx context.Context, id, reason string, p Params) (Outcome, error) {
	return m.write(ctx, id, func(s *memSaga, now time.Time) (bool, error) {
		claimed := s.timeoutIfDue(now, p)
		switch s.State {
		case Running:
			claimed = s.compensate(reason, now, p)
		case Completed:
			return false, conflict(s, "saga is COMPLETED: there is nothing to abort")
		case Compensating:
			claimed = claimed || s.claimIfOrphan(now, p)
		}
		return claimed, nil
	})
}

// Retry implements Store.
func (m *MemoryStore) Retry(ctx context.Context, id string, p Params) (Outcome, error) {
	return m.write(ctx, id, func(s *memSaga, now time.Time) (bool, error) {
		if s.State != CompensationFailed {
			return false, conflict(s, "saga is %v: only a COMPENSATION_FAILED saga can be retried", s.State)
		}
		for i := range s.steps {
			if s.steps[i].Status == StepFailed {
				s.steps[i].Status = StepPending
			}
		}
		s.EndTime, s.LastError = time.Time{}, ""
		return s.compensate(s.Reason, now, p), nil
	})
}

// Recover implements Store.
func (m *MemoryStore) Recover(ctx context.Context, id string, p Params) (Outcome, error) {
	return m.write(ctx, id, func(s *memSaga, now time.Time) (bool, error) {
		claimed := s.timeoutIfDue(now, p)
		return claimed || s.claimIfOrphan(now, p), nil
	})
}

// write runs f on the saga under the lock.
func (m *MemoryStore) write(ctx context.Context, id string, f func(*memSaga, time.Time) (bool, error)) (Outcome, error) {
	if err := ctx.Err(); err != nil {
		return Outcome{}, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	now := m.now()
	s := m.getLocked(id, now)
	if s == nil {
		return Outcome{}, ErrNotFound
	}
	prev := s.State
	claimed, err := f(s, now)
	return s.outcome(prev, claimed), err
}

// Renew implements Store.
func (m *MemoryStore) Renew(ctx context.Context, id, execID string, lease time.Duration) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	now := m.now()
	s := m.getLocked(id, now)
	if s == nil || s.State != Compensating || s.exec != execID || execID == "" {
		return ErrLeaseLost
	}
	s.leaseExpire = now.Add(lease)
	return nil
}

// Report implements Store.
func (m *MemoryStore) Report(ctx context.Context, id string, a Attempt, p Params) (Outcome, error) {
	if err := ctx.Err(); err != nil {
		return Outcome{}, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	now := m.now()
	s := m.getLocked(id, now)
	if s == nil || s.State != Compensating || s.exec != p.ExecID || p.ExecID == "" {
		return Outcome{}, ErrLeaseLost
	}
	if a.Index != s.cursor {
		return Outcome{}, fmt.Errorf("saga: report for step %d, but step %d is next", a.Index, s.cursor)
	}
	prev := s.State
	st := &s.steps[a.Index-1]
	st.Attempts += a.Attempts
	s.UpdateTime = now
	switch a.Result {
	case StepSucceeded:
		st.Status, st.CompensateTime = StepSucceeded, now
		for s.cursor > 0 && s.steps[s.cursor-1].Status == StepSucceeded {
			s.cursor--
		}
		if s.cursor == 0 {
			s.finish(Compensated, now, p)
			return s.outcome(prev, false), nil
		}
	case StepFailed:
		st.Status, st.LastError = StepFailed, a.Error
		s.LastError = failureText(st.Name, a.Error)
		s.finish(CompensationFailed, now, p)
		return s.outcome(prev, false), nil
	default:
		st.LastError = a.Error
	}
	s.leaseExpire = now.Add(p.Lease)
	return s.outcome(prev, false), nil
}

// failureText is a COMPENSATION_FAILED saga's last error.
func failureText(step, err string) string {
	return fmt.Sprintf("compensation of step %q failed: %s", step, err)
}

// Release implements Store.
func (m *MemoryStore) Release(ctx context.Context, id, execID string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	s := m.getLocked(id, m.now())
	switch {
	case s == nil || execID == "":
	case s.State == Compensating && s.exec == execID:
		s.exec, s.leaseExpire = "", time.Time{}
	default:
		s.released = execID
	}
	return nil
}

// Get implements Store.
func (m *MemoryStore) Get(ctx context.Context, id string) (Saga, error) {
	if err := ctx.Err(); err != nil {
		return Saga{}, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	s := m.getLocked(id, m.now())
	if s == nil {
		return Saga{}, ErrNotFound
	}
	out := cloneSaga(s.Saga)
	out.Steps = make([]Step, len(s.steps))
	for i, st := range s.steps {
		out.Steps[i] = cloneStep(st.Step)
	}
	return out, nil
}

// List implements Store.
func (m *MemoryStore) List(ctx context.Context, state State, after string, limit int) ([]Saga, bool, error) {
	if err := ctx.Err(); err != nil {
		return nil, false, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	now := m.now()
	var ids []string
	for id := range m.sagas {
		if id > after {
			ids = append(ids, id)
		}
	}
	slices.Sort(ids)
	var out []Saga
	for _, id := range ids {
		s := m.getLocked(id, now)
		if s == nil || state != 0 && s.State != state {
			continue
		}
		if len(out) == limit {
			return out, true, nil
		}
		out = append(out, cloneSaga(s.Saga))
	}
	return out, false, nil
}

// Due implements Store, earliest first.
func (m *MemoryStore) Due(ctx context.Context, limit int) ([]string, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	now := m.now()
	type due struct {
		id string
		at time.Time
	}
	var all []due
	for id := range m.sagas {
		s := m.getLocked(id, now)
		switch {
		case s == nil:
		case s.State == Running && !now.Before(s.Deadline):
			all = append(all, due{id, s.Deadline})
		case s.State == Compensating && !now.Before(s.leaseExpire):
			all = append(all, due{id, s.leaseExpire})
		}
	}
	slices.SortFunc(all, func(a, b due) int { return cmp.Or(a.at.Compare(b.at), cmp.Compare(a.id, b.id)) })
	ids := make([]string, 0, min(limit, len(all)))
	for _, d := range all[:min(limit, len(all))] {
		ids = append(ids, d.id)
	}
	return ids, nil
}

// CountFailed implements Store.
func (m *MemoryStore) CountFailed(ctx context.Context) (int, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	n := 0
	for _, s := range m.sagas {
		if s.State == CompensationFailed {
			n++
		}
	}
	return n, nil
}

// Ping implements store.Pinger: the embedded store is always reachable.
func (m *MemoryStore) Ping(context.Context) error { return nil }
