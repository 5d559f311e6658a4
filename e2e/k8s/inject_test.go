package k8s

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// TestKubeAPIServerVersion checks that the tests run the pinned release,
// and that the build script builds that same one by default.
func TestKubeAPIServerVersion(t *testing.T) {
	var v struct {
		GitVersion string `json:"gitVersion"`
	}
	if err := env.admin.get(t.Context(), "/version", &v); err != nil {
		t.Fatal(err)
	}
	if v.GitVersion != kubeVersion {
		t.Errorf("kube-apiserver reports %q, want %q", v.GitVersion, kubeVersion)
	}
	script, err := os.ReadFile(filepath.Join(env.root, "scripts/build-kube-apiserver.sh"))
	if err != nil {
		t.Fatal(err)
	}
	if want := `KUBE_VERSION="${KUBE_VERSION:-` + kubeVersion + `}"`; !strings.Contains(string(script), want) {
		t.Errorf("scripts/build-kube-apiserver.sh does not default to %s (want a line %s)", kubeVersion, want)
	}
	makefile, err := os.ReadFile(filepath.Join(env.root, "Makefile"))
	if err != nil {
		t.Fatal(err)
	}
	if m := regexp.MustCompile(`(?m)^KUBE_VERSION\s*:=\s*(\S+)`).FindSubmatch(makefile); m == nil || string(m[1]) != kubeVersion {
		t.Errorf("the Makefile's KUBE_VERSION is not %s (found %q)", kubeVersion, m)
	}
	t.Logf("kube-apiserver %s: usable %v after it was started", v.GitVersion, env.started)
}

// checkInjected checks what the injector must have done to a stored Pod.
func checkInjected(t *testing.T, pod *corev1.Pod) {
	t.Helper()
	if len(pod.Spec.InitContainers) == 0 || pod.Spec.InitContainers[0].Name != sidecarName {
		t.Fatalf("Pod %s: the sidecar is not the first init container: %+v", pod.Name, names(pod.Spec.InitContainers))
	}
	sc := pod.Spec.InitContainers[0]
	if sc.RestartPolicy == nil || *sc.RestartPolicy != corev1.ContainerRestartPolicyAlways {
		t.Errorf("Pod %s: the sidecar is not a native sidecar (restartPolicy %v)", pod.Name, sc.RestartPolicy)
	}
	if sc.Image != sidecarImage {
		t.Errorf("Pod %s: sidecar image %q, want %q", pod.Name, sc.Image, sidecarImage)
	}
	n := 0
	for _, c := range append(slices.Clone(pod.Spec.InitContainers), pod.Spec.Containers...) {
		if c.Name == sidecarName {
			n++
		}
	}
	if n != 1 {
		t.Errorf("Pod %s: %d sidecar containers, want 1", pod.Name, n)
	}
	for _, c := range pod.Spec.Containers {
		if got := envValue(c.Env, "SIDECAR_ADDR"); got != "127.0.0.1:50051" {
			t.Errorf("Pod %s container %s: SIDECAR_ADDR=%q, want 127.0.0.1:50051", pod.Name, c.Name, got)
		}
	}
	if got := pod.Annotations[annStatus]; got != "injected" {
		t.Errorf("Pod %s: annotation %s=%q, want injected", pod.Name, annStatus, got)
	}
}

func names(cs []corev1.Container) []string {
	var out []string
	for _, c := range cs {
		out = append(out, c.Name)
	}
	return out
}

func envValue(env []corev1.EnvVar, name string) string {
	n, v := 0, ""
	for _, e := range env {
		if e.Name == name {
			n++
			v = e.Value
		}
	}
	if n > 1 {
		return fmt.Sprintf("(set %d times)", n)
	}
	return v
}

// TestPodInjected creates a Pod that asks for the sidecar in a labelled
// namespace that enforces Pod Security "restricted": the stored Pod has the
// sidecar, passes Pod Security, and reads back the same.
func TestPodInjected(t *testing.T) {
	ns := newNamespace(t, true)
	created, warnings, err := env.createPod(t.Context(), ns, appPod("app", injectAnnotations()))
	if err != nil {
		t.Fatal(err)
	}
	if len(warnings) != 0 {
		t.Errorf("warnings: %q", warnings)
	}
	checkInjected(t, created)
	var stored corev1.Pod
	if err := env.admin.get(t.Context(), podsPath(ns)+"/app", &stored); err != nil {
		t.Fatal(err)
	}
	checkInjected(t, &stored)
	if !slices.ContainsFunc(stored.Spec.Volumes, func(v corev1.Volume) bool { return strings.HasPrefix(v.Name, "kube-api-access-") }) {
		t.Errorf("the ServiceAccount admission plugin's token volume is gone: %+v", stored.Spec.Volumes)
	}
}

