package inject

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"

	admissionv1 "k8s.io/api/admission/v1"
	admissionregv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	schedulingv1 "k8s.io/api/scheduling/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/yaml"
)

// k8sDir is the manifests' folder, from this package's folder.
const k8sDir = "../../deploy/k8s"

// grafanaDashboard is the Grafana dashboard, from this package's folder.
const grafanaDashboard = "../../deploy/grafana/resilience-sidecar.json"

// optionalKustomizations are folders of k8sDir that are kustomizations of
// their own, applied on purpose and never listed in k8sDir's
// kustomization.yaml: monitoring needs the Prometheus Operator's CRDs, which
// not every cluster has. The tests load them with the rest.
var optionalKustomizations = []string{"monitoring"}

// kustomization is the part of kustomize's Kustomization the manifests
// use; decoding it strictly rejects anything else.
type kustomization struct {
	APIVersion string   `json:"apiVersion"`
	Kind       string   `json:"kind"`
	Resources  []string `json:"resources"`
	// Configurations are transformer configurations (kustomizeconfig.yaml).
	Configurations []string `json:"configurations,omitempty"`
	Labels         []struct {
		Pairs            map[string]string `json:"pairs"`
		IncludeSelectors bool              `json:"includeSelectors"`
	} `json:"labels,omitempty"`
}

// serviceMonitor is the part of the Prometheus Operator's ServiceMonitor
// (monitoring.coreos.com/v1) that the manifests use. There is no k8s.io/api
// type for it; decoding strictly into this one rejects any other field, so a
// field added to the manifests must be added here, with a check.
type serviceMonitor struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata"`
	Spec              struct {
		Selector          metav1.LabelSelector `json:"selector"`
		NamespaceSelector struct {
			Any        bool     `json:"any,omitempty"`
			MatchNames []string `json:"matchNames,omitempty"`
		} `json:"namespaceSelector"`
		Endpoints []struct {
			Port     string `json:"port"`
			Path     string `json:"path"`
			Interval string `json:"interval"`
		} `json:"endpoints"`
	} `json:"spec"`
}

// manifest is one decoded YAML document.
type manifest struct {
	file string // relative to k8sDir
	kind string
	obj  metav1.Object
}

// newTyped returns an empty object of the k8s.io/api type for the
// document's apiVersion and kind, or nil for a kind the manifests should
// not hold.
func newTyped(apiVersion, kind string) metav1.Object {
	switch apiVersion + "/" + kind {
	case "v1/Namespace":
		return &corev1.Namespace{}
	case "v1/ServiceAccount":
		return &corev1.ServiceAccount{}
	case "v1/Service":
		return &corev1.Service{}
	case "v1/Secret":
		return &corev1.Secret{}
	case "v1/ConfigMap":
		return &corev1.ConfigMap{}
	case "apps/v1/Deployment":
		return &appsv1.Deployment{}
	case "apps/v1/StatefulSet":
		return &appsv1.StatefulSet{}
	case "policy/v1/PodDisruptionBudget":
		return &policyv1.PodDisruptionBudget{}
	case "admissionregistration.k8s.io/v1/MutatingWebhookConfiguration":
		return &admissionregv1.MutatingWebhookConfiguration{}
	case "admissionregistration.k8s.io/v1/ValidatingAdmissionPolicy":
		return &admissionregv1.ValidatingAdmissionPolicy{}
	case "admissionregistration.k8s.io/v1/ValidatingAdmissionPolicyBinding":
		return &admissionregv1.ValidatingAdmissionPolicyBinding{}
	case "networking.k8s.io/v1/NetworkPolicy":
		return &networkingv1.NetworkPolicy{}
	case "scheduling.k8s.io/v1/PriorityClass":
		return &schedulingv1.PriorityClass{}
	case "monitoring.coreos.com/v1/ServiceMonitor":
		return &serviceMonitor{}
	}
	return nil
}

// splitYAML splits a multi-document YAML file on its "---" lines, dropping
// documents that hold only comments or blank lines.
func splitYAML(data []byte) [][]byte {
	var docs [][]byte
	var cur bytes.Buffer
	flush := func() {
		for _, line := range strings.Split(cur.String(), "\n") {
			if l := strings.TrimSpace(line); l != "" && !strings.HasPrefix(l, "#") {
				docs = append(docs, bytes.Clone(cur.Bytes()))
				break
			}
		}
		cur.Reset()
	}
	for _, line := range strings.SplitAfter(string(data), "\n") {
		if strings.TrimRight(line, "\r\n") == "---" {
			flush()
			continue
		}
		cur.WriteString(line)
	}
	flush()
	return docs
}

