package linearize

import (
	"cmp"
	"fmt"
	"os"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/anishathalye/porcupine"
)

// DefaultTimeout bounds Check. The histories of our tests are checked in
// well under a second; the bound only keeps a pathological one from hanging
// the suite, and running into it fails the test (it decides nothing).
const DefaultTimeout = 30 * time.Second

// tail is how many operations of the longest linearizable prefix a
// failure report shows before the point where it gets stuck.
const tail = 8

// Model is the sequential specification of one service, per key: Locks,
// Idempotency, Lamport.
type Model struct {
	name string
	// key is the partition of an input: a lock key, an idempotency key, a
	// clock. Operations on different keys are independent.
	key  func(input any) string
	init any // a key's state before any operation; comparable with ==
	// step returns the state after the operation, or why the model
	// refuses it in state.
	step func(state any, in event, out result) (any, error)
	// order, when set, returns the place of an operation in an order
	// every linearization must follow (a lock's grants, in the order of
	// their fencing tokens): every operation it places gets the place of
	// its predecessor (event.prev), so that the model can refuse it before
	// its predecessor at once instead of many steps later. Without it the
	// search tries the grants that overlap in time in every order their
	// tokens allow, and a fencing test with short leases does not end.
	order         func(input, output any) (place uint64, ok bool)
	describe      func(input, output any) string
	describeState func(state any) string
}

// event is a call as the model sees it: the recorded input with its id
// and invocation time.
type event struct {
	id     int
	client int
	input  any
	call   int64
	// prev is the place of the operation's predecessor in the model's
	// order (0 for the first), when ordered.
	prev    uint64
	ordered bool
}

// result is a response as the model sees it: the recorded output and its
// time (the invocation's for an unknown outcome).
type result struct {
	output any
	ret    int64
}

// operations turns h into porcupine operations.
func (m Model) operations(h *History) []porcupine.Operation {
	recorded := h.snapshot()
	ops := make([]porcupine.Operation, 0, len(recorded))
	for i, o := range recorded {
		ops = append(ops, porcupine.Operation{ClientId: o.client, Input: event{id: i, client: o.client, input: o.input, call: o.call},
			Call: o.call, Output: result{o.output, o.ret}, Return: o.ret})
	}
	return ops
}

func (m Model) porcupine() porcupine.Model {
	return porcupine.Model{
		Init: func() any { return m.init },
		Step: func(state, input, output any) (bool, any) {
			next, err := m.step(state, input.(event), output.(result))
			if err != nil {
				return false, state
			}
			return true, next
		},
		DescribeOperation: func(input, output any) string {
			return m.describe(input.(event).input, output.(result).output)
		},
		DescribeState: m.describeState,
	}
}

// Report is the outcome of checking a history.
type Report struct {
	// Result is porcupine.Ok, porcupine.Illegal (some key's history is
	// not linearizable) or porcupine.Unknown (the timeout ran out first).
	Result     porcupine.CheckResult
	Operations int
	// Unknown counts the operations of unknown outcome among them.
	Unknown int
	Keys    int
	Took    time.Duration
	// Failures describes each key whose history is not linearizable or
	// could not be decided.
	Failures []Failure
}

// Failure is one key whose history failed the check.
type Failure struct {
	Key    string
	Result porcupine.CheckResult
	// Explanation is the smallest window of the key's history that shows
	// the failure: the end of the longest order the model accepts, and
	// every call that could come next with the model's reason to refuse
	// it.
	Explanation string
	// Visualization is the path of porcupine's HTML rendering of the
	// key's history and its partial linearizations ("" if not written).
	Visualization string

	ops      []porcupine.Operation
	info     porcupine.LinearizationInfo
	detailed bool // info holds the partial linearizations
}

func (r Report) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s: %d operations (%d of unknown outcome) on %d keys, checked in %v", r.Result, r.Operations, r.Unknown, r.Keys, r.Took.Round(time.Millisecond))
	for _, f := range r.Failures {
		fmt.Fprintf(&b, "\n%s", f.Explanation)
		if f.Visualization != "" {
			fmt.Fprintf(&b, "\n  visualization: %s", f.Visualization)
		}
	}
	return b.String()
}

