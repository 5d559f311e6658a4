// Package upstream makes the HTTP calls the sidecar performs itself
// (ExecuteCall, saga compensations): only to upstreams named in the config,
// under their base URL, through each upstream's circuit breaker, with
// per-attempt timeouts, bounded bodies, pooled connections, and retries
// with exponential backoff and full jitter that honour Retry-After.
//
// Retries happen on connection failures, timeouts, other transport errors,
// 502, 503, 504 and 429, and only when repeating the request is safe: for
// GET, HEAD, PUT, DELETE and OPTIONS, or any method with an idempotency key
// (sent as the Idempotency-Key header). Every attempt asks the breaker
// first; 5xx, timeouts and transport errors count as failures, everything
// else (4xx included) as successes. Redirects are not followed: a 3xx is
// returned as it is, so a call never leaves its upstream.
package upstream

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"go.opentelemetry.io/contrib/instrumentation/net/http/otelhttp"

	"github.com/seed-a88e5317/resilience-sidecar/internal/admission"
	"github.com/seed-a88e5317/resilience-sidecar/internal/backoff"
	"github.com/seed-a88e5317/resilience-sidecar/internal/breaker"
	"github.com/seed-a88e5317/resilience-sidecar/internal/metrics"
)

const (
	// DefaultCallTimeout bounds a whole call, attempts and backoffs, when
	// the request gives no timeout; MaxCallTimeout bounds the one it gives.
	DefaultCallTimeout = 30 * time.Second
	MaxCallTimeout     = 10 * time.Minute

	// maxResponseHeaderBytes bounds an upstream's response headers.
	maxResponseHeaderBytes = 64 << 10
	// reportTimeout bounds the breaker report of an attempt, made even
	// when the caller has gone.
	reportTimeout = 2 * time.Second
	// permitSlack is added to an attempt's timeout for its permit's TTL.
	permitSlack = 5 * time.Second
	// minBodyChunk is the first buffer for a body of unknown length.
	minBodyChunk = 32 << 10
)

// Errors. Every error of Do is one of these (matched with errors.Is), a
// *breaker.OpenError, a breaker error (ErrLimitExceeded), an
// *admission.LimitError (the response did not fit the shared byte
// budget), or the caller's context error.
var (
	// ErrInvalidRequest matches *RequestError: the request was refused
	// before anything was sent.
	ErrInvalidRequest = errors.New("upstream: invalid request")
	// ErrUnknownTarget matches a *RequestError whose Target is set: the
	// request does not name a configured upstream or leaves its base URL.
	ErrUnknownTarget = errors.New("upstream: not a configured upstream")
	// ErrUnavailable: the last attempt failed without a response (the
	// connection could not be made, or broke). See *CallError.
	ErrUnavailable = errors.New("upstream: unavailable")
	// ErrTimeout: the last attempt got no response in time; the request
	// may have been processed. See *CallError.
	ErrTimeout = errors.New("upstream: timed out")
	// ErrResponseTooLarge: the response body exceeds max_body_bytes.
	ErrResponseTooLarge = errors.New("upstream: response body too large")
)

// RequestError is a request refused before any attempt.
type RequestError struct {
	// Field is the request field at fault (upstream, method, path, query,
	// headers, body, idempotency_key).
	Field string
	Msg   string
	// Target: the request does not name a configured upstream target (an
	// unknown upstream, an absolute URL, a path leaving the base URL).
	Target bool
}

func (e *RequestError) Error() string { return "upstream: " + e.Field + ": " + e.Msg }

// Is matches ErrInvalidRequest, and ErrUnknownTarget when Target is set.
func (e *RequestError) Is(target error) bool {
	return target == ErrInvalidRequest || e.Target && target == ErrUnknownTarget
}

// CallError is a call whose last attempt got no response.
type CallError struct {
	Upstream string
	Attempts int
	// Kind is ErrUnavailable or ErrTimeout.
	Kind  error
	Cause error
}

func (e *CallError) Error() string {
	what := "no connection"
	if e.Kind == ErrTimeout {
		what = "no response in time"
	}
	return fmt.Sprintf("upstream %q: %s after %d attempt(s): %s", e.Upstream, what, e.Attempts, describe(e.Cause))
}

// Is matches Kind.
func (e *CallError) Is(target error) bool { return target == e.Kind }

func (e *CallError) Unwrap() error { return e.Cause }