// TestPodNotAskingIsUntouched: a Pod without the inject annotation in a
// labelled namespace is stored as sent.
func TestPodNotAskingIsUntouched(t *testing.T) {
	ns := newNamespace(t, true)
	for _, ann := range []map[string]string{nil, {annInject: "false"}, {"example.com/other": "x"}} {
		created, _, err := env.createPod(t.Context(), ns, appPod(uniqueName("plain"), ann))
		if err != nil {
			t.Fatalf("annotations %v: %v", ann, err)
		}
		if hasSidecar(created) || created.Annotations[annStatus] != "" {
			t.Errorf("annotations %v: Pod was injected", ann)
		}
	}
}

// TestWorkloadPodsInjected stores a Deployment and the ReplicaSet its
// controller makes, then creates the ReplicaSet's Pods exactly as the
// ReplicaSet controller does (generateName, the template's labels and
// annotations, a controller ownerReference): each one is injected. The
// Deployment and ReplicaSet themselves are stored unchanged.
func TestWorkloadPodsInjected(t *testing.T) {
	ctx := t.Context()
	ns := newNamespace(t, true)
	replicas := int32(3)
	tmpl := corev1.PodTemplateSpec{
		ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"app": "web"}, Annotations: injectAnnotations()},
		Spec:       appPodSpec(),
	}
	dep := &appsv1.Deployment{
		TypeMeta:   metav1.TypeMeta{APIVersion: "apps/v1", Kind: "Deployment"},
		ObjectMeta: metav1.ObjectMeta{Name: "web"},
		Spec: appsv1.DeploymentSpec{
			Replicas: &replicas,
			Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "web"}},
			Template: tmpl,
		},
	}
	var storedDep appsv1.Deployment
	if _, err := env.admin.create(ctx, "/apis/apps/v1/namespaces/"+ns+"/deployments", dep, &storedDep); err != nil {
		t.Fatal(err)
	}
	if len(storedDep.Spec.Template.Spec.InitContainers) != 0 {
		t.Errorf("the Deployment's template was mutated: %+v", storedDep.Spec.Template.Spec.InitContainers)
	}
	yes := true
	rsTmpl := *tmpl.DeepCopy()
	rsTmpl.Labels["pod-template-hash"] = "5d4c9b7f8"
	rs := &appsv1.ReplicaSet{
		TypeMeta: metav1.TypeMeta{APIVersion: "apps/v1", Kind: "ReplicaSet"},
		ObjectMeta: metav1.ObjectMeta{
			Name:   "web-5d4c9b7f8",
			Labels: rsTmpl.Labels,
			OwnerReferences: []metav1.OwnerReference{{
				APIVersion: "apps/v1", Kind: "Deployment", Name: storedDep.Name, UID: storedDep.UID,
				Controller: &yes, BlockOwnerDeletion: &yes,
			}},
		},
		Spec: appsv1.ReplicaSetSpec{
			Replicas: &replicas,
			Selector: &metav1.LabelSelector{MatchLabels: rsTmpl.Labels},
			Template: rsTmpl,
		},
	}
	var storedRS appsv1.ReplicaSet
	if _, err := env.admin.create(ctx, "/apis/apps/v1/namespaces/"+ns+"/replicasets", rs, &storedRS); err != nil {
		t.Fatal(err)
	}
	for range replicas {
		// What the ReplicaSet controller sends (controller.GetPodFromTemplate).
		pod := &corev1.Pod{
			TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "Pod"},
			ObjectMeta: metav1.ObjectMeta{
				GenerateName: storedRS.Name + "-",
				Labels:       storedRS.Spec.Template.Labels,
				Annotations:  storedRS.Spec.Template.Annotations,
				OwnerReferences: []metav1.OwnerReference{{
					APIVersion: "apps/v1", Kind: "ReplicaSet", Name: storedRS.Name, UID: storedRS.UID,
					Controller: &yes, BlockOwnerDeletion: &yes,
				}},
			},
			Spec: storedRS.Spec.Template.Spec,
		}
		created, _, err := env.createPod(ctx, ns, pod)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.HasPrefix(created.Name, storedRS.Name+"-") {
			t.Errorf("Pod name %q", created.Name)
		}
		checkInjected(t, created)
	}
	var list corev1.PodList
	if err := env.admin.get(ctx, podsPath(ns)+"?labelSelector=app%3Dweb", &list); err != nil {
		t.Fatal(err)
	}
	if len(list.Items) != int(replicas) {
		t.Fatalf("%d Pods stored, want %d", len(list.Items), replicas)
	}
	for i := range list.Items {
		checkInjected(t, &list.Items[i])
	}
}

