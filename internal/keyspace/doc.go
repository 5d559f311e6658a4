// Package keyspace holds only tests: against a real redis-server and the
// real capability stores, no user-supplied name of one capability can
// address another capability's keys or leave its record's hash tag (issue
// 16). The key layout itself is redisx.Key; see docs/redis-keys.md.
package keyspace
