package clock_test

import (
	"bytes"
	"errors"
	"io"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/oklog/ulid/v2"

	"github.com/seed-a88e5317/resilience-sidecar/internal/clock"
	"github.com/seed-a88e5317/resilience-sidecar/internal/testkit"
)

// checkIncreasing fails unless ids are strictly increasing after prev.
func checkIncreasing(t *testing.T, prev ulid.ULID, ids []ulid.ULID) ulid.ULID {
	t.Helper()
	for _, id := range ids {
		if id.Compare(prev) <= 0 {
			t.Fatalf("ULID %s not above %s", id, prev)
		}
		prev = id
	}
	return prev
}

// generateConcurrently has callers goroutines draw total ULIDs between
// them, mixing single ULIDs and batches of up to 1000, each checking its
// own sequence strictly increases; it returns them all.
func generateConcurrently(t *testing.T, g *clock.ULIDs, callers, total int) []ulid.ULID {
	t.Helper()
	all := make([][]ulid.ULID, callers)
	var wg sync.WaitGroup
	for c := range callers {
		wg.Go(func() {
			want := total / callers
			mine := make([]ulid.ULID, 0, want)
			var prev ulid.ULID
			for i := 0; len(mine) < want; i++ {
				n := 1
				if i%4 != 0 {
					n = 1 + (i*37+c)%1000
				}
				n = min(n, want-len(mine))
				ids, err := g.Next(n)
				if err != nil {
					t.Error(err)
					return
				}
				if len(ids) != n {
					t.Errorf("Next(%d) returned %d", n, len(ids))
					return
				}
				for _, id := range ids {
					if id.Compare(prev) <= 0 {
						t.Errorf("caller %d: %s not above %s", c, id, prev)
						return
					}
					prev = id
				}
				mine = append(mine, ids...)
			}
			all[c] = mine
		})
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	return slices.Concat(all...)
}

func checkUnique(t *testing.T, ids []ulid.ULID, want int) {
	t.Helper()
	if len(ids) != want {
		t.Fatalf("%d ULIDs, want %d", len(ids), want)
	}
	slices.SortFunc(ids, func(a, b ulid.ULID) int { return a.Compare(b) })
	for i := 1; i < len(ids); i++ {
		if ids[i] == ids[i-1] {
			t.Fatalf("ULID %s issued twice", ids[i])
		}
	}
}

// The million-ULID tests run in-process against the generator the sidecar
// uses, from concurrent goroutines, to keep -race time reasonable; the e2e
// tests draw a smaller number through real sidecars over gRPC.

func TestULIDsMillionConcurrentUnique(t *testing.T) {
	g := clock.NewULIDs(nil, nil) // the real clock and crypto/rand, as in the sidecar
	checkUnique(t, generateConcurrently(t, g, 16, 1_000_000), 1_000_000)
}

func TestULIDsMillionInOneMillisecond(t *testing.T) {
	frozen := time.UnixMilli(1_767_322_245_000)
	g := clock.NewULIDs(func() time.Time { return frozen }, nil)
	ids := generateConcurrently(t, g, 16, 1_000_000)
	for _, id := range ids {
		if id.Time() != uint64(frozen.UnixMilli()) {
			t.Fatalf("ULID %s has ms %d, want the frozen %d: crypto entropy should not overflow", id, id.Time(), frozen.UnixMilli())
		}
	}
	checkUnique(t, ids, 1_000_000)
}

// scriptedEntropy yields prefix, then pattern over and over. The
// generator's monotonic entropy reads 10 bytes for a new millisecond and 4
// per increment (little-endian, rejected when 0 or 0xFFFFFFFF), so a
// script decides exactly when the 80 random bits overflow.
type scriptedEntropy struct {
	prefix, pattern []byte
	pos             int
}

func (r *scriptedEntropy) Read(p []byte) (int, error) {
	for i := range p {
		if r.pos < len(r.prefix) {
			p[i] = r.prefix[r.pos]
		} else {
			p[i] = r.pattern[(r.pos-len(r.prefix))%len(r.pattern)]
		}
		r.pos++
	}
	return len(p), nil
}

var (
	allOnes    = bytes.Repeat([]byte{0xFF}, 10)
	incOfTwo   = []byte{1, 0, 0, 0} // an increment of 1 + 1
	frozenWall = time.UnixMilli(1_767_322_245_000)
)

// TestULIDsEntropyOverflowMovesToNextMillisecond: with entropy that
// overflows at every increment, or that never changes (all zeros, so every
// ULID of a millisecond would be the same), every ULID still comes out
// strictly increasing, by moving to the next millisecond rather than
// repeating, waiting or failing.
func TestULIDsEntropyOverflowMovesToNextMillisecond(t *testing.T) {
	for name, entropy := range map[string]io.Reader{
		"overflow at every increment": &scriptedEntropy{pattern: slices.Concat(allOnes, incOfTwo)},
		"all zeros":                   &scriptedEntropy{pattern: []byte{0}},
	} {
		t.Run(name, func(t *testing.T) {
			g := clock.NewULIDs(func() time.Time { return frozenWall }, entropy)
			var prev ulid.ULID
			for range 10 {
				ids, err := g.Next(100)
				if err != nil {
					t.Fatal(err)
				}
				prev = checkIncreasing(t, prev, ids)
			}
			if prev.Time() <= uint64(frozenWall.UnixMilli()) {
				t.Fatalf("last ULID at ms %d; expected it to move past the frozen clock", prev.Time())
			}
		})
	}
}

// TestULIDsOverflowWithinBurst: the random bits start 15 below their
// maximum and grow by 2 per ULID, so 8 ULIDs fit in the millisecond; the
// 9th moves to the next one.
func TestULIDsOverflowWithinBurst(t *testing.T) {
	start := slices.Clone(allOnes)
	start[9] = 0xF0
	g := clock.NewULIDs(func() time.Time { return frozenWall }, &scriptedEntropy{prefix: start, pattern: incOfTwo})
	ids, err := g.Next(50)
	if err != nil {
		t.Fatal(err)
	}
	checkIncreasing(t, ulid.ULID{}, ids)
	var inFirst int
	for _, id := range ids {
		if id.Time() == uint64(frozenWall.UnixMilli()) {
			inFirst++
		}
	}
	if inFirst != 8 || ids[8].Time() != uint64(frozenWall.UnixMilli())+1 {
		t.Fatalf("%d of %d ULIDs in the first ms (9th at ms %d); want 8, then the next ms", inFirst, len(ids), ids[8].Time())
	}
}

func TestULIDsWallClockStepsBack(t *testing.T) {
	wall := testkit.NewClock()
	g := clock.NewULIDs(wall.Now, nil)
	first, err := g.Next(5)
	if err != nil {
		t.Fatal(err)
	}
	top := checkIncreasing(t, ulid.ULID{}, first)
	if top.Time() != uint64(ms(wall)) {
		t.Fatalf("ms %d, want the wall clock %d", top.Time(), ms(wall))
	}
	wall.Advance(-10 * time.Second)
	back, err := g.Next(5)
	if err != nil {
		t.Fatal(err)
	}
	top = checkIncreasing(t, top, back)
	for _, id := range back {
		if id.Time() != first[0].Time() {
			t.Fatalf("after the clock stepped back: ms %d, want the last issued %d", id.Time(), first[0].Time())
		}
	}
	wall.Advance(10*time.Second + time.Millisecond)
	ahead, err := g.Next(1)
	if err != nil {
		t.Fatal(err)
	}
	checkIncreasing(t, top, ahead)
	if ahead[0].Time() != uint64(ms(wall)) {
		t.Fatalf("after the clock caught up: ms %d, want %d", ahead[0].Time(), ms(wall))
	}
}

type failingReader struct{}

func (failingReader) Read([]byte) (int, error) { return 0, errors.New("no entropy") }

func TestULIDsEntropyFailure(t *testing.T) {
	g := clock.NewULIDs(nil, failingReader{})
	if ids, err := g.Next(3); err == nil || ids != nil {
		t.Fatalf("Next with failing entropy = %v, %v; want an error and nothing", ids, err)
	}
	if _, err := g.Next(0); err == nil {
		t.Fatal("Next(0) succeeded")
	}
}

func TestULIDsTimeOutOfRange(t *testing.T) {
	g := clock.NewULIDs(func() time.Time { return time.UnixMilli(int64(ulid.MaxTime()) + 1) }, bytes.NewReader(make([]byte, 1024)))
	if _, err := g.Next(1); !errors.Is(err, clock.ErrULIDTime) {
		t.Fatalf("Next past year 10889: %v, want ErrULIDTime", err)
	}
}
