// Package store holds what every capability's state store shares: the
// outcome that the store could not be reached, and the health probe.
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

// Unavailable wraps cause so that errors.Is(err, ErrUnavailable) holds while
// the cause stays inspectable.
func Unavailable(cause error) error {
	return &unavailableError{cause: cause}
}

type unavailableError struct{ cause error }

func (e *unavailableError) Error() string { return fmt.Sprintf("store: unavailable: %v", e.cause) }
func (e *unavailableError) Unwrap() []error {
	return []error{ErrUnavailable, e.cause}
}

// Pinger is implemented by stores that can report whether they are reachable.
type Pinger interface {
	// Ping returns nil when the store answers, or an error wrapping
	// ErrUnavailable.
	Ping(ctx context.Context) error
}
