package k8s

import (
	"context"
	"errors"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// TestNoSilentNonInjection: a Pod that asks for the sidecar where the
// injector does not run is refused by the ValidatingAdmissionPolicy
// resilience-sidecar-injected, with a message saying why: the namespace
// lacks the label, or has it but is one the webhook never injects in.
func TestNoSilentNonInjection(t *testing.T) {
	ctx := t.Context()
	unlabelled := newNamespace(t, false)
	// The webhook excludes the injector's own namespace even when labelled.
	excluded := "resilience-system"
	if _, err := env.admin.create(ctx, "/api/v1/namespaces", &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{
		Name: excluded, Labels: map[string]string{namespaceLabel: "enabled"},
	}}, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := env.admin.create(ctx, "/api/v1/namespaces/"+excluded+"/serviceaccounts",
		&corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "default"}}, nil); err != nil {
		t.Fatal(err)
	}
	const prefix = `ValidatingAdmissionPolicy 'resilience-sidecar-injected' with binding 'resilience-sidecar-injected' denied request: ` +
		`resilience sidecar: the Pod is annotated resilience.seed-a88e5317.io/inject: "true" but the sidecar was not injected`
	tests := []struct {
		ns   string
		want string
	}{
		{unlabelled, "namespace " + unlabelled + " lacks the label resilience.seed-a88e5317.io/injection=enabled " +
			"(kubectl label namespace " + unlabelled + " resilience.seed-a88e5317.io/injection=enabled)"},
		{excluded, "namespace resilience-system has the label resilience.seed-a88e5317.io/injection=enabled, so the sidecar injector is not registered for it or did not run"},
	}
	for _, tt := range tests {
		_, _, err := env.createPod(ctx, tt.ns, appPod("asks", injectAnnotations()))
		var apiErr *apiError
		if !errors.As(err, &apiErr) {
			t.Fatalf("namespace %s: Pod admitted without the sidecar: %v", tt.ns, err)
		}
		for _, w := range []string{prefix, tt.want} {
			if !strings.Contains(apiErr.status.Message, w) {
				t.Errorf("namespace %s: message %q lacks %q", tt.ns, apiErr.status.Message, w)
			}
		}
		// Opting out, or not asking, stays possible there.
		if _, _, err := env.createPod(ctx, tt.ns, appPod("opted-out", map[string]string{annInject: "false"})); err != nil {
			t.Errorf("namespace %s: Pod with inject false refused: %v", tt.ns, err)
		}
	}
}

// workloadKinds are the workloads whose pod templates the policies check,
// each made from a pod template.
var workloadKinds = []struct {
	kind, path string
	make       func(name string, tmpl corev1.PodTemplateSpec) any
}{
	{"Deployment", "/apis/apps/v1/namespaces/%s/deployments", func(name string, tmpl corev1.PodTemplateSpec) any {
		return &appsv1.Deployment{
			TypeMeta: metav1.TypeMeta{APIVersion: "apps/v1", Kind: "Deployment"}, ObjectMeta: metav1.ObjectMeta{Name: name},
			Spec: appsv1.DeploymentSpec{Selector: selector(tmpl), Template: tmpl},
		}
	}},
	{"StatefulSet", "/apis/apps/v1/namespaces/%s/statefulsets", func(name string, tmpl corev1.PodTemplateSpec) any {
		return &appsv1.StatefulSet{
			TypeMeta: metav1.TypeMeta{APIVersion: "apps/v1", Kind: "StatefulSet"}, ObjectMeta: metav1.ObjectMeta{Name: name},
			Spec: appsv1.StatefulSetSpec{Selector: selector(tmpl), Template: tmpl, ServiceName: name},
		}
	}},
	{"DaemonSet", "/apis/apps/v1/namespaces/%s/daemonsets", func(name string, tmpl corev1.PodTemplateSpec) any {
		return &appsv1.DaemonSet{
			TypeMeta: metav1.TypeMeta{APIVersion: "apps/v1", Kind: "DaemonSet"}, ObjectMeta: metav1.ObjectMeta{Name: name},
			Spec: appsv1.DaemonSetSpec{Selector: selector(tmpl), Template: tmpl},
		}
	}},
	{"Job", "/apis/batch/v1/namespaces/%s/jobs", func(name string, tmpl corev1.PodTemplateSpec) any {
		tmpl.Spec.RestartPolicy = corev1.RestartPolicyNever
		return &batchv1.Job{
			TypeMeta: metav1.TypeMeta{APIVersion: "batch/v1", Kind: "Job"}, ObjectMeta: metav1.ObjectMeta{Name: name},
			Spec: batchv1.JobSpec{Template: tmpl},
		}
	}},
	{"CronJob", "/apis/batch/v1/namespaces/%s/cronjobs", func(name string, tmpl corev1.PodTemplateSpec) any {
		tmpl.Spec.RestartPolicy = corev1.RestartPolicyNever
		return &batchv1.CronJob{
			TypeMeta: metav1.TypeMeta{APIVersion: "batch/v1", Kind: "CronJob"}, ObjectMeta: metav1.ObjectMeta{Name: name},
			Spec: batchv1.CronJobSpec{Schedule: "*/5 * * * *", JobTemplate: batchv1.JobTemplateSpec{Spec: batchv1.JobSpec{Template: tmpl}}},
		}
	}},
}