// Verify checks h against m within timeout: each key's history on its own,
// in parallel. It writes nothing.
func Verify(m Model, h *History, timeout time.Duration) Report {
	began := time.Now()
	ops := m.operations(h)
	byKey := map[string][]porcupine.Operation{}
	var keys []string
	for _, o := range ops {
		k := m.key(o.Input.(event).input)
		if _, ok := byKey[k]; !ok {
			keys = append(keys, k)
		}
		byKey[k] = append(byKey[k], o)
	}
	slices.Sort(keys)
	if m.order != nil {
		for _, k := range keys {
			m.chain(byKey[k])
		}
	}
	deadline := began.Add(timeout)
	pm := m.porcupine()
	results := make([]porcupine.CheckResult, len(keys))
	infos := make([]porcupine.LinearizationInfo, len(keys))
	detailed := make([]bool, len(keys))
	sem := make(chan struct{}, runtime.GOMAXPROCS(0))
	var wg sync.WaitGroup
	for i, k := range keys {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			left := time.Until(deadline)
			if left <= 0 {
				results[i] = porcupine.Unknown
				return
			}
			results[i] = porcupine.CheckOperationsTimeout(pm, byKey[k], left)
			if results[i] == porcupine.Illegal {
				// Again with the bookkeeping of partial linearizations,
				// which only a failure needs.
				res, info := porcupine.CheckOperationsVerbose(pm, byKey[k], max(time.Until(deadline), time.Second))
				if res == porcupine.Illegal {
					infos[i], detailed[i] = info, true
				}
			}
		})
	}
	wg.Wait()
	r := Report{Result: porcupine.Ok, Operations: len(ops), Keys: len(keys)}
	for _, o := range ops {
		if _, ok := o.Output.(result).output.(Unknown); ok {
			r.Unknown++
		}
	}
	for i, k := range keys {
		switch results[i] {
		case porcupine.Ok:
			continue
		case porcupine.Illegal:
			r.Result = porcupine.Illegal
		case porcupine.Unknown:
			if r.Result == porcupine.Ok {
				r.Result = porcupine.Unknown
			}
		}
		f := Failure{Key: k, Result: results[i], ops: byKey[k], info: infos[i], detailed: detailed[i]}
		f.Explanation = m.explain(f, timeout)
		r.Failures = append(r.Failures, f)
	}
	r.Took = time.Since(began)
	return r
}

// chain sets event.prev on the operations of one key that m.order places.
func (m Model) chain(ops []porcupine.Operation) {
	type placed struct {
		i     int
		place uint64
	}
	var ps []placed
	for i, o := range ops {
		if p, ok := m.order(o.Input.(event).input, o.Output.(result).output); ok {
			ps = append(ps, placed{i, p})
		}
	}
	slices.SortFunc(ps, func(a, b placed) int { return cmp.Compare(a.place, b.place) })
	var prev uint64
	for _, p := range ps {
		e := ops[p.i].Input.(event)
		e.prev, e.ordered = prev, true
		ops[p.i].Input = e
		prev = p.place
	}
}

// T is the part of testing.TB that Check uses.
type T interface {
	Helper()
	Errorf(format string, args ...any)
	Logf(format string, args ...any)
	Name() string
}

// Check checks h against m (within DefaultTimeout) and fails t unless
// every key's history is linearizable. For each failing key it prints the
// smallest window that shows the failure and writes porcupine's
// visualization of the key's history to a file under os.TempDir, which it
// names; a history that cannot be decided in time fails too.
func Check(t T, m Model, h *History) Report {
	t.Helper()
	return check(t, m, h, DefaultTimeout)
}

func check(t T, m Model, h *History, timeout time.Duration) Report {
	t.Helper()
	r := Verify(m, h, timeout)
	if r.Result == porcupine.Ok {
		t.Logf("linearize: %s history %s", m.name, r)
		return r
	}
	for i := range r.Failures {
		r.Failures[i].Visualization = m.visualize(t.Name(), r.Failures[i])
	}
	t.Errorf("linearize: %s history %s", m.name, r)
	return r
}

var unsafeName = regexp.MustCompile(`[^A-Za-z0-9_.-]+`)

// visualize writes porcupine's rendering of f's history and returns the
// path, or "" (with the reason in the returned string's stead) when there
// is nothing to render.
func (m Model) visualize(test string, f Failure) string {
	if !f.detailed {
		return ""
	}
	name := unsafeName.ReplaceAllString(test+"-"+m.name+"-"+f.Key, "_")
	if len(name) > 100 {
		name = name[:100]
	}
	file, err := os.CreateTemp("", "linearize-"+name+"-*.html")
	if err != nil {
		return "(not written: " + err.Error() + ")"
	}
	defer file.Close()
	if err := porcupine.Visualize(m.porcupine(), f.info, file); err != nil {
		return "(not written: " + err.Error() + ")"
	}
	return file.Name()
}

