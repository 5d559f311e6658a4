package idempotency

import (
	"maps"
	"testing"
)

func TestIdempotencyMetadataCodec(t *testing.T) {
	for _, m := range []map[string]string{
		nil,
		{"": ""},
		{"status": "201", "content-type": "application/json", "x": "\x00\xff"},
	} {
		got, err := decodeMetadata(encodeMetadata(m))
		if err != nil || !maps.Equal(got, m) {
			t.Fatalf("round trip of %q = %q, %v", m, got, err)
		}
	}
	for _, b := range []string{"\x01", "\x02\x01a\x01b", "\x01\x01a\x01b!", "\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01", "\x01\x05a"} {
		if _, err := decodeMetadata([]byte(b)); err == nil {
			t.Errorf("decodeMetadata(%q) accepted malformed input", b)
		}
	}
}

// FuzzDecodeMetadata: stored bytes never make the decoder panic, and
// whatever it accepts encodes back to the same bytes.
func FuzzDecodeMetadata(f *testing.F) {
	f.Add(encodeMetadata(map[string]string{"status": "200"}))
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := decodeMetadata(b)
		if err != nil || len(m) == 0 {
			return
		}
		if got, err := decodeMetadata(encodeMetadata(m)); err != nil || !maps.Equal(got, m) {
			t.Fatalf("re-encoding %q changed it: %q %v", m, got, err)
		}
	})
}
