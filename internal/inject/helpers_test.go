package inject

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"maps"
	"math/big"
	"net"
	"os"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	jsonpatch "github.com/evanphx/json-patch/v5"
	corev1 "k8s.io/api/core/v1"

	"github.com/seed-a88e5317/resilience-sidecar/internal/testkit"
)

func TestMain(m *testing.M) { testkit.Main(m) }

// applyPatch applies an RFC 6902 patch to a JSON document, failing the test
// on any error, and checks that every operation is an "add".
func applyPatch(t *testing.T, doc, patch []byte) []byte {
	t.Helper()
	var ops []map[string]any
	if err := json.Unmarshal(patch, &ops); err != nil {
		t.Fatalf("patch is not a JSON array of operations: %v\n%s", err, patch)
	}
	for _, op := range ops {
		if op["op"] != "add" {
			t.Errorf("patch operation %v: the injector must only add", op)
		}
	}
	p, err := jsonpatch.DecodePatch(patch)
	if err != nil {
		t.Fatalf("decode patch: %v", err)
	}
	out, err := p.Apply(doc)
	if err != nil {
		t.Fatalf("apply patch: %v\npatch: %s", err, patch)
	}
	return out
}

// sameJSON reports whether two JSON documents hold the same value.
func sameJSON(t *testing.T, a, b []byte) bool {
	t.Helper()
	var va, vb any
	if err := json.Unmarshal(a, &va); err != nil {
		t.Fatalf("not JSON: %v\n%s", err, a)
	}
	if err := json.Unmarshal(b, &vb); err != nil {
		t.Fatalf("not JSON: %v\n%s", err, b)
	}
	return reflect.DeepEqual(va, vb)
}

func indentJSON(t *testing.T, b []byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	if err := json.Indent(&buf, b, "", "  "); err != nil {
		t.Fatalf("indent: %v", err)
	}
	buf.WriteByte('\n')
	return buf.Bytes()
}

// reviewOf wraps a Pod (as JSON) in an admission.k8s.io/v1 AdmissionReview
// for its CREATE in namespace ns, as the API server sends it.
func reviewOf(t *testing.T, uid, ns string, pod []byte) []byte {
	t.Helper()
	review := map[string]any{
		"apiVersion": "admission.k8s.io/v1",
		"kind":       "AdmissionReview",
		"request": map[string]any{
			"uid":                uid,
			"kind":               map[string]string{"group": "", "version": "v1", "kind": "Pod"},
			"resource":           map[string]string{"group": "", "version": "v1", "resource": "pods"},
			"requestKind":        map[string]string{"group": "", "version": "v1", "kind": "Pod"},
			"requestResource":    map[string]string{"group": "", "version": "v1", "resource": "pods"},
			"namespace":          ns,
			"operation":          "CREATE",
			"userInfo":           map[string]any{"username": "system:serviceaccount:kube-system:replicaset-controller"},
			"object":             json.RawMessage(pod),
			"oldObject":          nil,
			"dryRun":             false,
			"options":            map[string]string{"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"},
			"name":               "",
			"subResource":        "",
			"requestSubResource": "",
		},
	}
	b, err := json.Marshal(review)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// checkHardened fails the test for each property of a long-running
// container that the manifests and the injector promise: requests and
// limits for cpu and memory (requests within limits), a securityContext
// that runs as non-root (here or at the Pod level) on a read-only root
// filesystem without privilege escalation or capabilities, and liveness
// and readiness probes on a container that serves a port.
func checkHardened(t *testing.T, where string, c corev1.Container, pod *corev1.PodSpec) {
	t.Helper()
	for _, r := range []corev1.ResourceName{corev1.ResourceCPU, corev1.ResourceMemory} {
		req, okReq := c.Resources.Requests[r]
		lim, okLim := c.Resources.Limits[r]
		if !okReq || !okLim {
			t.Errorf("%s: container %q: resources.requests and resources.limits must both set %s", where, c.Name, r)
			continue
		}
		if req.Cmp(lim) > 0 {
			t.Errorf("%s: container %q: %s request %s exceeds limit %s", where, c.Name, r, req.String(), lim.String())
		}
	}
	sc := c.SecurityContext
	if sc == nil {
		t.Errorf("%s: container %q has no securityContext", where, c.Name)
		return
	}
	nonRoot := sc.RunAsNonRoot != nil && *sc.RunAsNonRoot
	if sc.RunAsNonRoot == nil && pod.SecurityContext != nil && pod.SecurityContext.RunAsNonRoot != nil {
		nonRoot = *pod.SecurityContext.RunAsNonRoot
	}
	if !nonRoot {
		t.Errorf("%s: container %q: runAsNonRoot must be true", where, c.Name)
	}
	if sc.RunAsUser != nil && *sc.RunAsUser == 0 {
		t.Errorf("%s: container %q: runAsUser 0 contradicts runAsNonRoot", where, c.Name)
	}
	if sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
		t.Errorf("%s: container %q: readOnlyRootFilesystem must be true", where, c.Name)
	}
	if sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
		t.Errorf("%s: container %q: allowPrivilegeEscalation must be false", where, c.Name)
	}
	if sc.Privileged != nil && *sc.Privileged {
		t.Errorf("%s: container %q must not be privileged", where, c.Name)
	}
	if sc.Capabilities == nil || !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) || len(sc.Capabilities.Add) > 0 {
		t.Errorf("%s: container %q: capabilities must drop ALL and add none", where, c.Name)
	}
	seccomp := sc.SeccompProfile
	if seccomp == nil && pod.SecurityContext != nil {
		seccomp = pod.SecurityContext.SeccompProfile
	}
	if seccomp == nil || seccomp.Type != corev1.SeccompProfileTypeRuntimeDefault {
		t.Errorf("%s: container %q: seccompProfile must be RuntimeDefault", where, c.Name)
	}
	if c.Image == "" || !strings.Contains(c.Image, ":") {
		t.Errorf("%s: container %q: image %q must carry a tag", where, c.Name, c.Image)
	}
	if c.ImagePullPolicy == "" {
		t.Errorf("%s: container %q: imagePullPolicy must be explicit", where, c.Name)
	}
	if len(c.Ports) > 0 {
		if c.LivenessProbe == nil || c.ReadinessProbe == nil {
			t.Errorf("%s: container %q serves ports but lacks a liveness or readiness probe", where, c.Name)
		}
	}
}