// describe says what went wrong without the URL.
func describe(err error) string {
	var op *net.OpError
	switch {
	case errors.As(err, &op) && op.Err != nil:
		return op.Op + ": " + op.Err.Error()
	case errors.Is(err, context.DeadlineExceeded):
		return "timeout"
	}
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err.Error()
	}
	return err.Error()
}

// Breakers is the breaker service an upstream call goes through.
type Breakers interface {
	Allow(ctx context.Context, name string, ttl time.Duration) (breaker.Decision, error)
	Report(ctx context.Context, permitID string, o breaker.Outcome, dur time.Duration) (breaker.ReportResult, error)
}

// Options configure a Caller.
type Options struct {
	// Breakers; required.
	Breakers Breakers
	Log      *slog.Logger
	Metrics  *metrics.Metrics
	// BodyLimit, when > 0, caps every upstream's MaxBodyBytes (the gRPC
	// message limit leaves no room for more).
	BodyLimit int64
	// Budget, when set, bounds the response bytes all calls hold in
	// memory at once (max_response_bytes_in_flight): a body is reserved
	// before it is read (all of a declared Content-Length at once, else
	// as its buffer grows), and a response that does not fit is refused
	// with an *admission.LimitError. A response Do returns stays reserved
	// until the call of ctx ends (admission.Budget.Keep), or until Do
	// returns when ctx carries no call.
	Budget *admission.Budget
	// Rand returns a uniform number in [0, 1) for the jitter (default
	// math/rand/v2). Sleep waits d or until ctx ends (default a timer).
	// Both are for tests.
	Rand  func() float64
	Sleep func(ctx context.Context, d time.Duration) error
}

type target struct {
	Config
	base   *url.URL
	client *http.Client
}

// Caller makes calls to the configured upstreams. It is safe for
// concurrent use; Close releases idle connections.
type Caller struct {
	targets map[string]*target
	names   []string
	opts    Options
}

// New checks the upstreams and prepares a connection pool for each.
func New(cfgs []Config, opts Options) (*Caller, error) {
	if opts.Breakers == nil {
		return nil, errors.New("upstream: Options.Breakers is required")
	}
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler)
	}
	if opts.Rand == nil {
		opts.Rand = rand.Float64
	}
	if opts.Sleep == nil {
		opts.Sleep = sleep
	}
	c := &Caller{targets: map[string]*target{}, opts: opts}
	for _, cfg := range cfgs {
		t, err := newTarget(cfg, opts.BodyLimit)
		if err != nil {
			return nil, fmt.Errorf("upstream %q: %w", cfg.Name, err)
		}
		if _, dup := c.targets[cfg.Name]; dup {
			return nil, fmt.Errorf("upstream %q: declared twice", cfg.Name)
		}
		c.targets[cfg.Name] = t
		c.names = append(c.names, cfg.Name)
	}
	slices.Sort(c.names)
	return c, nil
}

func newTarget(cfg Config, bodyLimit int64) (*target, error) {
	cfg = cfg.WithDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	base, err := baseURL(cfg.URL)
	if err != nil {
		return nil, err
	}
	if bodyLimit > 0 {
		cfg.MaxBodyBytes = min(cfg.MaxBodyBytes, bodyLimit)
	}
	tr := &http.Transport{
		// Upstreams are reached directly: no proxy from the environment.
		Proxy:                  nil,
		DialContext:            (&net.Dialer{Timeout: cfg.Timeout, KeepAlive: 30 * time.Second}).DialContext,
		ForceAttemptHTTP2:      true,
		MaxConnsPerHost:        cfg.MaxConns,
		MaxIdleConns:           cfg.MaxConns,
		MaxIdleConnsPerHost:    cfg.MaxConns,
		IdleConnTimeout:        90 * time.Second,
		TLSHandshakeTimeout:    10 * time.Second,
		ExpectContinueTimeout:  time.Second,
		MaxResponseHeaderBytes: maxResponseHeaderBytes,
		// Bodies pass through as the upstream sent them.
		DisableCompression: true,
	}
	client := &http.Client{
		// A client span per attempt, and the caller's trace carried on to
		// the upstream with traceparent.
		Transport: otelhttp.NewTransport(tr, otelhttp.WithSpanNameFormatter(func(_ string, r *http.Request) string {
			return "upstream " + cfg.Name + " " + r.Method
		})),
		CheckRedirect: func(*http.Request, []*http.Request) error {
			return http.ErrUseLastResponse
		},
	}
	return &target{Config: cfg, base: base, client: client}, nil
}

