package k8s

import (
	"errors"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
)

const ann = "resilience.seed-a88e5317.io/"

// argValue returns the value of --flag=value in args, or "" when absent.
func argValue(args []string, flag string) string {
	for _, a := range args {
		if v, ok := strings.CutPrefix(a, flag+"="); ok {
			return v
		}
	}
	return ""
}

func mountPath(ms []corev1.VolumeMount, name string) string {
	for _, m := range ms {
		if m.Name == name {
			return m.MountPath
		}
	}
	return ""
}

// TestPerWorkloadSettings: the per-Pod annotations reach the stored Pod
// (through the real API server, Pod Security "restricted" enforced): the
// sidecar's resources, log level, image, extra env, drain bound and unix
// socket mode; gRPC and HTTP/JSON on loopback (or sockets) only, metrics on
// the Pod IP; and the API token mounted in the app containers too, under
// SIDECAR_API_TOKEN_FILE (the name the clients read).
func TestPerWorkloadSettings(t *testing.T) {
	ns := newNamespace(t, true)
	tests := []struct {
		name  string
		ann   map[string]string
		check func(t *testing.T, pod *corev1.Pod, sc *corev1.Container)
	}{
		{"defaults: loopback only", injectAnnotations(), func(t *testing.T, pod *corev1.Pod, sc *corev1.Container) {
			for flag, want := range map[string]string{
				"--listen": "127.0.0.1:50051", "--http-listen": "127.0.0.1:50080", "--metrics-listen": "0.0.0.0:9090",
			} {
				if got := argValue(sc.Args, flag); got != want {
					t.Errorf("%s=%q, want %q (args %q)", flag, got, want, sc.Args)
				}
			}
			if slices.ContainsFunc(sc.Ports, func(p corev1.ContainerPort) bool { return p.ContainerPort == 50051 }) {
				t.Errorf("the loopback gRPC port is declared: %+v", sc.Ports)
			}
			for _, p := range []*corev1.Probe{sc.StartupProbe, sc.LivenessProbe, sc.ReadinessProbe} {
				if p == nil || p.HTTPGet == nil || p.HTTPGet.Path != "/metrics" || p.HTTPGet.Port.String() != "sidecar-metrics" {
					t.Errorf("probe %+v: want GET /metrics on sidecar-metrics (the kubelet cannot reach loopback)", p)
				}
			}
			if got := envValue(pod.Spec.Containers[0].Env, "SIDECAR_API_TOKEN_FILE"); got != "" {
				t.Errorf("no token configured, yet the app has SIDECAR_API_TOKEN_FILE=%q", got)
			}
		}},
		{"resources, log level, image, env, shutdown", injectAnnotations(
			ann+"cpu-request", "100m", ann+"cpu-limit", "1", ann+"memory-request", "96Mi", ann+"memory-limit", "512Mi",
			ann+"log-level", "debug", ann+"image", "registry.example.com/team/sidecar:1.2.3",
			ann+"env", "SIDECAR_STORE_TIMEOUT=2s,OTEL_SERVICE_NAME=orders", ann+"shutdown-seconds", "20",
		), func(t *testing.T, _ *corev1.Pod, sc *corev1.Container) {
			for _, q := range []struct {
				list corev1.ResourceList
				name corev1.ResourceName
				want string
			}{
				{sc.Resources.Requests, corev1.ResourceCPU, "100m"}, {sc.Resources.Limits, corev1.ResourceCPU, "1"},
				{sc.Resources.Requests, corev1.ResourceMemory, "96Mi"}, {sc.Resources.Limits, corev1.ResourceMemory, "512Mi"},
			} {
				if got := q.list[q.name]; got.Cmp(resource.MustParse(q.want)) != 0 {
					t.Errorf("%s: %s, want %s", q.name, got.String(), q.want)
				}
			}
			if sc.Image != "registry.example.com/team/sidecar:1.2.3" {
				t.Errorf("image %q", sc.Image)
			}
			for name, want := range map[string]string{
				"SIDECAR_LOG_LEVEL": "debug", "SIDECAR_SHUTDOWN_TIMEOUT": "20s",
				"SIDECAR_STORE_TIMEOUT": "2s", "OTEL_SERVICE_NAME": "orders",
			} {
				if got := envValue(sc.Env, name); got != want {
					t.Errorf("sidecar %s=%q, want %q", name, got, want)
				}
			}
		}},
		{"unix socket", injectAnnotations(ann+"unix-socket", "true", ann+"unix-socket-mode", "0660"),
			func(t *testing.T, pod *corev1.Pod, sc *corev1.Container) {
				for flag, want := range map[string]string{
					"--listen": "unix:///var/run/resilience-sidecar/grpc.sock", "--listen-mode": "0660",
					"--http-listen": "unix:///var/run/resilience-sidecar/http.sock", "--metrics-listen": "0.0.0.0:9090",
				} {
					if got := argValue(sc.Args, flag); got != want {
						t.Errorf("%s=%q, want %q", flag, got, want)
					}
				}
				i := slices.IndexFunc(pod.Spec.Volumes, func(v corev1.Volume) bool { return v.Name == "resilience-sidecar-socket" })
				if i < 0 || pod.Spec.Volumes[i].EmptyDir == nil {
					t.Fatalf("no emptyDir resilience-sidecar-socket: %+v", pod.Spec.Volumes)
				}
				for _, c := range []corev1.Container{*sc, pod.Spec.Containers[0]} {
					if got := mountPath(c.VolumeMounts, "resilience-sidecar-socket"); got != "/var/run/resilience-sidecar" {
						t.Errorf("container %s mounts the sockets at %q", c.Name, got)
					}
				}
				if got := envValue(pod.Spec.Containers[0].Env, "SIDECAR_ADDR"); got != "unix:///var/run/resilience-sidecar/grpc.sock" {
					t.Errorf("app SIDECAR_ADDR=%q", got)
				}
			}},
		{"API token wired into the app", injectAnnotations(ann+"api-token-secret", "orders-token"),
			func(t *testing.T, pod *corev1.Pod, sc *corev1.Container) {
				const file = "/var/run/secrets/resilience-sidecar/api-token"
				i := slices.IndexFunc(pod.Spec.Volumes, func(v corev1.Volume) bool { return v.Name == "resilience-sidecar-token" })
				if i < 0 || pod.Spec.Volumes[i].Secret == nil || pod.Spec.Volumes[i].Secret.SecretName != "orders-token" {
					t.Fatalf("no token volume from Secret orders-token: %+v", pod.Spec.Volumes)
				}
				for _, c := range []corev1.Container{*sc, pod.Spec.Containers[0]} {
					if got := envValue(c.Env, "SIDECAR_API_TOKEN_FILE"); got != file {
						t.Errorf("container %s: SIDECAR_API_TOKEN_FILE=%q, want %q", c.Name, got, file)
					}
					j := slices.IndexFunc(c.VolumeMounts, func(m corev1.VolumeMount) bool { return m.Name == "resilience-sidecar-token" })
					if j < 0 || c.VolumeMounts[j].MountPath != "/var/run/secrets/resilience-sidecar" || !c.VolumeMounts[j].ReadOnly {
						t.Errorf("container %s: token not mounted read-only: %+v", c.Name, c.VolumeMounts)
					}
				}
			}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pod, warnings, err := env.createPod(t.Context(), ns, appPod(uniqueName("settings"), tt.ann))
			if err != nil {
				t.Fatal(err)
			}
			if len(warnings) != 0 {
				t.Errorf("warnings: %q", warnings)
			}
			sc := sidecar(pod)
			if sc == nil {
				t.Fatal("no sidecar")
			}
			tt.check(t, pod, sc)
		})
	}
}