// checkSidecar fails the test unless c is the resilience sidecar as a
// native sidecar serving gRPC and HTTP/JSON on loopback or unix sockets
// only, metrics on all addresses (probed there), with Redis from a Secret.
func checkSidecar(t *testing.T, where string, spec *corev1.PodSpec) {
	t.Helper()
	var sidecar *corev1.Container
	for i := range spec.InitContainers {
		if spec.InitContainers[i].Name == ContainerName {
			sidecar = &spec.InitContainers[i]
		}
	}
	if sidecar == nil {
		t.Errorf("%s: no init container %q", where, ContainerName)
		return
	}
	if spec.InitContainers[0].Name != ContainerName {
		t.Errorf("%s: the sidecar must be the first init container, so that the others can use it", where)
	}
	if sidecar.RestartPolicy == nil || *sidecar.RestartPolicy != corev1.ContainerRestartPolicyAlways {
		t.Errorf("%s: the sidecar needs restartPolicy: Always (a native sidecar)", where)
	}
	var metricsPort int32
	for _, p := range sidecar.Ports {
		if p.Name == grpcPortName {
			t.Errorf("%s: the sidecar declares port %q, but gRPC listens on loopback only", where, grpcPortName)
		}
		if p.Name == metricsPortName {
			metricsPort = p.ContainerPort
		}
	}
	if metricsPort == 0 {
		t.Errorf("%s: the sidecar declares no port %q", where, metricsPortName)
	}
	loopbackOrSocket := func(flag string) {
		t.Helper()
		i := slices.IndexFunc(sidecar.Args, func(a string) bool { return strings.HasPrefix(a, flag+"=") })
		if i < 0 {
			t.Errorf("%s: the sidecar has no %s argument (the default may change); args %q", where, flag, sidecar.Args)
			return
		}
		v := strings.TrimPrefix(sidecar.Args[i], flag+"=")
		if !strings.HasPrefix(v, "127.0.0.1:") && !strings.HasPrefix(v, "unix:///") {
			t.Errorf("%s: the sidecar must serve %s on loopback or a unix socket only, got %q", where, flag, v)
		}
	}
	loopbackOrSocket("--listen")
	loopbackOrSocket("--http-listen")
	if !slices.Contains(sidecar.Args, fmt.Sprintf("--metrics-listen=0.0.0.0:%d", metricsPort)) {
		t.Errorf("%s: the sidecar must serve metrics on 0.0.0.0:%d; args %q", where, metricsPort, sidecar.Args)
	}
	for name, p := range map[string]*corev1.Probe{
		"startupProbe": sidecar.StartupProbe, "livenessProbe": sidecar.LivenessProbe, "readinessProbe": sidecar.ReadinessProbe,
	} {
		switch {
		case p == nil:
			t.Errorf("%s: the sidecar has no %s", where, name)
		case p.HTTPGet == nil || p.HTTPGet.Path != MetricsPath:
			t.Errorf("%s: the sidecar's %s must get %s (the kubelet cannot reach loopback)", where, name, MetricsPath)
		case p.HTTPGet.Port.IntValue() != int(metricsPort) && p.HTTPGet.Port.String() != metricsPortName:
			t.Errorf("%s: the sidecar's %s probes port %s, not its metrics port %d", where, name, p.HTTPGet.Port.String(), metricsPort)
		}
	}
	var redis *corev1.EnvVar
	for i, e := range sidecar.Env {
		if e.Name == "SIDECAR_REDIS_URL" {
			redis = &sidecar.Env[i]
		}
	}
	if redis == nil || redis.ValueFrom == nil || redis.ValueFrom.SecretKeyRef == nil || redis.ValueFrom.SecretKeyRef.Key != RedisURLKey {
		t.Errorf("%s: the sidecar must take SIDECAR_REDIS_URL from a Secret's %q key", where, RedisURLKey)
	}
	checkHardened(t, where, *sidecar, spec)
	// The value is the app's choice when it set one.
	for _, list := range [][]corev1.Container{spec.InitContainers, spec.Containers} {
		for _, c := range list {
			if c.Name != ContainerName && !slices.ContainsFunc(c.Env, func(e corev1.EnvVar) bool { return e.Name == AddrEnv }) {
				t.Errorf("%s: container %q has no %s", where, c.Name, AddrEnv)
			}
		}
	}
}