// Close releases idle connections. Calls in flight are not affected.
func (c *Caller) Close() {
	for _, t := range c.targets {
		t.client.CloseIdleConnections()
	}
}

// Names returns the configured upstreams, sorted.
func (c *Caller) Names() []string { return slices.Clone(c.names) }

// Lookup returns an upstream's settings, with defaults applied.
func (c *Caller) Lookup(name string) (Config, bool) {
	t, ok := c.targets[name]
	if !ok {
		return Config{}, false
	}
	return t.Config, true
}

// Header is one request or response header field.
type Header struct{ Name, Value string }

// Request is one call.
type Request struct {
	Upstream string
	// Method: GET when empty.
	Method string
	// Path (escaped, starting with "/") and Query (escaped, no "?") are
	// appended to the upstream's base URL.
	Path, Query string
	Headers     []Header
	Body        []byte
	// Timeout bounds the whole call (DefaultCallTimeout; at most
	// MaxCallTimeout), within ctx's deadline.
	Timeout time.Duration
	// IdempotencyKey, when set, is sent as Idempotency-Key and makes any
	// method retryable.
	IdempotencyKey string
}

// Response is the last attempt's response.
type Response struct {
	Status   int
	Headers  []Header
	Body     []byte
	Attempts int
	// BreakerState is the upstream's breaker after the last attempt.
	BreakerState breaker.State
}

// attemptResult is what one attempt produced.
type attemptResult struct {
	resp    *Response
	err     error // transport error, ErrResponseTooLarge or *admission.LimitError; nil with resp
	held    int64 // budget bytes reserved for resp's body
	timeout bool
	retryIn time.Duration // Retry-After, when given
}

// Do performs the call. An HTTP response of any status is returned as a
// *Response, the last one when retries ran out. Errors are listed at the
// package's error variables; when the breaker refuses an attempt after an
// earlier one got a response, that response is returned.
func (c *Caller) Do(ctx context.Context, r Request) (resp *Response, err error) {
	t, ok := c.targets[r.Upstream]
	if !ok {
		msg := "unknown upstream " + strconv.Quote(r.Upstream)
		if len(c.names) > 0 {
			msg += " (configured: " + strings.Join(c.names, ", ") + ")"
		} else {
			msg += " (the config declares no upstreams)"
		}
		return nil, &RequestError{Field: "upstream", Target: true, Msg: msg}
	}
	method := r.Method
	if method == "" {
		method = http.MethodGet
	}
	safe, known := methods[method]
	if !known {
		return nil, &RequestError{Field: "method", Msg: fmt.Sprintf("must be one of GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS, got %q", method)}
	}
	u, err := resolve(t.base, r.Path, r.Query)
	if err != nil {
		return nil, err
	}
	header, err := buildHeader(r.Headers, r.IdempotencyKey)
	if err != nil {
		return nil, err
	}
	if int64(len(r.Body)) > t.MaxBodyBytes {
		return nil, &RequestError{Field: "body", Msg: fmt.Sprintf("must be at most %d bytes (the upstream's max_body_bytes), got %d", t.MaxBodyBytes, len(r.Body))}
	}
	retryable := safe || r.IdempotencyKey != ""
	timeout := r.Timeout
	if timeout <= 0 {
		timeout = DefaultCallTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, min(timeout, MaxCallTimeout))
	defer cancel()

	var last attemptResult
	defer func() {
		// The body returned stays reserved while the call holds it.
		if resp == nil || !c.opts.Budget.Keep(ctx, last.held) {
			c.opts.Budget.Release(last.held)
		}
	}()
	for attempt := 1; ; attempt++ {
		deadline, _ := ctx.Deadline()
		budget := time.Until(deadline)
		if budget <= 0 {
			return finish(t, last, attempt-1, ctx.Err())
		}
		perAttempt := min(t.Timeout, budget)
		dec, err := c.opts.Breakers.Allow(ctx, t.Breaker, min(perAttempt+permitSlack, breaker.MaxPermitTTL))
		if err != nil {
			return nil, err
		}
		if !dec.Allowed {
			if last.resp != nil {
				last.resp.BreakerState = dec.State
				last.resp.Attempts = attempt - 1
				return last.resp, nil
			}
			return nil, &breaker.OpenError{Breaker: t.Breaker, State: dec.State, RetryAfter: dec.RetryAfter}
		}
		start := time.Now()
		prev := last.held
		last = c.attempt(ctx, t, method, u, header, r.Body, perAttempt)
		c.opts.Budget.Release(prev) // the earlier response is dropped
		elapsed := time.Since(start)
		outcome := classify(ctx, last)
		c.observe(t, last, elapsed)
		rctx, rcancel := context.WithTimeout(context.WithoutCancel(ctx), reportTimeout)
		rep, rerr := c.opts.Breakers.Report(rctx, dec.PermitID, outcome, elapsed)
		rcancel()
		state := dec.State
		if rerr == nil {
			state = rep.State
		} else {
			c.opts.Log.Warn("upstream: breaker report failed", "upstream", t.Name, "breaker", t.Breaker, "error", rerr)
		}
		if last.resp != nil {
			last.resp.Attempts, last.resp.BreakerState = attempt, state
		}
		if outcome == breaker.Ignored {
			// The caller went away.
			return nil, ctx.Err()
		}
		if !retryable || attempt >= t.MaxAttempts || !shouldRetry(last) {
			return finish(t, last, attempt, nil)
		}
		wait := c.backoff(t, attempt)
		if last.retryIn > 0 {
			wait = max(wait, last.retryIn)
		}
		if deadline, _ := ctx.Deadline(); time.Until(deadline) <= wait {
			// No time for another attempt after the wait: the last
			// answer is the answer.
			return finish(t, last, attempt, nil)
		}
		c.opts.Log.Debug("upstream: retrying", "upstream", t.Name, "attempt", attempt, "wait", wait.String())
		if err := c.opts.Sleep(ctx, wait); err != nil {
			if errors.Is(err, context.DeadlineExceeded) && ctx.Err() != nil {
				return finish(t, last, attempt, nil)
			}
			return nil, err
		}
	}
}

