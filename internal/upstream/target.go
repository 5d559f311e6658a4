package upstream

import (
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"unicode/utf8"
)

// Bounds of one request.
const (
	MaxPathBytes        = 8 << 10
	MaxQueryBytes       = 8 << 10
	MaxHeaders          = 100
	MaxHeaderBytes      = 64 << 10
	MaxIdempotencyKey   = 512
	idempotencyKeyField = "Idempotency-Key"
)

// forbiddenHeaders are set by the sidecar or are hop-by-hop: a caller may
// not set them.
var forbiddenHeaders = map[string]bool{
	"Host": true, "Content-Length": true, "Transfer-Encoding": true, "Connection": true,
	"Keep-Alive": true, "Proxy-Connection": true, "Proxy-Authorization": true, "Proxy-Authenticate": true,
	"Te": true, "Trailer": true, "Upgrade": true, "Expect": true, "Idempotency-Key": true,
}

// methods are the methods ExecuteCall makes, and whether each is retried
// without an idempotency key.
var methods = map[string]bool{
	http.MethodGet: true, http.MethodHead: true, http.MethodPut: true, http.MethodDelete: true,
	http.MethodOptions: true, http.MethodPost: false, http.MethodPatch: false,
}

// resolve joins an escaped request path and query to the base URL. It
// refuses, as not naming a configured target, anything that could leave
// the base: a URL, a scheme-relative "//host", "." and ".." segments (also
// percent-encoded, or hidden behind an encoded slash) and backslashes.
func resolve(base *url.URL, path, query string) (*url.URL, error) {
	if path == "" {
		path = "/"
	}
	switch {
	case len(path) > MaxPathBytes:
		return nil, &RequestError{Field: "path", Msg: fmt.Sprintf("must be at most %d bytes, got %d", MaxPathBytes, len(path))}
	case !strings.HasPrefix(path, "/"):
		return nil, &RequestError{Field: "path", Target: true, Msg: "must be a path starting with \"/\" on the upstream, not a URL"}
	case strings.HasPrefix(path, "//"):
		return nil, &RequestError{Field: "path", Target: true, Msg: "must not start with \"//\" (a URL without its scheme)"}
	case strings.Contains(path, "\\"):
		return nil, &RequestError{Field: "path", Target: true, Msg: "must not contain a backslash"}
	case !utf8.ValidString(path) || strings.ContainsFunc(path, badURLRune):
		return nil, &RequestError{Field: "path", Msg: "must be an escaped path: no spaces, control characters, \"?\" or \"#\" (the query is its own field)"}
	}
	for _, seg := range strings.Split(path[1:], "/") {
		dec, err := url.PathUnescape(seg)
		if err != nil {
			return nil, &RequestError{Field: "path", Msg: fmt.Sprintf("bad escape in segment %q", seg)}
		}
		for _, part := range strings.FieldsFunc(dec, func(r rune) bool { return r == '/' || r == '\\' }) {
			if part == "." || part == ".." {
				return nil, &RequestError{Field: "path", Target: true, Msg: "must not contain \".\" or \"..\" segments (plain or escaped): the path may not leave the upstream's base URL"}
			}
		}
		if dec == "." || dec == ".." {
			return nil, &RequestError{Field: "path", Target: true, Msg: "must not contain \".\" or \"..\" segments (plain or escaped): the path may not leave the upstream's base URL"}
		}
	}
	if len(query) > MaxQueryBytes {
		return nil, &RequestError{Field: "query", Msg: fmt.Sprintf("must be at most %d bytes, got %d", MaxQueryBytes, len(query))}
	}
	if !utf8.ValidString(query) || strings.ContainsFunc(query, func(r rune) bool { return badURLRune(r) && r != '?' }) {
		return nil, &RequestError{Field: "query", Msg: "must be an escaped query without spaces, control characters or \"#\""}
	}
	if _, err := url.ParseQuery(query); err != nil {
		return nil, &RequestError{Field: "query", Msg: "must be an escaped query: " + err.Error()}
	}
	basePath := base.EscapedPath()
	raw := base.Scheme + "://" + base.Host + basePath + path
	if query != "" {
		raw += "?" + query
	}
	u, err := url.Parse(raw)
	if err != nil || u.Scheme != base.Scheme || u.Host != base.Host || u.User != nil ||
		!strings.HasPrefix(u.EscapedPath(), basePath+"/") && u.EscapedPath() != basePath {
		return nil, &RequestError{Field: "path", Target: true, Msg: "does not stay under the upstream's base URL"}
	}
	return u, nil
}

// badURLRune: characters an escaped path or query may not hold.
func badURLRune(r rune) bool {
	return r <= ' ' || r == 0x7f || r == '#' || r == '?' || r >= 0x80 && r <= 0x9f
}

// buildHeader checks and copies the caller's headers.
func buildHeader(pairs []Header, idempotencyKey string) (http.Header, error) {
	if len(pairs) > MaxHeaders {
		return nil, &RequestError{Field: "headers", Msg: fmt.Sprintf("at most %d headers, got %d", MaxHeaders, len(pairs))}
	}
	h := make(http.Header, len(pairs)+1)
	total := 0
	for i, p := range pairs {
		total += len(p.Name) + len(p.Value)
		name := http.CanonicalHeaderKey(p.Name)
		switch {
		case !validToken(p.Name):
			return nil, &RequestError{Field: "headers", Msg: fmt.Sprintf("header %d: name %q is not a valid HTTP header name", i, p.Name)}
		case forbiddenHeaders[name]:
			msg := fmt.Sprintf("header %d: %s is set by the sidecar or is hop-by-hop", i, name)
			if name == idempotencyKeyField {
				msg = fmt.Sprintf("header %d: use the idempotency_key field, which also makes the call retryable", i)
			}
			return nil, &RequestError{Field: "headers", Msg: msg}
		case strings.ContainsFunc(p.Value, func(r rune) bool { return r < ' ' && r != '\t' || r == 0x7f }):
			return nil, &RequestError{Field: "headers", Msg: fmt.Sprintf("header %d (%s): value must not contain control characters", i, name)}
		}
		h[name] = append(h[name], p.Value)
	}
	if total > MaxHeaderBytes {
		return nil, &RequestError{Field: "headers", Msg: fmt.Sprintf("at most %d bytes of names and values, got %d", MaxHeaderBytes, total)}
	}
	if idempotencyKey != "" {
		if len(idempotencyKey) > MaxIdempotencyKey || strings.ContainsFunc(idempotencyKey, func(r rune) bool { return r < ' ' || r > '~' }) {
			return nil, &RequestError{Field: "idempotency_key", Msg: fmt.Sprintf("must be 1-%d printable ASCII characters", MaxIdempotencyKey)}
		}
		h.Set(idempotencyKeyField, idempotencyKey)
	}
	return h, nil
}

// validToken reports whether s is an RFC 9110 token.
func validToken(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0) {
			return false
		}
	}
	return true
}
