package events

import (
	"context"
	"errors"
	"log/slog"
	"maps"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/seed-a88e5317/resilience-sidecar/internal/upstream"
)

// Caller makes upstream calls: *upstream.Caller, with its retries,
// backoff and circuit breaker.
type Caller interface {
	Do(ctx context.Context, r upstream.Request) (*upstream.Response, error)
}

// Pusher runs one push subscription until Close.
type Pusher struct {
	svc    *Service
	cfg    PushConfig
	caller Caller
	log    *slog.Logger
	cancel context.CancelFunc
	done   chan struct{}
}

// Headers of a pushed request, besides Idempotency-Key (the event id).
const (
	HeaderEventID          = "X-Event-Id"
	HeaderEventTopic       = "X-Event-Topic"
	HeaderEventKey         = "X-Event-Key"
	HeaderDeliveryCount    = "X-Delivery-Count"
	HeaderPublishedAt      = "X-Event-Published-At"
	HeaderFirstDeliveredAt = "X-Event-First-Delivered-At"
	// HeaderIdempotencyKey is the key the event was published with (when
	// it had one and it is a valid header value).
	HeaderIdempotencyKey = "X-Event-Idempotency-Key"
)

// pushHeaderBudget bounds the event's own headers forwarded, below the
// upstream caller's limit on a request's headers.
const pushHeaderBudget = 48 << 10

// pushBackoff is the redelivery delay after a failed push: it doubles
// with each delivery, from pushBackoffBase, cut to the visibility timeout.
const pushBackoffBase = 100 * time.Millisecond

// notForwarded are the header names a pushed request does not take from
// the event: hop-by-hop fields and those the sidecar sets.
var notForwarded = map[string]bool{
	"Host": true, "Content-Length": true, "Transfer-Encoding": true, "Connection": true,
	"Keep-Alive": true, "Proxy-Connection": true, "Proxy-Authorization": true, "Proxy-Authenticate": true,
	"Te": true, "Trailer": true, "Upgrade": true, "Expect": true, "Idempotency-Key": true,
	HeaderEventID: true, HeaderEventTopic: true, HeaderEventKey: true, HeaderDeliveryCount: true,
	HeaderPublishedAt: true, HeaderFirstDeliveredAt: true, HeaderIdempotencyKey: true,
}

// StartPush starts pushing cfg's topic to its upstream through caller. A
// store outage does not stop it: it subscribes again with backoff.
func (s *Service) StartPush(cfg PushConfig, caller Caller) *Pusher {
	if cfg.Concurrency <= 0 {
		cfg.Concurrency = 1
	}
	if cfg.Visibility <= 0 {
		cfg.Visibility = s.opts.Visibility
	}
	if cfg.Method == "" {
		cfg.Method = http.MethodPost
	}
	if cfg.Path == "" {
		cfg.Path = "/"
	}
	ctx, cancel := context.WithCancel(context.Background())
	p := &Pusher{svc: s, cfg: cfg, caller: caller, cancel: cancel, done: make(chan struct{}),
		log: s.log.With("push", cfg.Name, "topic", cfg.Topic, "group", cfg.Group)}
	go p.run(ctx)
	return p
}

// Close stops the pusher and waits for its pushes in flight to end
// (they are cancelled; their events are redelivered after the visibility
// timeout).
func (p *Pusher) Close() {
	p.cancel()
	<-p.done
}

func (p *Pusher) run(ctx context.Context) {
	defer close(p.done)
	wait := 100 * time.Millisecond
	for ctx.Err() == nil {
		sub, err := p.svc.Subscribe(ctx, SubscribeOptions{Topic: p.cfg.Topic, Group: p.cfg.Group, Consumer: p.cfg.Name,
			MaxInFlight: p.cfg.Concurrency, Visibility: p.cfg.Visibility, MaxDeliveries: p.cfg.MaxDeliveries, Start: p.cfg.Start})
		if err == nil {
			wait = 100 * time.Millisecond
			err = p.consume(ctx, sub)
			sub.Close()
		}
		if ctx.Err() != nil {
			return
		}
		p.log.Warn("push subscription failed; retrying", "error", err, "retry_in", wait.String())
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-ctx.Done():
		}
		t.Stop()
		wait = min(2*wait, 5*time.Second)
	}
}

