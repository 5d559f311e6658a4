package api

import (
	"context"
	"log/slog"
	"math/big"
	"testing"
	"time"
	"unicode/utf8"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	v1 "github.com/seed-a88e5317/resilience-sidecar/clients/go/resiliencev1"
)

// The oracle restates the idempotency bounds of DESIGN.md and the proto
// independently of the validators: keys and recovery points 1-512 bytes of
// UTF-8 without control characters (category Cc), fingerprints the same but
// 0-128 bytes, lease_ttl 1s-1h (default 30s), retention 1s-720h (default
// 24h), wait_timeout 0-5m (default 0), lease ids 32 lowercase hex digits,
// results at most the limit counting data and metadata keys and values,
// metadata keys 1-256 bytes without control characters.

func idemOracleText(s string, minLen, maxLen int) bool {
	if len(s) < minLen || len(s) > maxLen || !utf8.ValidString(s) {
		return false
	}
	for _, r := range s {
		if r <= 0x1f || (0x7f <= r && r <= 0x9f) {
			return false
		}
	}
	return true
}

// idemOracleDuration returns what an optional Duration field should yield
// and whether it is acceptable.
func idemOracleDuration(has bool, sec int64, nanos int32, def, lo, hi time.Duration) (time.Duration, bool) {
	if !has {
		return def, true
	}
	const maxSec = 315_576_000_000
	if sec < -maxSec || sec > maxSec || nanos <= -1e9 || nanos >= 1e9 || (sec > 0 && nanos < 0) || (sec < 0 && nanos > 0) {
		return 0, false
	}
	n := new(big.Int).Mul(big.NewInt(sec), big.NewInt(1e9))
	n.Add(n, big.NewInt(int64(nanos)))
	if n.Cmp(big.NewInt(int64(lo))) < 0 || n.Cmp(big.NewInt(int64(hi))) > 0 {
		return 0, false
	}
	return time.Duration(n.Int64()), true
}

