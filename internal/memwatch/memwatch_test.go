package memwatch_test

import (
	"testing"

	"github.com/seed-a88e5317/resilience-sidecar/internal/memwatch"
	"github.com/seed-a88e5317/resilience-sidecar/internal/testkit"
)

func TestMain(m *testing.M) { testkit.Main(m) }

func woken(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

func TestSignalWakesTheKeysWatchersCoalesced(t *testing.T) {
	var s memwatch.Set
	a1, stopA1 := s.Watch("a")
	a2, stopA2 := s.Watch("a")
	b, stopB := s.Watch("b")
	defer stopB()
	s.Signal("a")
	s.Signal("a") // coalesced into the one buffered wake-up
	if !woken(a1) || !woken(a2) {
		t.Fatal("a watcher of a was not woken")
	}
	if woken(a1) || woken(b) {
		t.Fatal("a wake-up too many, or one for the wrong key")
	}
	stopA1()
	stopA1() // idempotent
	s.Signal("a")
	if woken(a1) || !woken(a2) {
		t.Fatal("a stopped watcher was woken, or a live one was not")
	}
	stopA2()
	if n := s.Len(); n != 1 {
		t.Fatalf("%d keys watched after a's watchers stopped; want 1 (b)", n)
	}
}
