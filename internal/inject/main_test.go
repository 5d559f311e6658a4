package inject

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
)

// lineSink is an io.Writer for Main's logs that hands each complete line
// to the test as it is written, so the test waits for events instead of
// sleeping.
type lineSink struct {
	mu      sync.Mutex
	partial []byte
	all     bytes.Buffer
	lines   chan string
}

func newLineSink() *lineSink { return &lineSink{lines: make(chan string, 1024)} }

func (s *lineSink) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.all.Write(p)
	s.partial = append(s.partial, p...)
	for {
		i := bytes.IndexByte(s.partial, '\n')
		if i < 0 {
			return len(p), nil
		}
		select {
		case s.lines <- string(s.partial[:i]):
		default: // the test reads only the lines it waits for
		}
		s.partial = s.partial[i+1:]
	}
}

func (s *lineSink) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.all.String()
}

// waitLog returns the first JSON log line whose "msg" is msg.
func (s *lineSink) waitLog(t *testing.T, msg string) map[string]any {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		select {
		case line := <-s.lines:
			var rec map[string]any
			if json.Unmarshal([]byte(line), &rec) == nil && rec["msg"] == msg {
				return rec
			}
		case <-deadline:
			t.Fatalf("no %q log line within 10s; logs:\n%s", msg, s)
			return nil
		}
	}
}

// startMain runs Main with args in the background; the returned function
// cancels its context and returns its exit code.
func startMain(t *testing.T, args []string) (logs *lineSink, stop func() int) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	logs = newLineSink()
	code := make(chan int, 1)
	go func() { code <- Main(ctx, args, io.Discard, logs) }()
	stopped := false
	var exit int
	stop = func() int {
		t.Helper()
		if stopped {
			return exit
		}
		stopped = true
		cancel()
		select {
		case exit = <-code:
		case <-time.After(20 * time.Second):
			t.Fatalf("Main did not return within 20s of cancellation; logs:\n%s", logs)
		}
		return exit
	}
	t.Cleanup(func() { stop() })
	return logs, stop
}

func httpsClient(t *testing.T, roots *x509.CertPool) *http.Client {
	t.Helper()
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots}, ForceAttemptHTTP2: true}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 10 * time.Second}
}

