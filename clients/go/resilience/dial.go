package resilience

import (
	"context"
	"os"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
)

// Environment variables read by Dial.
const (
	// EnvAddr is the sidecar address: "host:port" or "unix:///path".
	EnvAddr = "SIDECAR_ADDR"
	// EnvToken is the API token, or EnvTokenFile the file holding it.
	EnvToken     = "SIDECAR_API_TOKEN"
	EnvTokenFile = "SIDECAR_API_TOKEN_FILE"
)

// DefaultAddr is the sidecar's default listen address.
const DefaultAddr = "127.0.0.1:50051"

// DefaultCallTimeout bounds every unary call made through a connection
// from Dial whose context has no deadline, so a stopped sidecar gives an
// error instead of a hang.
const DefaultCallTimeout = 10 * time.Second

// DefaultConnectWait is how long a call made through a connection from
// Dial waits for the connection to the sidecar when it is down (a restart),
// never past the call's deadline.
const DefaultConnectWait = 2 * time.Second

// reconnect is the reconnect schedule of a connection from Dial: after a
// failed connect the next attempt comes after 100ms, growing by 1.6 up to
// 800ms, each ±20%, so attempts are never more than a second apart and a
// restarted sidecar is reached within a second (gRPC's own default grows
// to two minutes). A connect attempt that gets no answer (a frozen sidecar
// accepts TCP but says nothing) is given up after 2s.
var reconnect = grpc.ConnectParams{
	Backoff:           backoff.Config{BaseDelay: 100 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 800 * time.Millisecond},
	MinConnectTimeout: 2 * time.Second,
}

// DialOption configures Dial.
type DialOption func(*dialOptions)

type dialOptions struct {
	addr        string
	token       string
	callTimeout time.Duration
	connectWait time.Duration
	extra       []grpc.DialOption
}

// WithAddr sets the address, overriding SIDECAR_ADDR.
func WithAddr(addr string) DialOption { return func(o *dialOptions) { o.addr = addr } }

// WithToken sets the API token, overriding SIDECAR_API_TOKEN(_FILE).
func WithToken(token string) DialOption { return func(o *dialOptions) { o.token = token } }

// WithCallTimeout sets the default deadline of unary calls whose context has
// none (DefaultCallTimeout; 0 disables).
func WithCallTimeout(d time.Duration) DialOption {
	return func(o *dialOptions) { o.callTimeout = d }
}

// WithConnectWait sets how long a call waits for the connection when the
// sidecar is not reachable at the moment (DefaultConnectWait; never past
// the call's deadline). When it stays unreachable the call fails with an
// error matching ErrSidecarUnreachable. 0 fails such calls at once.
func WithConnectWait(d time.Duration) DialOption {
	return func(o *dialOptions) { o.connectWait = d }
}

// WithGRPCOptions appends raw grpc dial options; they come after Dial's
// own, so they can replace its connect parameters, say.
func WithGRPCOptions(opts ...grpc.DialOption) DialOption {
	return func(o *dialOptions) { o.extra = append(o.extra, opts...) }
}