// explain describes f: for an illegal history, the end of the longest
// linearizable prefix porcupine found and why each call that could come
// next is refused there.
func (m Model) explain(f Failure, timeout time.Duration) string {
	var b strings.Builder
	if f.Result == porcupine.Unknown {
		fmt.Fprintf(&b, "  key %q: %d operations: not decided within %v (a failure: shorten the history or raise the timeout)", f.Key, len(f.ops), timeout)
		return b.String()
	}
	if !f.detailed {
		fmt.Fprintf(&b, "  key %q: %d operations are not linearizable (the re-check for the details ran out of time)", f.Key, len(f.ops))
		return b.String()
	}
	partials := f.info.PartialLinearizationsOperations()
	var prefix []porcupine.Operation
	if len(partials) > 0 {
		for _, p := range partials[0] {
			if len(p) > len(prefix) {
				prefix = p
			}
		}
	}
	fmt.Fprintf(&b, "  key %q: %d operations are not linearizable; the longest order the model accepts covers %d of them.", f.Key, len(f.ops), len(prefix))
	// Replay the prefix for the states.
	state := m.init
	states := make([]any, len(prefix))
	done := map[int]bool{}
	for i, o := range prefix {
		next, err := m.step(state, o.Input.(event), o.Output.(result))
		if err != nil { // cannot happen: porcupine accepted this order
			fmt.Fprintf(&b, "\n  (replaying the prefix failed at %d: %v)", i, err)
			return b.String()
		}
		state, states[i] = next, next
		done[o.Input.(event).id] = true
	}
	if len(prefix) > tail {
		fmt.Fprintf(&b, "\n  ... %d earlier operations, then:", len(prefix)-tail)
	}
	for i := max(0, len(prefix)-tail); i < len(prefix); i++ {
		fmt.Fprintf(&b, "\n    %s\n        => %s", m.line(prefix[i]), m.describeState(states[i]))
	}
	if len(prefix) == 0 {
		fmt.Fprintf(&b, "\n  initial state: %s", m.describeState(state))
	}
	// The rest: the one that responds first must come next or be
	// preceded by calls invoked before that response.
	var rest []porcupine.Operation
	for _, o := range f.ops {
		if !done[o.Input.(event).id] {
			rest = append(rest, o)
		}
	}
	if len(rest) == 0 {
		return b.String()
	}
	first := slices.MinFunc(rest, func(a, c porcupine.Operation) int {
		if a.Return != c.Return {
			return cmp.Compare(a.Return, c.Return)
		}
		return cmp.Compare(a.Call, c.Call)
	})
	var next []porcupine.Operation
	for _, o := range rest {
		if o.Call <= first.Return {
			next = append(next, o)
		}
	}
	slices.SortFunc(next, func(a, c porcupine.Operation) int { return cmp.Compare(a.Call, c.Call) })
	fmt.Fprintf(&b, "\n  then no call can come next; these are the candidates (invoked by %s, when the first of the rest responded):", clock(first.Return))
	const maxCandidates = 12
	for i, o := range next {
		if i == maxCandidates {
			fmt.Fprintf(&b, "\n    (and %d more candidates)", len(next)-maxCandidates)
			break
		}
		why := "accepted here, but no order of the rest follows it"
		if _, err := m.step(state, o.Input.(event), o.Output.(result)); err != nil {
			why = "refused: " + err.Error()
		}
		fmt.Fprintf(&b, "\n    %s\n        %s", m.line(o), why)
	}
	// A candidate the model's order puts after a call that is not a
	// candidate: show that call, usually the culprit (a token granted
	// out of order).
	if m.order != nil {
		byPlace := map[uint64]porcupine.Operation{}
		for _, o := range rest {
			if p, ok := m.order(o.Input.(event).input, o.Output.(result).output); ok {
				byPlace[p] = o
			}
		}
		isNext := map[int]bool{}
		for _, o := range next {
			isNext[o.Input.(event).id] = true
		}
		shown := map[int]bool{}
		for _, o := range next {
			e := o.Input.(event)
			p, ok := byPlace[e.prev]
			if !e.ordered || !ok || isNext[p.Input.(event).id] || shown[p.Input.(event).id] {
				continue
			}
			shown[p.Input.(event).id] = true
			fmt.Fprintf(&b, "\n  which the order of the model puts after this call, invoked after %s:\n    %s", clock(first.Return), m.line(p))
		}
	}
	if n := len(rest) - len(next); n > 0 {
		fmt.Fprintf(&b, "\n  (%d later calls not shown)", n)
	}
	return b.String()
}

// line describes one operation: client, interval, call and outcome.
func (m Model) line(o porcupine.Operation) string {
	e := o.Input.(event)
	return fmt.Sprintf("[client %d] %s..%s %s", e.client, clock(o.Call), clock(o.Return), m.describe(e.input, o.Output.(result).output))
}
