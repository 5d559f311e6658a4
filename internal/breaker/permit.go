package breaker

import (
	"encoding/base64"
	"encoding/binary"
	"time"
	"unicode/utf8"
)

// Permit is a decoded permit id. Its text form is the unpadded base64url of
//
//	byte 0       version (1)
//	byte 1       flags: 1 = shared scope, 2 = issued by the local fallback
//	bytes 2-9    generation, big endian
//	bytes 10-17  issue time, Unix ms of the deciding store's clock
//	bytes 18-25  reporter (the issuing sidecar)
//	bytes 26-33  nonce
//	bytes 34-    breaker name (UTF-8)
//
// It carries the breaker name because ReportCall names only the permit.
// It is not a secret: a report needs the outstanding (reporter, nonce),
// which only the caller that got the permit knows.
type Permit struct {
	Breaker    string
	Shared     bool
	Fallback   bool
	Generation uint64
	Issued     time.Time
	Reporter   Reporter
	Nonce      Nonce
}

const (
	permitVersion    = 1
	permitHeader     = 34
	flagShared       = 1
	flagFallback     = 2
	maxPermitNameLen = 512
)

// MaxPermitIDLen bounds the text form of a permit id.
var MaxPermitIDLen = base64.RawURLEncoding.EncodedLen(permitHeader + maxPermitNameLen)

// String returns the permit id.
func (p Permit) String() string {
	b := make([]byte, permitHeader, permitHeader+len(p.Breaker))
	b[0] = permitVersion
	if p.Shared {
		b[1] |= flagShared
	}
	if p.Fallback {
		b[1] |= flagFallback
	}
	binary.BigEndian.PutUint64(b[2:], p.Generation)
	binary.BigEndian.PutUint64(b[10:], uint64(p.Issued.UnixMilli()))
	copy(b[18:26], p.Reporter[:])
	copy(b[26:34], p.Nonce[:])
	b = append(b, p.Breaker...)
	return base64.RawURLEncoding.EncodeToString(b)
}

// ParsePermit decodes a permit id; ErrPermitMalformed when s is not one.
func ParsePermit(s string) (Permit, error) {
	if len(s) > MaxPermitIDLen {
		return Permit{}, ErrPermitMalformed
	}
	b, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil || len(b) <= permitHeader || b[0] != permitVersion || b[1]&^(flagShared|flagFallback) != 0 {
		return Permit{}, ErrPermitMalformed
	}
	name := string(b[permitHeader:])
	if !utf8.ValidString(name) {
		return Permit{}, ErrPermitMalformed
	}
	p := Permit{
		Breaker:    name,
		Shared:     b[1]&flagShared != 0,
		Fallback:   b[1]&flagFallback != 0,
		Generation: binary.BigEndian.Uint64(b[2:]),
		Issued:     time.UnixMilli(int64(binary.BigEndian.Uint64(b[10:]))),
	}
	copy(p.Reporter[:], b[18:26])
	copy(p.Nonce[:], b[26:34])
	return p, nil
}

func (p Permit) ref() PermitRef {
	return PermitRef{Generation: p.Generation, Issued: p.Issued, Reporter: p.Reporter, Nonce: p.Nonce}
}
