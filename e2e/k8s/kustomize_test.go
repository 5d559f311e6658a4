package k8s

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"
)

// kustomizeBuild renders the kustomization in dir with `kubectl kustomize`
// (kubectl's built-in kustomize, what `kubectl apply -k` uses) and returns
// its documents.
func kustomizeBuild(t *testing.T, dir string) [][]byte {
	t.Helper()
	kubectl, err := exec.LookPath("kubectl")
	if err != nil {
		t.Fatalf("kubectl is needed to render the kustomizations (apt-get install kubectl): %v", err)
	}
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(t.Context(), kubectl, "kustomize", dir)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("kubectl kustomize %s: %v: %s", dir, err, stderr.String())
	}
	return bytes.Split(stdout.Bytes(), []byte("\n---\n"))
}

// overlay writes a kustomization in a temporary folder that includes base
// (relative to the repository's root) and sets the resilience image with
// kustomize's `images:`; it returns the folder.
func overlay(t *testing.T, base, newName, newTag string) string {
	t.Helper()
	dir := t.TempDir()
	rel, err := filepath.Rel(dir, filepath.Join(env.root, base))
	if err != nil {
		t.Fatal(err)
	}
	k := fmt.Sprintf("apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n  - %s\n"+
		"images:\n  - name: ghcr.io/seed-a88e5317/resilience-sidecar\n    newName: %s\n    newTag: %s\n", rel, newName, newTag)
	if err := os.WriteFile(filepath.Join(dir, "kustomization.yaml"), []byte(k), 0o600); err != nil {
		t.Fatal(err)
	}
	return dir
}

// TestImagesInOnePlace: one kustomize `images:` entry in an overlay sets
// the injector's image and the image it injects (its --sidecar-image,
// taken from RESILIENCE_SIDECAR_IMAGE, which kustomizeconfig.yaml makes an
// image field), through the base and through the self-managed-certs
// overlay; the demo's hand-declared sidecar follows too, and nothing is
// left on :latest.
func TestImagesInOnePlace(t *testing.T) {
	const want = "registry.example.com/platform/resilience-sidecar:2.3.4"
	for _, base := range []string{"deploy/k8s", "deploy/overlays/self-managed-certs"} {
		t.Run(base, func(t *testing.T) {
			docs := kustomizeBuild(t, overlay(t, base, "registry.example.com/platform/resilience-sidecar", "2.3.4"))
			found := false
			for _, doc := range docs {
				if bytes.Contains(doc, []byte(":latest")) {
					t.Errorf("rendered output names :latest:\n%s", doc)
				}
				var d appsv1.Deployment
				if err := yaml.Unmarshal(doc, &d); err != nil || d.Kind != "Deployment" {
					continue
				}
				for _, c := range append(slices.Clone(d.Spec.Template.Spec.InitContainers), d.Spec.Template.Spec.Containers...) {
					if !strings.Contains(c.Image, "resilience-sidecar") {
						continue
					}
					if c.Image != want {
						t.Errorf("%s container %s: image %q, want %q", d.Name, c.Name, c.Image, want)
					}
					if d.Name != "resilience-injector" {
						continue
					}
					found = true
					if !slices.Contains(c.Args, "--sidecar-image=$(RESILIENCE_SIDECAR_IMAGE)") {
						t.Errorf("injector args %q lack --sidecar-image=$(RESILIENCE_SIDECAR_IMAGE)", c.Args)
					}
					if got := envValue(c.Env, "RESILIENCE_SIDECAR_IMAGE"); got != want {
						t.Errorf("injector RESILIENCE_SIDECAR_IMAGE=%q, want %q: --sidecar-image would not follow images:", got, want)
					}
				}
			}
			if !found {
				t.Error("no injector Deployment in the output")
			}
		})
	}
}

// TestProductionObjectsDryRun: the injector's Deployment (priority class,
// strict hostname spreading), its NetworkPolicy and PriorityClass, as
// kustomize renders them, pass a server-side dry run on the real API
// server (its validation of every field), in a namespace of the test's.
func TestProductionObjectsDryRun(t *testing.T) {
	ctx := t.Context()
	ns := newNamespace(t, false)
	paths := map[string]string{
		"Deployment":    "/apis/apps/v1/namespaces/%s/deployments",
		"NetworkPolicy": "/apis/networking.k8s.io/v1/namespaces/%s/networkpolicies",
		"PriorityClass": "/apis/scheduling.k8s.io/v1/priorityclasses",
	}
	seen := map[string]bool{}
	for _, doc := range kustomizeBuild(t, filepath.Join(env.root, "deploy/k8s/injector")) {
		var obj struct {
			metav1.TypeMeta `json:",inline"`
			Metadata        metav1.ObjectMeta `json:"metadata"`
		}
		if err := yaml.Unmarshal(doc, &obj); err != nil {
			t.Fatal(err)
		}
		p, ok := paths[obj.Kind]
		if !ok {
			continue
		}
		var m map[string]any
		if err := yaml.Unmarshal(doc, &m); err != nil {
			t.Fatal(err)
		}
		if strings.Contains(p, "%s") {
			p = fmt.Sprintf(p, ns)
			m["metadata"].(map[string]any)["namespace"] = ns
		}
		js, err := json.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		if err := dryRunCreate(ctx, p, js); err != nil {
			t.Errorf("%s %s: %v", obj.Kind, obj.Metadata.Name, err)
		}
		seen[obj.Kind] = true
	}
	for kind := range paths {
		if !seen[kind] {
			t.Errorf("no %s in deploy/k8s/injector", kind)
		}
	}
}

// dryRunCreate POSTs obj to the collection path with dryRun=All and
// fieldValidation=Strict: validated and admitted, not stored.
func dryRunCreate(ctx context.Context, path string, obj []byte) error {
	_, err := env.admin.create(ctx, path+"?dryRun=All&fieldValidation=Strict", obj, nil)
	return err
}
