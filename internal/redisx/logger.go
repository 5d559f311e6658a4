package redisx

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// loggerRepeat is how often one kind of go-redis message (its format) is
// logged at most; the repeats in between are counted into the next one.
const loggerRepeat = 10 * time.Second

// SetLogger routes go-redis's own logging (connection pool and
// reconnection messages, which it otherwise prints as plain "redis: ..."
// lines on stderr) through log, as warnings with component "go-redis".
// While Redis is down go-redis repeats the same message for every dial;
// each kind of message is logged at most once per 10 seconds, with the
// number of repeats left out in "repeated". go-redis has one logger per
// process: the last call wins.
func SetLogger(log *slog.Logger) {
	redis.SetLogger(&slogLogger{log: log, last: map[string]*logSeen{}, now: time.Now})
}

// slogLogger is go-redis's internal.Logging on slog.
type slogLogger struct {
	log *slog.Logger
	now func() time.Time

	mu   sync.Mutex
	last map[string]*logSeen // by format
}

type logSeen struct {
	at      time.Time
	skipped int
}

// maxLogKinds bounds the formats remembered; go-redis has a few dozen.
const maxLogKinds = 256

// Printf implements go-redis's internal.Logging.
func (l *slogLogger) Printf(ctx context.Context, format string, v ...any) {
	now := l.now()
	l.mu.Lock()
	seen := l.last[format]
	if seen != nil && now.Sub(seen.at) < loggerRepeat {
		seen.skipped++
		l.mu.Unlock()
		return
	}
	skipped := 0
	if seen != nil {
		skipped = seen.skipped
	} else if len(l.last) >= maxLogKinds {
		clear(l.last)
	}
	l.last[format] = &logSeen{at: now}
	l.mu.Unlock()
	msg := strings.TrimPrefix(fmt.Sprintf(format, v...), "redis: ")
	attrs := []any{"component", "go-redis"}
	if skipped > 0 {
		attrs = append(attrs, "repeated", skipped)
	}
	if ctx == nil {
		ctx = context.Background()
	}
	l.log.WarnContext(ctx, msg, attrs...)
}
