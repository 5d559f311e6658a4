package inject

import (
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/apimachinery/pkg/util/validation"
)

// AnnotationPrefix is the prefix of every annotation the injector reads or
// writes. An annotation with this prefix that is not one of the Annotation*
// constants makes the injector reject the Pod, so a typo is an error, not a
// silently ignored setting.
const AnnotationPrefix = "resilience.seed-a88e5317.io/"

// Annotations a Pod sets to ask for the sidecar and configure it. Each one
// is validated; a bad value rejects the Pod with a message naming it.
const (
	// AnnotationInject is "true" to inject the sidecar or "false" to opt out.
	// Absent means "false". Any other value rejects the Pod.
	AnnotationInject = AnnotationPrefix + "inject"
	// AnnotationNamespace sets the sidecar's key namespace (SIDECAR_NAMESPACE):
	// 1 to 63 characters of [A-Za-z0-9._-], starting with a letter or digit.
	// Absent: the Pod's Kubernetes namespace, unless a ConfigMap is mounted,
	// in which case the config file (or the sidecar's default) decides.
	AnnotationNamespace = AnnotationPrefix + "namespace"
	// AnnotationConfigMap names a ConfigMap in the Pod's namespace whose key
	// config.yaml is the sidecar's config file (SIDECAR_CONFIG). Absent: the
	// injector's default (--config-map), or no config file.
	AnnotationConfigMap = AnnotationPrefix + "config-map"
	// AnnotationRedisSecret names a Secret in the Pod's namespace whose key
	// redis-url is the Redis URL (SIDECAR_REDIS_URL). Absent: the injector's
	// default (--redis-secret). An injected sidecar always uses Redis.
	AnnotationRedisSecret = AnnotationPrefix + "redis-secret"
	// AnnotationRedisMode is standalone, cluster or sentinel
	// (SIDECAR_REDIS_MODE). Absent: the config file or the sidecar's default.
	AnnotationRedisMode = AnnotationPrefix + "redis-mode"
	// AnnotationAPITokenSecret names a Secret in the Pod's namespace whose key
	// api-token is mounted as the sidecar's API token file
	// (SIDECAR_API_TOKEN_FILE). Absent: the injector's default
	// (--api-token-secret), or no token.
	AnnotationAPITokenSecret = AnnotationPrefix + "api-token-secret"
	// AnnotationPort is the sidecar's gRPC port (default 50051); apps reach it
	// at SIDECAR_ADDR=127.0.0.1:<port>.
	AnnotationPort = AnnotationPrefix + "port"
	// AnnotationMetricsPort is the sidecar's Prometheus port (default 9090).
	AnnotationMetricsPort = AnnotationPrefix + "metrics-port"
	// AnnotationCPURequest, AnnotationCPULimit, AnnotationMemoryRequest and
	// AnnotationMemoryLimit override the injector's resources for the
	// sidecar (--sidecar-cpu-request and so on): positive quantities such as
	// 100m or 128Mi; a request above its limit (the annotation's or the
	// injector's) rejects the Pod.
	AnnotationCPURequest    = AnnotationPrefix + "cpu-request"
	AnnotationCPULimit      = AnnotationPrefix + "cpu-limit"
	AnnotationMemoryRequest = AnnotationPrefix + "memory-request"
	AnnotationMemoryLimit   = AnnotationPrefix + "memory-limit"
	// AnnotationLogLevel is the sidecar's log level (SIDECAR_LOG_LEVEL):
	// debug, info, warn or error. Absent: the config file or info.
	AnnotationLogLevel = AnnotationPrefix + "log-level"
	// AnnotationImage replaces the injector's sidecar image (--sidecar-image)
	// for this Pod: a reference with a tag or a digest (no implicit latest).
	AnnotationImage = AnnotationPrefix + "image"
	// AnnotationEnv adds environment variables to the sidecar:
	// NAME=value pairs separated by commas (values cannot hold a comma).
	// Names the injector sets itself (see reservedEnv) are refused: each has
	// its own annotation.
	AnnotationEnv = AnnotationPrefix + "env"
	// AnnotationShutdownSeconds bounds the sidecar's drain of in-flight calls
	// at SIGTERM (SIDECAR_SHUTDOWN_TIMEOUT), 1 to 300. The sidecar is stopped
	// after the app containers, within the Pod's
	// terminationGracePeriodSeconds: a value that does not fit in it draws a
	// warning.
	AnnotationShutdownSeconds = AnnotationPrefix + "shutdown-seconds"
	// AnnotationUnixSocket is "true" for the sidecar to serve gRPC and
	// HTTP/JSON on unix sockets in an emptyDir shared with the app
	// containers (SIDECAR_ADDR=unix:///var/run/resilience-sidecar/grpc.sock)
	// instead of loopback TCP; "false" or absent: TCP.
	AnnotationUnixSocket = AnnotationPrefix + "unix-socket"
	// AnnotationUnixSocketMode is the permission bits of the sockets (octal,
	// 0600 to 0777, default 0666): the app's user must have write
	// permission. Only with AnnotationUnixSocket "true".
	AnnotationUnixSocketMode = AnnotationPrefix + "unix-socket-mode"
	// AnnotationStatus is written by the injector ("injected") on the Pods it
	// patched. Pod authors need not set it; its value is not read.
	AnnotationStatus = AnnotationPrefix + "status"
)