func selector(tmpl corev1.PodTemplateSpec) *metav1.LabelSelector {
	return &metav1.LabelSelector{MatchLabels: tmpl.Labels}
}

func template(annotations map[string]string) corev1.PodTemplateSpec {
	return corev1.PodTemplateSpec{
		ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"app": "w"}, Annotations: annotations},
		Spec:       appPodSpec(),
	}
}

// createWorkload creates a workload of kind k in ns; it returns the
// warnings and the error.
func createWorkload(ctx context.Context, ns string, k int, annotations map[string]string) ([]string, error) {
	wk := workloadKinds[k]
	obj := wk.make(uniqueName(strings.ToLower(wk.kind)), template(annotations))
	r, err := env.admin.create(ctx, strings.Replace(wk.path, "%s", ns, 1), obj, nil)
	return r.warnings, err
}

// TestTemplateAnnotationsAtApply: a workload whose pod template has bad
// resilience annotations is refused when it is applied (by the policy
// resilience-sidecar-template-annotations), with a message naming the
// annotation; good ones are admitted. Every workload kind is checked.
func TestTemplateAnnotationsAtApply(t *testing.T) {
	ns := newNamespace(t, true)
	const deny = `ValidatingAdmissionPolicy 'resilience-sidecar-template-annotations' with binding 'resilience-sidecar-template-annotations' denied request: resilience sidecar: `
	tests := []struct {
		name        string
		annotations map[string]string
		want        string // "" means admitted
	}{
		{"no resilience annotation", map[string]string{"example.com/x": "y"}, ""},
		{"good", injectAnnotations("resilience.seed-a88e5317.io/port", "6000", "resilience.seed-a88e5317.io/redis-secret", "redis.prod",
			"resilience.seed-a88e5317.io/redis-mode", "sentinel", "resilience.seed-a88e5317.io/namespace", "orders"), ""},
		{"opted out", map[string]string{annInject: "false"}, ""},
		{"bad inject", map[string]string{annInject: "True"},
			`pod template annotation resilience.seed-a88e5317.io/inject: "True" must be "true" or "false"`},
		{"unknown", injectAnnotations("resilience.seed-a88e5317.io/injected", "true"),
			"pod template annotation resilience.seed-a88e5317.io/injected unknown"},
		{"bad name", injectAnnotations("resilience.seed-a88e5317.io/redis-secret", "Redis_Secret"),
			`pod template annotation resilience.seed-a88e5317.io/redis-secret: "Redis_Secret" is not a valid object name`},
		{"bad port", injectAnnotations("resilience.seed-a88e5317.io/metrics-port", "0"),
			`pod template annotation resilience.seed-a88e5317.io/metrics-port: "0" is not a port number (1-65535)`},
		{"same ports", injectAnnotations("resilience.seed-a88e5317.io/port", "9090"),
			"pod template annotations resilience.seed-a88e5317.io/port and resilience.seed-a88e5317.io/metrics-port: the gRPC and metrics ports must differ"},
		{"bad redis mode", injectAnnotations("resilience.seed-a88e5317.io/redis-mode", "ring"),
			`pod template annotation resilience.seed-a88e5317.io/redis-mode: "ring" must be one of standalone, cluster, sentinel`},
		{"bad namespace", injectAnnotations("resilience.seed-a88e5317.io/namespace", "-x"),
			`pod template annotation resilience.seed-a88e5317.io/namespace: "-x" must be 1-63 characters`},
		{"good settings", injectAnnotations(ann+"cpu-request", "100m", ann+"cpu-limit", "1.5", ann+"memory-request", "64Mi",
			ann+"memory-limit", "1Gi", ann+"log-level", "warn", ann+"image", "ghcr.io/acme/sidecar@sha256:"+strings.Repeat("ab", 32),
			ann+"env", "OTEL_SERVICE_NAME=orders,X_Y=a=b", ann+"shutdown-seconds", "15",
			ann+"unix-socket", "true", ann+"unix-socket-mode", "0660"), ""},
		{"bad quantity", injectAnnotations(ann+"cpu-limit", "2 cores"),
			`pod template annotation resilience.seed-a88e5317.io/cpu-limit: "2 cores" is not a positive quantity`},
		{"zero quantity", injectAnnotations(ann+"memory-request", "0Mi"),
			`pod template annotation resilience.seed-a88e5317.io/memory-request: "0Mi" is not a positive quantity`},
		{"request above limit", injectAnnotations(ann+"cpu-request", "2", ann+"cpu-limit", "500m"),
			"pod template annotations resilience.seed-a88e5317.io/cpu-request (or memory-request) exceeds"},
		{"bad log level", injectAnnotations(ann+"log-level", "INFO"),
			`pod template annotation resilience.seed-a88e5317.io/log-level: "INFO" must be one of debug, info, warn, error`},
		{"image without tag", injectAnnotations(ann+"image", "ghcr.io/acme/sidecar"),
			`pod template annotation resilience.seed-a88e5317.io/image: "ghcr.io/acme/sidecar" is not an image reference with a tag or a digest`},
		{"bad env", injectAnnotations(ann+"env", "1A=x"),
			`pod template annotation resilience.seed-a88e5317.io/env: "1A=x" must be NAME=value pairs`},
		{"reserved env", injectAnnotations(ann+"env", "A=1,SIDECAR_REDIS_URL=redis://x"),
			`pod template annotation resilience.seed-a88e5317.io/env: "A=1,SIDECAR_REDIS_URL=redis://x" must be`},
		{"env twice", injectAnnotations(ann+"env", "A=1,A=2"),
			`pod template annotation resilience.seed-a88e5317.io/env: "A=1,A=2" must be`},
		{"bad shutdown", injectAnnotations(ann+"shutdown-seconds", "0"),
			`pod template annotation resilience.seed-a88e5317.io/shutdown-seconds: "0" must be a whole number of seconds from 1 to 300`},
		{"bad unix socket", injectAnnotations(ann+"unix-socket", "on"),
			`pod template annotation resilience.seed-a88e5317.io/unix-socket: "on" must be "true" or "false"`},
		{"socket mode without socket", injectAnnotations(ann+"unix-socket-mode", "0660"),
			`pod template annotation resilience.seed-a88e5317.io/unix-socket-mode: "0660" must be octal permission bits from 0600 to 0777, with`},
		{"bad socket mode", injectAnnotations(ann+"unix-socket", "true", ann+"unix-socket-mode", "0600 "),
			`pod template annotation resilience.seed-a88e5317.io/unix-socket-mode: "0600 " must be octal`},
		{"port with socket", injectAnnotations(ann+"unix-socket", "true", ann+"port", "6000"),
			"pod template annotation resilience.seed-a88e5317.io/port: the gRPC port is not used with"},
	}
	for k, wk := range workloadKinds {
		for _, tt := range tests {
			t.Run(wk.kind+"/"+tt.name, func(t *testing.T) {
				warnings, err := createWorkload(t.Context(), ns, k, tt.annotations)
				if tt.want == "" {
					if err != nil {
						t.Fatalf("refused: %v", err)
					}
					if len(warnings) != 0 {
						t.Errorf("warnings: %q", warnings)
					}
					return
				}
				var apiErr *apiError
				if !errors.As(err, &apiErr) {
					t.Fatalf("admitted: %v", err)
				}
				if !strings.Contains(apiErr.status.Message, deny+tt.want) {
					t.Errorf("message %q lacks %q", apiErr.status.Message, deny+tt.want)
				}
			})
		}
	}
}

