package inject

import (
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/seed-a88e5317/resilience-sidecar/internal/server"
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
	// LivenessService is the grpc.health.v1 service name the startup and
	// liveness probes check. The sidecar must report it SERVING while the
	// process is up, whatever the store's state: a Redis outage makes the
	// sidecar not ready (the readiness probe checks the "" service), it must
	// not make the kubelet restart it.
	LivenessService = server.LivenessService
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
	AnnotationPort, AnnotationMetricsPort, AnnotationStatus,
}

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
	if err := joinProblems(problems); err != nil {
		return false, settings{}, err
	}
	return true, s, nil
}

// joinProblems makes one error of the problems, or nil when there are none.
func joinProblems(problems []string) error {
	if len(problems) == 0 {
		return nil
	}
	return fmt.Errorf("%s", strings.Join(problems, "; "))
}
