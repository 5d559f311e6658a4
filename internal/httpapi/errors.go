package httpapi

import (
	"math"
	"net/http"
	"strconv"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	spb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/seed-a88e5317/resilience-sidecar/internal/api"
)

// HTTPStatus is the HTTP status of an error with gRPC code c: AIP-193's
// mapping, except FAILED_PRECONDITION, which is 412 Precondition Failed
// here rather than 400: the sidecar's FAILED_PRECONDITION errors
// (LEASE_LOST, IDEMPOTENCY_KEY_MISMATCH, PERMIT_UNKNOWN, CLOCK_SKEW, ...)
// all say that a precondition the caller holds (a lease, a fingerprint, a
// permit) no longer holds, not that the request is malformed.
func HTTPStatus(c codes.Code) int {
	switch c {
	case codes.OK:
		return http.StatusOK
	case codes.Canceled:
		return 499 // Client Closed Request
	case codes.InvalidArgument, codes.OutOfRange:
		return http.StatusBadRequest
	case codes.DeadlineExceeded:
		return http.StatusGatewayTimeout
	case codes.NotFound:
		return http.StatusNotFound
	case codes.AlreadyExists, codes.Aborted:
		return http.StatusConflict
	case codes.PermissionDenied:
		return http.StatusForbidden
	case codes.Unauthenticated:
		return http.StatusUnauthorized
	case codes.ResourceExhausted:
		return http.StatusTooManyRequests
	case codes.FailedPrecondition:
		return http.StatusPreconditionFailed
	case codes.Unimplemented:
		return http.StatusNotImplemented
	case codes.Unavailable:
		return http.StatusServiceUnavailable
	default: // Unknown, Internal, DataLoss
		return http.StatusInternalServerError
	}
}

// jsonOut writes statuses as proto3 JSON; details are expanded with their
// "@type" (the error details types are linked in through errdetails).
var jsonOut = protojson.MarshalOptions{EmitUnpopulated: false}

// writeStatus writes st as the JSON body of an error response with HTTP
// status httpCode (0: HTTPStatus of st's code). A RetryInfo detail becomes
// a Retry-After header in whole seconds, rounded up; UNAUTHENTICATED gets
// WWW-Authenticate: Bearer.
func writeStatus(w http.ResponseWriter, st *spb.Status, httpCode int) {
	if httpCode == 0 {
		httpCode = HTTPStatus(codes.Code(st.GetCode()))
	}
	h := w.Header()
	if d, ok := retryDelay(st); ok {
		h.Set("Retry-After", strconv.FormatInt(int64(math.Ceil(d)), 10))
	}
	if codes.Code(st.GetCode()) == codes.Unauthenticated {
		h.Set("WWW-Authenticate", "Bearer")
	}
	body, err := jsonOut.Marshal(st)
	if err != nil { // a detail whose type is unknown: keep code and message
		body, _ = jsonOut.Marshal(&spb.Status{Code: st.GetCode(), Message: st.GetMessage()})
	}
	body = compact(body) // protojson's spacing varies from run to run
	h.Set("Content-Type", "application/json")
	h.Del("Content-Length")
	h.Del("Content-Encoding")
	w.WriteHeader(httpCode)
	_, _ = w.Write(append(body, '\n'))
}

// retryDelay is st's RetryInfo delay in seconds, if it has one.
func retryDelay(st *spb.Status) (float64, bool) {
	for _, d := range st.GetDetails() {
		var ri errdetails.RetryInfo
		if d.MessageIs(&ri) && d.UnmarshalTo(&ri) == nil && ri.GetRetryDelay() != nil {
			return max(ri.GetRetryDelay().AsDuration().Seconds(), 0), true
		}
	}
	return 0, false
}

// newStatus is a status with code, message and an ErrorInfo of the
// sidecar's domain with reason (none when reason is "").
func newStatus(c codes.Code, msg, reason string, meta map[string]string) *spb.Status {
	st := &spb.Status{Code: int32(c), Message: msg}
	if reason != "" {
		if a, err := anypb.New(&errdetails.ErrorInfo{Domain: api.ErrorDomain, Reason: reason, Metadata: meta}); err == nil {
			st.Details = append(st.Details, a)
		}
	}
	return st
}

// codeOfHTTP is the gRPC code of an HTTP error status the transcoder
// wrote without a google.rpc.Status body (405, 415, ...).
func codeOfHTTP(status int) codes.Code {
	switch status {
	case http.StatusBadRequest:
		return codes.InvalidArgument
	case http.StatusUnauthorized:
		return codes.Unauthenticated
	case http.StatusForbidden:
		return codes.PermissionDenied
	case http.StatusNotFound:
		return codes.NotFound
	case http.StatusMethodNotAllowed, http.StatusNotImplemented:
		return codes.Unimplemented
	case http.StatusRequestEntityTooLarge, http.StatusTooManyRequests:
		return codes.ResourceExhausted
	case http.StatusUnsupportedMediaType, http.StatusNotAcceptable:
		return codes.InvalidArgument
	case http.StatusServiceUnavailable:
		return codes.Unavailable
	case http.StatusGatewayTimeout:
		return codes.DeadlineExceeded
	}
	return codes.Unknown
}