// sidecarMetricsPort is the port the sidecar init container declares as
// its metrics port, or 0.
func sidecarMetricsPort(spec *corev1.PodSpec) int32 {
	for _, c := range spec.InitContainers {
		if c.Name != ContainerName {
			continue
		}
		for _, p := range c.Ports {
			if p.Name == metricsPortName {
				return p.ContainerPort
			}
		}
	}
	return 0
}

// checkScrapeAnnotations: a Pod that came with no prometheus.io/
// annotation leaves the injector with the three that point Prometheus at
// the sidecar's metrics port; one that came with any keeps exactly its own.
func checkScrapeAnnotations(t *testing.T, where string, before, after map[string]string, metricsPort int32) {
	t.Helper()
	prom := func(ann map[string]string) map[string]string {
		out := map[string]string{}
		for k, v := range ann {
			if strings.HasPrefix(k, PrometheusPrefix) {
				out[k] = v
			}
		}
		return out
	}
	want := prom(before)
	if len(want) == 0 {
		want = map[string]string{PrometheusScrape: "true", PrometheusPort: fmt.Sprint(metricsPort), PrometheusPath: MetricsPath}
	}
	if got := prom(after); !maps.Equal(got, want) {
		t.Errorf("%s: prometheus.io annotations %v, want %v", where, got, want)
	}
}

// testCA is a certificate authority for the TLS tests.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pem  []byte
}

func newTestCA(t *testing.T, name string) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return &testCA{cert: cert, key: key, pem: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}
}

func (ca *testCA) pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(ca.cert)
	return p
}

// issue writes a server certificate for 127.0.0.1 and the injector's
// Service name, signed by ca, and its key, to the two files.
func (ca *testCA) issue(t *testing.T, certFile, keyFile string, serial int64) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(serial),
		Subject:      pkix.Name{CommonName: "resilience-injector.resilience-system.svc"},
		DNSNames:     []string{"resilience-injector.resilience-system.svc"},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
	writeFile(t, keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}))
}

func writeFile(t *testing.T, name string, data []byte) {
	t.Helper()
	if err := os.WriteFile(name, data, 0o600); err != nil {
		t.Fatal(err)
	}
}
