package inject

import (
	"bytes"
	"encoding/json"
	"flag"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/admission")

func newTestInjector(t *testing.T, cfg Config) (*Injector, *bytes.Buffer) {
	t.Helper()
	var logs bytes.Buffer
	in, err := New(cfg, slog.New(slog.NewJSONHandler(&logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	return in, &logs
}

// postReview sends body to the injector's handler and decodes the answer.
func postReview(t *testing.T, h http.Handler, body []byte) admissionv1.AdmissionReview {
	t.Helper()
	req := httptest.NewRequest(http.MethodPost, MutatePath+"?timeout=5s", bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	if rec.Code != http.StatusOK {
		t.Fatalf("status %d: %s", rec.Code, rec.Body)
	}
	if ct := rec.Header().Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type %q", ct)
	}
	var out admissionv1.AdmissionReview
	dec := json.NewDecoder(rec.Body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(&out); err != nil {
		t.Fatalf("response is not an AdmissionReview: %v", err)
	}
	return out
}

// TestAdmissionReviews feeds each AdmissionReview in testdata/admission to
// the handler; a patched Pod is compared with the golden
// <name>.patched.json (go test -run TestAdmissionReviews -update rewrites
// them) and then reviewed again, which must change nothing.
func TestAdmissionReviews(t *testing.T) {
	tests := []struct {
		name        string
		wantAllowed bool
		wantPatch   bool
		wantCode    int32
		wantMsg     []string
		decision    string
	}{
		{name: "basic", wantAllowed: true, wantPatch: true, decision: decisionInjected},
		{name: "full", wantAllowed: true, wantPatch: true, decision: decisionInjected},
		{name: "port-conflict-resolved", wantAllowed: true, wantPatch: true, decision: decisionInjected},
		{name: "own-scrape-annotations", wantAllowed: true, wantPatch: true, decision: decisionInjected},
		// Every per-Pod setting: unix sockets, token in the app, resources,
		// log level, image, env, drain bound within the grace period.
		{name: "settings", wantAllowed: true, wantPatch: true, decision: decisionInjected},
		{name: "already-injected", wantAllowed: true, decision: decisionAlready},
		{name: "opt-out", wantAllowed: true, decision: decisionNotRequested},
		{name: "no-annotations", wantAllowed: true, decision: decisionNotRequested},
		{name: "not-a-pod", wantAllowed: true, decision: decisionIgnored},
		{name: "update", wantAllowed: true, decision: decisionIgnored},
		{name: "subresource", wantAllowed: true, decision: decisionIgnored},
		{name: "bad-inject-value", wantCode: 422, decision: decisionRejected,
			wantMsg: []string{`annotation resilience.seed-a88e5317.io/inject: "yes" must be "true" or "false"`}},
		{name: "bad-annotations", wantCode: 422, decision: decisionRejected, wantMsg: []string{
			`resilience.seed-a88e5317.io/confg-map is unknown`,
			`resilience.seed-a88e5317.io/port: "abc" is not a port number`,
			`resilience.seed-a88e5317.io/redis-mode: "master" must be one of`,
			`resilience.seed-a88e5317.io/config-map: "Orders_Config" is not a valid object name`,
		}},
		{name: "port-conflict", wantCode: 422, decision: decisionRejected, wantMsg: []string{
			`containers "app" declares port 9090, which the sidecar uses`, AnnotationMetricsPort,
		}},
		{name: "host-network", wantCode: 422, decision: decisionRejected, wantMsg: []string{"hostNetwork"}},
		{name: "not-decodable", wantCode: 400, decision: decisionRejected, wantMsg: []string{"the object is not a Pod"}},
	}
	in, logs := newTestInjector(t, DefaultConfig())
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			body, err := os.ReadFile(filepath.Join("testdata", "admission", tt.name+".json"))
			if err != nil {
				t.Fatal(err)
			}
			var sent admissionv1.AdmissionReview
			if err := json.Unmarshal(body, &sent); err != nil {
				t.Fatal(err)
			}
			logs.Reset()
			got := postReview(t, in, body)
			if got.APIVersion != "admission.k8s.io/v1" || got.Kind != "AdmissionReview" || got.Request != nil {
				t.Errorf("response review: apiVersion %q kind %q request %v", got.APIVersion, got.Kind, got.Request)
			}
			resp := got.Response
			if resp == nil {
				t.Fatal("no response")
			}
			if resp.UID != sent.Request.UID {
				t.Errorf("uid %q, want %q", resp.UID, sent.Request.UID)
			}
			if resp.Allowed != tt.wantAllowed {
				t.Fatalf("allowed = %v, want %v (result %+v)", resp.Allowed, tt.wantAllowed, resp.Result)
			}
			if resp.AuditAnnotations["decision"] != tt.decision {
				t.Errorf("decision %q, want %q", resp.AuditAnnotations["decision"], tt.decision)
			}
			if !strings.Contains(logs.String(), `"decision":"`+tt.decision+`"`) {
				t.Errorf("log lacks the decision: %s", logs)
			}
			if !tt.wantAllowed {
				if resp.Result == nil || resp.Result.Code != tt.wantCode {
					t.Fatalf("result %+v, want code %d", resp.Result, tt.wantCode)
				}
				for _, m := range tt.wantMsg {
					if !strings.Contains(resp.Result.Message, m) {
						t.Errorf("message %q lacks %q", resp.Result.Message, m)
					}
				}
				if resp.Patch != nil {
					t.Error("a denial carries a patch")
				}
				return
			}
			if !tt.wantPatch {
				if resp.Patch != nil || resp.PatchType != nil {
					t.Errorf("unexpected patch %s", resp.Patch)
				}
				return
			}
			if resp.PatchType == nil || *resp.PatchType != admissionv1.PatchTypeJSONPatch {
				t.Fatalf("patchType %v", resp.PatchType)
			}
			patched := applyPatch(t, sent.Request.Object.Raw, resp.Patch)
			golden := filepath.Join("testdata", "admission", tt.name+".patched.json")
			if *update {
				writeFile(t, golden, indentJSON(t, patched))
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (run with -update to create it)", err)
			}
			if !sameJSON(t, patched, want) {
				t.Errorf("patched Pod differs from %s; got:\n%s", golden, indentJSON(t, patched))
			}

			var pod corev1.Pod
			if err := json.Unmarshal(patched, &pod); err != nil {
				t.Fatalf("patched Pod: %v", err)
			}
			checkSidecar(t, tt.name, &pod.Spec)
			if pod.Annotations[AnnotationStatus] != statusInjected {
				t.Errorf("status annotation %q", pod.Annotations[AnnotationStatus])
			}
			var sentPod corev1.Pod
			if err := json.Unmarshal(sent.Request.Object.Raw, &sentPod); err != nil {
				t.Fatal(err)
			}
			checkScrapeAnnotations(t, tt.name, sentPod.Annotations, pod.Annotations, sidecarMetricsPort(&pod.Spec))

			// Idempotent: the patched Pod, reviewed again, is left alone.
			again := postReview(t, in, reviewOf(t, "again", sent.Request.Namespace, patched))
			if !again.Response.Allowed || again.Response.Patch != nil {
				t.Errorf("second review of the injected Pod: allowed=%v patch=%s", again.Response.Allowed, again.Response.Patch)
			}
		})
	}
}

// TestPatchKeepsUnknownFields shows why the patch is built of "add"
// operations instead of re-encoding the Pod: fields newer than this
// package's k8s.io/api survive.
func TestPatchKeepsUnknownFields(t *testing.T) {
	body, err := os.ReadFile(filepath.Join("testdata", "admission", "full.json"))
	if err != nil {
		t.Fatal(err)
	}
	in, _ := newTestInjector(t, DefaultConfig())
	var sent admissionv1.AdmissionReview
	if err := json.Unmarshal(body, &sent); err != nil {
		t.Fatal(err)
	}
	resp := in.Admit(sent.Request)
	patched := applyPatch(t, sent.Request.Object.Raw, resp.Patch)
	var doc struct {
		Spec struct {
			FutureSpecField []string `json:"futureSpecField"`
			Containers      []struct {
				FutureContainerField map[string]bool `json:"futureContainerField"`
			} `json:"containers"`
		} `json:"spec"`
	}
	if err := json.Unmarshal(patched, &doc); err != nil {
		t.Fatal(err)
	}
	if len(doc.Spec.FutureSpecField) != 3 || !doc.Spec.Containers[0].FutureContainerField["kept"] {
		t.Errorf("unknown fields lost: %s", patched)
	}
}

func TestInjectorConfigReachesThePod(t *testing.T) {
	cfg := DefaultConfig()
	cfg.SidecarImage = "registry.example/resilience-sidecar:1.2.3"
	cfg.ImagePullPolicy = corev1.PullAlways
	cfg.ConfigMap = "shared-sidecar-config"
	cfg.APITokenSecret = "shared-token"
	in, _ := newTestInjector(t, cfg)
	pod := []byte(`{"apiVersion":"v1","kind":"Pod","metadata":{"name":"p","annotations":{"resilience.seed-a88e5317.io/inject":"true"}},
		"spec":{"containers":[{"name":"app","image":"app:1"}]}}`)
	var sent admissionv1.AdmissionReview
	if err := json.Unmarshal(reviewOf(t, "u1", "shop", pod), &sent); err != nil {
		t.Fatal(err)
	}
	resp := in.Admit(sent.Request)
	var got corev1.Pod
	if err := json.Unmarshal(applyPatch(t, pod, resp.Patch), &got); err != nil {
		t.Fatal(err)
	}
	sc := got.Spec.InitContainers[0]
	if sc.Image != cfg.SidecarImage || sc.ImagePullPolicy != corev1.PullAlways {
		t.Errorf("image %q %q", sc.Image, sc.ImagePullPolicy)
	}
	env := map[string]corev1.EnvVar{}
	for _, e := range sc.Env {
		env[e.Name] = e
	}
	if _, ok := env["SIDECAR_NAMESPACE"]; ok {
		t.Error("with a config map and no namespace annotation, the config file must decide the namespace")
	}
	if env["SIDECAR_CONFIG"].Value != "/etc/resilience-sidecar/config.yaml" || env["SIDECAR_API_TOKEN_FILE"].Value == "" {
		t.Errorf("env %+v", sc.Env)
	}
	vols := map[string]corev1.Volume{}
	for _, v := range got.Spec.Volumes {
		vols[v.Name] = v
	}
	if vols[configVolume].ConfigMap == nil || vols[configVolume].ConfigMap.Name != "shared-sidecar-config" ||
		vols[tokenVolume].Secret == nil || vols[tokenVolume].Secret.SecretName != "shared-token" {
		t.Errorf("volumes %+v", got.Spec.Volumes)
	}
	if cfg.Resources.Limits.Memory().Cmp(*sc.Resources.Limits.Memory()) != 0 {
		t.Errorf("resources %+v", sc.Resources)
	}
}

func TestHandlerRejectsWhatIsNotAReview(t *testing.T) {
	in, _ := newTestInjector(t, DefaultConfig())
	valid, err := os.ReadFile(filepath.Join("testdata", "admission", "basic.json"))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, method, path, contentType string
		body                            []byte
		wantCode                        int
		wantBody                        string
	}{
		{"GET", http.MethodGet, MutatePath, "application/json", nil, http.StatusMethodNotAllowed, "use POST"},
		{"text body", http.MethodPost, MutatePath, "text/plain", valid, http.StatusUnsupportedMediaType, "application/json"},
		{"no content type", http.MethodPost, MutatePath, "", valid, http.StatusUnsupportedMediaType, "application/json"},
		{"not JSON", http.MethodPost, MutatePath, "application/json", []byte("{"), http.StatusBadRequest, "not an AdmissionReview"},
		{"v1beta1", http.MethodPost, MutatePath, "application/json",
			bytes.Replace(valid, []byte("admission.k8s.io/v1"), []byte("admission.k8s.io/v1beta1"), 1),
			http.StatusBadRequest, "admissionReviewVersions"},
		{"no request", http.MethodPost, MutatePath, "application/json",
			[]byte(`{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}`), http.StatusBadRequest, "no request"},
		{"too large", http.MethodPost, MutatePath, "application/json",
			append(append([]byte(`{"apiVersion":"`), bytes.Repeat([]byte("x"), maxReviewBytes)...), '"', '}'),
			http.StatusRequestEntityTooLarge, "larger than"},
		{"charset is fine", http.MethodPost, MutatePath, "application/json; charset=utf-8", valid, http.StatusOK, `"allowed":true`},
		{"unknown path", http.MethodPost, "/validate", "application/json", valid, http.StatusNotFound, MutatePath},
		{"healthz", http.MethodGet, HealthPath, "", nil, http.StatusOK, "ok"},
		{"readyz", http.MethodGet, ReadyPath, "", nil, http.StatusOK, "ok"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req := httptest.NewRequest(tt.method, tt.path, bytes.NewReader(tt.body))
			if tt.contentType != "" {
				req.Header.Set("Content-Type", tt.contentType)
			}
			rec := httptest.NewRecorder()
			in.ServeHTTP(rec, req)
			if rec.Code != tt.wantCode || !strings.Contains(rec.Body.String(), tt.wantBody) {
				t.Errorf("got %d %q, want %d containing %q", rec.Code, rec.Body, tt.wantCode, tt.wantBody)
			}
		})
	}

	t.Run("readyz while draining", func(t *testing.T) {
		in, _ := newTestInjector(t, DefaultConfig())
		in.draining.Store(true)
		rec := httptest.NewRecorder()
		in.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, ReadyPath, nil))
		if rec.Code != http.StatusServiceUnavailable {
			t.Errorf("got %d", rec.Code)
		}
	})
}

// TestLogsCarryNoSecrets: the log of an admission names the decision, not
// the Pod's environment or annotations' values beyond what is needed.
func TestLogsCarryNoSecrets(t *testing.T) {
	in, logs := newTestInjector(t, DefaultConfig())
	pod := []byte(`{"apiVersion":"v1","kind":"Pod","metadata":{"name":"p","annotations":{"resilience.seed-a88e5317.io/inject":"true"}},
		"spec":{"containers":[{"name":"app","image":"app:1","env":[{"name":"PASSWORD","value":"hunter2"}]}]}}`)
	postReview(t, in, reviewOf(t, "u2", "shop", pod))
	if strings.Contains(logs.String(), "hunter2") {
		t.Errorf("log leaks the Pod's environment: %s", logs)
	}
}
