package api

// Fuzz tests of request validation. They live in package api (not api_test)
// so that a rejected request goes through toStatus, the exact mapping the
// handlers use, and the test sees the status a client would see.
//
// The oracle below restates the bounds of DESIGN.md sections 3 and 4
// independently of validate.go: keys 1-512 bytes of UTF-8 without control
// characters (Unicode category Cc), labels the same but may be empty, TTLs
// 100ms-24h (default 10s), waits 0-5m (default 0), max_hold 0 (no limit) or
// 100ms-24h, and any Duration that is not a valid google.protobuf.Duration
// rejected.

import (
	"context"
	"log/slog"
	"math/big"
	"slices"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	v1 "github.com/seed-a88e5317/resilience-sidecar/clients/go/resiliencev1"
)

// oracleText reports whether s is an acceptable key (required) or label.
func oracleText(s string, required bool) bool {
	if required && s == "" {
		return false
	}
	if len(s) > 512 || !utf8.ValidString(s) {
		return false
	}
	for _, r := range s {
		if r <= 0x1f || (0x7f <= r && r <= 0x9f) { // Cc
			return false
		}
	}
	return true
}

// oracleDurationValid restates google.protobuf.Duration's validity rules.
func oracleDurationValid(sec int64, nanos int32) bool {
	const maxSec = 315_576_000_000
	switch {
	case sec < -maxSec || sec > maxSec:
		return false
	case nanos <= -1e9 || nanos >= 1e9:
		return false
	case sec > 0 && nanos < 0, sec < 0 && nanos > 0:
		return false
	}
	return true
}

// oracleNanos is the exact duration in nanoseconds, without overflow.
func oracleNanos(sec int64, nanos int32) *big.Int {
	n := new(big.Int).Mul(big.NewInt(sec), big.NewInt(1e9))
	return n.Add(n, big.NewInt(int64(nanos)))
}

func oracleInRange(sec int64, nanos int32, lo, hi time.Duration) bool {
	n := oracleNanos(sec, nanos)
	return n.Cmp(big.NewInt(int64(lo))) >= 0 && n.Cmp(big.NewInt(int64(hi))) <= 0
}

// oracleDuration returns the duration an optional field should yield and
// whether it is acceptable.
func oracleDuration(has bool, sec int64, nanos int32, def, lo, hi time.Duration) (time.Duration, bool) {
	if !has {
		return def, true
	}
	if !oracleDurationValid(sec, nanos) || !oracleInRange(sec, nanos, lo, hi) {
		return 0, false
	}
	return time.Duration(oracleNanos(sec, nanos).Int64()), true
}

// checkViolations checks that err, as a client sees it, is INVALID_ARGUMENT
// naming exactly the fields in want, each at most once and all of them in
// allowed.
func checkViolations(t *testing.T, err error, want map[string]bool, allowed ...string) {
	t.Helper()
	st, ok := status.FromError(toStatus(context.Background(), slog.New(slog.DiscardHandler), err))
	if !ok || st.Code() != codes.InvalidArgument {
		t.Fatalf("validation error %v maps to %v; want INVALID_ARGUMENT", err, st)
	}
	var got []string
	for _, d := range st.Details() {
		if br, ok := d.(*errdetails.BadRequest); ok {
			for _, v := range br.GetFieldViolations() {
				if v.GetDescription() == "" {
					t.Errorf("violation of %q has no description", v.GetField())
				}
				got = append(got, v.GetField())
			}
		}
	}
	if len(got) == 0 {
		t.Fatalf("INVALID_ARGUMENT %q without field violations", st.Message())
	}
	seen := map[string]bool{}
	for _, f := range got {
		if !slices.Contains(allowed, f) {
			t.Errorf("violation names %q; want one of %q", f, allowed)
		}
		if seen[f] {
			t.Errorf("field %q reported twice", f)
		}
		seen[f] = true
	}
	for f := range want {
		if !seen[f] {
			t.Errorf("field %q is out of bounds but not reported (got %q)", f, got)
		}
	}
	for f := range seen {
		if !want[f] {
			t.Errorf("field %q reported but within bounds (got %q)", f, got)
		}
	}
}

func optDuration(has bool, sec int64, nanos int32) *durationpb.Duration {
	if !has {
		return nil
	}
	return &durationpb.Duration{Seconds: sec, Nanos: nanos}
}

