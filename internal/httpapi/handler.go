// Package httpapi serves every unary RPC of the sidecar as HTTP/JSON
// (docs/http.md): the routes are the google.api.http annotations of the
// protos, transcoded by connectrpc.com/vanguard into gRPC calls on the
// sidecar's own *grpc.Server. A call over HTTP therefore runs exactly the
// code a gRPC call runs (auth, admission limits, metrics, logging,
// tracing, validation, the handlers), and only its encoding differs.
//
// On top of the transcoder this package adds what a curl user expects:
// errors as google.rpc.Status JSON with the HTTP status of AIP-193 (and a
// Retry-After header from RetryInfo), 413 for bodies over the size limit,
// a JSON 404 for unknown routes, the OpenAPI document at /openapi.json and
// per-route request metrics.
package httpapi

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"connectrpc.com/vanguard"
	spb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/encoding/protojson"

	v1 "github.com/seed-a88e5317/resilience-sidecar/clients/go/resiliencev1"
	"github.com/seed-a88e5317/resilience-sidecar/internal/api"
)

// subscribeFullMethod is Subscribe's gRPC name, addressable.
var subscribeFullMethod = v1.EventService_Subscribe_FullMethodName

// DefaultMaxBodyBytes is the request body limit unless configured.
const DefaultMaxBodyBytes = 4 << 20

// Options configure a Handler. Zero values get the defaults noted.
type Options struct {
	// GRPC is the server whose services are served; register them first.
	GRPC *grpc.Server
	// Services are the services to serve (default: every service of GRPC
	// that has an annotated method).
	Services []string
	// MaxBodyBytes bounds a request body (default DefaultMaxBodyBytes);
	// a larger one is refused with 413 before the RPC runs.
	MaxBodyBytes int64
	// Metrics receives per-route request counts and durations (nil: none).
	Metrics *Metrics
}

// Handler is the HTTP/JSON front of a gRPC server. It is safe for
// concurrent use.
type Handler struct {
	transcoder *vanguard.Transcoder
	grpc       *grpc.Server
	labels     map[string]string // gRPC full method -> route label
	verbs      map[string]bool   // the custom methods' verbs ("acquire")
	routes     []Route
	maxBody    int64
	metrics    *Metrics
	openapi    []byte
}

// New builds the Handler of opts.GRPC's annotated services.
func New(opts Options) (*Handler, error) {
	if opts.GRPC == nil {
		return nil, errors.New("httpapi: Options.GRPC is nil")
	}
	if opts.MaxBodyBytes <= 0 {
		opts.MaxBodyBytes = DefaultMaxBodyBytes
	}
	names := opts.Services
	if names == nil {
		for name := range opts.GRPC.GetServiceInfo() {
			names = append(names, name)
		}
	}
	all, err := Routes(nil, names...)
	if err != nil {
		return nil, err
	}
	h := &Handler{grpc: opts.GRPC, labels: map[string]string{}, verbs: map[string]bool{subscribeVerb: true}, routes: all, maxBody: opts.MaxBodyBytes, metrics: opts.Metrics}
	served := map[string]bool{}
	if _, ok := opts.GRPC.GetServiceInfo()["resilience.v1.EventService"]; ok {
		h.labels[subscribeFullMethod] = subscribeRoute
	}
	for _, r := range all {
		h.labels[r.FullMethod()] = r.String()
		if i := strings.LastIndexByte(r.Pattern, ':'); i > strings.LastIndexByte(r.Pattern, '}') {
			h.verbs[r.Pattern[i+1:]] = true
		}
		served[string(r.RPC.Parent().FullName())] = true
	}
	target := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if c, ok := r.Context().Value(callKey{}).(*call); ok {
			c.method.Store(&r.URL.Path)
		}
		opts.GRPC.ServeHTTP(w, r)
	})
	var services []*vanguard.Service
	for name := range served {
		services = append(services, vanguard.NewService(name, target))
	}
	h.transcoder, err = vanguard.NewTranscoder(services,
		vanguard.WithDefaultServiceOptions(
			vanguard.WithTargetProtocols(vanguard.ProtocolGRPC),
			vanguard.WithTargetCodecs(vanguard.CodecProto),
			// The body limit is enforced before (413); responses are
			// bounded by the gRPC server's max message size.
			vanguard.WithMaxMessageBufferBytes(uint32(min(max(opts.MaxBodyBytes, 1<<20)*4, 1<<31))),
		),
		vanguard.WithUnknownHandler(http.HandlerFunc(notFound)),
	)
	if err != nil {
		return nil, fmt.Errorf("httpapi: %w", err)
	}
	if h.openapi, err = OpenAPI(all); err != nil {
		return nil, err
	}
	if h.metrics != nil {
		h.metrics.init(all)
	}
	return h, nil
}

// Routes are the routes the handler serves.
func (h *Handler) Routes() []Route { return append([]Route(nil), h.routes...) }

