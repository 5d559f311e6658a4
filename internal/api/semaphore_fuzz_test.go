package api

// Fuzz tests of the semaphore requests' validation, with the oracle of
// fuzz_test.go; limits are restated here: 1-100000, required.

import (
	"testing"
	"time"

	v1 "github.com/seed-a88e5317/resilience-sidecar/clients/go/resiliencev1"
)

func oracleLimit(n uint32) bool { return n >= 1 && n <= 100000 }

func FuzzValidateAcquirePermit(f *testing.F) {
	f.Add("db-pool", uint32(5), "worker-1", int64(10), int32(0), true, int64(0), int32(0), false)
	f.Add("", uint32(0), "\x00", int64(-1), int32(0), true, int64(301), int32(0), true)
	f.Fuzz(func(t *testing.T, name string, limit uint32, owner string, ttlSec int64, ttlNanos int32, hasTTL bool, waitSec int64, waitNanos int32, hasWait bool) {
		req := &v1.AcquirePermitRequest{
			Name:        name,
			Limit:       limit,
			Owner:       owner,
			Ttl:         optDuration(hasTTL, ttlSec, ttlNanos),
			WaitTimeout: optDuration(hasWait, waitSec, waitNanos),
		}
		opts, err := ValidateAcquirePermit(req)

		want := map[string]bool{}
		if !oracleText(name, true) {
			want["name"] = true
		}
		if !oracleText(owner, false) {
			want["owner"] = true
		}
		if !oracleLimit(limit) {
			want["limit"] = true
		}
		ttl, ok := oracleDuration(hasTTL, ttlSec, ttlNanos, 10*time.Second, 100*time.Millisecond, 24*time.Hour)
		if !ok {
			want["ttl"] = true
		}
		wait, ok := oracleDuration(hasWait, waitSec, waitNanos, 0, 0, 5*time.Minute)
		if !ok {
			want["wait_timeout"] = true
		}
		if err != nil {
			checkViolations(t, err, want, "name", "limit", "owner", "ttl", "wait_timeout")
			return
		}
		if len(want) > 0 {
			t.Fatalf("accepted a request with bad fields %v: %v", want, req)
		}
		checkAccepted(t, name, owner, opts.TTL, opts.Wait)
		if opts.Limit < 1 || opts.Limit > 100000 || opts.Limit != int(limit) || opts.TTL != ttl || opts.Wait != wait || opts.Owner != owner {
			t.Fatalf("options = %+v; want limit %d ttl %v wait %v owner %q", opts, limit, ttl, wait, owner)
		}
	})
}

func FuzzValidateHoldPermit(f *testing.F) {
	f.Add("db-pool", uint32(5), "worker-1", int64(10), int32(0), true, int64(0), int32(0), false, int64(60), int32(0), true, false)
	f.Fuzz(func(t *testing.T, name string, limit uint32, owner string, ttlSec int64, ttlNanos int32, hasTTL bool, waitSec int64, waitNanos int32, hasWait bool,
		maxHoldSec int64, maxHoldNanos int32, hasMaxHold bool, releaseFirst bool) {
		req := &v1.HoldPermitRequest{Msg: &v1.HoldPermitRequest_Acquire_{Acquire: &v1.HoldPermitRequest_Acquire{
			Name: name, Limit: limit, Owner: owner,
			Ttl:         optDuration(hasTTL, ttlSec, ttlNanos),
			WaitTimeout: optDuration(hasWait, waitSec, waitNanos),
			MaxHold:     optDuration(hasMaxHold, maxHoldSec, maxHoldNanos),
		}}}
		if releaseFirst {
			req = &v1.HoldPermitRequest{Msg: &v1.HoldPermitRequest_Release_{Release: &v1.HoldPermitRequest_Release{}}}
		}
		opts, err := ValidateHoldPermit(req)
		if releaseFirst {
			checkViolations(t, err, map[string]bool{"acquire": true}, "acquire")
			return
		}
		want := map[string]bool{}
		if !oracleText(name, true) {
			want["acquire.name"] = true
		}
		if !oracleText(owner, false) {
			want["acquire.owner"] = true
		}
		if !oracleLimit(limit) {
			want["acquire.limit"] = true
		}
		ttl, ok := oracleDuration(hasTTL, ttlSec, ttlNanos, 10*time.Second, 100*time.Millisecond, 24*time.Hour)
		if !ok {
			want["acquire.ttl"] = true
		}
		wait, ok := oracleDuration(hasWait, waitSec, waitNanos, 0, 0, 5*time.Minute)
		if !ok {
			want["acquire.wait_timeout"] = true
		}
		maxHold, ok := oracleDuration(hasMaxHold, maxHoldSec, maxHoldNanos, 0, 0, 24*time.Hour)
		if !ok || (maxHold != 0 && maxHold < 100*time.Millisecond) {
			want["acquire.max_hold"] = true
		}
		if err != nil {
			checkViolations(t, err, want, "acquire.name", "acquire.limit", "acquire.owner", "acquire.ttl", "acquire.wait_timeout", "acquire.max_hold")
			return
		}
		if len(want) > 0 {
			t.Fatalf("accepted a request with bad fields %v: %v", want, req)
		}
		checkAccepted(t, name, owner, opts.TTL, opts.Wait)
		if opts.Limit != int(limit) || opts.TTL != ttl || opts.Wait != wait || opts.MaxHold != maxHold {
			t.Fatalf("options = %+v; want limit %d ttl %v wait %v max hold %v", opts, limit, ttl, wait, maxHold)
		}
	})
}

func FuzzValidateReleaseAndRenewPermit(f *testing.F) {
	f.Add("db-pool", "0123456789abcdef0123456789abcdef", int64(10), int32(0), true)
	f.Fuzz(func(t *testing.T, name, id string, ttlSec int64, ttlNanos int32, hasTTL bool) {
		want := map[string]bool{}
		if !oracleText(name, true) {
			want["name"] = true
		}
		if len(id) != 32 || !isLowerHex(id) {
			want["permit_id"] = true
		}
		err := ValidateReleasePermit(&v1.ReleasePermitRequest{Name: name, PermitId: id})
		if len(want) == 0 && err != nil {
			t.Fatalf("release rejected a good request: %v", err)
		}
		if len(want) > 0 {
			checkViolations(t, err, want, "name", "permit_id")
		}
		ttl, ok := oracleDuration(hasTTL, ttlSec, ttlNanos, 10*time.Second, 100*time.Millisecond, 24*time.Hour)
		if !ok {
			want["ttl"] = true
		}
		got, err := ValidateRenewPermit(&v1.RenewPermitRequest{Name: name, PermitId: id, Ttl: optDuration(hasTTL, ttlSec, ttlNanos)})
		if len(want) > 0 {
			checkViolations(t, err, want, "name", "permit_id", "ttl")
			return
		}
		if err != nil || got != ttl {
			t.Fatalf("renew = %v, %v; want ttl %v", got, err, ttl)
		}
	})
}

func isLowerHex(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}
