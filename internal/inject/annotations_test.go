package inject

import (
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
)

func TestParseAnnotations(t *testing.T) {
	def := DefaultConfig()
	noRedisDefault := DefaultConfig()
	noRedisDefault.RedisSecret = ""
	withDefaults := DefaultConfig()
	withDefaults.ConfigMap = "cfg-default"
	withDefaults.APITokenSecret = "token-default"

	tests := []struct {
		name       string
		cfg        Config
		ann        map[string]string
		wantInject bool
		want       settings
		wantErr    []string // substrings of the error, all required
	}{
		{name: "no annotations", cfg: def},
		{name: "opt out", cfg: def, ann: map[string]string{AnnotationInject: "false", AnnotationPort: "not checked"}},
		{name: "other annotations are none of our business", cfg: def,
			ann: map[string]string{"example.com/inject": "yes", "resilience.seed-a88e5317.io.example/x": "y"}},
		{
			name: "defaults", cfg: def, ann: map[string]string{AnnotationInject: "true"}, wantInject: true,
			want: settings{namespace: "shop", redisSecret: "resilience-redis", port: DefaultPort, metricsPort: DefaultMetricsPort},
		},
		{
			name: "injector defaults for config map and token; namespace left to the file", cfg: withDefaults,
			ann: map[string]string{AnnotationInject: "true"}, wantInject: true,
			want: settings{configMap: "cfg-default", apiTokenSecret: "token-default", redisSecret: "resilience-redis",
				port: DefaultPort, metricsPort: DefaultMetricsPort},
		},
		{
			name: "everything set", cfg: withDefaults, wantInject: true,
			ann: map[string]string{
				AnnotationInject: "true", AnnotationNamespace: "orders.v2", AnnotationConfigMap: "orders-sidecar",
				AnnotationRedisSecret: "orders-redis", AnnotationRedisMode: "sentinel",
				AnnotationAPITokenSecret: "orders-token", AnnotationPort: "7000", AnnotationMetricsPort: "7001",
				AnnotationStatus: "injected",
			},
			want: settings{namespace: "orders.v2", configMap: "orders-sidecar", redisSecret: "orders-redis",
				redisMode: "sentinel", apiTokenSecret: "orders-token", port: 7000, metricsPort: 7001},
		},
		{name: "inject yes", cfg: def, ann: map[string]string{AnnotationInject: "yes"},
			wantErr: []string{AnnotationInject, `"yes"`, `must be "true" or "false"`}},
		{name: "inject True", cfg: def, ann: map[string]string{AnnotationInject: "True"}, wantErr: []string{`"True"`}},
		{name: "typo in an annotation name, even without inject", cfg: def,
			ann:     map[string]string{AnnotationPrefix + "injct": "true"},
			wantErr: []string{AnnotationPrefix + "injct is unknown", AnnotationInject}},
		{name: "every problem at once", cfg: def,
			ann: map[string]string{
				AnnotationInject: "true", AnnotationConfigMap: "Bad_Name", AnnotationRedisMode: "master",
				AnnotationPort: "abc", AnnotationMetricsPort: "70000", AnnotationNamespace: "{orders}",
				AnnotationAPITokenSecret: "", AnnotationPrefix + "config": "x",
			},
			wantErr: []string{
				AnnotationConfigMap + `: "Bad_Name" is not a valid object name`,
				AnnotationRedisMode + `: "master" must be one of standalone, cluster, sentinel`,
				AnnotationPort + `: "abc" is not a port number`,
				AnnotationMetricsPort + `: "70000" is not a port number`,
				AnnotationNamespace + `: "{orders}" must be`,
				AnnotationAPITokenSecret + `: "" must not be empty`,
				AnnotationPrefix + "config is unknown",
			}},
		{name: "port 0", cfg: def, ann: map[string]string{AnnotationInject: "true", AnnotationPort: "0"},
			wantErr: []string{AnnotationPort + `: "0"`}},
		{name: "same ports", cfg: def, ann: map[string]string{AnnotationInject: "true", AnnotationPort: "9090"},
			wantErr: []string{"ports must differ (both 9090)"}},
		{name: "no Redis secret anywhere", cfg: noRedisDefault, ann: map[string]string{AnnotationInject: "true"},
			wantErr: []string{AnnotationRedisSecret + " is required"}},
		{
			name: "per-Pod settings", cfg: def, wantInject: true,
			ann: map[string]string{
				AnnotationInject: "true", AnnotationCPURequest: "0.1", AnnotationCPULimit: "2", AnnotationMemoryRequest: "100Mi",
				AnnotationMemoryLimit: "1Gi", AnnotationLogLevel: "warn", AnnotationImage: "localhost:5000/sidecar:dev_1",
				AnnotationEnv: "A=,B_2=x=y", AnnotationShutdownSeconds: "300", AnnotationUnixSocket: "true",
			},
			want: settings{namespace: "shop", redisSecret: "resilience-redis", port: DefaultPort, metricsPort: DefaultMetricsPort,
				cpuRequest: "100m", cpuLimit: "2", memoryRequest: "100Mi", memoryLimit: "1Gi", logLevel: "warn",
				image: "localhost:5000/sidecar:dev_1", env: "A=,B_2=x=y", shutdownSeconds: 300, unixSocket: true, socketMode: "0666"},
		},
		{
			name: "socket mode and a digest", cfg: def, wantInject: true,
			ann: map[string]string{AnnotationInject: "true", AnnotationUnixSocket: "true", AnnotationUnixSocketMode: "0600",
				AnnotationImage: "sidecar@sha256:" + strings.Repeat("0f", 32)},
			want: settings{namespace: "shop", redisSecret: "resilience-redis", port: DefaultPort, metricsPort: DefaultMetricsPort,
				image: "sidecar@sha256:" + strings.Repeat("0f", 32), unixSocket: true, socketMode: "0600"},
		},
		{name: "bad per-Pod settings", cfg: def,
			ann: map[string]string{
				AnnotationInject: "true", AnnotationCPURequest: "-1", AnnotationCPULimit: "1e3", AnnotationMemoryRequest: "0",
				AnnotationLogLevel: "verbose", AnnotationImage: "Sidecar:1", AnnotationEnv: "SIDECAR_NAMESPACE=x,A=1,A=2",
				AnnotationShutdownSeconds: "1.5", AnnotationUnixSocket: "1", AnnotationUnixSocketMode: "0660",
			},
			wantErr: []string{
				AnnotationCPURequest + `: "-1" is not a positive quantity`,
				AnnotationCPULimit + `: "1e3" is not a positive quantity`,
				AnnotationMemoryRequest + `: "0" is not a positive quantity`,
				AnnotationLogLevel + `: "verbose" must be one of debug, info, warn, error`,
				AnnotationImage + `: "Sidecar:1" is not an image reference with a tag or a digest`,
				AnnotationEnv + `: "SIDECAR_NAMESPACE=x,A=1,A=2" sets SIDECAR_NAMESPACE, which the injector sets`,
				AnnotationEnv + `: "SIDECAR_NAMESPACE=x,A=1,A=2" sets A twice`,
				AnnotationShutdownSeconds + `: "1.5" must be a whole number of seconds from 1 to 300`,
				AnnotationUnixSocket + `: "1" must be "true" or "false"`,
				AnnotationUnixSocketMode + `: "0660" needs ` + AnnotationUnixSocket,
			}},
		{name: "image without tag", cfg: def, ann: map[string]string{AnnotationInject: "true", AnnotationImage: "ghcr.io/a/b"},
			wantErr: []string{AnnotationImage + `: "ghcr.io/a/b"`}},
		{name: "bad env syntax", cfg: def, ann: map[string]string{AnnotationInject: "true", AnnotationEnv: "A=1,"},
			wantErr: []string{AnnotationEnv + `: "A=1," must be NAME=value pairs`}},
		{name: "shutdown 301", cfg: def, ann: map[string]string{AnnotationInject: "true", AnnotationShutdownSeconds: "301"},
			wantErr: []string{AnnotationShutdownSeconds + `: "301"`}},
		{name: "socket mode too open for nobody", cfg: def,
			ann:     map[string]string{AnnotationInject: "true", AnnotationUnixSocket: "true", AnnotationUnixSocketMode: "0500"},
			wantErr: []string{AnnotationUnixSocketMode + `: "0500" must be octal permission bits from 0600 to 0777`}},
		{name: "port with socket", cfg: def, ann: map[string]string{AnnotationInject: "true", AnnotationUnixSocket: "true", AnnotationPort: "6000"},
			wantErr: []string{AnnotationPort + `: the gRPC port is not used with ` + AnnotationUnixSocket}},
		{name: "request above the injector's limit", cfg: def, ann: map[string]string{AnnotationInject: "true", AnnotationCPURequest: "750m"},
			wantErr: []string{"annotations " + AnnotationCPURequest + " and " + AnnotationCPULimit + ": the cpu request 750m exceeds the limit 500m"}},
		{name: "limit below the injector's request", cfg: def, ann: map[string]string{AnnotationInject: "true", AnnotationMemoryLimit: "32Mi"},
			wantErr: []string{"the memory request 64Mi exceeds the limit 32Mi"}},
		{
			name: "Redis secret from the annotation when the injector has no default", cfg: noRedisDefault,
			ann:        map[string]string{AnnotationInject: "true", AnnotationRedisSecret: "r"},
			wantInject: true,
			want:       settings{namespace: "shop", redisSecret: "r", port: DefaultPort, metricsPort: DefaultMetricsPort},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			inject, s, err := parseAnnotations(tt.ann, "shop", tt.cfg)
			if len(tt.wantErr) > 0 {
				if err == nil {
					t.Fatalf("got no error, want one containing %q", tt.wantErr)
				}
				for _, w := range tt.wantErr {
					if !strings.Contains(err.Error(), w) {
						t.Errorf("error %q does not contain %q", err, w)
					}
				}
				if inject {
					t.Error("inject is true alongside an error")
				}
				return
			}
			if err != nil {
				t.Fatalf("unexpected error: %v", err)
			}
			if inject != tt.wantInject || s != tt.want {
				t.Errorf("got inject=%v %+v, want inject=%v %+v", inject, s, tt.wantInject, tt.want)
			}
		})
	}
}