// call is what the transcoder's target learns of a request: the RPC it
// resolved to.
type call struct{ method atomic.Pointer[string] }

type callKey struct{}

// ServeHTTP serves one request.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	c := &call{}
	rec := &recorder{w: w}
	defer func() {
		if h.metrics == nil {
			return
		}
		label := unmatched
		if m := c.method.Load(); m != nil {
			if l, ok := h.labels[*m]; ok {
				label = l
			}
		} else if r.URL.Path == openAPIPath {
			label = "GET " + openAPIPath
		}
		h.metrics.observe(label, rec.status(), time.Since(start))
	}()
	rec.pass = true // the answers below are final as written
	switch {
	case r.URL.Path == openAPIPath:
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			rec.Header().Set("Allow", "GET, HEAD")
			writeStatus(rec, newStatus(codes.Unimplemented, "method "+r.Method+" not allowed on "+openAPIPath, "", nil), http.StatusMethodNotAllowed)
			return
		}
		rec.Header().Set("Content-Type", "application/json")
		rec.Header().Set("Content-Length", strconv.Itoa(len(h.openapi)))
		rec.WriteHeader(http.StatusOK)
		if r.Method == http.MethodGet {
			_, _ = rec.Write(h.openapi)
		}
		return
	case !strings.HasPrefix(r.URL.Path, "/v1/"):
		// Only the REST routes: the transcoder would also accept Connect
		// and gRPC-Web calls on /pkg.Service/Method, which are not offered.
		notFound(rec, r)
		return
	case r.ContentLength > h.maxBody:
		tooLarge(rec, h.maxBody)
		return
	}
	if ct := r.Header.Get("Content-Type"); ct == "" || strings.HasPrefix(ct, "application/x-www-form-urlencoded") {
		// curl -d sends a form type: every body here is JSON.
		r.Header.Set("Content-Type", "application/json")
	}
	r.URL.Path, r.URL.RawPath = restPath(r.URL.EscapedPath(), h.verbs), ""
	if r.ContentLength == 0 && (r.Body == nil || r.Body == http.NoBody) && r.Method != http.MethodGet && r.Method != http.MethodHead {
		// A POST without a body (curl -X POST) is the empty message, as
		// "{}" would be; the transcoder would send none at all.
		r.Body, r.ContentLength = io.NopCloser(strings.NewReader("{}")), 2
	}
	var over atomic.Bool
	if r.Body != nil && r.Body != http.NoBody {
		r.Body = &limitedBody{rc: r.Body, left: h.maxBody, over: &over}
	}
	if topic, ok := subscribeTopic(r.URL.Path); ok && r.Method == http.MethodGet && h.labels[v1.EventService_Subscribe_FullMethodName] != "" {
		c.method.Store(&subscribeFullMethod)
		h.serveSubscribe(rec, r, topic)
		return
	}
	rec.pass = false
	r = r.WithContext(context.WithValue(r.Context(), callKey{}, c))
	h.transcoder.ServeHTTP(rec, r)
	rec.finish(over.Load(), h.maxBody)
}

const (
	openAPIPath = "/openapi.json"
	// unmatched is the route label of requests that matched no route.
	unmatched = "unmatched"
)

// restPath is the path the transcoder matches: the request's path as the
// client escaped it (the transcoder unescapes each variable once, so a
// key's '%' and unicode round-trip, and '/' separates the segments a
// {key=**} variable spans), with "%2F" read as '/' (the transcoder would
// keep it escaped in a {key=**} variable, AIP-127's rule, so that "a%2Fb"
// from a client that escapes every '/' would be another key than "a/b"),
// and every ':' of the last segment escaped
// except the one before a custom method's verb: the transcoder takes the
// verb after the first ':', so "a:b:acquire" would otherwise be key "a"
// with verb "b:acquire".
func restPath(escaped string, verbs map[string]bool) string {
	escaped = strings.ReplaceAll(strings.ReplaceAll(escaped, "%2F", "/"), "%2f", "/")
	i := strings.LastIndexByte(escaped, '/')
	last := escaped[i+1:]
	if !strings.Contains(last, ":") {
		return escaped
	}
	verb := ""
	if j := strings.LastIndexByte(last, ':'); verbs[last[j+1:]] {
		last, verb = last[:j], last[j:]
	}
	return escaped[:i+1] + strings.ReplaceAll(last, ":", "%3A") + verb
}

// notFound answers a request for no route with a google.rpc.Status.
func notFound(w http.ResponseWriter, r *http.Request) {
	writeStatus(w, newStatus(codes.NotFound, "no route for "+r.Method+" "+r.URL.EscapedPath()+" (routes: docs/http.md, GET /openapi.json)", "", nil), http.StatusNotFound)
}

