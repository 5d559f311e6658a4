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
