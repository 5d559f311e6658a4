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
	"os"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/apimachinery/pkg/util/validation"
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

// Certificate modes (flag --cert-mode).
const (
	certModeFiles       = "files"
	certModeSelfManaged = "self-managed"
)

// Paths of the ServiceAccount token and CA that Kubernetes mounts in a Pod.
const (
	serviceAccountTokenFile = "/var/run/secrets/kubernetes.io/serviceaccount/token"
	serviceAccountCAFile    = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt"
)

// options are the parsed flags of `sidecar-injector`.
type options struct {
	listen, tlsCert, tlsKey, logLevel  string
	metricsListen                      string
	certMode                           string
	selfCert                           selfCertConfig
	kubeAPI, kubeTokenFile, kubeCAFile string
	cfg                                Config
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
	fs.StringVar(&o.metricsListen, "metrics-listen", ":9090", "`address` of the plain-HTTP Prometheus /metrics server; empty: none")
	fs.StringVar(&o.certMode, "cert-mode", certModeFiles, "where the serving certificate comes from: `mode` "+certModeFiles+
		" (--tls-cert/--tls-key, from gen-cert.sh or cert-manager) or "+certModeSelfManaged+
		" (the injector's own CA, published in the webhook's caBundle, certificate renewed before it expires)")
	fs.StringVar(&o.selfCert.webhookConfig, "webhook-config", "resilience-sidecar-injector",
		"self-managed: `name` of the MutatingWebhookConfiguration whose caBundle the injector keeps")
	hosts := fs.String("cert-hosts", "resilience-injector.resilience-system.svc,resilience-injector.resilience-system.svc.cluster.local",
		"self-managed: comma-separated DNS `names` and IP addresses of the serving certificate")
	fs.DurationVar(&o.selfCert.certValidity, "cert-validity", 24*time.Hour, "self-managed: `lifetime` of a serving certificate (renewed after 2/3 of it)")
	fs.DurationVar(&o.selfCert.caValidity, "ca-validity", 7*24*time.Hour, "self-managed: `lifetime` of the injector's CA")
	fs.DurationVar(&o.selfCert.propagation, "ca-propagation-delay", 10*time.Second,
		"self-managed: `time` a new CA is in the caBundle before a certificate it signed is served")
	defaultAPI := ""
	if h, p := os.Getenv("KUBERNETES_SERVICE_HOST"), os.Getenv("KUBERNETES_SERVICE_PORT"); h != "" && p != "" {
		defaultAPI = "https://" + net.JoinHostPort(h, p)
	}
	fs.StringVar(&o.kubeAPI, "kube-api", defaultAPI, "self-managed: `URL` of the Kubernetes API (default: the in-cluster address)")
	fs.StringVar(&o.kubeTokenFile, "kube-token-file", serviceAccountTokenFile, "self-managed: bearer token `file` for the Kubernetes API (read at each request)")
	fs.StringVar(&o.kubeCAFile, "kube-ca-file", serviceAccountCAFile, "self-managed: PEM `file` of the CA of the Kubernetes API")
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
	switch o.certMode {
	case certModeFiles:
		if o.tlsCert == "" {
			errs = append(errs, errors.New("--tls-cert: required (the API server only calls webhooks over HTTPS)"))
		}
		if o.tlsKey == "" {
			errs = append(errs, errors.New("--tls-key: required"))
		}
	case certModeSelfManaged:
		if o.tlsCert != "" || o.tlsKey != "" {
			errs = append(errs, errors.New("--tls-cert/--tls-key: not used with --cert-mode="+certModeSelfManaged))
		}
		errs = append(errs, o.selfCert.parseHosts(*hosts), o.selfCert.validate())
		if o.selfCert.webhookConfig == "" {
			errs = append(errs, errors.New("--webhook-config: required with --cert-mode="+certModeSelfManaged))
		}
	default:
		errs = append(errs, fmt.Errorf("--cert-mode: %q must be %s or %s", o.certMode, certModeFiles, certModeSelfManaged))
	}
	if o.metricsListen != "" {
		if _, _, err := net.SplitHostPort(o.metricsListen); err != nil {
			errs = append(errs, fmt.Errorf("--metrics-listen: %q is not host:port", o.metricsListen))
		}
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

	inj, err := New(o.cfg, log)
	if err != nil { // not reached: parseFlags validated the config
		fmt.Fprintf(stderr, "sidecar-injector: %v\n", err)
		return exitConfig
	}
	var (
		certs      certSource
		background func(context.Context)
	)
	switch o.certMode {
	case certModeSelfManaged:
		kc, err := newKubeClient(o.kubeAPI, o.kubeTokenFile, o.kubeCAFile)
		if err != nil {
			fmt.Fprintf(stderr, "sidecar-injector: %v\n", err)
			return exitConfig
		}
		defer kc.close()
		sc, err := newSelfCerts(ctx, o.selfCert, kc, log, inj.metrics)
		if err != nil {
			log.Error("self-managed certificate", slog.String("error", err.Error()))
			return exitFailure
		}
		certs, background = sc, sc.run
	default:
		r, err := newCertReloader(o.tlsCert, o.tlsKey, log)
		if err != nil {
			fmt.Fprintf(stderr, "sidecar-injector: --tls-cert/--tls-key: %v\n", err)
			return exitConfig
		}
		r.onLoad = inj.metrics.certInUse
		inj.metrics.certInUse(r.cert, false)
		certs = r
	}
	ln, err := net.Listen("tcp", o.listen)
	if err != nil {
		log.Error("cannot listen", slog.String("listen", o.listen), slog.String("error", err.Error()))
		return exitFailure
	}
	var metricsLn net.Listener
	if o.metricsListen != "" {
		if metricsLn, err = net.Listen("tcp", o.metricsListen); err != nil {
			_ = ln.Close()
			log.Error("cannot listen", slog.String("metrics_listen", o.metricsListen), slog.String("error", err.Error()))
			return exitFailure
		}
	}
	return serve(ctx, ln, metricsLn, inj, certs, background, log)
}

// certSource gives the serving certificate for each TLS handshake.
type certSource interface {
	GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error)
}