// loadKustomization walks the kustomizations from dir, checks that each
// lists only what exists and everything there is (but the
// optionalKustomizations, which it must not list), and returns the
// manifests of every listed file, each decoded strictly into its
// k8s.io/api type, with the labels the kustomizations add.
func loadKustomization(t *testing.T, dir string) []manifest {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(k8sDir, dir, "kustomization.yaml"))
	if err != nil {
		t.Fatalf("%s: %v", dir, err)
	}
	var k kustomization
	if err := yaml.UnmarshalStrict(data, &k); err != nil {
		t.Fatalf("%s/kustomization.yaml: %v", dir, err)
	}
	if k.APIVersion != "kustomize.config.k8s.io/v1beta1" || k.Kind != "Kustomization" {
		t.Errorf("%s/kustomization.yaml: apiVersion %q kind %q", dir, k.APIVersion, k.Kind)
	}
	entries, err := os.ReadDir(filepath.Join(k8sDir, dir))
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		name := e.Name()
		listed := slices.Contains(k.Resources, name)
		switch {
		case e.IsDir() && slices.Contains(optionalKustomizations, path.Join(dir, name)):
			if listed {
				t.Errorf("%s: %s must not be in kustomization.yaml: it is applied on its own (see docs/kubernetes.md)", dir, name)
			}
		case e.IsDir() && !listed:
			t.Errorf("%s: folder %s is not in kustomization.yaml", dir, name)
		case !e.IsDir() && strings.HasSuffix(name, ".yaml") && name != "kustomization.yaml" && !listed &&
			!slices.Contains(k.Configurations, name):
			t.Errorf("%s: %s is not in kustomization.yaml's resources", dir, name)
		}
	}
	var out []manifest
	for _, r := range k.Resources {
		rel := path.Join(dir, r)
		fi, err := os.Stat(filepath.Join(k8sDir, rel))
		if err != nil {
			t.Errorf("%s/kustomization.yaml lists %s: %v", dir, r, err)
			continue
		}
		if fi.IsDir() {
			out = append(out, loadKustomization(t, rel)...)
			continue
		}
		data, err := os.ReadFile(filepath.Join(k8sDir, rel))
		if err != nil {
			t.Fatal(err)
		}
		for i, doc := range splitYAML(data) {
			var tm metav1.TypeMeta
			if err := yaml.Unmarshal(doc, &tm); err != nil {
				t.Errorf("%s document %d: %v", rel, i, err)
				continue
			}
			obj := newTyped(tm.APIVersion, tm.Kind)
			if obj == nil {
				t.Errorf("%s document %d: unexpected %s %s", rel, i, tm.APIVersion, tm.Kind)
				continue
			}
			if err := yaml.UnmarshalStrict(doc, obj); err != nil {
				t.Errorf("%s document %d (%s): %v", rel, i, tm.Kind, err)
				continue
			}
			out = append(out, manifest{file: rel, kind: tm.Kind, obj: obj})
		}
	}
	// kustomize's labels, without selectors or templates: on every object's
	// metadata, this kustomization's and those it includes.
	for _, l := range k.Labels {
		if l.IncludeSelectors {
			t.Errorf("%s/kustomization.yaml: includeSelectors: true is not modelled by this test", dir)
		}
		for _, m := range out {
			ls := m.obj.GetLabels()
			if ls == nil {
				ls = map[string]string{}
			}
			maps.Copy(ls, l.Pairs)
			m.obj.SetLabels(ls)
		}
	}
	return out
}

// cluster indexes the manifests by kind, namespace and name.
type cluster map[string]manifest

func key(kind, ns, name string) string { return kind + "/" + ns + "/" + name }

func get[T metav1.Object](c cluster, kind, ns, name string) (T, bool) {
	m, ok := c[key(kind, ns, name)]
	if !ok {
		var zero T
		return zero, false
	}
	v, ok := m.obj.(T)
	return v, ok
}

func loadCluster(t *testing.T) cluster {
	t.Helper()
	c := cluster{}
	ms := loadKustomization(t, ".")
	for _, dir := range optionalKustomizations {
		ms = append(ms, loadKustomization(t, dir)...)
	}
	for _, m := range ms {
		k := key(m.kind, m.obj.GetNamespace(), m.obj.GetName())
		if prev, dup := c[k]; dup {
			t.Errorf("%s: %s is also defined in %s", m.file, k, prev.file)
		}
		c[k] = m
	}
	if len(c) == 0 {
		t.Fatal("no manifests")
	}
	return c
}

// workload is a Deployment or StatefulSet, seen through its Pod template.
type workload struct {
	file, name, ns string
	selector       *metav1.LabelSelector
	template       *corev1.PodTemplateSpec
}

func (c cluster) workloads() []workload {
	var ws []workload
	for _, m := range c {
		switch o := m.obj.(type) {
		case *appsv1.Deployment:
			ws = append(ws, workload{m.file, o.Name, o.Namespace, o.Spec.Selector, &o.Spec.Template})
		case *appsv1.StatefulSet:
			ws = append(ws, workload{m.file, o.Name, o.Namespace, o.Spec.Selector, &o.Spec.Template})
		}
	}
	sort.Slice(ws, func(i, j int) bool { return ws[i].file+ws[i].name < ws[j].file+ws[j].name })
	return ws
}

// selectedBy returns the workloads in the Service's namespace whose Pods
// its selector matches.
func (c cluster) selectedBy(svc *corev1.Service) []workload {
	var ws []workload
	if len(svc.Spec.Selector) == 0 {
		return nil
	}
	for _, w := range c.workloads() {
		if w.ns == svc.Namespace && labels.SelectorFromSet(svc.Spec.Selector).Matches(labels.Set(w.template.Labels)) {
			ws = append(ws, w)
		}
	}
	return ws
}

// pod is the Pod the workload runs: its template, after injection when the
// template asks for the sidecar.
func (c cluster) pod(t *testing.T, w workload) *corev1.Pod {
	t.Helper()
	if w.template.Annotations[AnnotationInject] != "true" {
		return &corev1.Pod{ObjectMeta: w.template.ObjectMeta, Spec: w.template.Spec}
	}
	return c.admit(t, w.ns, w.template)
}

