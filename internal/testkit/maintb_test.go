package testkit

import "testing"

func TestMainTBCleanupRunsOnceLastFirst(t *testing.T) {
	var tb MainTB
	var order []int
	tb.Cleanup(func() { order = append(order, 1) })
	tb.Cleanup(func() { order = append(order, 2) })
	tb.Helper()
	if tb.Failed() {
		t.Fatal("a fresh MainTB has failed")
	}
	tb.cleanup()
	tb.cleanup()
	if len(order) != 2 || order[0] != 2 || order[1] != 1 {
		t.Fatalf("cleanups ran in order %v, want [2 1] once", order)
	}
}