// tooLarge answers a request whose body is over limit.
func tooLarge(w http.ResponseWriter, limit int64) {
	n := strconv.FormatInt(limit, 10)
	writeStatus(w, newStatus(codes.ResourceExhausted, "request body larger than "+n+" bytes (max_message_bytes)", api.ReasonLimitExceeded,
		map[string]string{"limit": "max_message_bytes", "max": n}), http.StatusRequestEntityTooLarge)
}

// errTooLarge is the read error of a body over the limit.
var errTooLarge = errors.New("httpapi: request body too large")

// limitedBody reads at most left bytes of rc, and sets over (instead of
// returning EOF) when rc has more.
type limitedBody struct {
	rc   io.ReadCloser
	left int64
	over *atomic.Bool
}

func (b *limitedBody) Read(p []byte) (int, error) {
	if b.left <= 0 {
		var one [1]byte
		n, err := b.rc.Read(one[:])
		if n > 0 {
			b.over.Store(true)
			return 0, errTooLarge
		}
		return 0, err
	}
	if int64(len(p)) > b.left {
		p = p[:b.left]
	}
	n, err := b.rc.Read(p)
	b.left -= int64(n)
	return n, err
}

func (b *limitedBody) Close() error { return b.rc.Close() }

// maxErrorBody bounds an error body kept to be rewritten.
const maxErrorBody = 1 << 20

// recorder passes successful responses through and holds back error
// responses (status >= 400), which finish rewrites into the sidecar's
// error format.
type recorder struct {
	w       http.ResponseWriter
	code    int
	errBody *bytes.Buffer // non-nil: an error response is being held back
	pass    bool          // pass error responses through too
}

func (r *recorder) Header() http.Header { return r.w.Header() }

func (r *recorder) WriteHeader(code int) {
	if r.code != 0 {
		return
	}
	r.code = code
	if code >= 400 && !r.pass {
		r.errBody = &bytes.Buffer{}
		return
	}
	r.w.WriteHeader(code)
}

func (r *recorder) Write(p []byte) (int, error) {
	if r.code == 0 {
		r.WriteHeader(http.StatusOK)
	}
	if r.errBody != nil {
		if r.errBody.Len()+len(p) <= maxErrorBody {
			r.errBody.Write(p)
		}
		return len(p), nil
	}
	return r.w.Write(p)
}

// Flush flushes a passed-through response.
func (r *recorder) Flush() {
	if f, ok := r.w.(http.Flusher); ok && r.errBody == nil && r.code != 0 {
		f.Flush()
	}
}

// status is the HTTP status the client got (200 when nothing was written).
func (r *recorder) status() int {
	if r.code == 0 {
		return http.StatusOK
	}
	return r.code
}

// finish writes a held-back error response as a google.rpc.Status with
// the status of its code: the transcoder's own statuses follow a
// different table, and say nothing of Retry-After. A body that was over
// the limit is 413 whatever the transcoder made of it.
func (r *recorder) finish(over bool, limit int64) {
	if r.errBody == nil {
		return
	}
	h := r.w.Header()
	for k := range h {
		// What the gRPC server set for its own protocol.
		if strings.HasPrefix(k, "Grpc-") || k == "Trailer" {
			delete(h, k)
		}
	}
	if over {
		r.code = http.StatusRequestEntityTooLarge
		tooLarge(r.w, limit)
		return
	}
	var st spb.Status
	httpCode := 0
	if err := (protojson.UnmarshalOptions{DiscardUnknown: true}).Unmarshal(r.errBody.Bytes(), &st); err != nil || st.GetCode() == 0 {
		// Not a status (405, 415, ...): keep the HTTP status, say it in JSON.
		msg := strings.TrimSpace(r.errBody.String())
		if msg == "" || !isText(msg) {
			msg = http.StatusText(r.code)
		}
		st = spb.Status{Code: int32(codeOfHTTP(r.code)), Message: msg}
		httpCode = r.code
	} else if codes.Code(st.GetCode()) == codes.Unknown && strings.HasPrefix(st.GetMessage(), "proto:") {
		// The transcoder's report of a body that is not the request
		// message's JSON: the client's error.
		st.Code = int32(codes.InvalidArgument)
		st.Message = "invalid JSON body: " + strings.TrimSpace(strings.TrimPrefix(st.GetMessage(), "proto:"))
	} else if r.code == http.StatusMethodNotAllowed || r.code == http.StatusUnsupportedMediaType || r.code == http.StatusNotAcceptable {
		httpCode = r.code
	}
	if httpCode == 0 {
		httpCode = HTTPStatus(codes.Code(st.GetCode()))
	}
	r.code = httpCode
	writeStatus(r.w, &st, httpCode)
}

// isText reports whether s is short printable text, fit for a message.
func isText(s string) bool {
	if len(s) > 1024 {
		return false
	}
	for _, c := range s {
		if c < ' ' && c != '\n' && c != '\t' {
			return false
		}
	}
	return true
}
