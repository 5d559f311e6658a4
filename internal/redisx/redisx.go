// Package redisx is the Redis plumbing shared by every capability store:
// client setup for standalone, Sentinel and Cluster, key naming with hash
// tags, and the translation of client failures into store.ErrUnavailable.
package redisx

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/seed-a88e5317/resilience-sidecar/internal/store"
)

// Mode selects how the Redis URL is read.
type Mode string

// Supported modes.
const (
	Standalone Mode = "standalone"
	Cluster    Mode = "cluster"
	Sentinel   Mode = "sentinel"
)

// NewClient connects to Redis in the given mode. The URL is read by go-redis's
// ParseURL, ParseClusterURL or ParseFailoverURL. timeout bounds dialing,
// reads and writes so that a dead Redis fails fast; commands are never
// retried by the client, so a script is never run twice for one call.
func NewClient(url string, mode Mode, timeout time.Duration) (redis.UniversalClient, error) {
	tune := func(dial, read, write *time.Duration, retries *int, ctxTimeout *bool) {
		*dial, *read, *write = timeout, timeout, timeout
		*retries = -1
		*ctxTimeout = true
	}
	switch mode {
	case Standalone, "":
		o, err := redis.ParseURL(url)
		if err != nil {
			return nil, fmt.Errorf("redisx: redis_url: %w", err)
		}
		tune(&o.DialTimeout, &o.ReadTimeout, &o.WriteTimeout, &o.MaxRetries, &o.ContextTimeoutEnabled)
		o.DialerRetries = 1
		return redis.NewClient(o), nil
	case Cluster:
		o, err := redis.ParseClusterURL(url)
		if err != nil {
			return nil, fmt.Errorf("redisx: redis_url: %w", err)
		}
		tune(&o.DialTimeout, &o.ReadTimeout, &o.WriteTimeout, &o.MaxRetries, &o.ContextTimeoutEnabled)
		o.DialerRetries = 1
		// Redirections (MOVED/ASK) are not failures of the command and are
		// still followed by the cluster client; its other retries are off
		// for scripts (noRetryHook).
		o.MaxRedirects = 8
		c := redis.NewClusterClient(o)
		c.AddHook(noRetryHook{})
		return c, nil
	case Sentinel:
		o, err := redis.ParseFailoverURL(url)
		if err != nil {
			return nil, fmt.Errorf("redisx: redis_url: %w", err)
		}
		tune(&o.DialTimeout, &o.ReadTimeout, &o.WriteTimeout, &o.MaxRetries, &o.ContextTimeoutEnabled)
		o.DialerRetries = 1
		return redis.NewFailoverClient(o), nil
	default:
		return nil, fmt.Errorf("redisx: unknown mode %q", mode)
	}
}

// Classify turns a go-redis error into the store vocabulary. It returns nil
// for nil, redis.Nil unchanged, the caller's context error when the caller
// gave up, an error wrapping store.ErrUnavailable when Redis could not be
// reached or answered that it cannot serve now, and any other reply error
// wrapped. The replies that mean "not now" (every one a retry may get past)
// are classified by their error code, the reply's first word; some as a
// precise kind of store.ErrUnavailable:
//
//   - OOM (maxmemory reached, nothing may be evicted): store.ErrFull.
//   - READONLY (a read-only replica) and MISCONF (writes refused since an
//     RDB save failed): store.ErrReadOnly. Both refuse writes and serve
//     reads; the message tells them apart in the logs.
//   - NOREPLICAS (min-replicas-to-write not met), and a WAIT that fell
//     short (ErrNotReplicated, from RunWait): store.ErrNotReplicated.
//   - BUSY (a script or function runs too long), LOADING, MASTERDOWN,
//     CLUSTERDOWN, TRYAGAIN, a script touching a key that left with a
//     migrating slot, and MOVED or ASK that were not followed in time
//     while a slot moves: store.ErrUnavailable.
//   - NOPERM (the ACL user may not run a command or touch a key): also
//     store.ErrUnavailable, since the sidecar cannot serve until an operator
//     grants it; the message says so and points to docs/security.md.
func Classify(caller context.Context, err error) error {
	if err == nil || errors.Is(err, redis.Nil) {
		return err
	}
	if cerr := caller.Err(); cerr != nil {
		return cerr
	}
	// A read that timed out at the caller's deadline may return before the
	// context's own timer has marked it done.
	if d, ok := caller.Deadline(); ok && !time.Now().Before(d) {
		return context.DeadlineExceeded
	}
	if errors.Is(err, ErrNotReplicated) {
		return store.UnavailableAs(store.ErrNotReplicated, err)
	}
	var rerr redis.Error
	if errors.As(err, &rerr) && !isNetError(err) {
		msg := rerr.Error()
		code, _, _ := strings.Cut(msg, " ")
		if code == "NOPERM" {
			return store.Unavailable(fmt.Errorf("redisx: %w (the Redis user lacks a permission the sidecar needs; docs/security.md gives the ACL)", err))
		}
		if kind, ok := replyKinds[code]; ok {
			return store.UnavailableAs(kind, err)
		}
		// A script that empties a key and touches it again while its slot
		// migrates is refused mid-way; like TRYAGAIN it passes with the move.
		if strings.Contains(msg, "non local key") {
			return store.Unavailable(err)
		}
		return fmt.Errorf("redisx: %w", err)
	}
	return store.Unavailable(err)
}

