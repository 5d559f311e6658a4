package inject

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
)

// Exit codes of Main.
const (
	exitOK      = 0
	exitFailure = 1 // the server could not run (address in use, ...)
	exitConfig  = 2 // bad flags or TLS files: one line naming the flag
)

// Timeouts of the webhook's HTTP server. The API server gives the webhook
// timeoutSeconds (5 in deploy/k8s) for the whole call; answering takes no
// I/O, so only a slow or stuck client can take long, and these cut it off.
const (
	readHeaderTimeout = 5 * time.Second
	readTimeout       = 10 * time.Second
	writeTimeout      = 10 * time.Second
	idleTimeout       = 90 * time.Second
	shutdownTimeout   = 10 * time.Second
)

// options are the parsed flags of `sidecar-injector`.
type options struct {
	listen, tlsCert, tlsKey, logLevel string
	cfg                               Config
}

// parseFlags parses the arguments of `sidecar-injector`. It returns
// flag.ErrHelp for -h/--help, and otherwise an error naming the flag.
func parseFlags(args []string, usage io.Writer) (options, error) {
	def := DefaultConfig()
	o := options{cfg: def}
	fs := flag.NewFlagSet("sidecar-injector", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.StringVar(&o.listen, "listen", ":8443", "`address` of the HTTPS webhook server")
	fs.StringVar(&o.tlsCert, "tls-cert", "", "PEM certificate `file` of the webhook server (required; reloaded when it changes)")
	fs.StringVar(&o.tlsKey, "tls-key", "", "PEM private key `file` of the webhook server (required; reloaded when it changes)")
	fs.StringVar(&o.logLevel, "log-level", "info", "`level` of the JSON logs: debug, info, warn or error")
	fs.StringVar(&o.cfg.SidecarImage, "sidecar-image", def.SidecarImage, "`image` of the injected sidecar")
	pull := fs.String("image-pull-policy", string(def.ImagePullPolicy), "`policy` of the injected sidecar: Always, IfNotPresent or Never")
	fs.StringVar(&o.cfg.RedisSecret, "redis-secret", def.RedisSecret,
		"default Secret `name` (key "+RedisURLKey+") for Pods without the "+AnnotationRedisSecret+" annotation; empty: the annotation is required")
	fs.StringVar(&o.cfg.ConfigMap, "config-map", def.ConfigMap,
		"default ConfigMap `name` (key "+ConfigKey+") for Pods without the "+AnnotationConfigMap+" annotation; empty: none")
	fs.StringVar(&o.cfg.APITokenSecret, "api-token-secret", def.APITokenSecret,
		"default Secret `name` (key "+APITokenKey+") for Pods without the "+AnnotationAPITokenSecret+" annotation; empty: none")
	quantities := []struct {
		flag, what string
		list       corev1.ResourceList
		name       corev1.ResourceName
		v          *string
	}{
		{"sidecar-cpu-request", "cpu request", o.cfg.Resources.Requests, corev1.ResourceCPU, new(string)},
		{"sidecar-memory-request", "memory request", o.cfg.Resources.Requests, corev1.ResourceMemory, new(string)},
		{"sidecar-cpu-limit", "cpu limit", o.cfg.Resources.Limits, corev1.ResourceCPU, new(string)},
		{"sidecar-memory-limit", "memory limit", o.cfg.Resources.Limits, corev1.ResourceMemory, new(string)},
	}
	for _, q := range quantities {
		def := q.list[q.name]
		fs.StringVar(q.v, q.flag, def.String(), q.what+" of the injected sidecar (a `quantity`)")
	}
	fs.Usage = func() {
		fmt.Fprintf(usage, "Usage: sidecar-injector --tls-cert FILE --tls-key FILE [flags]\n\n"+
			"Serves the Kubernetes mutating admission webhook that injects the resilience sidecar\n"+
			"into Pods annotated %s: \"true\" (POST %s over HTTPS).\n\nFlags:\n", AnnotationInject, MutatePath)
		fs.SetOutput(usage)
		fs.PrintDefaults()
		fs.SetOutput(io.Discard)
	}

	if err := fs.Parse(args); err != nil {
		return o, err // for -h, fs.Usage has printed the usage
	}
	if fs.NArg() > 0 {
		return o, fmt.Errorf("unexpected argument %q (all settings are flags)", fs.Arg(0))
	}
	o.cfg.ImagePullPolicy = corev1.PullPolicy(*pull)
	for _, q := range quantities {
		v, err := resource.ParseQuantity(*q.v)
		if err != nil {
			return o, fmt.Errorf("--%s: %q is not a quantity (like 100m or 128Mi)", q.flag, *q.v)
		}
		q.list[q.name] = v
	}
	var errs []error
	if o.tlsCert == "" {
		errs = append(errs, errors.New("--tls-cert: required (the API server only calls webhooks over HTTPS)"))
	}
	if o.tlsKey == "" {
		errs = append(errs, errors.New("--tls-key: required"))
	}
	if _, _, err := net.SplitHostPort(o.listen); err != nil {
		errs = append(errs, fmt.Errorf("--listen: %q is not host:port", o.listen))
	}
	if _, err := parseLevel(o.logLevel); err != nil {
		errs = append(errs, err)
	}
	if err := o.cfg.Validate(); err != nil {
		errs = append(errs, err)
	}
	return o, errors.Join(errs...)
}

func parseLevel(s string) (slog.Level, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(s)); err != nil || strings.ContainsAny(s, "+-") {
		return 0, fmt.Errorf("--log-level: %q must be debug, info, warn or error", s)
	}
	return l, nil
}

