package k8s

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	admissionregv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"
)

// Names the injector and the manifests use.
const (
	annInject      = "resilience.seed-a88e5317.io/inject"
	annStatus      = "resilience.seed-a88e5317.io/status"
	namespaceLabel = "resilience.seed-a88e5317.io/injection"
	sidecarName    = "resilience-sidecar"
	webhookName    = "inject.resilience.seed-a88e5317.io"
	webhookConfig  = "resilience-sidecar-injector"
)

// resourcePaths maps the apiVersion/kind of the manifests the tests apply
// to their REST collection (%s: the namespace, for namespaced kinds).
var resourcePaths = map[string]string{
	"admissionregistration.k8s.io/v1/MutatingWebhookConfiguration":     "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations",
	"admissionregistration.k8s.io/v1/ValidatingAdmissionPolicy":        "/apis/admissionregistration.k8s.io/v1/validatingadmissionpolicies",
	"admissionregistration.k8s.io/v1/ValidatingAdmissionPolicyBinding": "/apis/admissionregistration.k8s.io/v1/validatingadmissionpolicybindings",
	"rbac.authorization.k8s.io/v1/ClusterRole":                         "/apis/rbac.authorization.k8s.io/v1/clusterroles",
	"rbac.authorization.k8s.io/v1/ClusterRoleBinding":                  "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings",
	"v1/Namespace":      "/api/v1/namespaces",
	"v1/ServiceAccount": "/api/v1/namespaces/%s/serviceaccounts",
}

// applyFile creates every object of a manifest file of the repository
// (path relative to its root), as `kubectl create -f` would; objects that
// exist already are left as they are.
func (c *cluster) applyFile(ctx context.Context, rel string) error {
	data, err := os.ReadFile(filepath.Join(c.root, rel))
	if err != nil {
		return err
	}
	for i, doc := range splitYAML(data) {
		js, err := yaml.YAMLToJSON(doc)
		if err != nil {
			return fmt.Errorf("%s document %d: %w", rel, i, err)
		}
		var obj struct {
			metav1.TypeMeta `json:",inline"`
			Metadata        metav1.ObjectMeta `json:"metadata"`
		}
		if err := yaml.Unmarshal(doc, &obj); err != nil {
			return fmt.Errorf("%s document %d: %w", rel, i, err)
		}
		path, ok := resourcePaths[obj.APIVersion+"/"+obj.Kind]
		if !ok {
			return fmt.Errorf("%s document %d: no REST path known for %s %s", rel, i, obj.APIVersion, obj.Kind)
		}
		if strings.Contains(path, "%s") {
			path = fmt.Sprintf(path, obj.Metadata.Namespace)
		}
		if _, err := c.admin.create(ctx, path, js, nil); err != nil && !isConflict(err) {
			return fmt.Errorf("%s document %d (%s %s): %w", rel, i, obj.Kind, obj.Metadata.Name, err)
		}
	}
	return nil
}

// splitYAML splits a multi-document YAML file on its "---" lines, dropping
// documents that hold only comments or blank lines.
func splitYAML(data []byte) [][]byte {
	var docs [][]byte
	for _, doc := range regexp.MustCompile(`(?m)^---\s*$`).Split(string(data), -1) {
		for _, line := range strings.Split(doc, "\n") {
			if l := strings.TrimSpace(line); l != "" && !strings.HasPrefix(l, "#") {
				docs = append(docs, bytes.TrimSpace([]byte(doc)))
				break
			}
		}
	}
	return docs
}

// webhookFromManifest is deploy/k8s/injector/webhook.yaml as shipped, but
// with clientConfig pointing at in by url: (no Service routing exists
// without kube-proxy) and in's CA as caBundle.
func (c *cluster) webhookFromManifest(in *injector) (*admissionregv1.MutatingWebhookConfiguration, error) {
	data, err := os.ReadFile(filepath.Join(c.root, "deploy/k8s/injector/webhook.yaml"))
	if err != nil {
		return nil, err
	}
	var cfg admissionregv1.MutatingWebhookConfiguration
	if err := yaml.UnmarshalStrict(data, &cfg); err != nil {
		return nil, fmt.Errorf("webhook.yaml: %w", err)
	}
	u := in.url()
	for i := range cfg.Webhooks {
		cfg.Webhooks[i].ClientConfig = admissionregv1.WebhookClientConfig{URL: &u, CABundle: in.caPEM}
	}
	return &cfg, nil
}