// Dial returns a connection to the sidecar. The address comes from
// WithAddr, else SIDECAR_ADDR, else DefaultAddr; the token from WithToken,
// else SIDECAR_API_TOKEN, else the file named by SIDECAR_API_TOKEN_FILE.
// The sidecar listens on localhost, so the transport is plaintext.
//
// Calls made through the connection get a deadline when they have none
// (WithCallTimeout; unary calls only: streams are sessions), come back as
// *Error (errors.Is on the sentinels), carry the caller's trace context
// when the application uses OpenTelemetry (the propagator it installed
// with otel.SetTextMapPropagator, W3C traceparent usually), and ride out a
// restart of the sidecar: a call made while it is unreachable waits for
// the connection up to WithConnectWait, and the connection retries at
// least once a second, so the first call after the sidecar is back
// succeeds.
func Dial(opts ...DialOption) (*grpc.ClientConn, error) {
	o := dialOptions{addr: os.Getenv(EnvAddr), token: os.Getenv(EnvToken), callTimeout: DefaultCallTimeout, connectWait: DefaultConnectWait}
	if o.token == "" {
		if f := os.Getenv(EnvTokenFile); f != "" {
			b, err := os.ReadFile(f)
			if err != nil {
				return nil, err
			}
			o.token = strings.TrimSpace(string(b))
		}
	}
	for _, opt := range opts {
		opt(&o)
	}
	if o.addr == "" {
		o.addr = DefaultAddr
	}
	target := o.addr
	if !strings.HasPrefix(target, "unix:") {
		target = "passthrough:///" + target
	}
	dopts := []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithConnectParams(reconnect)}
	if o.token != "" {
		dopts = append(dopts, grpc.WithPerRPCCredentials(bearer(o.token)))
	}
	if o.callTimeout > 0 {
		dopts = append(dopts, grpc.WithChainUnaryInterceptor(defaultDeadline(o.callTimeout)))
	}
	dopts = append(dopts,
		grpc.WithChainUnaryInterceptor(propagateTraceUnary, awaitConnUnary(o.connectWait), typedErrors),
		grpc.WithChainStreamInterceptor(propagateTraceStream, awaitConnStream(o.connectWait)))
	dopts = append(dopts, o.extra...)
	return grpc.NewClient(target, dopts...)
}

type bearer string

func (b bearer) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + string(b)}, nil
}

// The sidecar is on localhost; the token crosses no network.
func (bearer) RequireTransportSecurity() bool { return false }

func defaultDeadline(d time.Duration) grpc.UnaryClientInterceptor {
	return func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		if _, ok := ctx.Deadline(); !ok {
			var cancel context.CancelFunc
			ctx, cancel = context.WithTimeout(ctx, d)
			defer cancel()
		}
		return invoker(ctx, method, req, reply, cc, opts...)
	}
}

// typedErrors makes unary calls return *Error, so errors.Is works on them.
func typedErrors(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	return FromError(invoker(ctx, method, req, reply, cc, opts...))
}

func awaitConnUnary(wait time.Duration) grpc.UnaryClientInterceptor {
	return func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		if err := awaitConn(ctx, cc, wait); err != nil {
			return err
		}
		return invoker(ctx, method, req, reply, cc, opts...)
	}
}

func awaitConnStream(wait time.Duration) grpc.StreamClientInterceptor {
	return func(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
		if err := awaitConn(ctx, cc, wait); err != nil {
			return nil, err
		}
		s, err := streamer(ctx, desc, cc, method, opts...)
		return s, FromError(err)
	}
}

// awaitConn waits until cc is READY, for at most wait. It returns nil when
// cc is ready or only the wait ran out (the call then fails on its own,
// UNAVAILABLE with gRPC's reason, when cc is still down), and a typed error
// when ctx ended first: one that also matches ErrSidecarUnreachable when
// its deadline passed while the sidecar was unreachable.
func awaitConn(ctx context.Context, cc *grpc.ClientConn, wait time.Duration) error {
	st := cc.GetState()
	if st == connectivity.Ready || wait <= 0 {
		return nil
	}
	wctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	for st != connectivity.Ready && st != connectivity.Shutdown {
		if st == connectivity.Idle {
			cc.Connect()
		}
		if !cc.WaitForStateChange(wctx, st) {
			break
		}
		st = cc.GetState()
	}
	if st == connectivity.Ready || ctx.Err() == nil {
		return nil
	}
	if ctx.Err() != context.DeadlineExceeded {
		return FromError(status.FromContextError(ctx.Err()).Err())
	}
	e := FromError(status.Errorf(codes.DeadlineExceeded, "the sidecar at %s was unreachable until the deadline (connection %s)", cc.Target(), st)).(*Error)
	e.unreachable = true
	return e
}