// admit runs the Pod template through the injector configured by the
// injector Deployment's own arguments, as the API server would at the
// Pod's creation, and returns the patched Pod.
func (c cluster) admit(t *testing.T, ns string, tmpl *corev1.PodTemplateSpec) *corev1.Pod {
	t.Helper()
	in, _ := newTestInjector(t, injectorConfig(t, c))
	podJSON, err := json.Marshal(corev1.Pod{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "Pod"},
		ObjectMeta: tmpl.ObjectMeta,
		Spec:       tmpl.Spec,
	})
	if err != nil {
		t.Fatal(err)
	}
	var review admissionv1.AdmissionReview
	if err := json.Unmarshal(reviewOf(t, "manifests", ns, podJSON), &review); err != nil {
		t.Fatal(err)
	}
	resp := in.Admit(review.Request)
	if !resp.Allowed || resp.Patch == nil {
		t.Fatalf("the injector refused a Pod template of namespace %s: %+v", ns, resp.Result)
	}
	var pod corev1.Pod
	if err := json.Unmarshal(applyPatch(t, podJSON, resp.Patch), &pod); err != nil {
		t.Fatal(err)
	}
	return &pod
}

// findPort resolves a Service port's targetPort in a Pod as the endpoints
// controller does (k8s.io/kubernetes/pkg/api/v1/pod.FindPort): a name is
// looked up, with the protocol, in the containers and then in the native
// sidecar init containers. It returns the port and the container that
// declares it ("" for a number).
func findPort(spec *corev1.PodSpec, sp corev1.ServicePort) (int32, string, bool) {
	if sp.TargetPort.Type == intstr.Int {
		return sp.TargetPort.IntVal, "", sp.TargetPort.IntVal != 0
	}
	proto := func(p corev1.Protocol) corev1.Protocol {
		if p == "" {
			return corev1.ProtocolTCP
		}
		return p
	}
	var sidecars []corev1.Container
	for _, ic := range spec.InitContainers {
		if ic.RestartPolicy != nil && *ic.RestartPolicy == corev1.ContainerRestartPolicyAlways {
			sidecars = append(sidecars, ic)
		}
	}
	for _, list := range [][]corev1.Container{spec.Containers, sidecars} {
		for _, ctr := range list {
			for _, cp := range ctr.Ports {
				if cp.Name == sp.TargetPort.StrVal && proto(cp.Protocol) == proto(sp.Protocol) {
					return cp.ContainerPort, ctr.Name, true
				}
			}
		}
	}
	return 0, "", false
}

func TestManifestsParseStrictly(t *testing.T) {
	c := loadCluster(t)
	namespaces := map[string]bool{}
	for _, m := range c {
		if ns, ok := m.obj.(*corev1.Namespace); ok {
			namespaces[ns.Name] = true
		}
	}
	for k, m := range c {
		switch m.obj.(type) {
		case *corev1.Namespace, *admissionregv1.MutatingWebhookConfiguration, *schedulingv1.PriorityClass,
			*admissionregv1.ValidatingAdmissionPolicy, *admissionregv1.ValidatingAdmissionPolicyBinding:
			if m.obj.GetNamespace() != "" {
				t.Errorf("%s: %s is cluster-scoped but has a namespace", m.file, k)
			}
		default:
			if !namespaces[m.obj.GetNamespace()] {
				t.Errorf("%s: %s is in namespace %q, which the manifests do not create", m.file, k, m.obj.GetNamespace())
			}
		}
	}
}

// A document with a misspelt field must fail, or the test above proves
// nothing.
func TestStrictDecodingRejectsUnknownFields(t *testing.T) {
	doc := []byte("apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\nspec:\n  replicas: 1\n  replica: 2\n")
	if err := yaml.UnmarshalStrict(doc, &appsv1.Deployment{}); err == nil || !strings.Contains(err.Error(), "replica") {
		t.Fatalf("UnmarshalStrict accepted an unknown field: %v", err)
	}
	if docs := splitYAML([]byte("# only a comment\n---\na: 1\n---\n\n")); len(docs) != 1 {
		t.Fatalf("splitYAML: %d documents", len(docs))
	}
}

func TestWorkloadsAreHardened(t *testing.T) {
	c := loadCluster(t)
	ws := c.workloads()
	if len(ws) < 4 {
		t.Fatalf("found %d workloads, want the injector, Redis and two demo apps", len(ws))
	}
	for _, w := range ws {
		where := w.file + " " + w.name
		spec := &w.template.Spec
		sel, err := metav1.LabelSelectorAsSelector(w.selector)
		if err != nil || sel.Empty() || !sel.Matches(labels.Set(w.template.Labels)) {
			t.Errorf("%s: the selector does not match the Pod template's labels", where)
		}
		if spec.AutomountServiceAccountToken == nil || *spec.AutomountServiceAccountToken {
			t.Errorf("%s: automountServiceAccountToken must be false (nothing here calls the API)", where)
		}
		if spec.HostNetwork || spec.HostPID || spec.HostIPC {
			t.Errorf("%s: host namespaces are not allowed", where)
		}
		volumes := map[string]corev1.Volume{}
		for _, v := range spec.Volumes {
			volumes[v.Name] = v
		}
		claims := map[string]bool{}
		for _, m := range c {
			if ss, ok := m.obj.(*appsv1.StatefulSet); ok && ss.Name == w.name {
				for _, pvc := range ss.Spec.VolumeClaimTemplates {
					claims[pvc.Name] = true
				}
			}
		}
		for _, list := range [][]corev1.Container{spec.InitContainers, spec.Containers} {
			for _, ctr := range list {
				checkHardened(t, where, ctr, spec)
				for _, vm := range ctr.VolumeMounts {
					if _, ok := volumes[vm.Name]; !ok && !claims[vm.Name] {
						t.Errorf("%s: container %q mounts %q, which the Pod does not declare", where, ctr.Name, vm.Name)
					}
				}
				checkEnvRefs(t, c, where, w.ns, ctr)
				checkProbePorts(t, where, ctr)
			}
		}
		for _, ctr := range spec.InitContainers {
			if ctr.RestartPolicy == nil || *ctr.RestartPolicy != corev1.ContainerRestartPolicyAlways {
				t.Errorf("%s: init container %q is not a native sidecar", where, ctr.Name)
			}
		}
		for _, v := range spec.Volumes {
			switch {
			case v.Secret != nil:
				checkKeys(t, c, where, "Secret", w.ns, v.Secret.SecretName, v.Secret.Items)
			case v.ConfigMap != nil:
				checkKeys(t, c, where, "ConfigMap", w.ns, v.ConfigMap.Name, v.ConfigMap.Items)
			}
		}
	}
}

