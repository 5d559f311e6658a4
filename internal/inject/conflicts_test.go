package inject

import (
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
)

func TestConflicts(t *testing.T) {
	plain := settings{redisSecret: "r", port: DefaultPort, metricsPort: DefaultMetricsPort}
	withConfig := plain
	withConfig.configMap = "cfg"
	app := func(ports ...corev1.ContainerPort) []corev1.Container {
		return []corev1.Container{{Name: "app", Image: "app:1", Ports: ports}}
	}
	tests := []struct {
		name string
		spec corev1.PodSpec
		s    settings
		want []string // one substring per expected problem; none: no conflict
	}{
		{name: "none", spec: corev1.PodSpec{Containers: app(corev1.ContainerPort{ContainerPort: 8080})}, s: plain},
		{name: "host network", spec: corev1.PodSpec{HostNetwork: true, Containers: app()}, s: plain,
			want: []string{"hostNetwork"}},
		{name: "windows", spec: corev1.PodSpec{OS: &corev1.PodOS{Name: corev1.Windows}, Containers: app()}, s: plain,
			want: []string{`spec.os.name "windows"`}},
		{name: "linux is fine", spec: corev1.PodSpec{OS: &corev1.PodOS{Name: corev1.Linux}, Containers: app()}, s: plain},
		{name: "gRPC port taken by an init container", s: plain, spec: corev1.PodSpec{
			Containers:     app(),
			InitContainers: []corev1.Container{{Name: "seed", Ports: []corev1.ContainerPort{{ContainerPort: DefaultPort}}}},
		}, want: []string{`initContainers "seed" declares port 50051`}},
		{name: "port name taken", s: plain, spec: corev1.PodSpec{Containers: app(corev1.ContainerPort{Name: "sidecar-grpc", ContainerPort: 1})},
			want: []string{`port named "sidecar-grpc"`}},
		{name: "volume name taken", s: withConfig, spec: corev1.PodSpec{Containers: app(),
			Volumes: []corev1.Volume{{Name: configVolume}}}, want: []string{`volume "resilience-sidecar-config" already exists`}},
		{name: "volume name of a volume not added", s: plain, spec: corev1.PodSpec{Containers: app(),
			Volumes: []corev1.Volume{{Name: configVolume}}}},
		{name: "socket directory taken", s: settings{redisSecret: "r", port: DefaultPort, metricsPort: DefaultMetricsPort, unixSocket: true},
			spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "app", VolumeMounts: []corev1.VolumeMount{{Name: "run", MountPath: socketDir}}}}},
			want: []string{`containers "app" mounts "run" at /var/run/resilience-sidecar, where the injector mounts the sidecar's sockets`}},
		{name: "token directory taken: the app keeps its mount", s: settings{redisSecret: "r", port: DefaultPort, metricsPort: DefaultMetricsPort, apiTokenSecret: "t"},
			spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "app", VolumeMounts: []corev1.VolumeMount{{Name: "mine", MountPath: tokenDir}}}}}},
		{name: "all at once", s: withConfig, spec: corev1.PodSpec{HostNetwork: true,
			Containers: app(corev1.ContainerPort{ContainerPort: DefaultMetricsPort}),
			Volumes:    []corev1.Volume{{Name: configVolume}}},
			want: []string{"hostNetwork", "declares port 9090", "already exists"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := conflicts(&tt.spec, tt.s)
			if len(got) != len(tt.want) {
				t.Fatalf("got %d problems %q, want %d", len(got), got, len(tt.want))
			}
			for i, w := range tt.want {
				if !strings.Contains(got[i], w) {
					t.Errorf("problem %d %q lacks %q", i, got[i], w)
				}
			}
		})
	}
}

// TestShutdownWarnings: a drain bound that does not fit in the Pod's grace
// period (given, or the default 30 s) draws a warning naming the annotation.
func TestShutdownWarnings(t *testing.T) {
	sixty := int64(60)
	tests := []struct {
		name    string
		seconds int32
		grace   *int64
		want    string // "" means no warning
	}{
		{name: "unset", seconds: 0},
		{name: "fits the default", seconds: 29},
		{name: "equals the default", seconds: 30, want: "30 s is not below the Pod's terminationGracePeriodSeconds (30 s)"},
		{name: "fits the Pod's", seconds: 45, grace: &sixty},
		{name: "above the Pod's", seconds: 90, grace: &sixty, want: AnnotationShutdownSeconds + ": 90 s is not below the Pod's terminationGracePeriodSeconds (60 s)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := shutdownWarnings(&corev1.PodSpec{TerminationGracePeriodSeconds: tt.grace}, settings{shutdownSeconds: tt.seconds})
			switch {
			case tt.want == "" && len(got) != 0:
				t.Errorf("warnings %q, want none", got)
			case tt.want != "" && (len(got) != 1 || !strings.Contains(got[0], tt.want)):
				t.Errorf("warnings %q, want one containing %q", got, tt.want)
			}
		})
	}
}

// TestAppMountsKeepTheAppsTokenMount: a container that mounts something at
// the token's path itself keeps it and gets no second mount there.
func TestAppMountsKeepTheAppsTokenMount(t *testing.T) {
	s := settings{apiTokenSecret: "t", unixSocket: true}
	if got := appMounts(s, nil); len(got) != 2 {
		t.Errorf("no mounts of its own: got %+v, want the sockets and the token", got)
	}
	got := appMounts(s, []corev1.VolumeMount{{Name: "mine", MountPath: tokenDir}})
	if len(got) != 1 || got[0].Name != socketVolume {
		t.Errorf("own token mount: got %+v, want only the sockets", got)
	}
}
