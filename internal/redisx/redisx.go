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
		// still followed by the cluster client.
		o.MaxRedirects = 8
		return redis.NewClusterClient(o), nil
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

// Key names a Redis key of one record. Every key and channel of one record
// shares the hash tag {ns/id}, so one script can touch them all on Redis
// Cluster. The namespace alphabet excludes '/', so (ns, id) is unambiguous.
func Key(ns, id, suffix string) string {
	return "rs:{" + ns + "/" + id + "}:" + suffix
}

// Classify turns a go-redis error into the store vocabulary. It returns nil
// for nil, redis.Nil unchanged, the caller's context error when the caller
// gave up, an error wrapping store.ErrUnavailable when Redis could not be
// reached or answered that it cannot serve now (LOADING, READONLY,
// MASTERDOWN, CLUSTERDOWN, TRYAGAIN, a script touching a key that left
// with a migrating slot, and MOVED or ASK that were not
// followed in time while a slot moves), and any other reply error wrapped.
func Classify(caller context.Context, err error) error {
	if err == nil || errors.Is(err, redis.Nil) {
		return err
	}
	if cerr := caller.Err(); cerr != nil {
		return cerr
	}
	var rerr redis.Error
	if errors.As(err, &rerr) && !isNetError(err) {
		msg := rerr.Error()
		for _, p := range []string{"LOADING", "READONLY", "MASTERDOWN", "CLUSTERDOWN", "TRYAGAIN", "NOREPLICAS", "MOVED ", "ASK "} {
			if strings.HasPrefix(msg, p) {
				return store.Unavailable(err)
			}
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

func isNetError(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) || errors.Is(err, context.DeadlineExceeded) || errors.Is(err, redis.ErrClosed)
}

// Pinger reports whether Redis answers, for the health service.
type Pinger struct {
	Client  redis.UniversalClient
	Timeout time.Duration
}

// Ping returns nil when Redis answers PING within the timeout (on Cluster:
// every master answers), else an error wrapping store.ErrUnavailable.
func (p Pinger) Ping(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, p.Timeout)
	defer cancel()
	var err error
	if cc, ok := p.Client.(*redis.ClusterClient); ok {
		err = cc.ForEachMaster(ctx, func(ctx context.Context, c *redis.Client) error {
			return c.Ping(ctx).Err()
		})
	} else {
		err = p.Client.Ping(ctx).Err()
	}
	if err != nil {
		return store.Unavailable(err)
	}
	return nil
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