// consume pushes the subscription's events until ctx ends or the store
// fails.
func (p *Pusher) consume(ctx context.Context, sub *Subscription) error {
	var wg sync.WaitGroup
	defer wg.Wait()
	sem := make(chan struct{}, p.cfg.Concurrency)
	for {
		d, err := sub.Next(ctx)
		if err != nil {
			return err
		}
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
			sub.Unsent(d) // never pushed: Close hands it back
			return ctx.Err()
		}
		wg.Go(func() {
			defer func() { <-sem }()
			p.push(ctx, d)
		})
	}
}

// push sends one delivery and acks it on a 2xx answer, else nacks it for
// a redelivery after a backoff.
func (p *Pusher) push(ctx context.Context, d Delivery) {
	cctx, cancel := context.WithTimeout(ctx, p.cfg.Visibility)
	resp, err := p.caller.Do(cctx, upstream.Request{
		Upstream: p.cfg.Upstream, Method: p.cfg.Method, Path: p.cfg.Path,
		Headers: pushHeaders(d), Body: d.Payload, Timeout: p.cfg.Visibility, IdempotencyKey: d.ID,
	})
	cancel()
	// Settle even if the pusher is closing now: a 2xx means the push happened.
	sctx, scancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer scancel()
	if err == nil && resp.Status >= 200 && resp.Status < 300 {
		if _, err := p.svc.Ack(sctx, p.cfg.Topic, p.cfg.Group, d.ID); err != nil {
			p.log.Warn("push: ack failed; the event will be pushed again", "event_id", d.ID, "error", err)
		}
		return
	}
	if ctx.Err() != nil {
		return // closing: redelivered after the visibility timeout
	}
	retry := min(pushBackoffBase<<min(d.Count-1, 20), p.cfg.Visibility)
	attrs := []any{"event_id", d.ID, "delivery", d.Count, "retry_in", retry.String()}
	if err != nil {
		attrs = append(attrs, "error", err)
		var re *upstream.RequestError
		if errors.As(err, &re) {
			attrs = append(attrs, "hint", "the request itself is refused (check the push's upstream, path and the event's size)")
		}
	} else {
		attrs = append(attrs, "status", resp.Status)
	}
	p.log.Warn("push failed; the event will be redelivered", attrs...)
	if _, err := p.svc.Nack(sctx, p.cfg.Topic, p.cfg.Group, d.ID, retry); err != nil {
		p.log.Warn("push: nack failed; the event is redelivered after the visibility timeout", "event_id", d.ID, "error", err)
	}
}

// pushHeaders are the event's metadata, then those of its own headers
// that can be HTTP fields, within pushHeaderBudget.
func pushHeaders(d Delivery) []upstream.Header {
	h := []upstream.Header{
		{Name: HeaderEventID, Value: d.ID},
		{Name: HeaderEventTopic, Value: d.Topic},
		{Name: HeaderDeliveryCount, Value: strconv.Itoa(d.Count)},
		{Name: HeaderPublishedAt, Value: d.PublishedAt.UTC().Format(time.RFC3339Nano)},
		{Name: HeaderFirstDeliveredAt, Value: d.FirstDeliveredAt.UTC().Format(time.RFC3339Nano)},
	}
	if d.Key != "" && fieldValue(d.Key) {
		h = append(h, upstream.Header{Name: HeaderEventKey, Value: d.Key})
	}
	if d.IdempotencyKey != "" && fieldValue(d.IdempotencyKey) {
		h = append(h, upstream.Header{Name: HeaderIdempotencyKey, Value: d.IdempotencyKey})
	}
	budget := pushHeaderBudget
	for _, k := range slices.Sorted(maps.Keys(d.Headers)) {
		v := d.Headers[k]
		if !token(k) || notForwarded[http.CanonicalHeaderKey(k)] || !fieldValue(v) || len(k)+len(v) > budget {
			continue
		}
		budget -= len(k) + len(v)
		h = append(h, upstream.Header{Name: k, Value: v})
	}
	return h
}

func token(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0) {
			return false
		}
	}
	return true
}

func fieldValue(s string) bool {
	return !strings.ContainsFunc(s, func(r rune) bool { return r < ' ' && r != '\t' || r == 0x7f })
}