func idemOracleLeaseID(s string) bool {
	if len(s) != 32 {
		return false
	}
	for i := range len(s) {
		if c := s[i]; !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}

func idemOptDuration(has bool, sec int64, nanos int32) *durationpb.Duration {
	if !has {
		return nil
	}
	return &durationpb.Duration{Seconds: sec, Nanos: nanos}
}

// idemCheck checks err against the oracle's verdict: nil when want is
// empty, else INVALID_ARGUMENT (as a client sees it) naming exactly the
// fields in want.
func idemCheck(t *testing.T, what string, err error, want map[string]bool) {
	t.Helper()
	if len(want) == 0 {
		if err != nil {
			t.Fatalf("%s: rejected a valid request: %v", what, err)
		}
		return
	}
	if err == nil {
		t.Fatalf("%s: accepted a request invalid in %v", what, want)
	}
	st, ok := status.FromError(toStatus(context.Background(), slog.New(slog.DiscardHandler), err))
	if !ok || st.Code() != codes.InvalidArgument {
		t.Fatalf("%s: %v maps to %v; want INVALID_ARGUMENT", what, err, st)
	}
	got := map[string]bool{}
	for _, d := range st.Details() {
		if br, ok := d.(*errdetails.BadRequest); ok {
			for _, v := range br.GetFieldViolations() {
				if v.GetDescription() == "" {
					t.Fatalf("%s: violation of %q without description", what, v.GetField())
				}
				got[v.GetField()] = true
			}
		}
	}
	if len(got) != len(want) {
		t.Fatalf("%s: violations %v, want %v", what, got, want)
	}
	for f := range want {
		if !got[f] {
			t.Fatalf("%s: violations %v, want %v", what, got, want)
		}
	}
}

// fuzzMaxResult is the result limit used by the fuzz target, small enough
// for the fuzzer to cross.
const fuzzMaxResult = 64

// FuzzValidateIdempotency drives every idempotency validator with the same
// inputs and compares each verdict with the oracle. Seeds are committed in
// testdata/fuzz/FuzzValidateIdempotency.
func FuzzValidateIdempotency(f *testing.F) {
	f.Add("order-1", "sha256:00", true, int64(30), int32(0), false, int64(0), int32(0), true, int64(0), int32(5e8),
		"0123456789abcdef0123456789abcdef", []byte("{}"), "status", "200", "charged")
	f.Fuzz(func(t *testing.T, key, fp string,
		hasLease bool, leaseSec int64, leaseNanos int32,
		hasRet bool, retSec int64, retNanos int32,
		hasWait bool, waitSec int64, waitNanos int32,
		leaseID string, data []byte, mdKey, mdVal, recoveryPoint string,
	) {
		keyOK := idemOracleText(key, 1, MaxKeyBytes)
		fpOK := idemOracleText(fp, 0, MaxFingerprintBytes)
		leaseIDOK := idemOracleLeaseID(leaseID)

		// CheckOrRecord.
		lease, leaseOK := idemOracleDuration(hasLease, leaseSec, leaseNanos, 30*time.Second, time.Second, time.Hour)
		ret, retOK := idemOracleDuration(hasRet, retSec, retNanos, 24*time.Hour, time.Second, 720*time.Hour)
		wait, waitOK := idemOracleDuration(hasWait, waitSec, waitNanos, 0, 0, 5*time.Minute)
		opts, err := ValidateCheckOrRecordIdempotency(&v1.CheckOrRecordIdempotencyRequest{
			Key: key, Fingerprint: fp,
			LeaseTtl:    idemOptDuration(hasLease, leaseSec, leaseNanos),
			Retention:   idemOptDuration(hasRet, retSec, retNanos),
			WaitTimeout: idemOptDuration(hasWait, waitSec, waitNanos),
		})
		want := map[string]bool{}
		for field, ok := range map[string]bool{"key": keyOK, "fingerprint": fpOK, "lease_ttl": leaseOK, "retention": retOK, "wait_timeout": waitOK} {
			if !ok {
				want[field] = true
			}
		}
		idemCheck(t, "CheckOrRecord", err, want)
		if err == nil && (opts.LeaseTTL != lease || opts.Retention != ret || opts.Wait != wait || opts.Fingerprint != fp) {
			t.Fatalf("CheckOrRecord options %+v, want ttl %v retention %v wait %v", opts, lease, ret, wait)
		}

		// Complete, with zero or one metadata entry.
		var md map[string]string
		if mdKey != "" || mdVal != "" {
			md = map[string]string{mdKey: mdVal}
		}
		mdOK := md == nil || (idemOracleText(mdKey, 1, MaxResultMetadataKeyBytes) && utf8.ValidString(mdVal))
		sizeOK := len(data)+len(mdKey)+len(mdVal) <= fuzzMaxResult
		res, err := ValidateCompleteIdempotency(&v1.CompleteIdempotencyRequest{
			Key: key, LeaseId: leaseID, Result: &v1.IdempotencyResult{Data: data, Metadata: md},
		}, fuzzMaxResult)
		want = map[string]bool{}
		for field, ok := range map[string]bool{"key": keyOK, "lease_id": leaseIDOK, "result.metadata": mdOK, "result": sizeOK} {
			if !ok {
				want[field] = true
			}
		}
		idemCheck(t, "Complete", err, want)
		if err == nil && (string(res.Data) != string(data) || len(res.Metadata) != len(md) || res.Metadata[mdKey] != md[mdKey]) {
			t.Fatalf("Complete result %+v", res)
		}

		// Checkpoint.
		cp, err := ValidateCheckpointIdempotency(&v1.CheckpointIdempotencyRequest{
			Key: key, LeaseId: leaseID, RecoveryPoint: recoveryPoint, Data: data,
		})
		want = map[string]bool{}
		for field, ok := range map[string]bool{"key": keyOK, "lease_id": leaseIDOK,
			"recovery_point": idemOracleText(recoveryPoint, 1, MaxKeyBytes), "data": len(data) <= MaxCheckpointBytes} {
			if !ok {
				want[field] = true
			}
		}
		idemCheck(t, "Checkpoint", err, want)
		if err == nil && (cp.RecoveryPoint != recoveryPoint || string(cp.Data) != string(data)) {
			t.Fatalf("Checkpoint %+v", cp)
		}

		// Release and Get.
		want = map[string]bool{}
		if !keyOK {
			want["key"] = true
		}
		if !leaseIDOK {
			want["lease_id"] = true
		}
		idemCheck(t, "Release", ValidateReleaseIdempotency(&v1.ReleaseIdempotencyRequest{Key: key, LeaseId: leaseID}), want)
		delete(want, "lease_id")
		if !fpOK {
			want["fingerprint"] = true
		}
		idemCheck(t, "Get", ValidateGetIdempotency(&v1.GetIdempotencyRequest{Key: key, Fingerprint: fp}), want)
	})
}
