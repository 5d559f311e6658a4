package inject

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"mime"
	"net/http"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// maxReviewBytes bounds the body of one AdmissionReview. An object stored
// in etcd is at most about 1.5 MiB; a review carries it twice at most
// (object and oldObject) plus a little.
const maxReviewBytes = 7 << 20

// Paths the injector serves.
const (
	// MutatePath takes POSTed admission.k8s.io/v1 AdmissionReviews.
	MutatePath = "/mutate"
	// HealthPath answers 200 while the process runs (liveness).
	HealthPath = "/healthz"
	// ReadyPath answers 200 until shutdown begins, then 503 (readiness).
	ReadyPath = "/readyz"
)

// Decisions, as logged and as the audit annotation "decision".
const (
	decisionInjected     = "injected"
	decisionAlready      = "already-injected"
	decisionNotRequested = "not-requested"
	decisionIgnored      = "ignored"
	decisionRejected     = "rejected"
)

// Injector decides, for each admission request, whether and how to inject
// the sidecar. It holds no per-request state: one Injector serves any
// number of concurrent requests. Create it with New.
type Injector struct {
	cfg      Config
	log      *slog.Logger
	metrics  *injectorMetrics
	draining atomic.Bool
}

// New returns an Injector that injects as cfg says; cfg must pass
// Config.Validate. A nil logger discards the logs.
func New(cfg Config, logger *slog.Logger) (*Injector, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	cfg.Resources = *cfg.Resources.DeepCopy()
	return &Injector{cfg: cfg, log: logger, metrics: newInjectorMetrics()}, nil
}

// Admit answers one admission request. It never returns nil and never
// fails: objects other than Pods, operations other than CREATE, and Pods
// that did not ask for the sidecar or already have it are allowed
// unchanged (with a warning when such a Pod carries sidecar settings that
// then have no effect); a Pod that asked for the sidecar is allowed with a
// JSON patch that adds it (with a warning for each container that keeps a
// SIDECAR_ADDR of its own), or denied with a message listing every problem found (bad
// annotations, port or volume conflicts, undecodable object). The
// response's UID is the request's; a nil request is denied.
func (in *Injector) Admit(req *admissionv1.AdmissionRequest) *admissionv1.AdmissionResponse {
	if req == nil {
		return deny(metav1.StatusReasonBadRequest, http.StatusBadRequest, "no admission request")
	}
	resp, decision, pod := in.admit(req)
	resp.UID = req.UID
	resp.AuditAnnotations = map[string]string{"decision": decision}
	attrs := []any{
		slog.String("uid", string(req.UID)),
		slog.String("namespace", req.Namespace),
		slog.String("operation", string(req.Operation)),
		slog.String("kind", req.Kind.Kind),
		slog.String("decision", decision),
	}
	if pod != "" {
		attrs = append(attrs, slog.String("pod", pod))
	}
	if !resp.Allowed {
		attrs = append(attrs, slog.String("reason", resp.Result.Message))
		in.log.Warn("admission", attrs...)
	} else {
		in.log.Info("admission", attrs...)
	}
	return resp
}

func (in *Injector) admit(req *admissionv1.AdmissionRequest) (resp *admissionv1.AdmissionResponse, decision, podName string) {
	allow := &admissionv1.AdmissionResponse{Allowed: true}
	if req.Kind.Group != "" || req.Kind.Kind != "Pod" || req.SubResource != "" {
		return allow, decisionIgnored, ""
	}
	if req.Operation != admissionv1.Create {
		return allow, decisionIgnored, ""
	}
	var pod corev1.Pod
	if err := json.Unmarshal(req.Object.Raw, &pod); err != nil {
		return deny(metav1.StatusReasonBadRequest, http.StatusBadRequest,
			"the object is not a Pod: "+err.Error()), decisionRejected, ""
	}
	podName = pod.Name
	if podName == "" && pod.GenerateName != "" {
		podName = pod.GenerateName + "*"
	}
	namespace := req.Namespace
	if namespace == "" {
		namespace = pod.Namespace
	}
	inject, s, err := parseAnnotations(pod.Annotations, namespace, in.cfg)
	if err != nil {
		return deny(metav1.StatusReasonInvalid, http.StatusUnprocessableEntity, err.Error()), decisionRejected, podName
	}
	if !inject {
		allow.Warnings = ignoredSettings(pod.Annotations)
		return allow, decisionNotRequested, podName
	}
	if alreadyInjected(&pod.Spec) {
		return allow, decisionAlready, podName
	}
	if problems := conflicts(&pod.Spec, s); len(problems) > 0 {
		return deny(metav1.StatusReasonInvalid, http.StatusUnprocessableEntity, strings.Join(problems, "; ")),
			decisionRejected, podName
	}
	patch, err := json.Marshal(patchFor(&pod, s, in.cfg))
	if err != nil { // not reached: the operations hold only API types
		return deny(metav1.StatusReasonInternalError, http.StatusInternalServerError,
			"cannot encode the patch: "+err.Error()), decisionRejected, podName
	}
	pt := admissionv1.PatchTypeJSONPatch
	return &admissionv1.AdmissionResponse{Allowed: true, Patch: patch, PatchType: &pt, Warnings: append(ownAddrWarnings(&pod.Spec, s), shutdownWarnings(&pod.Spec, s)...)},
		decisionInjected, podName
}

