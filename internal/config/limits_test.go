package config

import (
	"os"
	"testing"
)

// TestListenSocketSettings: listen_mode is octal from every source,
// listen_group needs a unix socket and an existing group.
func TestListenSocketSettings(t *testing.T) {
	const sock = "unix:///tmp/rs-test.sock"
	for _, tc := range []struct {
		name    string
		yaml    string
		env     env
		args    []string
		mode    os.FileMode
		group   string
		errKey  string
		errText string
	}{
		{name: "flag", args: []string{"--listen", sock, "--listen-mode", "0660", "--listen-group", "0"}, mode: 0o660, group: "0"},
		{name: "env without leading zero", env: env{"SIDECAR_LISTEN_MODE": "640"}, mode: 0o640},
		{name: "yaml 0o form and group name", yaml: "listen: " + sock + "\nlisten_mode: 0o660\nlisten_group: root\n", mode: 0o660, group: "root"},
		{name: "not octal", args: []string{"--listen-mode", "0999"}, errKey: "listen_mode", errText: "octal"},
		{name: "too large", args: []string{"--listen-mode", "01777"}, errKey: "listen_mode", errText: "0-0777"},
		{name: "group on tcp", args: []string{"--listen-group", "root"}, errKey: "listen_group", errText: "needs a unix listen socket"},
		{name: "unknown group", args: []string{"--listen", sock, "--listen-group", "no-such-group-here"}, errKey: "listen_group", errText: "no group"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := load(t, tc.yaml, tc.env, tc.args...)
			if tc.errKey != "" {
				mustFieldError(t, err, tc.errKey, tc.errText)
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if c.ListenMode != tc.mode || c.ListenGroup != tc.group {
				t.Errorf("mode %o group %q; want %o %q", c.ListenMode, c.ListenGroup, tc.mode, tc.group)
			}
		})
	}
}

// TestLimitSettings: the admission limits read from every source, within
// their bounds.
func TestLimitSettings(t *testing.T) {
	c, err := load(t, "max_waiters: 7\nmax_response_bytes_in_flight: 2097152\n",
		env{"SIDECAR_MAX_SESSIONS": "5"}, "--max-concurrent-calls", "3", "--max-subscriptions", "9")
	if err != nil {
		t.Fatal(err)
	}
	if c.MaxConcurrentCalls != 3 || c.MaxWaiters != 7 || c.MaxSessions != 5 || c.MaxSubscriptions != 9 || c.MaxResponseBytesInFlight != 2<<20 {
		t.Errorf("got %s", c)
	}
	for _, tc := range []struct{ key, flag, value, want string }{
		{"max_concurrent_calls", "--max-concurrent-calls", "0", "between 1 and 1000000"},
		{"max_waiters", "--max-waiters", "-1", "between 1 and 1000000"},
		{"max_response_bytes_in_flight", "--max-response-bytes-in-flight", "1000", "between 1048576 and 4294967296"},
	} {
		_, err := load(t, "", nil, tc.flag, tc.value)
		mustFieldError(t, err, tc.key, tc.want)
	}
}
