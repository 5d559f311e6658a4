package k8s

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"
)

// helmVersion is the helm release the tests run, built by `make helm` (the
// Makefile's HELM_VERSION must match: TestHelmChart checks both).
const helmVersion = "v3.21.4"

// helmEnv overrides where the helm binary is found (default:
// .bin/helm-<helmVersion> under the repository's root).
const helmEnv = "HELM_BIN"

const chartDir = "deploy/helm/resilience-sidecar"

// helm runs the pinned helm with args and returns its standard output.
func helm(t *testing.T, args ...string) []byte {
	t.Helper()
	bin := binary(t, helmEnv, filepath.Join(env.root, ".bin", "helm-"+helmVersion), "make helm")
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(t.Context(), bin, args...)
	cmd.Dir = env.root
	cmd.Env = append(os.Environ(), "HELM_CACHE_HOME="+t.TempDir(), "HELM_CONFIG_HOME="+t.TempDir(), "HELM_DATA_HOME="+t.TempDir())
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("helm %s: %v: %s%s", strings.Join(args, " "), err, stdout.String(), stderr.String())
	}
	return stdout.Bytes()
}

// object is a rendered manifest, decoded generically.
type object map[string]any

func (o object) kind() string { s, _ := o["kind"].(string); return s }
func (o object) meta() map[string]any {
	m, _ := o["metadata"].(map[string]any)
	return m
}
func (o object) name() string { s, _ := o.meta()["name"].(string); return s }

// decodeDocs decodes the non-empty YAML documents of a rendering.
func decodeDocs(t *testing.T, docs [][]byte) []object {
	t.Helper()
	var out []object
	for _, doc := range docs {
		var o object
		if err := yaml.Unmarshal(doc, &o); err != nil {
			t.Fatalf("%v in:\n%s", err, doc)
		}
		if o != nil {
			out = append(out, o)
		}
	}
	return out
}

func helmTemplate(t *testing.T, ns string, set ...string) []object {
	t.Helper()
	args := []string{"template", "resilience", chartDir, "--namespace", ns, "--kube-version", kubeVersion}
	for _, s := range set {
		args = append(args, "--set", s)
	}
	out := helm(t, args...)
	var docs [][]byte
	for _, d := range regexp.MustCompile(`(?m)^---\s*$`).Split(string(out), -1) {
		docs = append(docs, []byte(d))
	}
	return decodeDocs(t, docs)
}

