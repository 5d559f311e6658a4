package lock

import "testing"

// A panic on the goroutine aside is raised in the caller, where the
// server's recovery catches it; it never kills the process.
func TestAsideRaisesPanicInCaller(t *testing.T) {
	ran := false
	aside(func() { ran = true })
	if !ran {
		t.Fatal("f did not run")
	}
	defer func() {
		if p := recover(); p != "boom" {
			t.Fatalf("recovered %v, want boom", p)
		}
	}()
	aside(func() { panic("boom") })
	t.Fatal("aside returned after a panic")
}