// checkEnvRefs: every Secret or ConfigMap key an env var reads exists.
func checkEnvRefs(t *testing.T, c cluster, where, ns string, ctr corev1.Container) {
	t.Helper()
	for _, e := range ctr.Env {
		if e.ValueFrom == nil {
			continue
		}
		if r := e.ValueFrom.SecretKeyRef; r != nil {
			checkKeys(t, c, where, "Secret", ns, r.Name, []corev1.KeyToPath{{Key: r.Key}})
		}
		if r := e.ValueFrom.ConfigMapKeyRef; r != nil {
			checkKeys(t, c, where, "ConfigMap", ns, r.Name, []corev1.KeyToPath{{Key: r.Key}})
		}
	}
}

// checkKeys: the Secret or ConfigMap exists in ns and holds the keys.
// The injector's TLS Secret is made at install time (gen-cert.sh or
// cert-manager), so it is the one Secret allowed to be missing.
func checkKeys(t *testing.T, c cluster, where, kind, ns, name string, items []corev1.KeyToPath) {
	t.Helper()
	var keys []string
	switch kind {
	case "Secret":
		s, ok := get[*corev1.Secret](c, "Secret", ns, name)
		if !ok {
			if name != "resilience-injector-tls" {
				t.Errorf("%s: Secret %s/%s is not in the manifests", where, ns, name)
			}
			return
		}
		for k := range s.StringData {
			keys = append(keys, k)
		}
		for k := range s.Data {
			keys = append(keys, k)
		}
	case "ConfigMap":
		cm, ok := get[*corev1.ConfigMap](c, "ConfigMap", ns, name)
		if !ok {
			t.Errorf("%s: ConfigMap %s/%s is not in the manifests", where, ns, name)
			return
		}
		for k := range cm.Data {
			keys = append(keys, k)
		}
	}
	for _, it := range items {
		if !slices.Contains(keys, it.Key) {
			t.Errorf("%s: %s %s/%s has no key %q", where, kind, ns, name, it.Key)
		}
	}
}

// checkProbePorts: probes aim at a port the container declares.
func checkProbePorts(t *testing.T, where string, ctr corev1.Container) {
	t.Helper()
	declared := func(p intstr.IntOrString) bool {
		return slices.ContainsFunc(ctr.Ports, func(cp corev1.ContainerPort) bool {
			return (p.Type == intstr.String && cp.Name == p.StrVal) || (p.Type == intstr.Int && cp.ContainerPort == p.IntVal)
		})
	}
	for _, p := range []*corev1.Probe{ctr.StartupProbe, ctr.LivenessProbe, ctr.ReadinessProbe} {
		if p == nil {
			continue
		}
		var port intstr.IntOrString
		switch {
		case p.GRPC != nil:
			port = intstr.FromInt32(p.GRPC.Port)
		case p.HTTPGet != nil:
			port = p.HTTPGet.Port
		case p.TCPSocket != nil:
			port = p.TCPSocket.Port
		default:
			continue
		}
		if !declared(port) {
			t.Errorf("%s: container %q probes port %s, which it does not declare", where, ctr.Name, port.String())
		}
	}
}

// TestServicesReachTheirPods: every Service selects a workload, and each of
// its target ports resolves in the Pods of every workload it selects (after
// injection, for the Pods that ask for the sidecar).
func TestServicesReachTheirPods(t *testing.T) {
	c := loadCluster(t)
	for _, m := range c {
		svc, ok := m.obj.(*corev1.Service)
		if !ok {
			continue
		}
		targets := c.selectedBy(svc)
		if len(targets) == 0 {
			t.Errorf("%s: Service %s selects no workload", m.file, svc.Name)
			continue
		}
		for _, w := range targets {
			pod := c.pod(t, w)
			for _, p := range svc.Spec.Ports {
				if _, _, ok := findPort(&pod.Spec, p); !ok {
					t.Errorf("%s: Service %s port %s targets %s, which no container of %s declares",
						m.file, svc.Name, p.Name, p.TargetPort.String(), w.name)
				}
			}
		}
	}
}