// Prometheus's conventional scrape annotations. The injector adds all three,
// for the sidecar's metrics port, to a Pod that has no annotation under
// PrometheusPrefix; a Pod that has one (its app's own metrics, or
// prometheus.io/scrape: "false") keeps its own and gets none of them.
const (
	PrometheusPrefix = "prometheus.io/"
	PrometheusScrape = PrometheusPrefix + "scrape"
	PrometheusPort   = PrometheusPrefix + "port"
	PrometheusPath   = PrometheusPrefix + "path"
	// MetricsPath is the path the sidecar serves its metrics on.
	MetricsPath = "/metrics"
)

// NamespaceLabel is the label a Kubernetes namespace carries (value
// "enabled") for the webhook to see its Pods at all; the manifests in
// deploy/k8s select on it.
const NamespaceLabel = AnnotationPrefix + "injection"

// Names and keys of what the injector adds to a Pod.
const (
	// ContainerName is the name of the injected container. A Pod that has a
	// container or init container of this name counts as already injected.
	ContainerName = "resilience-sidecar"
	// RedisURLKey is the key of the Redis URL in the Redis Secret.
	RedisURLKey = "redis-url"
	// APITokenKey is the key of the API token in the API token Secret.
	APITokenKey = "api-token"
	// ConfigKey is the key of the sidecar's YAML config in the ConfigMap.
	ConfigKey = "config.yaml"
	// AddrEnv is the environment variable set in the app containers.
	AddrEnv = "SIDECAR_ADDR"
	// DefaultPort is the sidecar's gRPC port when the Pod does not set one.
	DefaultPort = 50051
	// DefaultMetricsPort is the sidecar's metrics port when the Pod does not
	// set one.
	DefaultMetricsPort = 9090
)

// statusInjected is the value of AnnotationStatus on an injected Pod.
const statusInjected = "injected"

var knownAnnotations = []string{
	AnnotationInject, AnnotationNamespace, AnnotationConfigMap,
	AnnotationRedisSecret, AnnotationRedisMode, AnnotationAPITokenSecret,
	AnnotationPort, AnnotationMetricsPort, AnnotationCPURequest, AnnotationCPULimit,
	AnnotationMemoryRequest, AnnotationMemoryLimit, AnnotationLogLevel, AnnotationImage,
	AnnotationEnv, AnnotationShutdownSeconds, AnnotationUnixSocket, AnnotationUnixSocketMode,
	AnnotationStatus,
}