// replyKinds maps the error codes of Redis replies that mean "cannot serve
// now" to the kind of store.ErrUnavailable they are. The code is the
// reply's first word, matched whole: BUSYKEY and BUSYGROUP are not BUSY.
var replyKinds = map[string]error{
	"OOM":         store.ErrFull,
	"READONLY":    store.ErrReadOnly,
	"MISCONF":     store.ErrReadOnly,
	"NOREPLICAS":  store.ErrNotReplicated,
	"BUSY":        store.ErrUnavailable,
	"LOADING":     store.ErrUnavailable,
	"MASTERDOWN":  store.ErrUnavailable,
	"CLUSTERDOWN": store.ErrUnavailable,
	"TRYAGAIN":    store.ErrUnavailable,
	"MOVED":       store.ErrUnavailable,
	"ASK":         store.ErrUnavailable,
}

func isNetError(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) || errors.Is(err, context.DeadlineExceeded) || errors.Is(err, redis.ErrClosed)
}

// Pinger reports whether Redis answers and accepts writes, for the health
// service.
type Pinger struct {
	Client  redis.UniversalClient
	Timeout time.Duration
}

// writeProbe is an empty script that declares it may write (a shebang
// without no-writes), so Redis admits it only as it would admit a write:
// it refuses it with OOM when maxmemory is reached and nothing may be
// evicted, READONLY on a read-only replica, MISCONF after a failed RDB
// save, NOREPLICAS when min-replicas-to-write is not met. It writes
// nothing and is not replicated.
const writeProbe = "#!lua\nreturn 1"

// Ping returns nil when Redis runs the write probe within the timeout (on
// Cluster: every master does), else an error wrapping store.ErrUnavailable,
// classified like a command's (store.ErrFull while Redis is out of memory,
// store.ErrReadOnly, ...). A full store is thus unhealthy until memory is
// freed (keys expire or are deleted, or maxmemory is raised).
func (p Pinger) Ping(ctx context.Context) error {
	pctx, cancel := context.WithTimeout(ctx, p.Timeout)
	defer cancel()
	var err error
	if cc, ok := p.Client.(*redis.ClusterClient); ok {
		err = cc.ForEachMaster(pctx, func(ctx context.Context, c *redis.Client) error {
			return c.Eval(ctx, writeProbe, nil).Err()
		})
	} else {
		err = p.Client.Eval(pctx, writeProbe, nil).Err()
	}
	if err == nil {
		return nil
	}
	if cerr := Classify(ctx, err); errors.Is(cerr, store.ErrUnavailable) {
		return cerr
	}
	return store.Unavailable(err)
}

// LoadScripts loads scripts into Redis (every master on Cluster) so that the
// first calls run by SHA. Script.Run still falls back to EVAL on NOSCRIPT,
// which is what keeps working after a Redis restart flushes the cache.
func LoadScripts(ctx context.Context, c redis.UniversalClient, scripts ...*redis.Script) error {
	for _, s := range scripts {
		if err := s.Load(ctx, c).Err(); err != nil {
			return Classify(ctx, err)
		}
	}
	return nil
}

// scriptNames maps a script's SHA to the name given to NewScript, for
// metrics and traces. Written only at package initialisation.
var scriptNames sync.Map

// NewScript is redis.NewScript with a name ("lock.acquire") under which the
// script's calls are measured.
func NewScript(name, src string) *redis.Script {
	s := redis.NewScript(src)
	scriptNames.Store(s.Hash(), name)
	return s
}

// OpName names a command for metrics: the script name for EVALSHA/EVAL of
// a named script, else the lower-case command name.
func OpName(cmd redis.Cmder) string {
	name := cmd.Name()
	if (name == "evalsha" || name == "eval") && len(cmd.Args()) > 1 {
		if sha, ok := cmd.Args()[1].(string); ok {
			if n, ok := scriptNames.Load(sha); ok {
				return n.(string)
			}
		}
	}
	return name
}

// latencyHook reports every command's latency to observe.
type latencyHook struct {
	observe func(op string, d time.Duration)
}

// Instrument makes c report each command's latency (and each pipeline's,
// as op "pipeline") to observe.
func Instrument(c redis.UniversalClient, observe func(op string, d time.Duration)) {
	c.AddHook(latencyHook{observe: observe})
}

func (latencyHook) DialHook(next redis.DialHook) redis.DialHook { return next }

func (h latencyHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		start := time.Now()
		err := next(ctx, cmd)
		h.observe(OpName(cmd), time.Since(start))
		return err
	}
}

func (h latencyHook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		start := time.Now()
		err := next(ctx, cmds)
		h.observe("pipeline", time.Since(start))
		return err
	}
}
