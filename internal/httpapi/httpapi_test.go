package httpapi

import (
	"bytes"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
)

func TestRestPath(t *testing.T) {
	verbs := map[string]bool{"acquire": true, "next": true}
	tests := []struct{ in, want string }{
		{"/v1/locks/a:acquire", "/v1/locks/a:acquire"},
		{"/v1/locks/a/b/c:acquire", "/v1/locks/a/b/c:acquire"},
		{"/v1/locks/a%2Fb:acquire", "/v1/locks/a/b:acquire"},
		{"/v1/locks/a%2fb", "/v1/locks/a/b"},
		{"/v1/locks/a:b:acquire", "/v1/locks/a%3Ab:acquire"},
		{"/v1/locks/a:b", "/v1/locks/a%3Ab"},                   // GET: no verb
		{"/v1/locks/a:b:c", "/v1/locks/a%3Ab%3Ac"},             // "c" is no verb
		{"/v1/locks/x:y/a:b:next", "/v1/locks/x:y/a%3Ab:next"}, // only the last segment
		{"/v1/locks/%25:acquire", "/v1/locks/%25:acquire"},
		{"/v1/ulids:next", "/v1/ulids:next"},
	}
	for _, tt := range tests {
		if got := restPath(tt.in, verbs); got != tt.want {
			t.Errorf("restPath(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestHTTPStatus(t *testing.T) {
	tests := []struct {
		code codes.Code
		want int
	}{
		{codes.OK, 200}, {codes.Canceled, 499}, {codes.Unknown, 500}, {codes.InvalidArgument, 400},
		{codes.DeadlineExceeded, 504}, {codes.NotFound, 404}, {codes.AlreadyExists, 409},
		{codes.PermissionDenied, 403}, {codes.ResourceExhausted, 429}, {codes.FailedPrecondition, 412},
		{codes.Aborted, 409}, {codes.OutOfRange, 400}, {codes.Unimplemented, 501}, {codes.Internal, 500},
		{codes.Unavailable, 503}, {codes.DataLoss, 500}, {codes.Unauthenticated, 401},
	}
	for _, tt := range tests {
		if got := HTTPStatus(tt.code); got != tt.want {
			t.Errorf("HTTPStatus(%v) = %d, want %d", tt.code, got, tt.want)
		}
	}
	if got := codeOfHTTP(http.StatusMethodNotAllowed); got != codes.Unimplemented {
		t.Errorf("codeOfHTTP(405) = %v", got)
	}
}

// TestDocumentCommitted: docs/openapi.json is what Document generates
// (make generate writes it; make check-generated checks it in CI too).
func TestDocumentCommitted(t *testing.T) {
	doc, err := Document()
	if err != nil {
		t.Fatal(err)
	}
	committed, err := os.ReadFile(filepath.Join("..", "..", "docs", "openapi.json"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(doc, committed) {
		t.Fatal("docs/openapi.json is stale: run make generate")
	}
	routes, err := Routes(nil, Services()...)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range routes {
		if !strings.HasPrefix(r.Pattern, "/v1/") {
			t.Errorf("route %s is outside /v1/, which the handler alone routes", r)
		}
		if r.Method == http.MethodGet && r.Body != "" {
			t.Errorf("route %s: a GET with a body", r)
		}
	}
	if len(routes) != 39 {
		t.Errorf("%d routes, want 39 (every unary RPC)", len(routes))
	}
}