// finish turns the last attempt into Do's result.
func finish(t *target, last attemptResult, attempts int, ctxErr error) (*Response, error) {
	switch {
	case last.resp != nil && last.err == nil:
		return last.resp, nil
	case last.err != nil && (errors.Is(last.err, ErrResponseTooLarge) || errors.Is(last.err, admission.ErrLimitExceeded)):
		return nil, last.err
	case last.err != nil:
		kind := ErrUnavailable
		if last.timeout {
			kind = ErrTimeout
		}
		return nil, &CallError{Upstream: t.Name, Attempts: attempts, Kind: kind, Cause: last.err}
	case ctxErr != nil:
		return nil, ctxErr
	}
	return nil, context.DeadlineExceeded
}

// attempt makes one HTTP request and reads the response, bounded by
// perAttempt.
func (c *Caller) attempt(ctx context.Context, t *target, method string, u *url.URL, header http.Header, body []byte, perAttempt time.Duration) attemptResult {
	actx, cancel := context.WithTimeout(ctx, perAttempt)
	defer cancel()
	var rd io.Reader
	if len(body) > 0 {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(actx, method, u.String(), rd)
	if err != nil {
		return attemptResult{err: err}
	}
	req.Header = header.Clone()
	resp, err := t.client.Do(req)
	if err != nil {
		return attemptResult{err: err, timeout: isTimeout(actx, err)}
	}
	defer resp.Body.Close()
	out := attemptResult{resp: &Response{Status: resp.StatusCode, Headers: toHeaders(resp.Header)}}
	size := resp.ContentLength
	if method == http.MethodHead {
		size = 0 // the length of the body a GET would have had; none is sent
	}
	data, held, err := c.readBody(resp.Body, size, t.MaxBodyBytes)
	switch {
	case errors.Is(err, admission.ErrLimitExceeded):
		c.opts.Budget.Release(held)
		out.err = err
		return out
	case errors.Is(err, ErrResponseTooLarge):
		c.opts.Budget.Release(held)
		out.err = fmt.Errorf("%w: upstream %q sent more than max_body_bytes (%d)", ErrResponseTooLarge, t.Name, t.MaxBodyBytes)
		return out
	case err != nil:
		c.opts.Budget.Release(held)
		return attemptResult{err: err, timeout: isTimeout(actx, err)}
	}
	out.resp.Body, out.held = data, held
	if resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode == http.StatusServiceUnavailable {
		out.retryIn = retryAfter(resp.Header.Get("Retry-After"), time.Now())
	}
	return out
}

// readBody reads a body of at most limit bytes (ErrResponseTooLarge when
// it is longer), reserving its memory in the budget before it is
// allocated: a declared length at once (one exact buffer; longer than
// limit is not read at all), an unknown one as its buffer doubles (the
// buffer's capacity is reserved; the one it replaces is garbage once
// copied). held is what stays reserved, also on an error (the caller
// releases it).
func (c *Caller) readBody(body io.Reader, contentLength, limit int64) (data []byte, held int64, err error) {
	b := c.opts.Budget
	if contentLength > limit {
		return nil, 0, ErrResponseTooLarge
	}
	if contentLength >= 0 {
		if err := b.Reserve(contentLength); err != nil {
			return nil, 0, err
		}
		data = make([]byte, contentLength)
		_, err := io.ReadFull(body, data)
		return data, contentLength, err
	}
	for {
		if len(data) == cap(data) {
			if int64(len(data)) > limit {
				return nil, held, ErrResponseTooLarge
			}
			next := min(max(2*int64(cap(data)), minBodyChunk), limit+1)
			if err := b.Reserve(next - held); err != nil {
				return nil, held, err
			}
			data = append(make([]byte, 0, next), data...)
			held = next
		}
		n, err := body.Read(data[len(data):cap(data)])
		data = data[:len(data)+n]
		if errors.Is(err, io.EOF) {
			return data, held, nil
		}
		if err != nil {
			return nil, held, err
		}
	}
}

func isTimeout(actx context.Context, err error) bool {
	var ne net.Error
	return errors.Is(err, context.DeadlineExceeded) || actx.Err() == context.DeadlineExceeded ||
		errors.As(err, &ne) && ne.Timeout()
}

// classify is the breaker outcome of an attempt: 5xx, timeouts and
// transport errors are failures; a call the caller cancelled is ignored.
func classify(ctx context.Context, a attemptResult) breaker.Outcome {
	switch {
	case errors.Is(ctx.Err(), context.Canceled):
		return breaker.Ignored
	case a.resp != nil:
		if a.resp.Status >= 500 {
			return breaker.Failure
		}
		return breaker.Success
	}
	return breaker.Failure
}

// shouldRetry: no response, or 429, 502, 503, 504.
func shouldRetry(a attemptResult) bool {
	if a.resp == nil {
		return a.err != nil
	}
	if a.err != nil {
		return false // a response too large is final
	}
	switch a.resp.Status {
	case http.StatusTooManyRequests, http.StatusBadGateway, http.StatusServiceUnavailable, http.StatusGatewayTimeout:
		return true
	}
	return false
}

// backoff is the full-jitter delay after the attempt-th attempt.
func (c *Caller) backoff(t *target, attempt int) time.Duration {
	return time.Duration(c.opts.Rand() * float64(backoff.Ceiling(t.InitialBackoff, t.MaxBackoff, attempt)))
}

// retryAfter reads a Retry-After value: delay-seconds or an HTTP date.
// Zero when absent or unreadable.
func retryAfter(v string, now time.Time) time.Duration {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0
	}
	if n, err := strconv.ParseInt(v, 10, 64); err == nil {
		if n <= 0 {
			return 0
		}
		return time.Duration(min(n, int64(MaxCallTimeout/time.Second))) * time.Second
	}
	if at, err := http.ParseTime(v); err == nil && at.After(now) {
		return min(at.Sub(now), MaxCallTimeout)
	}
	return 0
}

func toHeaders(h http.Header) []Header {
	keys := make([]string, 0, len(h))
	for k := range h {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	var out []Header
	for _, k := range keys {
		for _, v := range h[k] {
			out = append(out, Header{Name: k, Value: v})
		}
	}
	return out
}

func (c *Caller) observe(t *target, a attemptResult, d time.Duration) {
	m := c.opts.Metrics
	if m == nil {
		return
	}
	code := "error"
	switch {
	case a.resp != nil:
		code = strconv.Itoa(a.resp.Status)
	case a.timeout:
		code = "timeout"
	}
	m.UpstreamRequests.WithLabelValues(t.Name, code).Inc()
	m.UpstreamLatency.WithLabelValues(t.Name).Observe(d.Seconds())
}

func sleep(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-timer.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