// TestSettingRefusals: a bad value of each per-Pod annotation refuses the
// Pod at the webhook, with a message naming the annotation.
func TestSettingRefusals(t *testing.T) {
	ns := newNamespace(t, true)
	socketTaken := appPod("", injectAnnotations(ann+"unix-socket", "true"))
	socketTaken.Spec.Volumes = []corev1.Volume{{Name: "mine", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}}}
	socketTaken.Spec.Containers[0].VolumeMounts = []corev1.VolumeMount{{Name: "mine", MountPath: "/var/run/resilience-sidecar"}}
	tests := []struct {
		name string
		pod  *corev1.Pod
		want string
	}{
		{"cpu request", appPod("", injectAnnotations(ann+"cpu-request", "lots")), `annotation resilience.seed-a88e5317.io/cpu-request: "lots" is not a positive quantity`},
		{"memory limit zero", appPod("", injectAnnotations(ann+"memory-limit", "0")), `annotation resilience.seed-a88e5317.io/memory-limit: "0" is not a positive quantity`},
		{"request above limit", appPod("", injectAnnotations(ann+"memory-request", "1Gi")),
			"annotations resilience.seed-a88e5317.io/memory-request and resilience.seed-a88e5317.io/memory-limit: the memory request 1Gi exceeds the limit 256Mi"},
		{"log level", appPod("", injectAnnotations(ann+"log-level", "trace")), `annotation resilience.seed-a88e5317.io/log-level: "trace" must be one of debug, info, warn, error`},
		{"image without tag", appPod("", injectAnnotations(ann+"image", "registry.example.com/sidecar")), `annotation resilience.seed-a88e5317.io/image: "registry.example.com/sidecar" is not an image reference with a tag or a digest`},
		{"env syntax", appPod("", injectAnnotations(ann+"env", "A B=1")), `annotation resilience.seed-a88e5317.io/env: "A B=1" must be NAME=value pairs`},
		{"env reserved", appPod("", injectAnnotations(ann+"env", "SIDECAR_LISTEN=0.0.0.0:1")), `annotation resilience.seed-a88e5317.io/env: "SIDECAR_LISTEN=0.0.0.0:1" sets SIDECAR_LISTEN, which the injector sets`},
		{"shutdown seconds", appPod("", injectAnnotations(ann+"shutdown-seconds", "301")), `annotation resilience.seed-a88e5317.io/shutdown-seconds: "301" must be a whole number of seconds from 1 to 300`},
		{"unix socket value", appPod("", injectAnnotations(ann+"unix-socket", "yes")), `annotation resilience.seed-a88e5317.io/unix-socket: "yes" must be "true" or "false"`},
		{"socket mode", appPod("", injectAnnotations(ann+"unix-socket", "true", ann+"unix-socket-mode", "0500")), `annotation resilience.seed-a88e5317.io/unix-socket-mode: "0500" must be octal permission bits from 0600 to 0777`},
		{"socket mode without socket", appPod("", injectAnnotations(ann+"unix-socket-mode", "0660")), `annotation resilience.seed-a88e5317.io/unix-socket-mode: "0660" needs resilience.seed-a88e5317.io/unix-socket: "true"`},
		{"port with socket", appPod("", injectAnnotations(ann+"unix-socket", "true", ann+"port", "6000")), "annotation resilience.seed-a88e5317.io/port: the gRPC port is not used with"},
		{"socket directory taken", socketTaken, `containers "app" mounts "mine" at /var/run/resilience-sidecar, where the injector mounts the sidecar's sockets`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.pod.Name = uniqueName("refused")
			_, _, err := env.createPod(t.Context(), ns, tt.pod)
			var apiErr *apiError
			if !errors.As(err, &apiErr) {
				t.Fatalf("Pod admitted or other error: %v", err)
			}
			want := `admission webhook "` + webhookName + `" denied the request: resilience sidecar injection: `
			if msg := apiErr.status.Message; !strings.HasPrefix(msg, want) || !strings.Contains(msg, tt.want) {
				t.Errorf("message %q lacks %q after %q", msg, tt.want, want)
			}
		})
	}
}
