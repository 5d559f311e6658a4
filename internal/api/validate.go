package api

import (
	"fmt"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
)

// MaxKeyBytes bounds keys, names and labels (DESIGN.md section 3).
const MaxKeyBytes = 512

// violations collects every problem of one request, so the client learns
// them all at once. The zero value is ready to use.
type violations struct {
	list []*errdetails.BadRequest_FieldViolation
}

func (v *violations) add(field, format string, args ...any) {
	v.list = append(v.list, &errdetails.BadRequest_FieldViolation{Field: field, Description: fmt.Sprintf(format, args...)})
}

// err returns nil when nothing was added.
func (v *violations) err() error {
	if len(v.list) == 0 {
		return nil
	}
	return &violationsError{list: v.list}
}

type violationsError struct {
	list []*errdetails.BadRequest_FieldViolation
}

func (e *violationsError) Error() string {
	parts := make([]string, len(e.list))
	for i, f := range e.list {
		parts[i] = f.GetField() + ": " + f.GetDescription()
	}
	return "invalid argument: " + strings.Join(parts, "; ")
}

func (e *violationsError) status() error {
	st := status.New(codes.InvalidArgument, e.Error())
	if d, err := st.WithDetails(&errdetails.BadRequest{FieldViolations: e.list}); err == nil {
		st = d
	}
	return st.Err()
}

// key checks a required key or name: 1-512 bytes of UTF-8 without control
// characters.
func (v *violations) key(field, s string) {
	if s == "" {
		v.add(field, "must not be empty")
		return
	}
	v.label(field, s)
}

// label checks an optional free-text label with the key's character rules.
func (v *violations) label(field, s string) {
	switch {
	case len(s) > MaxKeyBytes:
		v.add(field, "must be at most %d bytes, got %d", MaxKeyBytes, len(s))
	case !utf8.ValidString(s):
		v.add(field, "must be valid UTF-8")
	case strings.ContainsFunc(s, unicode.IsControl):
		v.add(field, "must not contain control characters")
	}
}

// duration reads an optional Duration: def when unset, else it must be
// valid and within [lo, hi]. zeroOK lets an explicit zero mean "off".
func (v *violations) duration(field string, d *durationpb.Duration, def, lo, hi time.Duration) time.Duration {
	if d == nil {
		return def
	}
	if err := d.CheckValid(); err != nil {
		v.add(field, "invalid duration: %v", err)
		return def
	}
	got := d.AsDuration()
	if got < lo || got > hi {
		v.add(field, "must be between %v and %v, got %v", lo, hi, got)
		return def
	}
	return got
}

// leaseID checks a lease id's shape: 32 lowercase hex digits.
func (v *violations) leaseID(field, s string) {
	if len(s) != 32 || strings.IndexFunc(s, func(r rune) bool { return !('0' <= r && r <= '9' || 'a' <= r && r <= 'f') }) >= 0 {
		v.add(field, "must be the 32 hex digits returned by the acquire")
	}
}