func TestEscapePointerToken(t *testing.T) {
	for in, want := range map[string]string{
		"plain":                      "plain",
		AnnotationStatus:             "resilience.seed-a88e5317.io~1status",
		"a~b/c":                      "a~0b~1c",
		"~1":                         "~01",
		"":                           "",
		"resilience.seed-a88e5317.i": "resilience.seed-a88e5317.i",
	} {
		if got := escapePointerToken(in); got != want {
			t.Errorf("escapePointerToken(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestConfigValidate(t *testing.T) {
	if err := DefaultConfig().Validate(); err != nil {
		t.Fatalf("DefaultConfig is invalid: %v", err)
	}
	tests := []struct {
		name   string
		change func(*Config)
		want   string
	}{
		{"no image", func(c *Config) { c.SidecarImage = " " }, "--sidecar-image"},
		{"bad pull policy", func(c *Config) { c.ImagePullPolicy = "Sometimes" }, "--image-pull-policy"},
		{"bad secret name", func(c *Config) { c.RedisSecret = "UPPER" }, "--redis-secret"},
		{"bad config map name", func(c *Config) { c.ConfigMap = "a/b" }, "--config-map"},
		{"bad token secret name", func(c *Config) { c.APITokenSecret = "-x" }, "--api-token-secret"},
		{"no cpu request", func(c *Config) { delete(c.Resources.Requests, "cpu") }, "--sidecar-cpu-request"},
		{"no memory limit", func(c *Config) { delete(c.Resources.Limits, "memory") }, "--sidecar-memory-limit"},
		{"request above limit", func(c *Config) { c.Resources.Requests[corev1.ResourceMemory] = resource.MustParse("1Gi") },
			"--sidecar-memory-request: 1Gi exceeds the limit 256Mi"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := DefaultConfig()
			tt.change(&c)
			err := c.Validate()
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Validate() = %v, want an error naming %s", err, tt.want)
			}
			if _, err := New(c, nil); err == nil {
				t.Fatal("New accepted an invalid config")
			}
		})
	}
}
