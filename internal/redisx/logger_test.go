package redisx_test

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/seed-a88e5317/resilience-sidecar/internal/redisx"
	"github.com/seed-a88e5317/resilience-sidecar/internal/testharness"
)

// syncBuffer is a bytes.Buffer safe for the pool's goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// go-redis's own messages (here: a dial that fails, as while Redis is
// down) arrive as JSON records of the slog logger, marked component
// go-redis, instead of plain "redis: ..." lines; the same message
// repeated at once is logged once.
func TestSetLoggerRoutesGoRedisThroughSlog(t *testing.T) {
	var buf syncBuffer
	redisx.SetLogger(slog.New(slog.NewJSONHandler(&buf, nil)))
	t.Cleanup(func() { redisx.SetLogger(slog.New(slog.DiscardHandler)) })

	// Nothing listens there.
	c := redis.NewClient(&redis.Options{Addr: testharness.FreeAddr(t), DialerRetries: 1, MaxRetries: -1})
	t.Cleanup(func() { _ = c.Close() })
	for range 3 {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		if err := c.Ping(ctx).Err(); err == nil {
			t.Fatal("Ping of a closed port succeeded")
		}
		cancel()
	}
	var dials int
	for _, line := range strings.Split(strings.TrimSpace(buf.String()), "\n") {
		var rec map[string]any
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			t.Fatalf("not a JSON record: %q", line)
		}
		msg, _ := rec["msg"].(string)
		if rec["component"] != "go-redis" || rec["level"] != "WARN" || strings.HasPrefix(msg, "redis:") {
			t.Errorf("record %v: want level WARN, component go-redis, no \"redis:\" prefix", rec)
		}
		if strings.Contains(msg, "failed to dial") {
			dials++
		}
	}
	if dials != 1 {
		t.Fatalf("%d dial failure records for 3 failed dials in a row, want 1; log:\n%s", dials, buf.String())
	}
}