// TestHelmChart: the chart lints, renders in each certificate mode, refuses
// a :latest image, passes a server-side dry run of every object on the real
// API server, and renders the objects of deploy/k8s/injector (namespace
// aside) the same, labels aside, with its default values.
func TestHelmChart(t *testing.T) {
	makefile, err := os.ReadFile(filepath.Join(env.root, "Makefile"))
	if err != nil {
		t.Fatal(err)
	}
	if m := regexp.MustCompile(`(?m)^HELM_VERSION\s*:=\s*(\S+)`).FindSubmatch(makefile); m == nil || string(m[1]) != helmVersion {
		t.Errorf("the Makefile's HELM_VERSION is not %s (found %q)", helmVersion, m)
	}
	helm(t, "lint", "--strict", chartDir)

	t.Run("same as kustomize", func(t *testing.T) {
		fromHelm := map[string]object{}
		for _, o := range helmTemplate(t, "resilience-system") {
			fromHelm[o.kind()+"/"+o.name()] = o
		}
		n := 0
		for _, k := range decodeDocs(t, kustomizeBuild(t, filepath.Join(env.root, "deploy/k8s/injector"))) {
			if k.kind() == "Namespace" {
				continue // helm installs into a namespace (--create-namespace)
			}
			h, ok := fromHelm[k.kind()+"/"+k.name()]
			if !ok {
				t.Errorf("the chart lacks %s %s", k.kind(), k.name())
				continue
			}
			n++
			delete(k.meta(), "labels")
			delete(h.meta(), "labels")
			// kustomize re-encodes folded scalars with more-indented lines
			// (the policies' CEL) with an extra line break: compare the
			// text with runs of white space as one space.
			kj, _ := json.MarshalIndent(normalizeSpace(map[string]any(k)), "", "  ")
			hj, _ := json.MarshalIndent(normalizeSpace(map[string]any(h)), "", "  ")
			if !bytes.Equal(kj, hj) {
				t.Errorf("%s %s differs:\nkustomize:\n%s\nhelm:\n%s", k.kind(), k.name(), kj, hj)
			}
		}
		if n < 10 {
			t.Errorf("compared %d objects, want every object of the base", n)
		}
	})

	t.Run("latest refused", func(t *testing.T) {
		bin := binary(t, helmEnv, filepath.Join(env.root, ".bin", "helm-"+helmVersion), "make helm")
		cmd := exec.CommandContext(t.Context(), bin, "template", "x", chartDir, "--kube-version", kubeVersion, "--set", "image.tag=latest")
		cmd.Dir = env.root
		out, err := cmd.CombinedOutput()
		if err == nil || !strings.Contains(string(out), "image.tag: pin a release, not latest") {
			t.Errorf("image.tag=latest rendered (err %v): %s", err, out)
		}
	})

	t.Run("cert-manager", func(t *testing.T) {
		// No cert-manager CRDs here: the rendering is checked, not dry-run.
		kinds := map[string]int{}
		for _, o := range helmTemplate(t, "resilience-system", "certMode=cert-manager") {
			kinds[o.kind()]++
			if o.kind() == "MutatingWebhookConfiguration" {
				ann, _ := o.meta()["annotations"].(map[string]any)
				if ann["cert-manager.io/inject-ca-from"] != "resilience-system/resilience-injector" {
					t.Errorf("webhook annotations %v lack cert-manager.io/inject-ca-from", ann)
				}
			}
		}
		if kinds["Certificate"] != 2 || kinds["Issuer"] != 2 {
			t.Errorf("kinds %v: want 2 Issuers and 2 Certificates", kinds)
		}
	})

	paths := map[string]string{
		"ServiceAccount":                   "/api/v1/namespaces/%s/serviceaccounts",
		"Service":                          "/api/v1/namespaces/%s/services",
		"Deployment":                       "/apis/apps/v1/namespaces/%s/deployments",
		"PodDisruptionBudget":              "/apis/policy/v1/namespaces/%s/poddisruptionbudgets",
		"NetworkPolicy":                    "/apis/networking.k8s.io/v1/namespaces/%s/networkpolicies",
		"PriorityClass":                    "/apis/scheduling.k8s.io/v1/priorityclasses",
		"MutatingWebhookConfiguration":     "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations",
		"ValidatingAdmissionPolicy":        "/apis/admissionregistration.k8s.io/v1/validatingadmissionpolicies",
		"ValidatingAdmissionPolicyBinding": "/apis/admissionregistration.k8s.io/v1/validatingadmissionpolicybindings",
		"ClusterRole":                      "/apis/rbac.authorization.k8s.io/v1/clusterroles",
		"ClusterRoleBinding":               "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings",
	}
	for _, mode := range []string{"files", "self-managed"} {
		t.Run("dry run "+mode, func(t *testing.T) {
			ns := newNamespace(t, false)
			suffix := "-" + uniqueName("dry-run")
			for _, o := range helmTemplate(t, ns, "certMode="+mode) {
				p, ok := paths[o.kind()]
				if !ok {
					t.Errorf("no REST path for %s %s", o.kind(), o.name())
					continue
				}
				if strings.Contains(p, "%s") {
					p = fmt.Sprintf(p, ns)
				} else {
					// Cluster-scoped: the suite's own objects hold the names.
					o.meta()["name"] = o.name() + suffix
				}
				js, err := json.Marshal(o)
				if err != nil {
					t.Fatal(err)
				}
				if err := dryRunCreate(t.Context(), p, js); err != nil {
					t.Errorf("%s %s: %v", o.kind(), o.name(), err)
				}
			}
		})
	}
}

// normalizeSpace returns v with every run of white space in its strings
// made one space.
func normalizeSpace(v any) any {
	switch x := v.(type) {
	case string:
		return strings.Join(strings.Fields(x), " ")
	case map[string]any:
		out := map[string]any{}
		for k, e := range x {
			out[k] = normalizeSpace(e)
		}
		return out
	case []any:
		out := make([]any, len(x))
		for i, e := range x {
			out[i] = normalizeSpace(e)
		}
		return out
	}
	return v
}

// TestHelmPolicyIsTheBase: the chart's policy.yaml is the base's, byte for
// byte, so the apply-time checks cannot drift apart.
func TestHelmPolicyIsTheBase(t *testing.T) {
	a, err := os.ReadFile(filepath.Join(env.root, "deploy/k8s/injector/policy.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(env.root, chartDir, "templates/policy.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(a, b) {
		t.Error("deploy/helm/resilience-sidecar/templates/policy.yaml differs from deploy/k8s/injector/policy.yaml: copy it")
	}
}
