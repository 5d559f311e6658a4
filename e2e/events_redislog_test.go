package e2e

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	v1 "github.com/seed-a88e5317/resilience-sidecar/clients/go/resiliencev1"
	"github.com/seed-a88e5317/resilience-sidecar/internal/testharness"
	"github.com/seed-a88e5317/resilience-sidecar/internal/testkit"
)

// TestSidecarLogStaysJSONWhileRedisIsDown (issue 25, 4): while Redis is
// down, go-redis's own messages (its connection pool failing to dial)
// reach the log as JSON records of the sidecar's logger, marked
// component go-redis, not as plain "redis: ..." lines: every line the
// sidecar writes is one JSON object.
func TestSidecarLogStaysJSONWhileRedisIsDown(t *testing.T) {
	rd := testharness.StartRedis(t)
	bin := testharness.BuildSidecar(t)
	sc := testharness.StartSidecar(t, bin, "--redis-url", rd.URL(), "--log-level", "info", "--store-timeout", "300ms")
	ctx := ctxT(t, time.Minute)
	ev := v1.NewEventServiceClient(sc.Conn(t))
	if _, err := ev.Publish(ctx, &v1.PublishRequest{Topic: "t"}); err != nil {
		t.Fatal(err)
	}
	rd.Kill()
	testkit.Eventually(t, left(ctx), "go-redis's dial failure logged", func() bool {
		cctx, cancel := context.WithTimeout(ctx, time.Second)
		_, _ = ev.Publish(cctx, &v1.PublishRequest{Topic: "t"}) // fails: Redis is down
		cancel()
		return strings.Contains(sc.Log(), "failed to dial")
	})
	goRedis := 0
	for _, line := range strings.Split(strings.TrimSpace(sc.Log()), "\n") {
		var rec map[string]any
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			t.Errorf("log line is not JSON: %q", line)
			continue
		}
		if rec["component"] == "go-redis" {
			goRedis++
			if msg, _ := rec["msg"].(string); strings.HasPrefix(msg, "redis:") || rec["level"] != "WARN" {
				t.Errorf("go-redis record %v: want level WARN and no \"redis:\" prefix", rec)
			}
		}
	}
	if goRedis == 0 {
		t.Error("no go-redis record in the log")
	}
	t.Logf("%d go-redis records while Redis was down", goRedis)
}
