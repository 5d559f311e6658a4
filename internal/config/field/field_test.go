package field_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/seed-a88e5317/resilience-sidecar/internal/config/field"
)

func TestPaths(t *testing.T) {
	for _, tc := range []struct{ got, want string }{
		{field.Join("upstreams", "pay"), "upstreams.pay"},
		{field.Join("events", "push[0]"), "events.push[0]"},
		{field.Join("push", "[0]"), "push[0]"},
		{field.Join("", "scope"), "scope"},
		{field.Join("breakers", ""), "breakers"},
		{field.Key("payments.v2_x-y"), "payments.v2_x-y"},
		{field.Key("a/b"), `"a/b"`},
		{field.Key("a\nb"), `"a\nb"`},
		{field.Key(""), `""`},
		{field.Quote(strings.Repeat("é", 50)), `"` + strings.Repeat("é", 40) + `"...`},
		{field.DropQuoted(`parse "http://u:pw@h:x": invalid port ":x" after host`), "parse : invalid port after host"},
	} {
		if tc.got != tc.want {
			t.Errorf("got %q, want %q", tc.got, tc.want)
		}
	}
}

func TestWithin(t *testing.T) {
	var fe *field.Error
	err := field.Within("upstreams.pay", field.Within("retry", field.Errorf("max_attempts", "must be between 1 and 10, got 0")))
	if !errors.As(err, &fe) || fe.Path != "upstreams.pay.retry.max_attempts" || fe.Msg != "must be between 1 and 10, got 0" {
		t.Errorf("Within = %#v", err)
	}
	if got := err.Error(); got != "upstreams.pay.retry.max_attempts must be between 1 and 10, got 0" {
		t.Errorf("Error() = %q", got)
	}
	if err := field.Within("outbox", errors.New("boom")); !errors.As(err, &fe) || fe.Path != "outbox" || fe.Msg != "boom" {
		t.Errorf("Within(plain error) = %#v", err)
	}
	if field.Within("x", nil) != nil {
		t.Error("Within(nil) != nil")
	}
}

func TestCheckName(t *testing.T) {
	for name, ok := range map[string]bool{
		"payments": true, "Zahlungen ü": true, strings.Repeat("n", 512): true,
		"": false, strings.Repeat("n", 513): false, "a\tb": false, "\xff": false,
	} {
		if err := field.CheckName(name); (err == nil) != ok {
			t.Errorf("CheckName(%q) = %v", name, err)
		}
	}
}