// TestEndToEndOverTLS starts the injector as cmd/sidecar-injector does, with
// a certificate made here, and posts an AdmissionReview to it with a real
// HTTPS client, as the API server would; then renews the certificate
// under it and shuts it down.
func TestEndToEndOverTLS(t *testing.T) {
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	ca := newTestCA(t, "test CA 1")
	ca.issue(t, certFile, keyFile, 2)

	logs, stop := startMain(t, []string{
		"--listen=127.0.0.1:0", "--tls-cert=" + certFile, "--tls-key=" + keyFile,
		"--sidecar-image=registry.example/resilience-sidecar:e2e", "--log-level=debug", "--metrics-listen=127.0.0.1:0",
	})
	listening := logs.waitLog(t, "listening")
	addr, _ := listening["addr"].(string)
	metricsAddr, _ := listening["metrics_addr"].(string)
	if addr == "" || metricsAddr == "" {
		t.Fatalf("no addresses in the listening line:\n%s", logs)
	}
	base := "https://" + addr

	pod := []byte(`{"apiVersion":"v1","kind":"Pod","metadata":{"generateName":"orders-","annotations":{"resilience.seed-a88e5317.io/inject":"true"}},
		"spec":{"containers":[{"name":"app","image":"example.com/orders:1"}]}}`)
	client := httpsClient(t, ca.pool())
	resp, err := client.Post(base+MutatePath+"?timeout=5s", "application/json", bytes.NewReader(reviewOf(t, "e2e-1", "shop", pod)))
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK || resp.ProtoMajor != 2 {
		t.Fatalf("got %s over %s: %s", resp.Status, resp.Proto, body)
	}
	var review admissionv1.AdmissionReview
	if err := json.Unmarshal(body, &review); err != nil {
		t.Fatal(err)
	}
	if review.Response == nil || !review.Response.Allowed || review.Response.UID != "e2e-1" {
		t.Fatalf("response %+v", review.Response)
	}
	var got corev1.Pod
	if err := json.Unmarshal(applyPatch(t, pod, review.Response.Patch), &got); err != nil {
		t.Fatal(err)
	}
	checkSidecar(t, "e2e", &got.Spec)
	if img := got.Spec.InitContainers[0].Image; img != "registry.example/resilience-sidecar:e2e" {
		t.Errorf("sidecar image %q", img)
	}
	if rec := logs.waitLog(t, "admission"); rec["decision"] != decisionInjected || rec["pod"] != "orders-*" {
		t.Errorf("admission log %v", rec)
	}

	// A client that does not trust the CA is refused.
	if _, err := httpsClient(t, x509.NewCertPool()).Get(base + HealthPath); err == nil {
		t.Error("a client without the CA connected")
	}

	// Renewal: a certificate from another CA replaces the files (with a
	// distinct modification time, as a Secret volume update gives) and new
	// connections get it without a restart.
	ca2 := newTestCA(t, "test CA 2")
	ca2.issue(t, certFile, keyFile, 3)
	later := time.Now().Add(time.Minute)
	for _, f := range []string{certFile, keyFile} {
		if err := os.Chtimes(f, later, later); err != nil {
			t.Fatal(err)
		}
	}
	resp, err = httpsClient(t, ca2.pool()).Get(base + ReadyPath)
	if err != nil {
		t.Fatalf("after renewal: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("readyz: %s", resp.Status)
	}
	logs.waitLog(t, "tls: certificate reloaded")

	// /metrics: the admission above, and the renewed certificate's expiry.
	plain := &http.Transport{}
	t.Cleanup(plain.CloseIdleConnections)
	resp, err = (&http.Client{Transport: plain}).Get("http://" + metricsAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	metrics, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	leaf := readLeaf(t, certFile)
	for _, want := range []string{
		`resilience_injector_admissions_total{decision="injected"} 1`,
		`resilience_injector_admissions_total{decision="rejected"} 0`,
		`resilience_injector_admission_duration_seconds_count 1`,
		`resilience_injector_certificate_rotations_total 1`,
		fmt.Sprintf("resilience_injector_certificate_expiry_timestamp_seconds %g", float64(leaf.NotAfter.Unix())),
	} {
		if !strings.Contains(string(metrics), want+"\n") {
			t.Errorf("/metrics lacks %q:\n%s", want, metrics)
		}
	}

	if code := stop(); code != 0 {
		t.Fatalf("exit code %d after cancellation; logs:\n%s", code, logs)
	}
	for _, msg := range []string{`"msg":"shutting down"`, `"msg":"stopped"`} {
		if !strings.Contains(logs.String(), msg) {
			t.Errorf("logs lack %s:\n%s", msg, logs)
		}
	}
}

func TestCertReloaderKeepsThePairWhenTheRenewalIsBroken(t *testing.T) {
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	ca := newTestCA(t, "CA")
	ca.issue(t, certFile, keyFile, 2)
	var logs bytes.Buffer
	r, err := newCertReloader(certFile, keyFile, slog.New(slog.NewJSONHandler(&logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	first, err := r.GetCertificate(nil)
	if err != nil || first == nil {
		t.Fatalf("GetCertificate: %v", err)
	}
	// Half a renewal: the certificate changed, the key did not yet.
	other := filepath.Join(dir, "other")
	ca.issue(t, other+".crt", other+".key", 3)
	data, err := os.ReadFile(other + ".crt")
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, certFile, data)
	later := time.Now().Add(time.Minute)
	if err := os.Chtimes(certFile, later, later); err != nil {
		t.Fatal(err)
	}
	for range 2 { // the second handshake does not retry the same broken pair
		got, err := r.GetCertificate(nil)
		if err != nil || got != first {
			t.Fatalf("a broken renewal replaced the pair: %v", err)
		}
	}
	if n := strings.Count(logs.String(), "cannot load the renewed certificate"); n != 1 {
		t.Errorf("warned %d times, want once:\n%s", n, logs.String())
	}
	// The key arrives: the new pair is used.
	key, err := os.ReadFile(other + ".key")
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, keyFile, key)
	if err := os.Chtimes(keyFile, later, later); err != nil {
		t.Fatal(err)
	}
	got, err := r.GetCertificate(nil)
	if err != nil || got == first || got.Leaf.SerialNumber.Int64() != 3 {
		t.Fatalf("renewal not picked up: %v", err)
	}
}

func TestMainExitCodes(t *testing.T) {
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	newTestCA(t, "CA").issue(t, certFile, keyFile, 2)
	tls := []string{"--tls-cert=" + certFile, "--tls-key=" + keyFile}

	tests := []struct {
		name       string
		args       []string
		wantCode   int
		wantStdout string
		wantStderr []string
	}{
		{"help", []string{"--help"}, 0, "-sidecar-image image", nil},
		{"no TLS", nil, 2, "", []string{"--tls-cert: required", "--tls-key: required", "sidecar-injector -h"}},
		{"unknown flag", []string{"--bogus"}, 2, "", []string{"flag provided but not defined: -bogus"}},
		{"stray argument", append([]string{"serve"}, tls...), 2, "", []string{`unexpected argument "serve"`}},
		{"bad listen", append([]string{"--listen=8443"}, tls...), 2, "", []string{"--listen"}},
		{"bad level", append([]string{"--log-level=loud"}, tls...), 2, "", []string{"--log-level"}},
		{"bad quantity", append([]string{"--sidecar-memory-limit=lots"}, tls...), 2, "", []string{"--sidecar-memory-limit"}},
		{"bad pull policy and secret at once", append([]string{"--image-pull-policy=Maybe", "--redis-secret=A_B"}, tls...), 2, "",
			[]string{"--image-pull-policy", "--redis-secret"}},
		{"missing cert file", []string{"--tls-cert=" + filepath.Join(dir, "nope"), "--tls-key=" + keyFile}, 2, "",
			[]string{"--tls-cert/--tls-key", "nope"}},
		{"key does not match", []string{"--tls-cert=" + certFile, "--tls-key=" + certFile}, 2, "", []string{"--tls-cert/--tls-key"}},
		{"address in use or invalid", append([]string{"--listen=256.0.0.1:1"}, tls...), 1, "", []string{"cannot listen"}},
		{"bad metrics listen", append([]string{"--metrics-listen=9090"}, tls...), 2, "", []string{"--metrics-listen"}},
		{"bad cert mode", append([]string{"--cert-mode=vault"}, tls...), 2, "", []string{"--cert-mode"}},
		{"self-managed with files", append([]string{"--cert-mode=self-managed"}, tls...), 2, "",
			[]string{"--tls-cert/--tls-key: not used with --cert-mode=self-managed"}},
		{"self-managed bad lifetimes", []string{"--cert-mode=self-managed", "--cert-validity=1h", "--ca-validity=90m",
			"--ca-propagation-delay=30m", "--cert-hosts=Not_A_Host"}, 2, "",
			[]string{"--ca-validity", "--ca-propagation-delay", "--cert-hosts"}},
		{"self-managed outside a Pod", []string{"--cert-mode=self-managed", "--kube-api=", "--metrics-listen="}, 2, "",
			[]string{"--kube-api"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			code := Main(context.Background(), tt.args, &stdout, &stderr)
			if code != tt.wantCode {
				t.Fatalf("exit %d, want %d; stderr:\n%s", code, tt.wantCode, stderr.String())
			}
			if n := strings.Count(stdout.String(), "Usage:"); n > 1 {
				t.Errorf("usage printed %d times", n)
			}
			if !strings.Contains(stdout.String(), tt.wantStdout) {
				t.Errorf("stdout %q lacks %q", stdout.String(), tt.wantStdout)
			}
			for _, w := range tt.wantStderr {
				if !strings.Contains(stderr.String(), w) {
					t.Errorf("stderr %q lacks %q", stderr.String(), w)
				}
			}
		})
	}
}

// readLeaf parses the first certificate of a PEM file.
func readLeaf(t *testing.T, file string) *x509.Certificate {
	t.Helper()
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(data)
	if block == nil {
		t.Fatalf("%s: no PEM block", file)
	}
	c, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c
}
