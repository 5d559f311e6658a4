package resilience

import (
	"context"
	"net/http"
	"net/url"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	v1 "github.com/seed-a88e5317/resilience-sidecar/clients/go/resiliencev1"
)

// Response is an upstream's HTTP response as ExecuteCall returns it.
type Response struct {
	// Status is the HTTP status of the last attempt.
	Status int
	Header http.Header
	Body   []byte
	// Attempts is how many HTTP attempts the sidecar made (1 or more).
	Attempts int
	// BreakerState is the upstream's breaker after the last attempt.
	BreakerState v1.BreakerState
}

// CallOption configures ExecuteCall.
type CallOption func(*v1.ExecuteCallRequest)

// WithCallHeader adds a request header (a name may repeat). Hop-by-hop
// headers, Host, Content-Length and Idempotency-Key are refused.
func WithCallHeader(name, value string) CallOption {
	return func(r *v1.ExecuteCallRequest) {
		r.Headers = append(r.Headers, &v1.HttpHeader{Name: name, Value: value})
	}
}

// WithCallQuery sets the query string.
func WithCallQuery(q url.Values) CallOption {
	return func(r *v1.ExecuteCallRequest) { r.Query = q.Encode() }
}

// WithCallIdempotencyKey sends the Idempotency-Key header (1-512 printable
// ASCII characters) and makes any method retryable; without it only GET,
// HEAD, PUT, DELETE and OPTIONS are retried.
func WithCallIdempotencyKey(key string) CallOption {
	return func(r *v1.ExecuteCallRequest) { r.IdempotencyKey = key }
}

// WithUpstreamTimeout bounds the whole call, every attempt and backoff
// included (1ms-10m; the sidecar's default is 30s, and never past ctx's
// deadline).
func WithUpstreamTimeout(d time.Duration) CallOption {
	return func(r *v1.ExecuteCallRequest) { r.Timeout = durationpb.New(d) }
}

// ExecuteCall has the sidecar make an HTTP request to upstream (a name of
// its config's `upstreams`) through the upstream's circuit breaker, with
// its timeouts and retries, and returns the response: an HTTP response of
// any status is a result, not an error. path is escaped and starts with
// "/"; method is GET when empty; body may be nil.
//
// When the breaker is open the request is not made and the error is an
// *Error matching ErrBreakerOpen whose RetryDelay says when to try again.
// Other errors: ErrUpstreamUnknown (INVALID_ARGUMENT) for a name the
// sidecar does not know or a path that leaves the upstream's base URL,
// ErrUpstreamUnavailable and ErrUpstreamTimeout when no response came.
// Through a connection from Dial, the request carries the caller's trace
// context to the upstream.
func ExecuteCall(ctx context.Context, c v1.BreakerServiceClient, upstream, method, path string, body []byte, opts ...CallOption) (*Response, error) {
	r := &v1.ExecuteCallRequest{Upstream: upstream, Method: method, Path: path, Body: body}
	for _, o := range opts {
		o(r)
	}
	resp, err := c.ExecuteCall(ctx, r)
	if err != nil {
		return nil, FromError(err)
	}
	h := make(http.Header, len(resp.GetHeaders()))
	for _, kv := range resp.GetHeaders() {
		h.Add(kv.GetName(), kv.GetValue())
	}
	return &Response{
		Status: int(resp.GetStatus()), Header: h, Body: resp.GetBody(),
		Attempts: int(resp.GetAttempts()), BreakerState: resp.GetBreakerState(),
	}, nil
}
