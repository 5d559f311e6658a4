package idempotency

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"time"
)

// Defaults of the options.
const (
	// DefaultHTTPScope and DefaultGRPCScope are the scopes of the store keys
	// of Middleware and UnaryServerInterceptor: "<scope>:<Idempotency-Key>".
	DefaultHTTPScope = "http"
	DefaultGRPCScope = "grpc"
	// DefaultMaxBodyBytes bounds the request body Middleware reads to
	// fingerprint it (1 MiB).
	DefaultMaxBodyBytes = 1 << 20
	// DefaultLeaseTTL is how long a request may run before a duplicate may
	// take it over (the sidecar's lease); DefaultRetention how long a
	// stored response is replayed.
	DefaultLeaseTTL  = 30 * time.Second
	DefaultRetention = 24 * time.Hour
	// cleanupTimeout bounds the Complete and Release calls made after the
	// handler returned; they run even when the request's context ended.
	cleanupTimeout = 10 * time.Second
)

// HeaderName is the request header Middleware reads, and MetadataKey the
// gRPC metadata entry UnaryServerInterceptor reads (case-insensitive both).
const (
	HeaderName  = "Idempotency-Key"
	MetadataKey = "idempotency-key"
	// ReplayedHeader is set to "true" on a replayed HTTP response, and
	// ReplayedMetadataKey on a replayed gRPC response's header metadata.
	ReplayedHeader      = "Idempotent-Replayed"
	ReplayedMetadataKey = "idempotent-replayed"
)

// Option configures Middleware and UnaryServerInterceptor.
type Option func(*config)

type config struct {
	scope        string
	scopeFunc    func(ctx context.Context) string
	required     bool
	methods      map[string]bool // HTTP methods covered
	grpcMethods  map[string]bool // gRPC full methods covered; nil: all
	maxBodyBytes int64
	leaseTTL     time.Duration
	retention    time.Duration
	wait         time.Duration
	logger       *slog.Logger
}

func newConfig(scope string, opts []Option) config {
	c := config{
		scope:        scope,
		methods:      map[string]bool{http.MethodPost: true, http.MethodPut: true, http.MethodPatch: true, http.MethodDelete: true},
		maxBodyBytes: DefaultMaxBodyBytes,
		leaseTTL:     DefaultLeaseTTL,
		retention:    DefaultRetention,
	}
	for _, o := range opts {
		o(&c)
	}
	if err := c.validate(); err != nil {
		panic("idempotency: " + err.Error())
	}
	return c
}

func (c *config) validate() error {
	switch {
	case c.scopeFunc == nil && !validScope(c.scope):
		return fmt.Errorf("WithScope(%q): a scope is 1-200 printable ASCII characters", c.scope)
	case c.maxBodyBytes <= 0:
		return fmt.Errorf("WithMaxBodyBytes(%d): must be positive", c.maxBodyBytes)
	case c.leaseTTL < time.Second || c.leaseTTL > time.Hour:
		return fmt.Errorf("WithLeaseTTL(%v): must be 1s-1h", c.leaseTTL)
	case c.retention < time.Second || c.retention > 720*time.Hour:
		return fmt.Errorf("WithRetention(%v): must be 1s-720h", c.retention)
	case c.wait < 0 || c.wait > 5*time.Minute:
		return fmt.Errorf("WithWait(%v): must be 0-5m", c.wait)
	case len(c.methods) == 0:
		return fmt.Errorf("WithMethods: give at least one method")
	}
	return nil
}

func (c *config) log() *slog.Logger {
	if c.logger != nil {
		return c.logger
	}
	return slog.Default()
}

// storeKey returns "<scope>:<key>", or an error when a scope function
// returned an invalid scope.
func (c *config) storeKey(ctx context.Context, key string) (string, error) {
	scope := c.scope
	if c.scopeFunc != nil {
		scope = c.scopeFunc(ctx)
		if !validScope(scope) {
			return "", fmt.Errorf("the scope function returned %q: a scope is 1-200 printable ASCII characters", scope)
		}
	}
	return scope + ":" + key, nil
}

// WithScope sets the scope of the store keys, "<scope>:<key>" (default
// "http" for Middleware, "grpc" for UnaryServerInterceptor). Services that
// share a sidecar's store and may see the same keys need scopes of their
// own.
func WithScope(scope string) Option { return func(c *config) { c.scope = scope } }

// WithScopeFunc computes the scope per request from its context (the
// request's context for Middleware, the call's for the interceptor), for
// example "http/tenant-42" from the tenant an authentication middleware
// that runs first put there, so that two tenants' equal keys never meet.
// The scope must be 1-200 printable ASCII characters; a request for which
// it is not is answered as if the sidecar were unavailable (503 /
// UNAVAILABLE) and logged, and its handler does not run.
func WithScopeFunc(f func(ctx context.Context) string) Option {
	return func(c *config) { c.scopeFunc = f }
}

// WithKeyRequired makes the key mandatory on covered requests: one
// without it is answered 400 (code IDEMPOTENCY_KEY_MISSING), or
// INVALID_ARGUMENT over gRPC. By default a request without the key passes
// straight to the handler.
func WithKeyRequired() Option { return func(c *config) { c.required = true } }

// WithMethods sets the HTTP methods Middleware covers (default POST, PUT,
// PATCH, DELETE). Requests with other methods pass straight through, with
// or without a key.
func WithMethods(methods ...string) Option {
	return func(c *config) {
		c.methods = map[string]bool{}
		for _, m := range methods {
			c.methods[strings.ToUpper(m)] = true
		}
	}
}

// WithGRPCMethods sets the gRPC methods UnaryServerInterceptor covers, by
// full name ("/package.Service/Method"); by default it covers every unary
// method. Calls to other methods pass straight through.
func WithGRPCMethods(fullMethods ...string) Option {
	return func(c *config) {
		c.grpcMethods = map[string]bool{}
		for _, m := range fullMethods {
			c.grpcMethods[m] = true
		}
	}
}

// WithMaxBodyBytes bounds the request body Middleware reads to fingerprint
// it (default 1 MiB); a larger body is answered 413 (code
// IDEMPOTENCY_BODY_TOO_LARGE) without running the handler.
func WithMaxBodyBytes(n int64) Option { return func(c *config) { c.maxBodyBytes = n } }

// WithLeaseTTL sets how long the sidecar lets a request run before a
// duplicate may run it again (1s-1h, default 30s). The lease is not
// renewed while the handler runs: choose it longer than the handler takes.
func WithLeaseTTL(d time.Duration) Option { return func(c *config) { c.leaseTTL = d } }

// WithRetention sets how long a stored response is replayed to duplicates
// (1s-720h, default 24h). After it the key is forgotten and runs again.
func WithRetention(d time.Duration) Option { return func(c *config) { c.retention = d } }

// WithWait makes a duplicate of a request that is still running wait up
// to d (0-5m) for it to finish, and get its response replayed, instead of
// being answered 409 / ABORTED at once (the default, 0).
func WithWait(d time.Duration) Option { return func(c *config) { c.wait = d } }

// WithLogger sets where failures that do not change the response are
// logged: a response that could not be stored or a lease that could not be
// released (default slog.Default()).
func WithLogger(l *slog.Logger) Option { return func(c *config) { c.logger = l } }

// validScope reports whether s is 1-200 printable ASCII characters.
func validScope(s string) bool { return len(s) <= 200 && printableASCII(s) }

// printableASCII reports whether s is non-empty and only holds printable
// ASCII characters (space to '~').
func printableASCII(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < ' ' || s[i] > '~' {
			return false
		}
	}
	return true
}