// serve runs the HTTPS server on ln (and the metrics server on metricsLn,
// when not nil, and background, when not nil) until ctx is done or a
// server fails; it returns once all of them have stopped.
func serve(ctx context.Context, ln, metricsLn net.Listener, inj *Injector, certs certSource, background func(context.Context), log *slog.Logger) int {
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
	served := make(chan error, 2)
	go func() { served <- srv.ServeTLS(ln, "", "") }()
	var msrv *http.Server
	if metricsLn != nil {
		mux := http.NewServeMux()
		mux.Handle("GET "+MetricsPath, inj.metrics.handler())
		msrv = &http.Server{Handler: mux, ReadHeaderTimeout: readHeaderTimeout, ReadTimeout: readTimeout,
			WriteTimeout: writeTimeout, IdleTimeout: idleTimeout, MaxHeaderBytes: 64 << 10,
			ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelWarn)}
		go func() { served <- msrv.Serve(metricsLn) }()
	}
	bgCtx, stopBackground := context.WithCancel(ctx)
	bgDone := make(chan struct{})
	go func() {
		defer close(bgDone)
		if background != nil {
			background(bgCtx)
		}
	}()
	defer func() {
		stopBackground()
		<-bgDone
	}()
	attrs := []any{slog.String("addr", ln.Addr().String()),
		slog.String("path", MutatePath), slog.String("sidecar_image", inj.cfg.SidecarImage)}
	if metricsLn != nil {
		attrs = append(attrs, slog.String("metrics_addr", metricsLn.Addr().String()))
	}
	log.Info("listening", attrs...)

	select {
	case err := <-served:
		log.Error("server stopped", slog.String("error", err.Error()))
		_ = srv.Close()
		if msrv != nil {
			_ = msrv.Close()
		}
		return exitFailure
	case <-ctx.Done():
	}
	inj.draining.Store(true)
	log.Info("shutting down")
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), shutdownTimeout)
	defer cancel()
	if msrv != nil {
		_ = msrv.Shutdown(sctx)
	}
	if err := srv.Shutdown(sctx); err != nil {
		log.Error("shutdown: closing the remaining connections", slog.String("error", err.Error()))
		_ = srv.Close()
		return exitFailure
	}
	n := 1
	if msrv != nil {
		n = 2
	}
	for range n {
		if err := <-served; err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("server stopped", slog.String("error", err.Error()))
			return exitFailure
		}
	}
	log.Info("stopped")
	return exitOK
}

// parseHosts splits the --cert-hosts list into DNS names and IPs.
func (c *selfCertConfig) parseHosts(list string) error {
	for _, h := range strings.Split(list, ",") {
		h = strings.TrimSpace(h)
		switch ip := net.ParseIP(h); {
		case h == "":
		case ip != nil:
			c.ips = append(c.ips, ip)
		default:
			if msgs := validation.IsDNS1123Subdomain(h); len(msgs) > 0 {
				return fmt.Errorf("--cert-hosts: %q is neither an IP address nor a DNS name: %s", h, strings.Join(msgs, "; "))
			}
			c.dnsNames = append(c.dnsNames, h)
		}
	}
	if len(c.dnsNames)+len(c.ips) == 0 {
		return errors.New("--cert-hosts: at least one DNS name or IP address")
	}
	return nil
}

// validate checks the lifetimes: the CA must outlive two serving
// certificates and the propagation delay, so that it is renewed in time.
func (c *selfCertConfig) validate() error {
	var errs []error
	if c.certValidity < 3*time.Second {
		errs = append(errs, fmt.Errorf("--cert-validity: %v is too short (at least 3s)", c.certValidity))
	}
	if c.propagation < 0 || c.propagation > c.certValidity/3 {
		errs = append(errs, fmt.Errorf("--ca-propagation-delay: %v must be between 0 and a third of --cert-validity", c.propagation))
	}
	if c.caValidity < 2*c.certValidity+c.propagation {
		errs = append(errs, fmt.Errorf("--ca-validity: %v must be at least twice --cert-validity plus --ca-propagation-delay", c.caValidity))
	}
	return errors.Join(errs...)
}