// Main runs `sidecar-injector`; args are its command-line arguments. It
// serves the webhook over TLS until ctx is cancelled, then stops accepting
// connections, answers /readyz with 503, lets in-flight reviews finish (at
// most 10 s) and returns 0. It logs JSON lines (log/slog) to stderr, the
// first of which, "listening", carries the bound address. It returns 2
// after one line per problem on stderr when the flags or the TLS files are
// bad, 1 when the server cannot run, and 0 after printing the usage to
// stdout for -h.
func Main(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	o, err := parseFlags(args, stdout)
	if errors.Is(err, flag.ErrHelp) {
		return exitOK
	}
	if err != nil {
		for _, line := range strings.Split(err.Error(), "\n") {
			fmt.Fprintf(stderr, "sidecar-injector: %s\n", line)
		}
		fmt.Fprintln(stderr, "sidecar-injector: run 'sidecar-injector -h' for the flags")
		return exitConfig
	}
	level, _ := parseLevel(o.logLevel)
	log := slog.New(slog.NewJSONHandler(stderr, &slog.HandlerOptions{Level: level})).With(slog.String("component", "injector"))

	certs, err := newCertReloader(o.tlsCert, o.tlsKey, log)
	if err != nil {
		fmt.Fprintf(stderr, "sidecar-injector: --tls-cert/--tls-key: %v\n", err)
		return exitConfig
	}
	inj, err := New(o.cfg, log)
	if err != nil { // not reached: parseFlags validated the config
		fmt.Fprintf(stderr, "sidecar-injector: %v\n", err)
		return exitConfig
	}
	ln, err := net.Listen("tcp", o.listen)
	if err != nil {
		log.Error("cannot listen", slog.String("listen", o.listen), slog.String("error", err.Error()))
		return exitFailure
	}
	return serve(ctx, ln, inj, certs, log)
}

// serve runs the HTTPS server on ln until ctx is done or the server fails.
func serve(ctx context.Context, ln net.Listener, inj *Injector, certs *certReloader, log *slog.Logger) int {
	srv := &http.Server{
		Handler:           inj,
		ReadHeaderTimeout: readHeaderTimeout,
		ReadTimeout:       readTimeout,
		WriteTimeout:      writeTimeout,
		IdleTimeout:       idleTimeout,
		MaxHeaderBytes:    64 << 10,
		TLSConfig:         &tls.Config{MinVersion: tls.VersionTLS12, GetCertificate: certs.GetCertificate},
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	served := make(chan error, 1)
	go func() { served <- srv.ServeTLS(ln, "", "") }()
	log.Info("listening", slog.String("addr", ln.Addr().String()),
		slog.String("path", MutatePath), slog.String("sidecar_image", inj.cfg.SidecarImage))

	select {
	case err := <-served:
		log.Error("server stopped", slog.String("error", err.Error()))
		return exitFailure
	case <-ctx.Done():
	}
	inj.draining.Store(true)
	log.Info("shutting down")
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), shutdownTimeout)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		log.Error("shutdown: closing the remaining connections", slog.String("error", err.Error()))
		_ = srv.Close()
		return exitFailure
	}
	if err := <-served; err != nil && !errors.Is(err, http.ErrServerClosed) {
		log.Error("server stopped", slog.String("error", err.Error()))
		return exitFailure
	}
	log.Info("stopped")
	return exitOK
}