// TestTemplateWarningInUnlabelledNamespace: a workload that asks for the
// sidecar in a namespace without the label is admitted with a warning that
// its Pods will be refused (and they are).
func TestTemplateWarningInUnlabelledNamespace(t *testing.T) {
	ns := newNamespace(t, false)
	for k, wk := range workloadKinds {
		warnings, err := createWorkload(t.Context(), ns, k, injectAnnotations())
		if err != nil {
			t.Fatalf("%s refused: %v", wk.kind, err)
		}
		want := "resilience sidecar: the pod template asks for the sidecar but namespace " + ns +
			" lacks the label resilience.seed-a88e5317.io/injection=enabled, so its Pods will be refused"
		if len(warnings) != 1 || !strings.Contains(warnings[0], want) {
			t.Errorf("%s: warnings %q, want one containing %q", wk.kind, warnings, want)
		}
	}
	if _, _, err := env.createPod(t.Context(), ns, appPod("asks", injectAnnotations())); err == nil {
		t.Error("the Pod such a workload would create was admitted without the sidecar")
	}
}

// TestTemplateShutdownWarning: a workload whose sidecar drain bound does
// not fit in its terminationGracePeriodSeconds is admitted with a warning;
// one that fits gets none.
func TestTemplateShutdownWarning(t *testing.T) {
	ns := newNamespace(t, true)
	for k, wk := range workloadKinds {
		warnings, err := createWorkload(t.Context(), ns, k, injectAnnotations(ann+"shutdown-seconds", "45"))
		if err != nil {
			t.Fatalf("%s refused: %v", wk.kind, err)
		}
		want := "resilience sidecar: pod template annotation resilience.seed-a88e5317.io/shutdown-seconds is not below the terminationGracePeriodSeconds"
		if len(warnings) != 1 || !strings.Contains(warnings[0], want) {
			t.Errorf("%s: warnings %q, want one containing %q", wk.kind, warnings, want)
		}
		if warnings, err := createWorkload(t.Context(), ns, k, injectAnnotations(ann+"shutdown-seconds", "29")); err != nil || len(warnings) != 0 {
			t.Errorf("%s with 29 s: warnings %q, error %v", wk.kind, warnings, err)
		}
	}
}

