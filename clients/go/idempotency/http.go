package idempotency

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strconv"
	"strings"

	v1 "github.com/seed-a88e5317/resilience-sidecar/clients/go/resiliencev1"
)

// Middleware returns net/http middleware that makes the requests it covers
// idempotent by their Idempotency-Key header (see the package
// documentation for what is guaranteed). client is usually
// v1.NewIdempotencyServiceClient of a connection from resilience.Dial.
//
// A covered request (method POST, PUT, PATCH or DELETE unless WithMethods
// says otherwise) that carries the header is handled so:
//
//   - the key must be 1-255 printable ASCII characters, else 400;
//   - its body is read (at most WithMaxBodyBytes, else 413) and given to
//     the handler unchanged; the fingerprint is the hex SHA-256 of the
//     method, "\n", the path with its query, "\n" and the body;
//   - the first request runs the handler, whose response is buffered: a
//     status below 500 is stored (status, headers except hop-by-hop ones
//     and Set-Cookie, body) and then sent; a 5xx or a panic releases the
//     key (the panic goes on) and the handler's own response is sent;
//   - a duplicate after it gets the stored response with
//     Idempotent-Replayed: true; a duplicate while it runs gets 409 with
//     Retry-After; the key reused with another fingerprint gets 422; when
//     the sidecar cannot be asked, 503 with Retry-After: 1.
//
// Errors are RFC 9457 problem bodies (application/problem+json) whose
// "code" member is one of the Code constants. Requests without the header
// pass straight through, unless WithKeyRequired. Responses of covered
// requests are buffered whole, so the handler cannot stream (http.Flusher
// is not offered) or hijack the connection.
//
// Middleware panics if an option is invalid.
func Middleware(client v1.IdempotencyServiceClient, opts ...Option) func(http.Handler) http.Handler {
	c := newConfig(DefaultHTTPScope, opts)
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			c.serveHTTP(client, next, w, r)
		})
	}
}

func (c *config) serveHTTP(client v1.IdempotencyServiceClient, next http.Handler, w http.ResponseWriter, r *http.Request) {
	if !c.methods[r.Method] {
		next.ServeHTTP(w, r)
		return
	}
	values := r.Header.Values(HeaderName)
	switch {
	case len(values) == 0 && !c.required:
		next.ServeHTTP(w, r)
		return
	case len(values) == 0:
		writeProblem(w, http.StatusBadRequest, CodeKeyMissing, "Idempotency-Key missing",
			"this request must carry an Idempotency-Key header", 0)
		return
	case len(values) > 1:
		writeProblem(w, http.StatusBadRequest, CodeKeyInvalid, "Idempotency-Key invalid",
			"the Idempotency-Key header must be given once", 0)
		return
	case !validKey(values[0]):
		writeProblem(w, http.StatusBadRequest, CodeKeyInvalid, "Idempotency-Key invalid",
			"the Idempotency-Key header must be 1-255 printable ASCII characters", 0)
		return
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, c.maxBodyBytes+1))
	_ = r.Body.Close()
	var tooBig *http.MaxBytesError
	switch {
	case errors.As(err, &tooBig) || int64(len(body)) > c.maxBodyBytes:
		writeProblem(w, http.StatusRequestEntityTooLarge, CodeBodyTooLarge, "Request body too large",
			fmt.Sprintf("a request with an Idempotency-Key may carry at most %d bytes", c.maxBodyBytes), 0)
		return
	case err != nil:
		// The client went away or sent a broken body.
		writeProblem(w, http.StatusBadRequest, CodeBodyUnreadable, "Request body unreadable", err.Error(), 0)
		return
	}
	r.Body = io.NopCloser(bytes.NewReader(body))

	storeKey, err := c.storeKey(r.Context(), values[0])
	if err != nil {
		c.log().ErrorContext(r.Context(), "idempotency: "+err.Error())
		writeProblem(w, http.StatusServiceUnavailable, CodeSidecarUnavailable, "Idempotency unavailable",
			"the request's idempotency scope could not be determined", 1)
		return
	}
	fp := fingerprint([]byte(r.Method), []byte(r.URL.RequestURI()), body)
	ck := c.check(r.Context(), client, storeKey, fp)
	switch ck.outcome {
	case outcomeCompleted:
		replayHTTP(w, ck.result)
	case outcomeInProgress:
		writeProblem(w, http.StatusConflict, CodeKeyInUse, "Idempotency-Key in use",
			"a request with this Idempotency-Key is still being processed; retry after Retry-After seconds",
			retryAfterSeconds(ck.retryAfter))
	case outcomeMismatch:
		writeProblem(w, http.StatusUnprocessableEntity, CodeKeyReused, "Idempotency-Key reused",
			"this Idempotency-Key was used for a different request (method, path or body)", 0)
	case outcomeInvalid:
		writeProblem(w, http.StatusBadRequest, CodeKeyInvalid, "Idempotency-Key invalid",
			"the sidecar refused the key: "+ck.err.Error(), 0)
	case outcomeUnavailable:
		c.log().WarnContext(r.Context(), "idempotency: the sidecar could not be asked; the request was refused",
			"key", storeKey, "error", ck.err)
		writeProblem(w, http.StatusServiceUnavailable, CodeSidecarUnavailable, "Idempotency unavailable",
			"the idempotency store cannot be reached; the request was not processed", 1)
	case outcomeStarted:
		c.runHTTP(client, next, w, r, storeKey, ck.leaseID)
	}
}

