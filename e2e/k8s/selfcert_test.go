package k8s

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	admissionregv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/seed-a88e5317/resilience-sidecar/internal/testkit"
)

// ensureNamespace creates the namespace name (with its default
// ServiceAccount) unless it exists.
func ensureNamespace(ctx context.Context, name string, labels map[string]string) error {
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels}}
	if _, err := env.admin.create(ctx, "/api/v1/namespaces", ns, nil); err != nil && !isConflict(err) {
		return err
	}
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "default"}}
	if _, err := env.admin.create(ctx, "/api/v1/namespaces/"+name+"/serviceaccounts", sa, nil); err != nil && !isConflict(err) {
		return err
	}
	return nil
}

func isConflict(err error) bool {
	var e *apiError
	return errors.As(err, &e) && e.code == http.StatusConflict
}

// serviceAccountToken asks the API server (TokenRequest) for a token of
// the ServiceAccount ns/name, as the kubelet does for a Pod.
func serviceAccountToken(t *testing.T, ns, name string) string {
	t.Helper()
	var tr struct {
		Status struct {
			Token string `json:"token"`
		} `json:"status"`
	}
	req := map[string]any{"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
		"spec": map[string]any{"expirationSeconds": 3600}}
	if _, err := env.admin.create(t.Context(), "/api/v1/namespaces/"+ns+"/serviceaccounts/"+name+"/token", req, &tr); err != nil {
		t.Fatal(err)
	}
	return tr.Status.Token
}

// scrape returns the samples of a Prometheus text exposition, by series
// (name and labels as written).
func scrape(t *testing.T, addr string) map[string]float64 {
	t.Helper()
	tr := &http.Transport{}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr, Timeout: 10 * time.Second}).Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if v, err := strconv.ParseFloat(line[i+1:], 64); err == nil {
			out[line[:i]] = v
		}
	}
	return out
}

// logField waits for the JSON log line whose msg is msg and returns its
// field key.
func logField(t *testing.T, p *process, msg, key string) string {
	t.Helper()
	var v string
	testkit.EventuallyNil(t, startTimeout, p.name+" logs "+msg, func() error {
		if p.exited() {
			t.Fatalf("%s exited; its log ends:\n%s", p.name, p.tail(30))
		}
		data, _ := os.ReadFile(p.log)
		for _, line := range bytes.Split(data, []byte("\n")) {
			var rec map[string]any
			if json.Unmarshal(line, &rec) == nil && rec["msg"] == msg {
				v, _ = rec[key].(string)
				return nil
			}
		}
		return errors.New("not yet")
	})
	return v
}

