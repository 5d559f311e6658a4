package linearize

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"
)

// ms is a time of a hand-written history, in milliseconds.
func ms(x int64) int64 { return x * int64(time.Millisecond) }

// inf is the response "time" of a call of unknown outcome: it never
// responded.
const inf = -1

// written builds a history by hand: each call with its client, interval
// (in ms; ret inf for an unknown outcome, whose output is then ignored),
// input and output.
type written struct{ h *History }

func newWritten() *written { return &written{h: NewHistory()} }

func (w *written) add(client int, call, ret int64, input, output any) *written {
	o := op{client: client, input: input, call: ms(call), returned: true, output: output, ret: ms(ret)}
	if ret == inf { // as Call.Unknown records it
		o.ret, o.output = o.call, Unknown{Err: "test"}
	}
	w.h.ops = append(w.h.ops, o)
	return w
}

// verify checks the written history and returns the report.
func (w *written) verify(t *testing.T, m Model) Report {
	t.Helper()
	return Verify(m, w.h, 10*time.Second)
}

// wantOK fails t unless the history is linearizable.
func (w *written) wantOK(t *testing.T, m Model) {
	t.Helper()
	if r := w.verify(t, m); r.Result != porcupine.Ok {
		t.Fatalf("want linearizable, got %s", r)
	}
}

// wantIllegal fails t unless the history is not linearizable and the
// explanation contains every one of want.
func (w *written) wantIllegal(t *testing.T, m Model, want ...string) Report {
	t.Helper()
	r := w.verify(t, m)
	if r.Result != porcupine.Illegal {
		t.Fatalf("want not linearizable, got %s", r)
	}
	s := r.String()
	for _, x := range want {
		if !strings.Contains(s, x) {
			t.Fatalf("explanation lacks %q:\n%s", x, s)
		}
	}
	return r
}

// fakeT is a T that records what Check reports.
type fakeT struct {
	errors, logs []string
}

func (*fakeT) Helper()      {}
func (*fakeT) Name() string { return "TestFake/sub test" }
func (f *fakeT) Errorf(format string, args ...any) {
	f.errors = append(f.errors, fmt.Sprintf(format, args...))
}
func (f *fakeT) Logf(format string, args ...any) {
	f.logs = append(f.logs, fmt.Sprintf(format, args...))
}
