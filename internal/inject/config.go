package inject

import (
	"errors"
	"fmt"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/apimachinery/pkg/util/validation"
)

// DefaultImage is the sidecar image injected when Config.SidecarImage is
// not changed (flag --sidecar-image).
const DefaultImage = "ghcr.io/seed-a88e5317/resilience-sidecar:latest"

// Config is what the injector puts into every Pod it patches, before the
// Pod's own annotations override it. The zero value is not usable: start
// from DefaultConfig.
type Config struct {
	// SidecarImage is the image of the injected container. Required.
	SidecarImage string
	// ImagePullPolicy of the injected container: Always, IfNotPresent or
	// Never. Default IfNotPresent.
	ImagePullPolicy corev1.PullPolicy
	// RedisSecret names the Secret (key redis-url) used when a Pod has no
	// AnnotationRedisSecret. Empty: such Pods are rejected. Default
	// "resilience-redis".
	RedisSecret string
	// ConfigMap names the ConfigMap (key config.yaml) mounted when a Pod has
	// no AnnotationConfigMap. Empty (the default): none.
	ConfigMap string
	// APITokenSecret names the Secret (key api-token) mounted when a Pod has
	// no AnnotationAPITokenSecret. Empty (the default): no token.
	APITokenSecret string
	// Resources of the injected container. Requests and limits for cpu and
	// memory are all required, and no request may exceed its limit.
	// Default: requests 50m/64Mi, limits 500m/256Mi.
	Resources corev1.ResourceRequirements
}

// DefaultConfig returns the injector's defaults, the ones `sidecar-injector`
// uses when no flag changes them. It passes Config.Validate.
func DefaultConfig() Config {
	return Config{
		SidecarImage:    DefaultImage,
		ImagePullPolicy: corev1.PullIfNotPresent,
		RedisSecret:     "resilience-redis",
		Resources: corev1.ResourceRequirements{
			Requests: corev1.ResourceList{
				corev1.ResourceCPU:    resource.MustParse("50m"),
				corev1.ResourceMemory: resource.MustParse("64Mi"),
			},
			Limits: corev1.ResourceList{
				corev1.ResourceCPU:    resource.MustParse("500m"),
				corev1.ResourceMemory: resource.MustParse("256Mi"),
			},
		},
	}
}

// Validate reports every problem of the configuration at once, each naming
// the flag that sets the field; nil means New accepts it.
func (c Config) Validate() error {
	var errs []error
	if strings.TrimSpace(c.SidecarImage) == "" || strings.ContainsAny(c.SidecarImage, " \t\n") {
		errs = append(errs, fmt.Errorf("--sidecar-image: %q is not an image reference", c.SidecarImage))
	}
	switch c.ImagePullPolicy {
	case corev1.PullAlways, corev1.PullIfNotPresent, corev1.PullNever:
	default:
		errs = append(errs, fmt.Errorf("--image-pull-policy: %q must be Always, IfNotPresent or Never", c.ImagePullPolicy))
	}
	for _, f := range []struct{ flag, v string }{
		{"--redis-secret", c.RedisSecret}, {"--config-map", c.ConfigMap}, {"--api-token-secret", c.APITokenSecret},
	} {
		if f.v == "" {
			continue
		}
		if msgs := validation.IsDNS1123Subdomain(f.v); len(msgs) > 0 {
			errs = append(errs, fmt.Errorf("%s: %q is not a valid object name: %s", f.flag, f.v, strings.Join(msgs, "; ")))
		}
	}
	for _, r := range []corev1.ResourceName{corev1.ResourceCPU, corev1.ResourceMemory} {
		req, okReq := c.Resources.Requests[r]
		limit, okLimit := c.Resources.Limits[r]
		switch {
		case !okReq || req.Sign() <= 0:
			errs = append(errs, fmt.Errorf("--sidecar-%s-request: must be set and positive", r))
		case !okLimit || limit.Sign() <= 0:
			errs = append(errs, fmt.Errorf("--sidecar-%s-limit: must be set and positive", r))
		case req.Cmp(limit) > 0:
			errs = append(errs, fmt.Errorf("--sidecar-%s-request: %s exceeds the limit %s", r, req.String(), limit.String()))
		}
	}
	return errors.Join(errs...)
}