// runHTTP runs next as the owner of storeKey and stores or releases.
func (c *config) runHTTP(client v1.IdempotencyServiceClient, next http.Handler, w http.ResponseWriter, r *http.Request, storeKey, leaseID string) {
	rec := &recorder{header: http.Header{}}
	finished := false
	defer func() {
		if !finished { // the handler panicked: release, and let the panic go on
			c.release(r.Context(), client, storeKey, leaseID)
		}
	}()
	next.ServeHTTP(rec, r)
	finished = true
	status := rec.statusCode()
	if status >= 500 {
		c.release(r.Context(), client, storeKey, leaseID)
	} else {
		c.complete(r.Context(), client, storeKey, leaseID, &v1.IdempotencyResult{
			Data:     rec.body.Bytes(),
			Metadata: responseMetadata(status, rec.header),
		})
	}
	copyHeader(w.Header(), rec.header)
	w.WriteHeader(status)
	_, _ = w.Write(rec.body.Bytes())
}

// notStored are the response headers that are not stored: hop-by-hop
// headers (RFC 9110 section 7.6.1) and cookies, which belong to one client.
var notStored = map[string]bool{
	"connection": true, "keep-alive": true, "proxy-authenticate": true, "proxy-authorization": true,
	"proxy-connection": true, "te": true, "trailer": true, "transfer-encoding": true, "upgrade": true,
	"set-cookie": true,
}

// statusMetadataKey is the metadata entry holding the stored status.
const statusMetadataKey = "status"

// responseMetadata is the stored form of a response's status and headers:
// "status" and the headers by lower-cased name, values joined by ", ".
func responseMetadata(status int, h http.Header) map[string]string {
	md := map[string]string{statusMetadataKey: strconv.Itoa(status)}
	for name, values := range h {
		lower := strings.ToLower(name)
		if notStored[lower] || lower == statusMetadataKey || len(values) == 0 {
			continue
		}
		md[lower] = strings.Join(values, ", ")
	}
	return md
}

// replayHTTP writes a stored response, marked Idempotent-Replayed.
func replayHTTP(w http.ResponseWriter, res *v1.IdempotencyResult) {
	md := res.GetMetadata()
	status, err := strconv.Atoi(md[statusMetadataKey])
	if err != nil || status < 200 || status > 599 {
		// Not stored by Middleware: the key was used by something else.
		writeProblem(w, http.StatusUnprocessableEntity, CodeKeyReused, "Idempotency-Key reused",
			"the result stored under this Idempotency-Key is not an HTTP response", 0)
		return
	}
	names := make([]string, 0, len(md))
	for name := range md {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		if name != statusMetadataKey {
			w.Header().Set(name, md[name])
		}
	}
	w.Header().Set(ReplayedHeader, "true")
	w.WriteHeader(status)
	_, _ = w.Write(res.GetData())
}

func copyHeader(dst, src http.Header) {
	for name, values := range src {
		dst[name] = values
	}
}

// problem is an RFC 9457 problem details body.
type problem struct {
	Type   string `json:"type"`
	Title  string `json:"title"`
	Status int    `json:"status"`
	Detail string `json:"detail"`
	Code   string `json:"code"`
}

// writeProblem answers status with a problem body; retryAfter > 0 adds
// Retry-After in seconds.
func writeProblem(w http.ResponseWriter, status int, code, title, detail string, retryAfter int64) {
	body, _ := json.Marshal(problem{Type: "about:blank", Title: title, Status: status, Detail: detail, Code: code})
	w.Header().Set("Content-Type", "application/problem+json")
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	if retryAfter > 0 {
		w.Header().Set("Retry-After", strconv.FormatInt(retryAfter, 10))
	}
	w.WriteHeader(status)
	_, _ = w.Write(body)
}

// recorder buffers a handler's response.
type recorder struct {
	header http.Header
	status int
	body   bytes.Buffer
}

func (rec *recorder) Header() http.Header { return rec.header }

// WriteHeader records the first final status; informational (1xx)
// statuses are dropped, as the response is sent only once complete.
func (rec *recorder) WriteHeader(status int) {
	if rec.status == 0 && status >= 200 {
		rec.status = status
	}
}

func (rec *recorder) Write(p []byte) (int, error) {
	if rec.status == 0 {
		rec.status = http.StatusOK
	}
	return rec.body.Write(p)
}

func (rec *recorder) statusCode() int {
	if rec.status == 0 {
		return http.StatusOK
	}
	return rec.status
}
