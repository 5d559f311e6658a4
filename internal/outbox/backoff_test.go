package outbox

import (
	"testing"
	"time"
)

// TestBackoffGrowsWithJitterWithinBounds: the wait after the n-th
// consecutive failure is uniform in [min/2, min(max, min*2^(n-1))].
func TestBackoffGrowsWithJitterWithinBounds(t *testing.T) {
	r := &Relay{opts: Options{MinBackoff: 100 * time.Millisecond, MaxBackoff: 2 * time.Second}}
	for n := 1; n <= 12; n++ {
		hi := min(r.opts.MinBackoff<<(n-1), r.opts.MaxBackoff)
		lo := r.opts.MinBackoff / 2
		distinct := map[time.Duration]bool{}
		for i := 0; i < 200; i++ {
			d := r.backoff(n)
			if d < lo || d > hi {
				t.Fatalf("backoff(%d) = %v, want within [%v, %v]", n, d, lo, hi)
			}
			distinct[d] = true
		}
		if len(distinct) < 10 {
			t.Errorf("backoff(%d): only %d distinct values in 200: no jitter?", n, len(distinct))
		}
	}
}

func TestDecodeHeaders(t *testing.T) {
	for in, want := range map[string]map[string]string{
		``:                       nil,
		`null`:                   nil,
		`{}`:                     nil,
		`{"a":"b","n":3,"o":{}}`: {"a": "b", "n": "3", "o": "{}"},
		`{"x":null,"t":true}`:    {"x": "", "t": "true"},
	} {
		got, err := decodeHeaders([]byte(in))
		if err != nil {
			t.Fatalf("%s: %v", in, err)
		}
		if len(got) != len(want) {
			t.Fatalf("%s: got %v, want %v", in, got, want)
		}
		for k, v := range want {
			if got[k] != v {
				t.Errorf("%s: %s = %q, want %q", in, k, got[k], v)
			}
		}
	}
	if _, err := decodeHeaders([]byte(`[1,2]`)); err == nil {
		t.Error("a JSON array accepted as headers")
	}
}
