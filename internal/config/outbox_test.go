package config

import (
	"strings"
	"testing"
	"time"
)

// TestOutboxSection: the `outbox` section, its defaults and each bad field
// named in one line, never quoting the Postgres password.
func TestOutboxSection(t *testing.T) {
	c, err := load(t, "outbox:\n  postgres_url: postgres://app:s3cret@db:5432/app\n", nil)
	if err != nil {
		t.Fatal(err)
	}
	o := c.Outbox
	if !o.Enabled() || o.Table != "outbox" || o.BatchSize != 100 || o.PollInterval != time.Second ||
		o.NotifyChannel != "outbox" || o.OnPublish != "mark" {
		t.Fatalf("defaults: %+v", o)
	}
	if s := c.String(); strings.Contains(s, "s3cret") || !strings.Contains(s, "outbox_postgres_url=postgres://app:xxxxx@db:5432/app") {
		t.Errorf("String() = %s", s)
	}

	c, err = load(t, `outbox:
  postgres_url: "host=db user=app password='a b' dbname=app"
  table: app.events_outbox
  batch_size: 500
  poll_interval: 250ms
  notify_channel: app_outbox
  on_publish: delete
`, nil)
	if err != nil {
		t.Fatal(err)
	}
	o = c.Outbox
	if o.Table != "app.events_outbox" || o.BatchSize != 500 || o.PollInterval != 250*time.Millisecond ||
		o.NotifyChannel != "app_outbox" || o.OnPublish != "delete" {
		t.Fatalf("got %+v", o)
	}
	if s := c.String(); strings.Contains(s, "a b") {
		t.Errorf("String() leaks the DSN password: %s", s)
	}

	if c, err := load(t, "listen: 127.0.0.1:1\n", nil); err != nil || c.Outbox.Enabled() {
		t.Fatalf("no section: %+v, %v", c.Outbox, err)
	}

	const url = "  postgres_url: postgres://app:s3cret@db/app\n"
	for _, tc := range []struct{ yaml, field, want string }{
		{"outbox:\n  table: outbox\n", "outbox.postgres_url", "must be set"},
		{"outbox:\n  postgres_url: mysql://app:s3cret@db/app\n", "outbox.postgres_url", "postgres://"},
		{"outbox:\n  postgres_url: postgres://app:s3cret@db:notaport/app\n", "outbox.postgres_url", "not a valid"},
		{"outbox:\n" + url + "  table: Outbox\n", "outbox.table", "lowercase identifier"},
		{"outbox:\n" + url + "  table: a;drop table x\n", "outbox.table", "lowercase identifier"},
		{"outbox:\n" + url + "  notify_channel: a.b\n", "outbox.notify_channel", "lowercase identifier"},
		{"outbox:\n" + url + "  on_publish: archive\n", "outbox.on_publish", "must be one of mark, delete"},
		{"outbox:\n" + url + "  batch_size: 0\n", "outbox.batch_size", "between 1 and 10000"},
		{"outbox:\n" + url + "  poll_interval: 1ms\n", "outbox.poll_interval", "between 10ms and 1h0m0s"},
		{"outbox:\n" + url + "  bogus: 1\n", "outbox.bogus", "unknown key"},
		{"outbox: 3\n", "outbox", "must be a mapping"},
	} {
		_, err := load(t, tc.yaml, nil)
		mustFieldError(t, err, tc.field, tc.want)
		if err != nil && strings.Contains(err.Error(), "s3cret") {
			t.Errorf("error leaks the password: %v", err)
		}
	}
}