// checkAccepted restates the bounds on what the validator let through, so
// that a wrong oracle cannot hide a wrong validator.
func checkAccepted(t *testing.T, key, owner string, ttl, wait time.Duration) {
	t.Helper()
	if len(key) < 1 || len(key) > 512 || !utf8.ValidString(key) || strings.ContainsFunc(key, func(r rune) bool { return r < 0x20 || (r >= 0x7f && r < 0xa0) }) {
		t.Errorf("accepted key %q", key)
	}
	if len(owner) > 512 || !utf8.ValidString(owner) || strings.ContainsFunc(owner, func(r rune) bool { return r < 0x20 || (r >= 0x7f && r < 0xa0) }) {
		t.Errorf("accepted owner %q", owner)
	}
	if ttl < 100*time.Millisecond || ttl > 24*time.Hour {
		t.Errorf("accepted ttl %v", ttl)
	}
	if wait < 0 || wait > 5*time.Minute {
		t.Errorf("accepted wait %v", wait)
	}
}

func FuzzValidateAcquireLock(f *testing.F) {
	f.Add("orders/42", "worker-1", int64(10), int32(0), true, int64(0), int32(0), false)
	f.Fuzz(func(t *testing.T, key, owner string, ttlSec int64, ttlNanos int32, hasTTL bool, waitSec int64, waitNanos int32, hasWait bool) {
		req := &v1.AcquireLockRequest{
			Key:         key,
			Owner:       owner,
			Ttl:         optDuration(hasTTL, ttlSec, ttlNanos),
			WaitTimeout: optDuration(hasWait, waitSec, waitNanos),
		}
		opts, err := ValidateAcquireLock(req)

		want := map[string]bool{}
		if !oracleText(key, true) {
			want["key"] = true
		}
		if !oracleText(owner, false) {
			want["owner"] = true
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
			checkViolations(t, err, want, "key", "owner", "ttl", "wait_timeout")
			return
		}
		if len(want) > 0 {
			t.Fatalf("accepted a request with bad fields %v: %v", want, req)
		}
		checkAccepted(t, key, owner, opts.TTL, opts.Wait)
		if opts.TTL != ttl || opts.Wait != wait || opts.Owner != owner {
			t.Fatalf("options = %+v; want ttl %v wait %v owner %q", opts, ttl, wait, owner)
		}
	})
}

func FuzzValidateHoldLock(f *testing.F) {
	f.Add("orders/42", "worker-1", int64(10), int32(0), true, int64(0), int32(0), false, int64(60), int32(0), true, false)
	f.Fuzz(func(t *testing.T, key, owner string, ttlSec int64, ttlNanos int32, hasTTL bool, waitSec int64, waitNanos int32, hasWait bool,
		maxHoldSec int64, maxHoldNanos int32, hasMaxHold bool, releaseFirst bool) {
		req := &v1.HoldLockRequest{Msg: &v1.HoldLockRequest_Acquire_{Acquire: &v1.HoldLockRequest_Acquire{
			Key:         key,
			Owner:       owner,
			Ttl:         optDuration(hasTTL, ttlSec, ttlNanos),
			WaitTimeout: optDuration(hasWait, waitSec, waitNanos),
			MaxHold:     optDuration(hasMaxHold, maxHoldSec, maxHoldNanos),
		}}}
		if releaseFirst {
			req = &v1.HoldLockRequest{Msg: &v1.HoldLockRequest_Release_{Release: &v1.HoldLockRequest_Release{}}}
		}
		opts, err := ValidateHoldLock(req)
		allowed := []string{"acquire", "acquire.key", "acquire.owner", "acquire.ttl", "acquire.wait_timeout", "acquire.max_hold"}

		if releaseFirst {
			if err == nil {
				t.Fatalf("accepted a session opened with release: %+v", opts)
			}
			checkViolations(t, err, map[string]bool{"acquire": true}, allowed...)
			return
		}
		want := map[string]bool{}
		if !oracleText(key, true) {
			want["acquire.key"] = true
		}
		if !oracleText(owner, false) {
			want["acquire.owner"] = true
		}
		ttl, ok := oracleDuration(hasTTL, ttlSec, ttlNanos, 10*time.Second, 100*time.Millisecond, 24*time.Hour)
		if !ok {
			want["acquire.ttl"] = true
		}
		wait, ok := oracleDuration(hasWait, waitSec, waitNanos, 0, 0, 5*time.Minute)
		if !ok {
			want["acquire.wait_timeout"] = true
		}
		var maxHold time.Duration
		// An explicit, valid zero means "no limit".
		if hasMaxHold && (!oracleDurationValid(maxHoldSec, maxHoldNanos) || oracleNanos(maxHoldSec, maxHoldNanos).Sign() != 0) {
			maxHold, ok = oracleDuration(true, maxHoldSec, maxHoldNanos, 0, 100*time.Millisecond, 24*time.Hour)
			if !ok {
				want["acquire.max_hold"] = true
			}
		}

		if err != nil {
			checkViolations(t, err, want, allowed...)
			return
		}
		if len(want) > 0 {
			t.Fatalf("accepted a request with bad fields %v: %v", want, req)
		}
		checkAccepted(t, key, owner, opts.TTL, opts.Wait)
		if opts.MaxHold != 0 && (opts.MaxHold < 100*time.Millisecond || opts.MaxHold > 24*time.Hour) {
			t.Errorf("accepted max_hold %v", opts.MaxHold)
		}
		if opts.TTL != ttl || opts.Wait != wait || opts.Owner != owner || opts.MaxHold != maxHold {
			t.Fatalf("options = %+v; want ttl %v wait %v owner %q max_hold %v", opts, ttl, wait, owner, maxHold)
		}
	})
}

