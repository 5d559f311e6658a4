package linearize

import (
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"
)

// Check passes a linearizable history and says so in the log.
func TestCheckPasses(t *testing.T) {
	h := newWritten().
		add(0, 0, 1, acq(time.Second), granted("a", 10)).
		add(0, 2, 3, rel("a"), OK{}).h
	var ft fakeT
	r := Check(&ft, Locks(slack), h)
	if len(ft.errors) != 0 || r.Result != porcupine.Ok || r.Operations != 2 || r.Keys != 1 {
		t.Fatalf("Check: %v, errors %q", r, ft.errors)
	}
	if len(ft.logs) != 1 || !strings.Contains(ft.logs[0], "Ok: 2 operations (0 of unknown outcome) on 1 keys") {
		t.Fatalf("log %q", ft.logs)
	}
}

// Check fails an illegal history with the failing key's window (and not
// the keys that pass), and a visualization file it names.
func TestCheckFailsWithTheFailingWindow(t *testing.T) {
	w := newWritten()
	for i := range 20 { // a long, linearizable beginning on key k
		w.add(0, int64(4*i), int64(4*i+1), acq(time.Second), granted("a", uint64(10+i)))
		w.add(0, int64(4*i+2), int64(4*i+3), rel("a"), OK{})
	}
	w.add(1, 100, 101, acq(time.Second), granted("b", 50)).
		add(2, 102, 103, acq(time.Second), granted("c", 51)). // while b holds it
		add(3, 0, 1, LockAcquire{Key: "fine", TTL: time.Second}, Granted{Lease: "d", Token: 1})
	var ft fakeT
	r := Check(&ft, Locks(slack), w.h)
	if len(ft.errors) != 1 || r.Result != porcupine.Illegal || len(r.Failures) != 1 {
		t.Fatalf("Check: %v, errors %q", r, ft.errors)
	}
	msg := ft.errors[0]
	for _, want := range []string{
		`key "k": 42 operations are not linearizable; the longest order the model accepts covers 41 of them`,
		"... 33 earlier operations, then:",
		"[client 1] 0.100000s..0.101000s acquire(ttl 1s) -> granted b token 50",
		"=> held by lease b (token 50)",
		"candidates",
		"[client 2] 0.102000s..0.103000s acquire(ttl 1s) -> granted c token 51",
		"refused: granted while the lock is held by lease b (token 50)",
		"visualization: ",
	} {
		if !strings.Contains(msg, want) {
			t.Errorf("report lacks %q:\n%s", want, msg)
		}
	}
	if strings.Contains(msg, `"fine"`) {
		t.Errorf("report shows a key that passed:\n%s", msg)
	}
	path := r.Failures[0].Visualization
	b, err := os.ReadFile(path)
	if err != nil || !strings.Contains(string(b), "<html") {
		t.Fatalf("visualization %q: %v", path, err)
	}
	os.Remove(path)
}

// A history that cannot be decided in time fails: Unknown is no pass.
func TestCheckUndecidedFails(t *testing.T) {
	h := newWritten().add(0, 0, 1, next(1), values(1, 1)).h
	var ft fakeT
	r := check(&ft, Lamport(), h, 0)
	if r.Result != porcupine.Unknown || len(ft.errors) != 1 || !strings.Contains(ft.errors[0], "not decided within") {
		t.Fatalf("Check: %v, errors %q", r, ft.errors)
	}
}

// The recorder's intervals contain each call's real effect: a counter
// behind a mutex, called by many goroutines, is recorded linearizable, and
// calls still in flight count as unknown.
func TestHistoryRecordsConcurrentCalls(t *testing.T) {
	h := NewHistory()
	var mu sync.Mutex
	var clock uint64
	var wg sync.WaitGroup
	for range 16 {
		client := h.Client()
		wg.Go(func() {
			for i := range 50 {
				n := uint64(1 + i%3)
				c := h.Invoke(client, next(n))
				mu.Lock()
				first := clock + 1
				clock += n
				mu.Unlock()
				c.Return(values(first, first+n-1))
			}
		})
	}
	wg.Wait()
	h.Invoke(h.Client(), next(4)) // never returns
	if h.Len() != 16*50+1 {
		t.Fatalf("%d calls recorded", h.Len())
	}
	var ft fakeT
	if r := Check(&ft, Lamport(), h); r.Result != porcupine.Ok {
		t.Fatalf("%v %q", r, ft.errors)
	}
	ops := h.snapshot()
	if _, ok := ops[len(ops)-1].output.(Unknown); !ok {
		t.Fatalf("call in flight recorded as %v", ops[len(ops)-1].output)
	}
	for _, o := range ops[:len(ops)-1] {
		if o.ret < o.call {
			t.Fatalf("response %d before invocation %d", o.ret, o.call)
		}
	}
}
