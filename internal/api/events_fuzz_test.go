package api

import (
	"math/big"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"google.golang.org/protobuf/types/known/durationpb"

	v1 "github.com/seed-a88e5317/resilience-sidecar/clients/go/resiliencev1"
)

// The oracle restates the event rules of events.proto independently of
// the validators: topics 1-249 bytes of [A-Za-z0-9._-], not starting with
// '.', ending in ".dead" only as the dead-letter topic of a valid topic
// (never for Publish); groups and consumers 1-128 bytes of the same
// alphabet; keys and idempotency keys 0-512 bytes of UTF-8; headers with
// names 1-256 bytes and values up to 8 KiB of UTF-8; payload plus header
// names and values within the limit; max_in_flight and max_deliveries
// 0-1000; visibility_timeout 100ms-12h; retry_after 0-12h; event ids
// "<digits>-<digits>", each a uint64.

func evOracleAlphabet(s string, maxLen int) bool {
	if len(s) < 1 || len(s) > maxLen {
		return false
	}
	for i := range len(s) {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

func evOracleTopic(s string, deadOK bool) bool {
	if !evOracleAlphabet(s, 249) || s[0] == '.' {
		return false
	}
	if !strings.HasSuffix(s, ".dead") {
		return true
	}
	base := s[:len(s)-len(".dead")]
	return deadOK && base != "" && base[0] != '.' && !strings.HasSuffix(base, ".dead")
}

func evOracleEventID(s string) bool {
	parts := strings.Split(s, "-")
	if len(parts) != 2 {
		return false
	}
	limit := new(big.Int).SetUint64(^uint64(0))
	for _, p := range parts {
		if p == "" || strings.Trim(p, "0123456789") != "" {
			return false
		}
		n, _ := new(big.Int).SetString(p, 10)
		if n.Cmp(limit) > 0 {
			return false
		}
	}
	return true
}

// fuzzMaxPayload is the payload limit of the fuzz target, small enough for
// the fuzzer to cross.
const fuzzMaxPayload = 64

// FuzzValidateEvents drives every event validator with the same inputs and
// compares each verdict with the oracle. Seeds are committed in
// testdata/fuzz/FuzzValidateEvents.
func FuzzValidateEvents(f *testing.F) {
	f.Add("orders", "o-1", "pub-1", []byte("{}"), "content-type", "application/json", "billing", "pod-1",
		uint32(16), true, int64(30), int32(0), uint32(10), int32(1), "1795639477667-0", true, int64(1), int32(0))
	f.Fuzz(func(t *testing.T, topic, key, idemKey string, payload []byte, hName, hVal, group, consumer string,
		maxInFlight uint32, hasVis bool, visSec int64, visNanos int32, maxDel uint32, start int32,
		eventID string, hasRetry bool, retrySec int64, retryNanos int32,
	) {
		// Publish, with zero or one header.
		var headers map[string]string
		if hName != "" || hVal != "" {
			headers = map[string]string{hName: hVal}
		}
		hOK := headers == nil || (hName != "" && len(hName) <= 256 && len(hVal) <= 8<<10 && utf8.ValidString(hName) && utf8.ValidString(hVal))
		m, err := ValidatePublish(&v1.PublishRequest{Topic: topic, Key: key, Payload: payload, Headers: headers, IdempotencyKey: idemKey}, fuzzMaxPayload)
		want := map[string]bool{}
		for field, ok := range map[string]bool{
			"topic":           evOracleTopic(topic, false),
			"key":             len(key) <= 512 && utf8.ValidString(key),
			"idempotency_key": len(idemKey) <= 512 && utf8.ValidString(idemKey),
			"headers":         hOK,
			"payload":         len(payload)+len(hName)+len(hVal) <= fuzzMaxPayload,
		} {
			if !ok {
				want[field] = true
			}
		}
		idemCheck(t, "Publish", err, want)
		if err == nil && (m.Topic != topic || m.Key != key || string(m.Payload) != string(payload) || m.IdempotencyKey != idemKey || len(m.Headers) != len(headers)) {
			t.Fatalf("Publish message %+v", m)
		}

		// Subscribe.
		var vis *durationpb.Duration
		if hasVis {
			vis = &durationpb.Duration{Seconds: visSec, Nanos: visNanos}
		}
		visD, visOK := idemOracleDuration(hasVis, visSec, visNanos, 0, 100*time.Millisecond, 12*time.Hour)
		o, err := ValidateSubscribe(&v1.SubscribeRequest{Topic: topic, Group: group, Consumer: consumer, MaxInFlight: maxInFlight,
			VisibilityTimeout: vis, MaxDeliveries: maxDel, StartFrom: v1.StartFrom(start)})
		want = map[string]bool{}
		for field, ok := range map[string]bool{
			"topic":              evOracleTopic(topic, true),
			"group":              evOracleAlphabet(group, 128),
			"consumer":           evOracleAlphabet(consumer, 128),
			"max_in_flight":      maxInFlight <= 1000,
			"max_deliveries":     maxDel <= 1000,
			"visibility_timeout": visOK,
			"start_from":         start >= 0 && start <= 2,
		} {
			if !ok {
				want[field] = true
			}
		}
		idemCheck(t, "Subscribe", err, want)
		if err == nil && (o.Topic != topic || o.Group != group || o.Consumer != consumer || o.MaxInFlight != int(maxInFlight) ||
			o.MaxDeliveries != int(maxDel) || o.Visibility != visD) {
			t.Fatalf("Subscribe options %+v", o)
		}

		// Ack and Nack.
		want = map[string]bool{}
		for field, ok := range map[string]bool{
			"topic":    evOracleTopic(topic, true),
			"group":    evOracleAlphabet(group, 128),
			"event_id": evOracleEventID(eventID),
		} {
			if !ok {
				want[field] = true
			}
		}
		idemCheck(t, "Ack", ValidateAck(&v1.AckRequest{Topic: topic, Group: group, EventId: eventID}), want)
		var retry *durationpb.Duration
		if hasRetry {
			retry = &durationpb.Duration{Seconds: retrySec, Nanos: retryNanos}
		}
		retryD, retryOK := idemOracleDuration(hasRetry, retrySec, retryNanos, 0, 0, 12*time.Hour)
		if !retryOK {
			want["retry_after"] = true
		}
		d, err := ValidateNack(&v1.NackRequest{Topic: topic, Group: group, EventId: eventID, RetryAfter: retry})
		idemCheck(t, "Nack", err, want)
		if err == nil && d != retryD {
			t.Fatalf("Nack retry_after %v, want %v", d, retryD)
		}
	})
}