// TestPodWarnings: suspicious but allowed Pods are admitted with the
// injector's warnings, which kubectl prints.
func TestPodWarnings(t *testing.T) {
	ns := newNamespace(t, true)
	ownAddr := appPod("", injectAnnotations())
	ownAddr.Spec.Containers[0].Env = []corev1.EnvVar{{Name: "SIDECAR_ADDR", Value: "10.0.0.1:50051"}}
	tests := []struct {
		name     string
		pod      *corev1.Pod
		injected bool
		want     []string
	}{
		{"settings without inject", appPod("", map[string]string{"resilience.seed-a88e5317.io/port": "6000"}), false,
			[]string{`resilience sidecar: annotation resilience.seed-a88e5317.io/port has no effect: the Pod does not ask for the sidecar (resilience.seed-a88e5317.io/inject: "true")`}},
		{"settings with inject false", appPod("", map[string]string{annInject: "false", "resilience.seed-a88e5317.io/redis-secret": "r"}), false,
			[]string{`resilience sidecar: annotation resilience.seed-a88e5317.io/redis-secret has no effect`}},
		{"own SIDECAR_ADDR", ownAddr, true,
			[]string{`resilience sidecar: container "app" sets SIDECAR_ADDR itself (kept as it is); the injected sidecar listens on 127.0.0.1:50051`}},
		{"nothing suspicious", appPod("", injectAnnotations()), true, nil},
		{"drain longer than the grace period", appPod("", injectAnnotations(ann+"shutdown-seconds", "30")), true,
			[]string{"resilience sidecar: annotation resilience.seed-a88e5317.io/shutdown-seconds: 30 s is not below the Pod's terminationGracePeriodSeconds (30 s)"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.pod.Name = uniqueName("warned")
			created, warnings, err := env.createPod(t.Context(), ns, tt.pod)
			if err != nil {
				t.Fatal(err)
			}
			if hasSidecar(created) != tt.injected {
				t.Errorf("injected %v, want %v", hasSidecar(created), tt.injected)
			}
			if len(warnings) != len(tt.want) {
				t.Fatalf("warnings %q, want %d", warnings, len(tt.want))
			}
			for i, w := range tt.want {
				if !strings.Contains(warnings[i], w) {
					t.Errorf("warning %q lacks %q", warnings[i], w)
				}
			}
		})
	}
}
