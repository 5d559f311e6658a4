// Package testkit is the small kit every test of this repository shares:
// a fake clock, Eventually (a bounded poll with a message), the pieces of
// the store conformance suites' setup, and the goroutine-leak check of each
// package's TestMain.
//
// It holds only what tests of several packages need. Starting real
// components (redis-server, Redis Cluster, Sentinel, PostgreSQL, the
// sidecar binary) is internal/testharness's job, not this package's.
//
// The package imports "testing" and is meant for _test.go files only: no
// production package imports it.
//
// What to use when a test waits:
//   - time is the only thing waited for (a backoff, a retry loop, a
//     timeout of code under test that touches no socket, process or
//     Redis): run the test in a testing/synctest bubble;
//   - the code under test takes a clock (a func() time.Time): give it a
//     Clock and Advance it;
//   - something real has to happen (a Redis reply, a gRPC server, another
//     process): Eventually or EventuallyNil, with a generous bound;
//   - Redis's own clock must move (a TTL or a lease expiring in Redis):
//     RedisTime, the one place real time is let pass on purpose.
package testkit
