package inject

import (
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	schedulingv1 "k8s.io/api/scheduling/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
)

// TestNoLatestTag: no file under deploy/ names an image by :latest (or
// leaves the tag out where an image is set).
func TestNoLatestTag(t *testing.T) {
	latest := regexp.MustCompile(`:latest\b`)
	err := filepath.WalkDir(filepath.Join(k8sDir, ".."), func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		for i, line := range strings.Split(string(data), "\n") {
			if latest.MatchString(line) {
				t.Errorf("%s:%d: %s", p, i+1, strings.TrimSpace(line))
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestInjectorScheduling: the injector has a PriorityClass of the
// manifests (below the system-*-critical classes), and more than one
// replica are spread over nodes strictly (DoNotSchedule on the hostname,
// tainted nodes not counted).
func TestInjectorScheduling(t *testing.T) {
	c := loadCluster(t)
	d, ok := get[*appsv1.Deployment](c, "Deployment", "resilience-system", "resilience-injector")
	if !ok {
		t.Fatal("no injector Deployment")
	}
	spec := d.Spec.Template.Spec
	pc, ok := get[*schedulingv1.PriorityClass](c, "PriorityClass", "", spec.PriorityClassName)
	switch {
	case spec.PriorityClassName == "" || !ok:
		t.Errorf("priorityClassName %q is not a PriorityClass of the manifests", spec.PriorityClassName)
	case pc.Value <= 0 || pc.Value >= 1_000_000_000 || pc.GlobalDefault:
		t.Errorf("PriorityClass %s: value %d (want positive, below the system classes' 1e9), globalDefault %v",
			pc.Name, pc.Value, pc.GlobalDefault)
	}
	if d.Spec.Replicas == nil || *d.Spec.Replicas < 2 {
		t.Fatalf("replicas %v: want at least 2 (failurePolicy: Fail)", d.Spec.Replicas)
	}
	i := slices.IndexFunc(spec.TopologySpreadConstraints, func(c corev1.TopologySpreadConstraint) bool {
		return c.TopologyKey == corev1.LabelHostname
	})
	if i < 0 {
		t.Fatal("no topologySpreadConstraint on kubernetes.io/hostname")
	}
	tsc := spec.TopologySpreadConstraints[i]
	sel, err := metav1.LabelSelectorAsSelector(tsc.LabelSelector)
	if err != nil || !sel.Matches(labels.Set(d.Spec.Template.Labels)) {
		t.Errorf("the hostname constraint's selector does not select the injector's Pods (%v)", err)
	}
	if tsc.WhenUnsatisfiable != corev1.DoNotSchedule || tsc.MaxSkew != 1 {
		t.Errorf("hostname spreading: %s maxSkew %d, want DoNotSchedule maxSkew 1", tsc.WhenUnsatisfiable, tsc.MaxSkew)
	}
	if tsc.NodeTaintsPolicy == nil || *tsc.NodeTaintsPolicy != corev1.NodeInclusionPolicyHonor {
		t.Error("hostname spreading: nodeTaintsPolicy must be Honor, or a cordoned node holds a replica pending")
	}
}

// TestNetworkPolicies: the injector's Pods and the demo apps are selected
// by a NetworkPolicy that opens only their declared webhook and metrics
// ports: every ingress rule names ports, each a port the Pods declare
// (after injection, for a Pod that asks for the sidecar).
func TestNetworkPolicies(t *testing.T) {
	c := loadCluster(t)
	for _, w := range []struct{ ns, name string }{
		{"resilience-system", "resilience-injector"}, {"resilience-demo", "demo-app"}, {"resilience-demo", "demo-injected"},
	} {
		d, ok := get[*appsv1.Deployment](c, "Deployment", w.ns, w.name)
		if !ok {
			t.Fatalf("no Deployment %s/%s", w.ns, w.name)
		}
		spec := d.Spec.Template.Spec
		if d.Spec.Template.Annotations[AnnotationInject] == "true" {
			spec = c.admit(t, w.ns, &d.Spec.Template).Spec // the sidecar's ports come with it
		}
		var declared []int32
		for _, list := range [][]corev1.Container{spec.InitContainers, spec.Containers} {
			for _, ctr := range list {
				for _, p := range ctr.Ports {
					declared = append(declared, p.ContainerPort)
				}
			}
		}
		selected := false
		for _, m := range c {
			np, ok := m.obj.(*networkingv1.NetworkPolicy)
			if !ok || np.Namespace != w.ns {
				continue
			}
			sel, err := metav1.LabelSelectorAsSelector(&np.Spec.PodSelector)
			if err != nil {
				t.Fatalf("%s: %v", np.Name, err)
			}
			if !sel.Matches(labels.Set(d.Spec.Template.Labels)) {
				continue
			}
			selected = true
			if !slices.Contains(np.Spec.PolicyTypes, networkingv1.PolicyTypeIngress) {
				t.Errorf("%s: policyTypes %v lack Ingress", np.Name, np.Spec.PolicyTypes)
			}
			for _, r := range np.Spec.Ingress {
				if len(r.Ports) == 0 || len(r.From) == 0 {
					t.Errorf("%s: an ingress rule opens every port or every source", np.Name)
				}
				for _, p := range r.Ports {
					if p.Port == nil || !slices.Contains(declared, p.Port.IntVal) {
						t.Errorf("%s: port %v is not one %s/%s declares (%v)", np.Name, p.Port, w.ns, w.name, declared)
					}
				}
			}
		}
		if !selected {
			t.Errorf("%s/%s: no NetworkPolicy selects its Pods", w.ns, w.name)
		}
	}
}
