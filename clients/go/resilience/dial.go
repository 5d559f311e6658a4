package resilience

import (
	"context"
	"os"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
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

// DialOption configures Dial.
type DialOption func(*dialOptions)

type dialOptions struct {
	addr        string
	token       string
	callTimeout time.Duration
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

// WithGRPCOptions appends raw grpc dial options.
func WithGRPCOptions(opts ...grpc.DialOption) DialOption {
	return func(o *dialOptions) { o.extra = append(o.extra, opts...) }
}

// Dial returns a connection to the sidecar. The address comes from
// WithAddr, else SIDECAR_ADDR, else DefaultAddr; the token from WithToken,
// else SIDECAR_API_TOKEN, else the file named by SIDECAR_API_TOKEN_FILE.
// The sidecar listens on localhost, so the transport is plaintext.
func Dial(opts ...DialOption) (*grpc.ClientConn, error) {
	o := dialOptions{addr: os.Getenv(EnvAddr), token: os.Getenv(EnvToken), callTimeout: DefaultCallTimeout}
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
	dopts := []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}
	if o.token != "" {
		dopts = append(dopts, grpc.WithPerRPCCredentials(bearer(o.token)))
	}
	if o.callTimeout > 0 {
		dopts = append(dopts, grpc.WithChainUnaryInterceptor(defaultDeadline(o.callTimeout)))
	}
	dopts = append(dopts, grpc.WithChainUnaryInterceptor(typedErrors))
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