// Patterns shared with the ValidatingAdmissionPolicy of deploy/k8s/injector
// (policy.yaml), which must apply the same rules at `kubectl apply`; a test
// checks that the policy carries them verbatim.
const (
	// ImagePattern is an image reference with an explicit tag or digest.
	ImagePattern = `^([a-zA-Z0-9]([a-zA-Z0-9-]*[a-zA-Z0-9])?(\.[a-zA-Z0-9]([a-zA-Z0-9-]*[a-zA-Z0-9])?)*(:[0-9]+)?/)?` +
		`[a-z0-9]+(([._]|__|-+)[a-z0-9]+)*(/[a-z0-9]+(([._]|__|-+)[a-z0-9]+)*)*` +
		`(:[a-zA-Z0-9_][a-zA-Z0-9_.-]{0,127}(@sha256:[a-f0-9]{64})?|@sha256:[a-f0-9]{64})$`
	// EnvPattern is the value of AnnotationEnv: NAME=value pairs joined by commas.
	EnvPattern = `^[A-Za-z_][A-Za-z0-9_]*=[^,]*(,[A-Za-z_][A-Za-z0-9_]*=[^,]*)*$`
	// QuantityPattern is a positive resource quantity (decimal SI or binary suffix).
	QuantityPattern = `^([0-9]+(\.[0-9]*)?|\.[0-9]+)(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$`
	// SocketModePattern is octal permission bits from 0600 to 0777.
	SocketModePattern = `^0?[67][0-7][0-7]$`
)

// Defaults of the per-Pod settings.
const (
	// MaxShutdownSeconds is the largest AnnotationShutdownSeconds.
	MaxShutdownSeconds = 300
	// DefaultUnixSocketMode is the sockets' mode without AnnotationUnixSocketMode.
	DefaultUnixSocketMode = "0666"
	// DefaultHTTPPort is the loopback port of the sidecar's HTTP/JSON API
	// in TCP mode (the sidecar's own default).
	DefaultHTTPPort = 50080
)

// reservedEnv are the variables AnnotationEnv may not set: the injector
// sets them (or the flags it passes override them), each from its own
// annotation.
var reservedEnv = []string{
	"SIDECAR_REDIS_URL", "SIDECAR_REDIS_MODE", "SIDECAR_NAMESPACE", "SIDECAR_CONFIG",
	"SIDECAR_API_TOKEN", "SIDECAR_API_TOKEN_FILE", "SIDECAR_LOG_LEVEL", "SIDECAR_SHUTDOWN_TIMEOUT",
	"SIDECAR_LISTEN", "SIDECAR_LISTEN_MODE", "SIDECAR_LISTEN_GROUP", "SIDECAR_HTTP_LISTEN",
	"SIDECAR_METRICS_LISTEN", "SIDECAR_DEBUG_LISTEN",
}

var (
	imageRE      = regexp.MustCompile(ImagePattern)
	envRE        = regexp.MustCompile(EnvPattern)
	quantityRE   = regexp.MustCompile(QuantityPattern)
	socketModeRE = regexp.MustCompile(SocketModePattern)
	logLevels    = []string{"debug", "info", "warn", "error"}
)