// TestSidecarManifests: the hand-written native sidecar is exactly what the
// injector adds for the annotations of the injected demo, and the injected
// demo, run through the injector configured by its own Deployment's
// arguments, ends up with the same sidecar.
func TestSidecarManifests(t *testing.T) {
	c := loadCluster(t)
	app, ok := get[*appsv1.Deployment](c, "Deployment", "resilience-demo", "demo-app")
	if !ok {
		t.Fatal("no Deployment resilience-demo/demo-app")
	}
	injected, ok := get[*appsv1.Deployment](c, "Deployment", "resilience-demo", "demo-injected")
	if !ok {
		t.Fatal("no Deployment resilience-demo/demo-injected")
	}
	checkSidecar(t, "demo-app", &app.Spec.Template.Spec)
	for _, ctr := range app.Spec.Template.Spec.Containers {
		for _, e := range ctr.Env {
			if e.Name == AddrEnv && e.Value != "127.0.0.1:50051" {
				t.Errorf("demo-app: container %q: %s=%q", ctr.Name, AddrEnv, e.Value)
			}
		}
	}
	if alreadyInjected(&injected.Spec.Template.Spec) {
		t.Error("demo-injected declares the sidecar itself")
	}

	pod := c.admit(t, injected.Namespace, &injected.Spec.Template)
	checkSidecar(t, "demo-injected after injection", &pod.Spec)
	for _, ctr := range pod.Spec.Containers {
		checkHardened(t, "demo-injected after injection", ctr, &pod.Spec)
	}
	got, want := pod.Spec.InitContainers[0], app.Spec.Template.Spec.InitContainers[0]
	if !equality.Semantic.DeepEqual(got, want) {
		g, _ := yaml.Marshal(got)
		w, _ := yaml.Marshal(want)
		t.Errorf("the injected sidecar differs from demo/app.yaml's:\ninjected:\n%s\napp.yaml:\n%s", g, w)
	}
	for _, v := range app.Spec.Template.Spec.Volumes {
		i := slices.IndexFunc(pod.Spec.Volumes, func(x corev1.Volume) bool { return x.Name == v.Name })
		if i < 0 || !equality.Semantic.DeepEqual(pod.Spec.Volumes[i], v) {
			t.Errorf("volume %q: the injector's differs from demo/app.yaml's", v.Name)
		}
	}
}

// expandArgs returns the container's args with the $(NAME) references to
// its literal env values expanded, as the kubelet does.
func expandArgs(c corev1.Container) []string {
	var pairs []string
	for _, e := range c.Env {
		if e.ValueFrom == nil {
			pairs = append(pairs, "$("+e.Name+")", e.Value)
		}
	}
	r := strings.NewReplacer(pairs...)
	out := make([]string, len(c.Args))
	for i, a := range c.Args {
		out[i] = r.Replace(a)
	}
	return out
}

// injectorConfig is the Config that the injector's Deployment runs with,
// parsed from its arguments by Main's own flag parser.
func injectorConfig(t *testing.T, c cluster) Config {
	t.Helper()
	d, ok := get[*appsv1.Deployment](c, "Deployment", "resilience-system", "resilience-injector")
	if !ok {
		t.Fatal("no Deployment resilience-system/resilience-injector")
	}
	ctr := d.Spec.Template.Spec.Containers[0]
	if !slices.Equal(ctr.Command, []string{"/sidecar-injector"}) {
		t.Fatalf("the injector's command must be the image's /sidecar-injector, got %q", ctr.Command)
	}
	o, err := parseFlags(expandArgs(ctr), io.Discard)
	if err != nil {
		t.Fatalf("the injector's args do not parse: %v", err)
	}
	for _, f := range []string{o.tlsCert, o.tlsKey} {
		if !slices.ContainsFunc(ctr.VolumeMounts, func(vm corev1.VolumeMount) bool {
			return strings.HasPrefix(f, strings.TrimSuffix(vm.MountPath, "/")+"/")
		}) {
			t.Errorf("the injector reads %s, which is on no volume it mounts", f)
		}
	}
	if o.cfg.SidecarImage != ctr.Image {
		t.Errorf("--sidecar-image %q differs from the injector's own image %q: they are one binary, release them together",
			o.cfg.SidecarImage, ctr.Image)
	}
	return o.cfg
}

