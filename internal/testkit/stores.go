package testkit

import (
	"fmt"
	"sync/atomic"
	"time"
)

// The store conformance suites (internal/{lock,idempotency,breaker,saga,
// events}) run one contract against each Store: an in-memory store on a
// Clock, and Redis-backed ones. Each suite's storeUnderTest carries an
// advance func(time.Duration) that lets store time pass: Clock.Advance for
// a memory store, RedisTime for a store on Redis.

// RedisTime lets d of real time pass. A store on Redis decides expiry by
// Redis's own clock, which no fake clock reaches, so a test of a TTL or
// lease in Redis has to wait it out for real. Keep such durations short.
func RedisTime(d time.Duration) {
	time.Sleep(d) // real time: Redis's clock has to move
}

// Namespaces returns a function that gives "prefix-1", "prefix-2", ...:
// a fresh key namespace for each store a suite makes on one shared Redis,
// so that the stores never see each other's keys. It is safe for
// concurrent use.
func Namespaces(prefix string) func() string {
	var n atomic.Int64
	return func() string { return fmt.Sprintf("%s-%d", prefix, n.Add(1)) }
}