// TestValidateHoldLockRejectsInvalidMaxHoldSummingToZero: a max_hold that
// is not a valid Duration (nanos out of range) but whose seconds and nanos
// cancel out is taken for "0 = no limit" and accepted, because
// ValidateHoldLock tests AsDuration() != 0 before CheckValid. Every other
// Duration field rejects it.
func TestValidateHoldLockRejectsInvalidMaxHoldSummingToZero(t *testing.T) {
	for _, mh := range []*durationpb.Duration{
		{Seconds: -1, Nanos: 1_000_000_000},
		{Seconds: 1, Nanos: -1_000_000_000},
		{Seconds: 2, Nanos: -2_000_000_000},
	} {
		if mh.CheckValid() == nil {
			t.Fatalf("%v is valid; the test is wrong", mh)
		}
		opts, err := ValidateHoldLock(&v1.HoldLockRequest{Msg: &v1.HoldLockRequest_Acquire_{Acquire: &v1.HoldLockRequest_Acquire{Key: "k", MaxHold: mh}}})
		if err == nil {
			t.Errorf("max_hold %v accepted as %+v; want INVALID_ARGUMENT on acquire.max_hold", mh, opts)
			continue
		}
		checkViolations(t, err, map[string]bool{"acquire.max_hold": true}, "acquire.max_hold")
	}
}

// TestValidateReleaseAndRenewLock covers the two validators without a
// duration-heavy fuzz target of their own.
func TestValidateReleaseAndRenewLock(t *testing.T) {
	const id = "0123456789abcdef0123456789abcdef"
	cases := []struct {
		name    string
		key, id string
		ttl     *durationpb.Duration
		want    []string // for renew; release ignores ttl
	}{
		{"ok", "k", id, nil, nil},
		{"ok ttl bounds", "k", id, durationpb.New(100 * time.Millisecond), nil},
		{"empty key", "", id, nil, []string{"key"}},
		{"control key", "\x1b[0m", id, nil, []string{"key"}},
		{"bad utf8 key", "\xed\xa0\x80", id, nil, []string{"key"}},
		{"short id", "k", id[1:], nil, []string{"lease_id"}},
		{"upper id", "k", strings.ToUpper(id), nil, []string{"lease_id"}},
		{"ttl 24h+1ns", "k", id, durationpb.New(24*time.Hour + 1), []string{"ttl"}},
		{"everything", "", "x", durationpb.New(-1), []string{"key", "lease_id", "ttl"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			toSet := func(fields []string) map[string]bool {
				m := map[string]bool{}
				for _, f := range fields {
					m[f] = true
				}
				return m
			}
			var wantRelease []string
			for _, f := range tc.want {
				if f != "ttl" {
					wantRelease = append(wantRelease, f)
				}
			}
			err := ValidateReleaseLock(&v1.ReleaseLockRequest{Key: tc.key, LeaseId: tc.id})
			if len(wantRelease) == 0 {
				if err != nil {
					t.Errorf("ValidateReleaseLock: %v", err)
				}
			} else {
				checkViolations(t, err, toSet(wantRelease), "key", "lease_id")
			}
			ttl, err := ValidateRenewLock(&v1.RenewLockRequest{Key: tc.key, LeaseId: tc.id, Ttl: tc.ttl})
			if len(tc.want) == 0 {
				if err != nil {
					t.Errorf("ValidateRenewLock: %v", err)
				}
				if want := tc.ttl.AsDuration(); tc.ttl == nil && ttl != DefaultLockTTL || tc.ttl != nil && ttl != want {
					t.Errorf("ttl = %v", ttl)
				}
				return
			}
			checkViolations(t, err, toSet(tc.want), "key", "lease_id", "ttl")
		})
	}
}