func TestWebhookConfiguration(t *testing.T) {
	c := loadCluster(t)
	var hooks []*admissionregv1.MutatingWebhookConfiguration
	for _, m := range c {
		if h, ok := m.obj.(*admissionregv1.MutatingWebhookConfiguration); ok {
			hooks = append(hooks, h)
		}
	}
	if len(hooks) != 1 || len(hooks[0].Webhooks) != 1 {
		t.Fatalf("want one MutatingWebhookConfiguration with one webhook, got %d", len(hooks))
	}
	wh := hooks[0].Webhooks[0]
	if !slices.Equal(wh.AdmissionReviewVersions, []string{"v1"}) {
		t.Errorf("admissionReviewVersions %q: the injector speaks v1 only", wh.AdmissionReviewVersions)
	}
	if wh.SideEffects == nil || *wh.SideEffects != admissionregv1.SideEffectClassNone {
		t.Error("sideEffects must be None (the injector has none, and dry-run requests need it)")
	}
	if wh.FailurePolicy == nil || *wh.FailurePolicy != admissionregv1.Fail {
		t.Error("failurePolicy must be Fail: a Pod that asked for the sidecar must not start without it")
	}
	if wh.TimeoutSeconds == nil || *wh.TimeoutSeconds < 1 || *wh.TimeoutSeconds > 10 {
		t.Errorf("timeoutSeconds %v must be set, at most 10", wh.TimeoutSeconds)
	}
	if wh.ReinvocationPolicy != nil && *wh.ReinvocationPolicy != admissionregv1.NeverReinvocationPolicy {
		t.Error("reinvocationPolicy: the injector leaves an injected Pod alone, so reinvoking it adds nothing")
	}
	if len(wh.Rules) != 1 {
		t.Fatalf("want one rule, got %d", len(wh.Rules))
	}
	r := wh.Rules[0]
	if !slices.Equal(r.APIGroups, []string{""}) || !slices.Equal(r.APIVersions, []string{"v1"}) ||
		!slices.Equal(r.Resources, []string{"pods"}) || !slices.Equal(r.Operations, []admissionregv1.OperationType{admissionregv1.Create}) {
		t.Errorf("rule %+v: want CREATE of core/v1 pods only", r)
	}

	svcRef := wh.ClientConfig.Service
	if svcRef == nil || wh.ClientConfig.URL != nil {
		t.Fatal("clientConfig must name the injector's Service")
	}
	if svcRef.Path == nil || *svcRef.Path != MutatePath {
		t.Errorf("clientConfig.service.path must be %s", MutatePath)
	}
	svc, ok := get[*corev1.Service](c, "Service", svcRef.Namespace, svcRef.Name)
	if !ok {
		t.Fatalf("clientConfig names Service %s/%s, which the manifests do not define", svcRef.Namespace, svcRef.Name)
	}
	port := int32(443)
	if svcRef.Port != nil {
		port = *svcRef.Port
	}
	if !slices.ContainsFunc(svc.Spec.Ports, func(p corev1.ServicePort) bool { return p.Port == port }) {
		t.Errorf("Service %s has no port %d", svc.Name, port)
	}
	d, _ := get[*appsv1.Deployment](c, "Deployment", "resilience-system", "resilience-injector")
	if d == nil || !labels.SelectorFromSet(svc.Spec.Selector).Matches(labels.Set(d.Spec.Template.Labels)) {
		t.Error("the webhook's Service does not select the injector's Pods")
	}
	if d != nil && (d.Spec.Replicas == nil || *d.Spec.Replicas < 2) {
		t.Error("with failurePolicy Fail the injector needs at least two replicas")
	}
	pdbFound := false
	for _, m := range c {
		if pdb, ok := m.obj.(*policyv1.PodDisruptionBudget); ok && d != nil && pdb.Namespace == d.Namespace {
			sel, err := metav1.LabelSelectorAsSelector(pdb.Spec.Selector)
			pdbFound = err == nil && sel.Matches(labels.Set(d.Spec.Template.Labels))
		}
	}
	if !pdbFound {
		t.Error("no PodDisruptionBudget covers the injector")
	}
	if sa, ok := get[*corev1.ServiceAccount](c, "ServiceAccount", "resilience-system", "resilience-injector"); !ok ||
		sa.AutomountServiceAccountToken == nil || *sa.AutomountServiceAccountToken ||
		d == nil || d.Spec.Template.Spec.ServiceAccountName != sa.Name {
		t.Error("the injector must run as its own ServiceAccount, with no token mounted")
	}

	// Only opted-in namespaces, never the system's or the injector's own.
	sel, err := metav1.LabelSelectorAsSelector(wh.NamespaceSelector)
	if err != nil {
		t.Fatal(err)
	}
	nsLabels := func(name string, extra map[string]string) labels.Set {
		l := labels.Set{"kubernetes.io/metadata.name": name}
		for k, v := range extra {
			l[k] = v
		}
		return l
	}
	optIn := map[string]string{NamespaceLabel: "enabled"}
	for _, tc := range []struct {
		ns     labels.Set
		wanted bool
	}{
		{nsLabels("shop", optIn), true},
		{nsLabels("shop", nil), false},
		{nsLabels("shop", map[string]string{NamespaceLabel: "disabled"}), false},
		{nsLabels("kube-system", optIn), false},
		{nsLabels(svcRef.Namespace, optIn), false},
	} {
		if sel.Matches(tc.ns) != tc.wanted {
			t.Errorf("namespaceSelector on %v: matches=%v, want %v", tc.ns, !tc.wanted, tc.wanted)
		}
	}
	for _, m := range c {
		if ns, ok := m.obj.(*corev1.Namespace); ok {
			l := labels.Set(ns.Labels)
			l["kubernetes.io/metadata.name"] = ns.Name
			if want := ns.Name == "resilience-demo"; sel.Matches(l) != want {
				t.Errorf("namespace %s: selected=%v, want %v", ns.Name, !want, want)
			}
		}
	}
	if len(wh.MatchConditions) != 1 || !strings.Contains(wh.MatchConditions[0].Expression, "'"+AnnotationPrefix+"'") {
		t.Errorf("matchConditions must send only Pods with a %s annotation: %+v", AnnotationPrefix, wh.MatchConditions)
	}
}

func TestDevelopmentRedis(t *testing.T) {
	c := loadCluster(t)
	ss, ok := get[*appsv1.StatefulSet](c, "StatefulSet", "resilience-demo", "redis")
	if !ok {
		t.Fatal("no StatefulSet resilience-demo/redis")
	}
	if len(ss.Spec.VolumeClaimTemplates) != 1 {
		t.Fatal("Redis needs a volumeClaimTemplate for persistence")
	}
	ctr := ss.Spec.Template.Spec.Containers[0]
	if !slices.ContainsFunc(ctr.VolumeMounts, func(vm corev1.VolumeMount) bool {
		return vm.Name == ss.Spec.VolumeClaimTemplates[0].Name && vm.MountPath == "/data"
	}) {
		t.Error("Redis must keep /data on the claim")
	}
	args := strings.Join(ctr.Args, " ")
	for _, want := range []string{"--dir /data", "--appendonly yes", "--maxmemory-policy noeviction", "--requirepass $(REDIS_PASSWORD)"} {
		if !strings.Contains(args, want) {
			t.Errorf("Redis args %q lack %q", args, want)
		}
	}
	if svc, ok := get[*corev1.Service](c, "Service", ss.Namespace, ss.Spec.ServiceName); !ok || svc.Spec.ClusterIP != corev1.ClusterIPNone {
		t.Errorf("serviceName %q must be a headless Service", ss.Spec.ServiceName)
	}

	// The sidecar's Redis URL reaches this Redis with its password.
	sec, _ := get[*corev1.Secret](c, "Secret", "resilience-demo", "resilience-redis")
	auth, _ := get[*corev1.Secret](c, "Secret", "resilience-demo", "redis-auth")
	if sec == nil || auth == nil {
		t.Fatal("Secrets resilience-redis and redis-auth are missing")
	}
	u, err := url.Parse(sec.StringData[RedisURLKey])
	if err != nil {
		t.Fatal(err)
	}
	pw, _ := u.User.Password()
	if u.Scheme != "redis" || u.Hostname() != ss.Spec.ServiceName+"."+ss.Namespace+".svc" || u.Port() != "6379" ||
		pw != auth.StringData["password"] {
		t.Errorf("redis-url %q does not reach the Redis of redis.yaml with redis-auth's password", u.Redacted())
	}
}

