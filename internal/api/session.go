package api

import (
	"context"
	"errors"
	"io"
	"time"
)

// heldSession is a lease kept alive by the sidecar for a Hold* stream
// (lock.Session, semaphore.Session).
type heldSession interface {
	Renewed() <-chan time.Time
	Done() <-chan struct{}
	Err() error
}

// sessionStream is what a Hold* handler tells serveSession about its
// stream: how to read the client's messages and send the events.
type sessionStream[Req any] struct {
	recv      func() (Req, error)
	isRelease func(Req) bool
	renewed   func(time.Time) error // sends `renewed`
	lost      func(error) error     // sends `lost` for the cause
	released  func() error          // sends `released`
	// leaseLost is the domain's lease-lost error: a release that finds
	// the lease gone is reported with `lost`, not as an error.
	leaseLost error
	held      string // "the lock", "a permit": for the violation message
}

// serveSession runs an acquired Hold* session until it ends: it forwards
// renewals, reports a lease lost by itself, releases at shutdown, at the
// client's `release` or when the client closes its side (both answered),
// and returns when the client vanished (the caller's deferred release
// then gives the lease back). release is idempotent.
func serveSession[Req any](ctx, stopping context.Context, sess heldSession, release func() error, st sessionStream[Req], fail func(context.Context, error) error, shutdown error) error {
	// The reader goroutine ends when the stream does, which happens when
	// the handler returns.
	msgs := make(chan Req)
	recvErr := make(chan error, 1)
	go func() {
		for {
			m, err := st.recv()
			if err != nil {
				recvErr <- err
				return
			}
			select {
			case msgs <- m:
			case <-ctx.Done():
				return
			}
		}
	}()
	releaseAndReport := func() error {
		if err := release(); err != nil {
			if errors.Is(err, st.leaseLost) {
				return st.lost(err)
			}
			return fail(ctx, err)
		}
		return st.released()
	}
	for {
		select {
		case exp := <-sess.Renewed():
			if err := st.renewed(exp); err != nil {
				return err
			}
		case <-sess.Done():
			return st.lost(sess.Err())
		case <-stopping.Done():
			if err := release(); err != nil {
				return st.lost(err)
			}
			return st.lost(shutdown)
		case m := <-msgs:
			if !st.isRelease(m) {
				var v violations
				v.add("acquire", "the session already holds %s: only release may follow acquire", st.held)
				return fail(ctx, v.err())
			}
			return releaseAndReport()
		case err := <-recvErr:
			// A client that closed its sending side still reads: tell it.
			// One that vanished gets the deferred release only.
			if errors.Is(err, io.EOF) {
				return releaseAndReport()
			}
			return err
		}
	}
}