// TestSelfManagedCertRotation runs the injector in self-managed certificate
// mode with the RBAC of deploy/overlays/self-managed-certs and lifetimes of
// seconds: it publishes its CA in the webhook's caBundle, renews its
// serving certificate several times and its CA once while Pods are created
// without pause, and not one admission fails.
func TestSelfManagedCertRotation(t *testing.T) {
	ctx := t.Context()
	if err := ensureNamespace(ctx, "resilience-system", nil); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"deploy/k8s/injector/rbac.yaml", "deploy/overlays/self-managed-certs/rbac.yaml"} {
		if err := env.applyFile(ctx, f); err != nil {
			t.Fatal(err)
		}
	}
	tokenFile := filepath.Join(t.TempDir(), "token")
	token := serviceAccountToken(t, "resilience-system", "resilience-injector")
	if err := os.WriteFile(tokenFile, []byte(token), 0o600); err != nil {
		t.Fatal(err)
	}

	// The RBAC is minimal: nothing but get/patch of the one configuration.
	sa, err := newKube(env.admin.base, token, mustRead(t, env.apiCAFile))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(sa.close)
	for _, path := range []string{
		"/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations",
		"/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/other",
		"/apis/admissionregistration.k8s.io/v1/validatingadmissionpolicies",
		"/api/v1/namespaces/resilience-system/secrets",
	} {
		var e *apiError
		if err := sa.get(ctx, path, nil); !errors.As(err, &e) || e.code != http.StatusForbidden {
			t.Errorf("the injector's ServiceAccount: GET %s: %v, want 403", path, err)
		}
	}
	if err := sa.get(ctx, "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/"+webhookConfig, nil); err != nil {
		t.Errorf("the injector's ServiceAccount cannot read its webhook configuration: %v", err)
	}

	// The self-managed injector replaces the shared one at its address.
	env.injector.stop()
	t.Cleanup(func() { restoreSharedInjector(t) })
	const (
		certValidity = 6 * time.Second
		caValidity   = 16 * time.Second // renewed after the second certificate renewal
	)
	p := startProcess(t, t, t.TempDir(), "sidecar-injector-self-managed", env.injector.bin,
		"--listen="+env.injector.addr,
		"--metrics-listen=127.0.0.1:0",
		"--cert-mode=self-managed",
		"--webhook-config="+webhookConfig,
		"--cert-hosts=127.0.0.1",
		"--cert-validity="+certValidity.String(),
		"--ca-validity="+caValidity.String(),
		"--ca-propagation-delay=1s",
		"--kube-api="+env.admin.base,
		"--kube-token-file="+tokenFile,
		"--kube-ca-file="+env.apiCAFile,
		"--sidecar-image="+sidecarImage,
	)
	metricsAddr := logField(t, p, "listening", "metrics_addr")

	ns := newNamespace(t, true)
	created := 0
	var last map[string]float64
	testkit.EventuallyNil(t, 3*time.Minute, "three certificate renewals, one of them with a new CA", func() error {
		pod, _, err := env.createPod(ctx, ns, appPod(fmt.Sprintf("pod-%d", created), injectAnnotations()))
		if err != nil {
			t.Fatalf("admission %d failed during the rotations: %v\ninjector log:\n%s", created, err, p.tail(20))
		}
		created++
		checkInjected(t, pod)
		last = scrape(t, metricsAddr)
		rotations, published := last["resilience_injector_certificate_rotations_total"],
			last[`resilience_injector_ca_bundle_updates_total{result="ok"}`]
		if rotations < 3 || published < 2 {
			// real time: pace the Pod creations while the injector's certificates age.
			time.Sleep(100 * time.Millisecond)
			return fmt.Errorf("%v renewals, %v caBundle updates", rotations, published)
		}
		return nil
	})
	if last[`resilience_injector_ca_bundle_updates_total{result="error"}`] != 0 {
		t.Errorf("caBundle updates failed: %v", last)
	}
	if exp := last["resilience_injector_certificate_expiry_timestamp_seconds"]; exp < float64(time.Now().Unix()) {
		t.Errorf("certificate expiry %v is in the past", exp)
	}
	if !p.logContains(`"msg":"tls: new CA published; waiting before serving a certificate it signed"`) {
		t.Errorf("no CA rotation logged:\n%s", p.tail(30))
	}
	t.Logf("%d Pods admitted and injected across %v certificate renewals", created, last["resilience_injector_certificate_rotations_total"])

	// The bundle holds the CAs the injector made that are unexpired, and the
	// shared injector's (kept: another replica's CA is never removed early).
	var cfg admissionregv1.MutatingWebhookConfiguration
	if err := env.admin.get(ctx, "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/"+webhookConfig, &cfg); err != nil {
		t.Fatal(err)
	}
	if bundle := cfg.Webhooks[0].ClientConfig.CABundle; !bytes.Contains(bundle, env.injector.caPEM) {
		t.Errorf("the other replica's CA was dropped from the caBundle")
	}
}

func mustRead(t *testing.T, file string) []byte {
	t.Helper()
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// restoreSharedInjector puts the webhook back on the shared injector's CA
// and restarts it, and waits until the API server injects through it.
func restoreSharedInjector(t *testing.T) {
	t.Helper()
	ctx := context.WithoutCancel(t.Context())
	patch := map[string]any{"webhooks": []map[string]any{{"name": webhookName, "clientConfig": map[string]any{"caBundle": env.injector.caPEM}}}}
	if _, err := env.admin.do(ctx, http.MethodPatch, "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/"+webhookConfig,
		"application/strategic-merge-patch+json", patch, nil); err != nil {
		t.Errorf("restore the caBundle: %v", err)
	}
	env.injector.start(t, env.injector.owner)
	ns, err := env.createNamespace(ctx, "restore", true)
	if err != nil {
		t.Fatal(err)
	}
	testkit.EventuallyNil(t, effectTimeout, "injection through the shared injector again", func() error {
		pod, _, err := env.dryRunPod(ctx, ns, appPod("probe", injectAnnotations()))
		if err != nil {
			return err
		}
		if !hasSidecar(pod) {
			return errors.New("not injected")
		}
		return nil
	})
}
