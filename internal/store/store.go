// Package store holds what every capability's state store shares: the
// outcome that the store could not be reached or cannot serve now (and
// why: full, read-only, not replicated), and the health probe.
//
// Each capability (lock, idempotency, ...) defines the small store interface
// it needs; this package only gives them a common vocabulary for failure so
// the API edge can map it to UNAVAILABLE/STORE_UNAVAILABLE in one place.
package store

import (
	"context"
	"errors"
	"fmt"
)

// ErrUnavailable reports that the store did not answer in time or the
// connection failed. The operation's effect is unknown to the caller; it
// must be treated as not having happened, never as a success.
var ErrUnavailable = errors.New("store: unavailable")

// The states in which the store answers but cannot serve a call now. Each
// is a kind of ErrUnavailable (errors.Is(ErrFull, ErrUnavailable) holds), so
// code that only tells "unavailable" from the rest keeps working; the API
// edge maps them to reasons more precise than STORE_UNAVAILABLE.
var (
	// ErrFull: the store refuses writes because it reached its memory
	// limit and may not evict (Redis OOM: maxmemory with noeviction, or
	// nothing left to evict). Frees up when keys expire or are deleted.
	ErrFull error = &kindError{"full (out of memory)"}
	// ErrReadOnly: the store refuses writes: it is a read-only replica
	// (Redis READONLY), or it stopped accepting writes because it cannot
	// persist (Redis MISCONF, a failed RDB save).
	ErrReadOnly error = &kindError{"read-only"}
	// ErrNotReplicated: the write was refused, or made but not
	// acknowledged, because fewer replicas than required are in sync
	// (Redis NOREPLICAS, min-replicas-to-write; or a WAIT that fell
	// short). Like every ErrUnavailable, the caller must treat the
	// operation as not having happened.
	ErrNotReplicated error = &kindError{"not replicated"}
)

// kindError is a precise kind of ErrUnavailable.
type kindError struct{ name string }

func (e *kindError) Error() string { return "store: " + e.name }
func (e *kindError) Unwrap() error { return ErrUnavailable }

// Unavailable wraps cause so that errors.Is(err, ErrUnavailable) holds while
// the cause stays inspectable.
func Unavailable(cause error) error {
	return &unavailableError{kind: ErrUnavailable, cause: cause}
}

// UnavailableAs wraps cause as kind (ErrFull, ErrReadOnly, ErrNotReplicated
// or ErrUnavailable): errors.Is holds for kind, for ErrUnavailable and for
// what cause matches.
func UnavailableAs(kind, cause error) error {
	if !errors.Is(kind, ErrUnavailable) {
		kind = ErrUnavailable
	}
	return &unavailableError{kind: kind, cause: cause}
}

type unavailableError struct{ kind, cause error }

func (e *unavailableError) Error() string {
	if k, ok := e.kind.(*kindError); ok {
		return fmt.Sprintf("store: unavailable: %s: %v", k.name, e.cause)
	}
	return fmt.Sprintf("store: unavailable: %v", e.cause)
}
func (e *unavailableError) Unwrap() []error {
	return []error{e.kind, e.cause}
}

// Pinger is implemented by stores that can report whether they are reachable.
type Pinger interface {
	// Ping returns nil when the store answers and accepts writes, or an
	// error wrapping ErrUnavailable (or one of its kinds, e.g. ErrFull).
	Ping(ctx context.Context) error
}