// TestReadmission: an injected Pod sent again (as `kubectl get -o yaml |
// kubectl create -f -`, or a backup restore, would) is admitted without a
// second sidecar; an update of an injected Pod is admitted and leaves it as
// it was.
func TestReadmission(t *testing.T) {
	ctx := t.Context()
	ns := newNamespace(t, true)
	first, _, err := env.createPod(ctx, ns, appPod("first", injectAnnotations()))
	if err != nil {
		t.Fatal(err)
	}
	again := first.DeepCopy()
	again.ObjectMeta = metav1.ObjectMeta{Name: "again", Labels: first.Labels, Annotations: first.Annotations}
	again.Status = corev1.PodStatus{}
	second, _, err := env.createPod(ctx, ns, again)
	if err != nil {
		t.Fatal(err)
	}
	checkInjected(t, second)
	if len(second.Spec.InitContainers) != len(first.Spec.InitContainers) || len(second.Spec.Volumes) != len(first.Spec.Volumes) {
		t.Errorf("re-admitted Pod differs: init containers %v vs %v, %d vs %d volumes",
			names(second.Spec.InitContainers), names(first.Spec.InitContainers), len(second.Spec.Volumes), len(first.Spec.Volumes))
	}

	var updated corev1.Pod
	if _, err := env.admin.mergePatch(ctx, podsPath(ns)+"/first",
		map[string]any{"metadata": map[string]any{"labels": map[string]string{"tier": "backend"}}}, &updated); err != nil {
		t.Fatal(err)
	}
	checkInjected(t, &updated)
	if updated.Labels["tier"] != "backend" {
		t.Errorf("labels after the update: %v", updated.Labels)
	}
}

// TestRefusals: Pods whose resilience annotations are wrong are refused by
// the webhook with a message naming each problem, and are not stored.
func TestRefusals(t *testing.T) {
	ns := newNamespace(t, true)
	conflicting := appPod("", injectAnnotations())
	conflicting.Spec.Containers[0].Ports = []corev1.ContainerPort{{ContainerPort: 9090}}
	tests := []struct {
		name string
		pod  *corev1.Pod
		want []string
	}{
		{"bad inject value", appPod("", map[string]string{annInject: "yes"}),
			[]string{`annotation resilience.seed-a88e5317.io/inject: "yes" must be "true" or "false"`}},
		{"unknown annotation", appPod("", injectAnnotations("resilience.seed-a88e5317.io/prot", "1234")),
			[]string{"annotation resilience.seed-a88e5317.io/prot is unknown"}},
		{"bad port and redis mode", appPod("", injectAnnotations(
			"resilience.seed-a88e5317.io/port", "70000", "resilience.seed-a88e5317.io/redis-mode", "ring")),
			[]string{`annotation resilience.seed-a88e5317.io/port: "70000" is not a port number`,
				`annotation resilience.seed-a88e5317.io/redis-mode: "ring" must be one of standalone, cluster, sentinel`}},
		{"port conflict", conflicting,
			[]string{`containers "app" declares port 9090, which the sidecar uses`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.pod.Name = uniqueName("refused")
			_, _, err := env.createPod(t.Context(), ns, tt.pod)
			var apiErr *apiError
			if !errors.As(err, &apiErr) {
				t.Fatalf("Pod admitted or other error: %v", err)
			}
			msg := apiErr.status.Message
			prefix := `admission webhook "` + webhookName + `" denied the request: resilience sidecar injection: `
			if !strings.HasPrefix(msg, prefix) {
				t.Errorf("message %q does not start with %q", msg, prefix)
			}
			for _, w := range tt.want {
				if !strings.Contains(msg, w) {
					t.Errorf("message %q lacks %q", msg, w)
				}
			}
			if err := env.admin.get(t.Context(), podsPath(ns)+"/"+tt.pod.Name, nil); !isNotFound(err) {
				t.Errorf("the refused Pod was stored (get: %v)", err)
			}
		})
	}
}

// TestInjectorDown: with the injector stopped, failurePolicy: Fail refuses
// a Pod that asks for the sidecar (it is never admitted without it), while
// a Pod with no resilience annotation is admitted without calling the
// webhook (matchConditions); once the injector is back, injection resumes.
func TestInjectorDown(t *testing.T) {
	ctx := t.Context()
	ns := newNamespace(t, true)
	env.injector.stop()
	restarted := false
	t.Cleanup(func() {
		if !restarted {
			env.injector.start(t, env.injector.owner)
		}
	})

	_, _, err := env.createPod(ctx, ns, appPod("asks", injectAnnotations()))
	var apiErr *apiError
	if !errors.As(err, &apiErr) {
		t.Fatalf("Pod admitted with the injector down: %v", err)
	}
	if want := `failed calling webhook "` + webhookName + `"`; !strings.Contains(apiErr.status.Message, want) {
		t.Errorf("message %q lacks %q", apiErr.status.Message, want)
	}
	if err := env.admin.get(ctx, podsPath(ns)+"/asks", nil); !isNotFound(err) {
		t.Errorf("the refused Pod was stored (get: %v)", err)
	}
	plain, _, err := env.createPod(ctx, ns, appPod("plain", nil))
	if err != nil {
		t.Fatalf("a Pod without resilience annotations needs the injector: %v", err)
	}
	if hasSidecar(plain) {
		t.Error("plain Pod injected")
	}

	env.injector.start(t, env.injector.owner)
	restarted = true
	created, _, err := env.createPod(ctx, ns, appPod("asks", injectAnnotations()))
	if err != nil {
		t.Fatalf("after the injector restarted: %v", err)
	}
	checkInjected(t, created)
}