// ignoredSettings warns about the sidecar settings of a Pod that does not
// ask for the sidecar: they have no effect, which is likely a mistake (a
// forgotten or misspelled inject annotation). nil when there are none.
func ignoredSettings(ann map[string]string) []string {
	var keys []string
	for k := range ann {
		if strings.HasPrefix(k, AnnotationPrefix) && k != AnnotationInject && k != AnnotationStatus {
			keys = append(keys, k)
		}
	}
	if len(keys) == 0 {
		return nil
	}
	slices.Sort(keys)
	return []string{fmt.Sprintf("resilience sidecar: annotation %s has no effect: the Pod does not ask for the sidecar (%s: \"true\")",
		strings.Join(keys, ", "), AnnotationInject)}
}

// ownAddrWarnings warns about the containers of an injected Pod that set
// SIDECAR_ADDR themselves to something other than the sidecar's address:
// the injector keeps their value, so they may not reach the sidecar.
func ownAddrWarnings(spec *corev1.PodSpec, s settings) []string {
	want := appAddr(s)
	var out []string
	for _, list := range [][]corev1.Container{spec.InitContainers, spec.Containers} {
		for _, c := range list {
			for _, e := range c.Env {
				if e.Name == AddrEnv && (e.Value != want || e.ValueFrom != nil) {
					out = append(out, fmt.Sprintf("resilience sidecar: container %q sets %s itself (kept as it is); the injected sidecar listens on %s",
						c.Name, AddrEnv, want))
				}
			}
		}
	}
	return out
}

// shutdownWarnings warns when the sidecar's drain bound
// (AnnotationShutdownSeconds) does not fit in the Pod's
// terminationGracePeriodSeconds (default 30), which the app containers'
// own shutdown uses up first: the kubelet would kill the sidecar mid-drain.
func shutdownWarnings(spec *corev1.PodSpec, s settings) []string {
	grace := int64(corev1.DefaultTerminationGracePeriodSeconds)
	if spec.TerminationGracePeriodSeconds != nil {
		grace = *spec.TerminationGracePeriodSeconds
	}
	if s.shutdownSeconds == 0 || int64(s.shutdownSeconds) < grace {
		return nil
	}
	return []string{fmt.Sprintf("resilience sidecar: annotation %s: %d s is not below the Pod's terminationGracePeriodSeconds (%d s), "+
		"which also covers the app containers' shutdown: the sidecar may be killed before it drains", AnnotationShutdownSeconds, s.shutdownSeconds, grace)}
}

// deny is a refusal whose message the API server shows the user after
// `admission webhook "..." denied the request:`.
func deny(reason metav1.StatusReason, code int32, msg string) *admissionv1.AdmissionResponse {
	return &admissionv1.AdmissionResponse{Allowed: false, Result: &metav1.Status{
		Status:  metav1.StatusFailure,
		Reason:  reason,
		Code:    code,
		Message: "resilience sidecar injection: " + msg,
	}}
}

// ServeHTTP serves MutatePath, HealthPath and ReadyPath. A well-formed
// admission.k8s.io/v1 AdmissionReview POSTed to MutatePath always gets 200
// and a review carrying Admit's response; a request that is not one gets a
// 4xx status and a one-line plain-text reason.
func (in *Injector) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	switch r.URL.Path {
	case HealthPath:
		writeText(w, http.StatusOK, "ok")
	case ReadyPath:
		if in.draining.Load() {
			writeText(w, http.StatusServiceUnavailable, "shutting down")
			return
		}
		writeText(w, http.StatusOK, "ok")
	case MutatePath:
		in.serveMutate(w, r)
	default:
		writeText(w, http.StatusNotFound, "not found: the webhook is at "+MutatePath)
	}
}

func (in *Injector) serveMutate(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		writeText(w, http.StatusMethodNotAllowed, "use POST")
		return
	}
	if mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type")); err != nil || mt != "application/json" {
		writeText(w, http.StatusUnsupportedMediaType, "Content-Type must be application/json")
		return
	}
	var review admissionv1.AdmissionReview
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxReviewBytes))
	if err := dec.Decode(&review); err != nil {
		if maxErr := (*http.MaxBytesError)(nil); errors.As(err, &maxErr) {
			writeText(w, http.StatusRequestEntityTooLarge, fmt.Sprintf("AdmissionReview larger than %d bytes", maxReviewBytes))
			return
		}
		writeText(w, http.StatusBadRequest, "body is not an AdmissionReview: "+err.Error())
		return
	}
	if review.APIVersion != admissionv1.SchemeGroupVersion.String() || review.Kind != "AdmissionReview" {
		writeText(w, http.StatusBadRequest, fmt.Sprintf("want apiVersion %s kind AdmissionReview, got %q %q (set admissionReviewVersions: [v1])",
			admissionv1.SchemeGroupVersion, review.APIVersion, review.Kind))
		return
	}
	if review.Request == nil {
		writeText(w, http.StatusBadRequest, "AdmissionReview has no request")
		return
	}
	out := admissionv1.AdmissionReview{TypeMeta: review.TypeMeta, Response: in.Admit(review.Request)}
	body, err := json.Marshal(out)
	if err != nil { // not reached: the response holds only API types
		writeText(w, http.StatusInternalServerError, "cannot encode the response")
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(body)
	in.metrics.admitted(out.Response.AuditAnnotations["decision"], time.Since(start))
}

func writeText(w http.ResponseWriter, code int, msg string) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(code)
	_, _ = fmt.Fprintln(w, msg)
}