var (
	redisModes  = []string{"standalone", "cluster", "sentinel"}
	namespaceRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$`)
)

// settings is what the annotations and the injector's defaults decide for
// one Pod. An empty string means "do not set it; the sidecar decides".
type settings struct {
	namespace      string
	configMap      string
	redisSecret    string
	redisMode      string
	apiTokenSecret string
	port           int32
	metricsPort    int32
	// Overrides of Config.Resources, canonical quantities; "" keeps the
	// injector's.
	cpuRequest, cpuLimit, memoryRequest, memoryLimit string
	logLevel                                         string
	image                                            string // "" is Config.SidecarImage
	env                                              string // AnnotationEnv as given, validated
	shutdownSeconds                                  int32  // 0: the sidecar's default
	unixSocket                                       bool
	socketMode                                       string // with unixSocket
}

// parseAnnotations reads the Pod's annotations. It returns inject=false when
// the Pod did not ask for the sidecar, and an error listing every problem
// (one per line) when an annotation under AnnotationPrefix is unknown or bad.
// Annotations other than inject are validated only when inject is "true".
func parseAnnotations(ann map[string]string, podNamespace string, cfg Config) (inject bool, s settings, err error) {
	var problems []string
	bad := func(key, value, why string) {
		problems = append(problems, fmt.Sprintf("annotation %s: %q %s", key, value, why))
	}
	var unknown []string
	for k := range ann {
		if strings.HasPrefix(k, AnnotationPrefix) && !slices.Contains(knownAnnotations, k) {
			unknown = append(unknown, k)
		}
	}
	slices.Sort(unknown)
	for _, k := range unknown {
		problems = append(problems, fmt.Sprintf("annotation %s is unknown (known: %s)", k,
			strings.Join(knownAnnotations[:len(knownAnnotations)-1], ", ")))
	}

	switch v, ok := ann[AnnotationInject]; {
	case !ok || v == "false":
	case v == "true":
		inject = true
	default:
		bad(AnnotationInject, v, `must be "true" or "false"`)
	}
	if !inject {
		return false, settings{}, joinProblems(problems)
	}

	// name reads an optional object-name annotation, falling back to def.
	name := func(key, def string) string {
		v, ok := ann[key]
		if !ok {
			return def
		}
		if v == "" {
			bad(key, v, "must not be empty (remove the annotation to use the injector's default)")
			return ""
		}
		if errs := validation.IsDNS1123Subdomain(v); len(errs) > 0 {
			bad(key, v, "is not a valid object name: "+strings.Join(errs, "; "))
			return ""
		}
		return v
	}
	port := func(key string, def int32) int32 {
		v, ok := ann[key]
		if !ok {
			return def
		}
		n, err := strconv.ParseUint(v, 10, 16)
		if err != nil || n == 0 {
			bad(key, v, "is not a port number (1-65535)")
			return def
		}
		return int32(n)
	}

	s.configMap = name(AnnotationConfigMap, cfg.ConfigMap)
	s.redisSecret = name(AnnotationRedisSecret, cfg.RedisSecret)
	s.apiTokenSecret = name(AnnotationAPITokenSecret, cfg.APITokenSecret)
	if _, ok := ann[AnnotationRedisSecret]; !ok && s.redisSecret == "" {
		problems = append(problems, fmt.Sprintf(
			"annotation %s is required: this injector has no default Redis Secret (--redis-secret)", AnnotationRedisSecret))
	}
	if v, ok := ann[AnnotationRedisMode]; ok {
		if !slices.Contains(redisModes, v) {
			bad(AnnotationRedisMode, v, "must be one of "+strings.Join(redisModes, ", "))
		}
		s.redisMode = v
	}
	if v, ok := ann[AnnotationNamespace]; ok {
		if !namespaceRE.MatchString(v) {
			bad(AnnotationNamespace, v, "must be 1-63 characters of [A-Za-z0-9._-] starting with a letter or digit")
		}
		s.namespace = v
	} else if s.configMap == "" {
		s.namespace = podNamespace
	}
	s.port = port(AnnotationPort, DefaultPort)
	s.metricsPort = port(AnnotationMetricsPort, DefaultMetricsPort)
	if s.port == s.metricsPort {
		problems = append(problems, fmt.Sprintf("annotations %s and %s: the gRPC and metrics ports must differ (both %d)",
			AnnotationPort, AnnotationMetricsPort, s.port))
	}
	s.cpuRequest, s.cpuLimit = quantities(ann, AnnotationCPURequest, AnnotationCPULimit, corev1.ResourceCPU, cfg, &problems)
	s.memoryRequest, s.memoryLimit = quantities(ann, AnnotationMemoryRequest, AnnotationMemoryLimit, corev1.ResourceMemory, cfg, &problems)
	if v, ok := ann[AnnotationLogLevel]; ok {
		if !slices.Contains(logLevels, v) {
			bad(AnnotationLogLevel, v, "must be one of "+strings.Join(logLevels, ", "))
		}
		s.logLevel = v
	}
	if v, ok := ann[AnnotationImage]; ok {
		if len(v) > 512 || !imageRE.MatchString(v) {
			bad(AnnotationImage, v, "is not an image reference with a tag or a digest (like registry.example.com/resilience-sidecar:1.2.3)")
		}
		s.image = v
	}
	if v, ok := ann[AnnotationEnv]; ok {
		if !envRE.MatchString(v) {
			bad(AnnotationEnv, v, "must be NAME=value pairs separated by commas (names of [A-Za-z0-9_] not starting with a digit; values without commas)")
		} else {
			seen := map[string]bool{}
			for _, e := range parseEnv(v) {
				switch {
				case slices.Contains(reservedEnv, e.Name):
					bad(AnnotationEnv, v, "sets "+e.Name+", which the injector sets (use its own annotation)")
				case seen[e.Name]:
					bad(AnnotationEnv, v, "sets "+e.Name+" twice")
				}
				seen[e.Name] = true
			}
		}
		s.env = v
	}
	if v, ok := ann[AnnotationShutdownSeconds]; ok {
		n, err := strconv.ParseUint(v, 10, 16)
		if err != nil || n == 0 || n > MaxShutdownSeconds {
			bad(AnnotationShutdownSeconds, v, fmt.Sprintf("must be a whole number of seconds from 1 to %d", MaxShutdownSeconds))
		}
		s.shutdownSeconds = int32(n)
	}
	switch v, ok := ann[AnnotationUnixSocket]; {
	case !ok || v == "false":
	case v == "true":
		s.unixSocket = true
		s.socketMode = DefaultUnixSocketMode
	default:
		bad(AnnotationUnixSocket, v, `must be "true" or "false"`)
	}
	if v, ok := ann[AnnotationUnixSocketMode]; ok {
		switch {
		case !socketModeRE.MatchString(v):
			bad(AnnotationUnixSocketMode, v, "must be octal permission bits from 0600 to 0777 (the app's user needs write permission)")
		case !s.unixSocket:
			bad(AnnotationUnixSocketMode, v, "needs "+AnnotationUnixSocket+`: "true"`)
		default:
			s.socketMode = v
		}
	}
	if _, ok := ann[AnnotationPort]; ok && s.unixSocket {
		problems = append(problems, fmt.Sprintf("annotation %s: the gRPC port is not used with %s: \"true\" (remove one of them)",
			AnnotationPort, AnnotationUnixSocket))
	}
	if err := joinProblems(problems); err != nil {
		return false, settings{}, err
	}
	return true, s, nil
}

// quantities reads a request and limit annotation pair for resource r. It
// returns the canonical quantities given ("" for an absent annotation) and
// appends a problem for a value that is not a positive quantity, or a
// request above the limit that applies (the annotation's or cfg's).
func quantities(ann map[string]string, reqKey, limitKey string, r corev1.ResourceName, cfg Config, problems *[]string) (req, limit string) {
	effReq, effLimit := cfg.Resources.Requests[r], cfg.Resources.Limits[r]
	ok := true
	read := func(key string, eff *resource.Quantity) string {
		v, set := ann[key]
		if !set {
			return ""
		}
		q, err := resource.ParseQuantity(v)
		if err != nil || !quantityRE.MatchString(v) || q.Sign() <= 0 {
			*problems = append(*problems, fmt.Sprintf("annotation %s: %q is not a positive quantity (like 100m or 128Mi)", key, v))
			ok = false
			return ""
		}
		*eff = q
		return q.String()
	}
	req, limit = read(reqKey, &effReq), read(limitKey, &effLimit)
	if ok && (req != "" || limit != "") && effReq.Cmp(effLimit) > 0 {
		*problems = append(*problems, fmt.Sprintf("annotations %s and %s: the %s request %s exceeds the limit %s",
			reqKey, limitKey, r, effReq.String(), effLimit.String()))
	}
	return req, limit
}

// parseEnv splits a value matching EnvPattern into variables.
func parseEnv(v string) []corev1.EnvVar {
	var out []corev1.EnvVar
	for _, pair := range strings.Split(v, ",") {
		name, value, _ := strings.Cut(pair, "=")
		out = append(out, corev1.EnvVar{Name: name, Value: value})
	}
	return out
}

// joinProblems makes one error of the problems, or nil when there are none.
func joinProblems(problems []string) error {
	if len(problems) == 0 {
		return nil
	}
	return fmt.Errorf("%s", strings.Join(problems, "; "))
}