func (c *cluster) registerWebhook(ctx context.Context, in *injector) error {
	cfg, err := c.webhookFromManifest(in)
	if err != nil {
		return err
	}
	_, err = c.admin.create(ctx, "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations", cfg, nil)
	return err
}

// uniqueName is prefix plus a random suffix: every test makes its own
// objects in the one API server.
func uniqueName(prefix string) string {
	var b [4]byte
	_, _ = rand.Read(b[:])
	prefix = strings.ToLower(regexp.MustCompile(`[^A-Za-z0-9]+`).ReplaceAllString(prefix, "-"))
	if len(prefix) > 40 {
		prefix = prefix[:40]
	}
	return strings.Trim(prefix, "-") + "-" + hex.EncodeToString(b[:])
}

// createNamespace creates a namespace (labelled for injection or not) that
// enforces Pod Security "restricted", and its default ServiceAccount, as
// kube-controller-manager would, for the ServiceAccount admission plugin.
// Namespaces are not deleted: no namespace controller runs to finish that,
// and the whole etcd goes away after the tests.
func (c *cluster) createNamespace(ctx context.Context, prefix string, labelled bool) (string, error) {
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{
		Name: uniqueName(prefix),
		Labels: map[string]string{
			"pod-security.kubernetes.io/enforce": "restricted",
		},
	}}
	if labelled {
		ns.Labels[namespaceLabel] = "enabled"
	}
	if _, err := c.admin.create(ctx, "/api/v1/namespaces", ns, nil); err != nil {
		return "", fmt.Errorf("create namespace: %w", err)
	}
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "default"}}
	if _, err := c.admin.create(ctx, "/api/v1/namespaces/"+ns.Name+"/serviceaccounts", sa, nil); err != nil {
		return "", fmt.Errorf("create service account: %w", err)
	}
	return ns.Name, nil
}

func newNamespace(t *testing.T, labelled bool) string {
	t.Helper()
	ns, err := env.createNamespace(t.Context(), t.Name(), labelled)
	if err != nil {
		t.Fatal(err)
	}
	return ns
}

// injectAnnotations are the annotations of a Pod asking for the sidecar,
// plus extra key/value pairs.
func injectAnnotations(kv ...string) map[string]string {
	m := map[string]string{annInject: "true"}
	for i := 0; i+1 < len(kv); i += 2 {
		m[kv[i]] = kv[i+1]
	}
	return m
}

// appPod is a Pod with one app container that Pod Security "restricted"
// admits.
func appPod(name string, annotations map[string]string) *corev1.Pod {
	return &corev1.Pod{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "Pod"},
		ObjectMeta: metav1.ObjectMeta{Name: name, Annotations: annotations, Labels: map[string]string{"app": "demo"}},
		Spec:       appPodSpec(),
	}
}

func appPodSpec() corev1.PodSpec {
	no, yes := false, true
	return corev1.PodSpec{
		SecurityContext: &corev1.PodSecurityContext{
			RunAsNonRoot:   &yes,
			SeccompProfile: &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
		},
		Containers: []corev1.Container{{
			Name:  "app",
			Image: "registry.example/app:1",
			SecurityContext: &corev1.SecurityContext{
				AllowPrivilegeEscalation: &no,
				Capabilities:             &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
			},
		}},
	}
}

func podsPath(ns string) string { return "/api/v1/namespaces/" + ns + "/pods" }

// createPod creates pod in ns and returns the stored Pod and the warnings.
func (c *cluster) createPod(ctx context.Context, ns string, pod *corev1.Pod) (*corev1.Pod, []string, error) {
	var out corev1.Pod
	r, err := c.admin.create(ctx, podsPath(ns), pod, &out)
	return &out, r.warnings, err
}

// dryRunPod is createPod with dryRun=All: admitted (and mutated) but not
// stored.
func (c *cluster) dryRunPod(ctx context.Context, ns string, pod *corev1.Pod) (*corev1.Pod, []string, error) {
	var out corev1.Pod
	r, err := c.admin.create(ctx, podsPath(ns)+"?"+url.Values{"dryRun": {"All"}}.Encode(), pod, &out)
	return &out, r.warnings, err
}

// hasSidecar reports whether the Pod has the injected container.
func hasSidecar(pod *corev1.Pod) bool {
	return sidecar(pod) != nil
}

// sidecar returns the Pod's injected container, or nil.
func sidecar(pod *corev1.Pod) *corev1.Container {
	for _, list := range [][]corev1.Container{pod.Spec.InitContainers, pod.Spec.Containers} {
		for i := range list {
			if list[i].Name == sidecarName {
				return &list[i]
			}
		}
	}
	return nil
}
