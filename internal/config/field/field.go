// Package field names the setting a configuration problem is about.
//
// The capability packages report the problems of their configuration types
// as *Error, with the path of the setting relative to the value checked
// ("retry.max_attempts", "payments.failure_rate", "push[0].name").
// internal/config prefixes that path with where the value sits in the
// config file and adds the file's line, so that every problem reads
// "config: upstreams.payments.retry.max_attempts: must be between 1 and 10,
// got 0 (from sidecar.yaml line 7)". The package imports nothing of the
// sidecar, so any package may use it.
package field

import (
	"cmp"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"
)

// Error is a problem of one setting.
type Error struct {
	// Path names the setting by its YAML keys joined with "." (list items
	// as "[i]"); "" is the value checked itself.
	Path string
	// Msg says what is wrong, e.g. "must be between 1 and 10, got 0".
	Msg string
}

// Error returns "<path> <msg>", or the message alone when Path is "".
func (e *Error) Error() string {
	if e.Path == "" {
		return e.Msg
	}
	return e.Path + " " + e.Msg
}

// Errorf returns an *Error for the setting at path.
func Errorf(path, format string, args ...any) error {
	return &Error{Path: path, Msg: fmt.Sprintf(format, args...)}
}

// Range is the error "key: must be between lo and hi, got v" when v is
// outside [lo, hi], else nil.
func Range[T cmp.Ordered](key string, v, lo, hi T) error {
	if v < lo || v > hi {
		return Errorf(key, "must be between %v and %v, got %v", lo, hi, v)
	}
	return nil
}

// Within returns err as the problem of a setting inside the one at prefix:
// the path of an *Error is prefixed; any other error becomes an *Error at
// prefix. Nil stays nil.
func Within(prefix string, err error) error {
	if err == nil {
		return nil
	}
	var fe *Error
	if errors.As(err, &fe) {
		return &Error{Path: Join(prefix, fe.Path), Msg: fe.Msg}
	}
	return &Error{Path: prefix, Msg: err.Error()}
}

// Join joins two paths: "a" and "b" make "a.b", "a" and "[0]" make "a[0]",
// and an empty side is left out.
func Join(a, b string) string {
	switch {
	case a == "":
		return b
	case b == "":
		return a
	case b[0] == '[':
		return a + b
	}
	return a + "." + b
}

// Key spells a name (a mapping key chosen by the user) as one element of a
// path: as it is when made of A-Z a-z 0-9 _ - and ., quoted otherwise.
func Key(name string) string {
	if name == "" {
		return `""`
	}
	for i := 0; i < len(name); i++ {
		b := name[i]
		if !(b >= 'a' && b <= 'z' || b >= 'A' && b <= 'Z' || b >= '0' && b <= '9' || b == '_' || b == '-' || b == '.') {
			return Quote(name)
		}
	}
	return name
}

// Quote quotes a value for a message, cut to 80 bytes (at a rune
// boundary) and followed by "..." when longer.
func Quote(s string) string {
	const maxLen = 80
	if len(s) <= maxLen {
		return strconv.Quote(s)
	}
	cut := maxLen
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return strconv.Quote(s[:cut]) + "..."
}

// MaxNameBytes bounds the names of declared things (breakers, upstreams),
// like every name of the API.
const MaxNameBytes = 512

// CheckName reports, as the problem of the value itself (Path ""), a name
// that is not 1-512 bytes of UTF-8 without control characters.
func CheckName(name string) error {
	if name == "" || len(name) > MaxNameBytes || !utf8.ValidString(name) || strings.ContainsFunc(name, unicode.IsControl) {
		return Errorf("", "name %s must be 1-%d bytes of UTF-8 without control characters", Quote(name), MaxNameBytes)
	}
	return nil
}

// DropQuoted removes every "..." part of a message and tidies the spaces
// left. net/url and some drivers quote pieces of the URL they refuse,
// which may be pieces of its password.
func DropQuoted(msg string) string {
	var b strings.Builder
	in := false
	for _, r := range msg {
		if r == '"' {
			in = !in
			continue
		}
		if !in {
			b.WriteRune(r)
		}
	}
	return strings.Join(strings.Fields(b.String()), " ")
}