func TestGenCertScript(t *testing.T) {
	data, err := os.ReadFile(filepath.Join(k8sDir, "injector", "gen-cert.sh"))
	if err != nil {
		t.Fatal(err)
	}
	c := loadCluster(t)
	d, _ := get[*appsv1.Deployment](c, "Deployment", "resilience-system", "resilience-injector")
	if d == nil {
		t.Fatal("no injector Deployment")
	}
	var secret string
	for _, v := range d.Spec.Template.Spec.Volumes {
		if v.Secret != nil {
			secret = v.Secret.SecretName
		}
	}
	for name, want := range map[string]string{
		"NAMESPACE": d.Namespace, "SERVICE": "resilience-injector", "SECRET": secret, "WEBHOOK": "resilience-sidecar-injector",
	} {
		re := regexp.MustCompile(name + `="\$\{` + name + `:-([^}]*)\}"`)
		m := re.FindSubmatch(data)
		if m == nil || string(m[1]) != want {
			t.Errorf("gen-cert.sh: default %s is %q, want %q (the manifests' name)", name, m, want)
		}
	}
}

// promDuration is a Prometheus duration, as the ServiceMonitor CRD's
// pattern for interval accepts it.
var promDuration = regexp.MustCompile(`^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$`)

// TestMetricsManifests: every Pod that runs the sidecar carries the
// Prometheus scrape annotations for its metrics port and is scraped by a
// ServiceMonitor, whose Services reach exactly that port; and the injected
// demo's own scrape annotations are the ones the injector would add.
func TestMetricsManifests(t *testing.T) {
	c := loadCluster(t)
	var monitors []string
	for k, m := range c {
		if _, ok := m.obj.(*serviceMonitor); ok {
			monitors = append(monitors, k)
		}
	}
	if len(monitors) == 0 {
		t.Fatal("no ServiceMonitor in the manifests")
	}
	sort.Strings(monitors)
	scraped := map[string]bool{} // namespace/name of the workloads a ServiceMonitor scrapes
	for _, k := range monitors {
		m := c[k]
		sm := m.obj.(*serviceMonitor)
		where := m.file + " " + sm.Name
		sel, err := metav1.LabelSelectorAsSelector(&sm.Spec.Selector)
		if err != nil || sel.Empty() {
			t.Errorf("%s: selector %+v: %v (an empty one selects every Service)", where, sm.Spec.Selector, err)
			continue
		}
		if sm.Spec.NamespaceSelector.Any {
			t.Errorf("%s: namespaceSelector.any selects matching Services in every namespace; name the namespaces", where)
		}
		namespaces := sm.Spec.NamespaceSelector.MatchNames
		if len(namespaces) == 0 {
			namespaces = []string{sm.Namespace}
		}
		var services []*corev1.Service
		for _, o := range c {
			if svc, ok := o.obj.(*corev1.Service); ok && slices.Contains(namespaces, svc.Namespace) && sel.Matches(labels.Set(svc.Labels)) {
				services = append(services, svc)
			}
		}
		if len(services) == 0 {
			t.Errorf("%s: selects no Service (selector %s in %q)", where, sel, namespaces)
			continue
		}
		if len(sm.Spec.Endpoints) == 0 {
			t.Errorf("%s: no endpoints", where)
		}
		for _, ep := range sm.Spec.Endpoints {
			if ep.Path != MetricsPath {
				t.Errorf("%s: endpoint path %q, the sidecar serves %s", where, ep.Path, MetricsPath)
			}
			if ep.Interval == "" || ep.Interval == "0" || !promDuration.MatchString(ep.Interval) {
				t.Errorf("%s: endpoint interval %q is not a positive Prometheus duration", where, ep.Interval)
			}
			for _, svc := range services {
				i := slices.IndexFunc(svc.Spec.Ports, func(p corev1.ServicePort) bool { return p.Name == ep.Port })
				if ep.Port == "" || i < 0 {
					t.Errorf("%s: endpoint port %q is not the name of a port of Service %s", where, ep.Port, svc.Name)
					continue
				}
				targets := c.selectedBy(svc)
				if len(targets) == 0 {
					t.Errorf("%s: Service %s selects no workload", where, svc.Name)
				}
				for _, w := range targets {
					pod := c.pod(t, w)
					port, ctr, ok := findPort(&pod.Spec, svc.Spec.Ports[i])
					if want := sidecarMetricsPort(&pod.Spec); !ok || ctr != ContainerName || port != want {
						t.Errorf("%s: Service %s port %s (targetPort %s) reaches %q port %d in %s, not the sidecar's metrics port %d",
							where, svc.Name, ep.Port, svc.Spec.Ports[i].TargetPort.String(), ctr, port, w.name, want)
						continue
					}
					scraped[w.ns+"/"+w.name] = true
				}
			}
		}
	}

	sidecars := 0
	for _, w := range c.workloads() {
		pod := c.pod(t, w)
		mp := sidecarMetricsPort(&pod.Spec)
		if mp == 0 {
			continue // no sidecar here
		}
		sidecars++
		where := w.file + " " + w.name
		sc := pod.Spec.InitContainers[slices.IndexFunc(pod.Spec.InitContainers, func(c corev1.Container) bool { return c.Name == ContainerName })]
		if arg := fmt.Sprintf("--metrics-listen=0.0.0.0:%d", mp); !slices.Contains(sc.Args, arg) {
			t.Errorf("%s: the sidecar declares metrics port %d but its args %q lack %s", where, mp, sc.Args, arg)
		}
		checkScrapeAnnotations(t, where, nil, pod.Annotations, mp)
		if !scraped[w.ns+"/"+w.name] {
			t.Errorf("%s: no ServiceMonitor scrapes its sidecar", where)
		}
		// A template that asks for injection and writes the annotations
		// itself writes what the injector would add without them.
		if w.template.Annotations[AnnotationInject] == "true" {
			tmpl := w.template.DeepCopy()
			maps.DeleteFunc(tmpl.Annotations, func(k, _ string) bool { return strings.HasPrefix(k, PrometheusPrefix) })
			checkScrapeAnnotations(t, where+" (without its prometheus.io annotations, injected)",
				nil, c.admit(t, w.ns, tmpl).Annotations, mp)
		}
	}
	if sidecars < 2 {
		t.Errorf("found %d workloads running the sidecar, want both demo apps", sidecars)
	}
}

// dashboardPanel is the part of a Grafana panel that holds queries; rows
// hold panels.
type dashboardPanel struct {
	Title   string `json:"title"`
	Targets []struct {
		Expr string `json:"expr"`
	} `json:"targets"`
	Panels []dashboardPanel `json:"panels"`
}

// seriesPrefixes are the prefixes of what the sidecar exports (see
// docs/observability.md).
var seriesPrefixes = []string{"resilience_", "grpc_server_", "go_", "process_"}

// TestDashboardSeriesPrefixes is a light guard on the Grafana dashboard:
// every series its panels query is one of the sidecar's prefixes. (The
// deeper check, that each is exported, is in internal/metrics.)
func TestDashboardSeriesPrefixes(t *testing.T) {
	data, err := os.ReadFile(grafanaDashboard)
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Panels []dashboardPanel `json:"panels"`
	}
	if err := json.Unmarshal(data, &dash); err != nil {
		t.Fatalf("%s: %v", grafanaDashboard, err)
	}
	seen := 0
	var walk func([]dashboardPanel)
	walk = func(ps []dashboardPanel) {
		for _, p := range ps {
			for _, tg := range p.Targets {
				names := promSeries(tg.Expr)
				if len(names) == 0 {
					t.Errorf("panel %q: no series found in %q", p.Title, tg.Expr)
				}
				for _, n := range names {
					seen++
					if !slices.ContainsFunc(seriesPrefixes, func(pre string) bool { return strings.HasPrefix(n, pre) }) {
						t.Errorf("panel %q queries %s, which is not a sidecar series (prefixes %q)", p.Title, n, seriesPrefixes)
					}
				}
			}
			walk(p.Panels)
		}
	}
	walk(dash.Panels)
	if seen == 0 {
		t.Fatal("the dashboard queries no series")
	}
}

var (
	promStrings  = regexp.MustCompile(`"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|` + "`[^`]*`")
	promMatchers = regexp.MustCompile(`\{[^}]*\}`)
	promRanges   = regexp.MustCompile(`\[[^\]]*\]`)
	promGrouping = regexp.MustCompile(`\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)`)
	promIdent    = regexp.MustCompile(`[A-Za-z_:][A-Za-z0-9_:]*`)
	promKeywords = []string{"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring",
		"group_left", "group_right", "inf", "nan", "Inf", "NaN"}
)

// promSeries returns the series names a PromQL expression selects, found
// lightly: with strings, label matchers, ranges and grouping labels taken
// out, what remains of the identifiers that are not functions (followed by
// a parenthesis), keywords, parts of numbers or durations, or Grafana
// variables. Selectors by {__name__=...} are not seen.
func promSeries(expr string) []string {
	e := promStrings.ReplaceAllString(expr, " ")
	e = promMatchers.ReplaceAllString(e, " ")
	e = promRanges.ReplaceAllString(e, " ")
	e = promGrouping.ReplaceAllString(e, " ")
	var names []string
	for _, loc := range promIdent.FindAllStringIndex(e, -1) {
		name := e[loc[0]:loc[1]]
		if loc[0] > 0 && strings.ContainsAny(e[loc[0]-1:loc[0]], "0123456789.$") {
			continue // 1e-3, 5m, $job
		}
		if strings.HasPrefix(strings.TrimLeft(e[loc[1]:], " \t\n"), "(") || slices.Contains(promKeywords, name) {
			continue
		}
		names = append(names, name)
	}
	return names
}

func TestPromSeries(t *testing.T) {
	for expr, want := range map[string][]string{
		`histogram_quantile(0.99, sum by (le, op) (rate(resilience_store_latency_seconds_bucket{job=~"$job", op!="}"}[5m])))`: {
			"resilience_store_latency_seconds_bucket"},
		`sum(rate(http_requests_total[$__rate_interval])) without (pod) / on(pod) group_left(node) kube_pod_info`: {
			"http_requests_total", "kube_pod_info"},
		`max(resilience_saga_stuck offset 1h) > bool 1e-3 and go_goroutines`: {"resilience_saga_stuck", "go_goroutines"},
		`label_replace(up, "dst", "$1", "src", "(.*)")`:                      {"up"},
		`sum(resilience_lock_held{job=~"$job"})`:                             {"resilience_lock_held"},
	} {
		if got := promSeries(expr); !slices.Equal(got, want) {
			t.Errorf("promSeries(%q) = %q, want %q", expr, got, want)
		}
	}
}
