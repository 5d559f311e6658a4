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

// resolve joins an escaped request path and query to the base URL. The
// path must pass CheckPath; the joined URL must keep the base's scheme,
// host and path prefix.
func resolve(base *url.URL, path, query string) (*url.URL, error) {
	if path == "" {
		path = "/"
	}
	if err := CheckPath(path); err != nil {
		return nil, err
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

// CheckPath checks an escaped upstream path ("/" when empty) as every
// ExecuteCall, saga compensation and push subscription is checked. It
// returns a *RequestError on field "path" (Target set when the path could
// name something other than a resource under the upstream's base URL), or
// nil.
//
// Servers and proxies normalise paths differently: some decode
// percent-escapes twice, Tomcat and Jetty drop ";" path parameters before
// resolving "..", Windows servers treat "\" as "/" and drop trailing dots,
// lenient UTF-8 decoders read the overlong %C0%AE as ".". So rather than
// normalising the path one way, CheckPath refuses every segment that some
// server could read as leaving its place: after percent-decoding it again
// and again until nothing changes, no level may hold a segment made only of
// dots (".", "..", also fullwidth or with spaces), a ";", a slash or
// backslash (that is, an encoded %2F or %5C), NUL or another control
// character, or bytes that are not UTF-8. A leading "//" (a URL without
// its scheme) and a raw backslash are refused too. Any other path is sent
// byte for byte after the base path.
func CheckPath(path string) error {
	if path == "" {
		path = "/"
	}
	switch {
	case len(path) > MaxPathBytes:
		return &RequestError{Field: "path", Msg: fmt.Sprintf("must be at most %d bytes, got %d", MaxPathBytes, len(path))}
	case !strings.HasPrefix(path, "/"):
		return &RequestError{Field: "path", Target: true, Msg: "must be a path starting with \"/\" on the upstream, not a URL"}
	case strings.HasPrefix(path, "//"):
		return &RequestError{Field: "path", Target: true, Msg: "must not start with \"//\" (a URL without its scheme)"}
	case strings.Contains(path, "\\"):
		return &RequestError{Field: "path", Target: true, Msg: "must not contain a backslash"}
	case !utf8.ValidString(path) || strings.ContainsFunc(path, badURLRune):
		return &RequestError{Field: "path", Msg: "must be an escaped path: no spaces, control characters, \"?\" or \"#\" (the query is its own field)"}
	}
	for _, seg := range strings.Split(path[1:], "/") {
		dec, err := url.PathUnescape(seg)
		if err != nil {
			return &RequestError{Field: "path", Msg: fmt.Sprintf("bad escape in segment %q", seg)}
		}
		for depth := 1; ; depth++ {
			msg := badSegment(dec)
			next := unescapeLenient(dec)
			if msg == "" && next != dec && depth == maxEncodingDepth {
				msg = fmt.Sprintf("is percent-encoded more than %d times", maxEncodingDepth)
			}
			if msg != "" {
				return &RequestError{Field: "path", Target: true, Msg: fmt.Sprintf("segment %q %s (checked at every depth of percent-encoding): servers normalise such paths differently, and the path may not leave the upstream's base URL", seg, msg)}
			}
			if next == dec {
				break
			}
			dec = next
		}
	}
	return nil
}

// maxEncodingDepth bounds how many times a segment is decoded (and so the
// work per path): a segment that still changes after that many levels of
// percent-decoding is refused.
const maxEncodingDepth = 8

// badSegment says what is wrong with one decoded path segment, or "".
func badSegment(dec string) string {
	switch {
	case dotsOnly(dec):
		return "is a \".\" or \"..\" segment"
	case strings.ContainsAny(dec, "/\\"):
		return "holds an encoded slash or backslash"
	case strings.Contains(dec, ";"):
		return "holds a \";\" (path parameters, which Tomcat and Jetty strip before resolving \"..\")"
	case !utf8.ValidString(dec):
		return "holds bytes that are not UTF-8 (such as the overlong %C0%AE for \".\")"
	case strings.ContainsFunc(dec, func(r rune) bool { return r < ' ' || r == 0x7f || r >= 0x80 && r <= 0x9f }):
		return "holds NUL or another control character"
	}
	return ""
}

// dotsOnly reports whether s is made of dots, counting the Unicode dots
// that some servers fold to "." and ignoring spaces, which Windows servers
// drop from the end of a segment.
func dotsOnly(s string) bool {
	dots := 0
	for _, r := range s {
		switch r {
		case '.', '\uff0e', '\u2024', '\ufe52':
			dots++
		case ' ':
		default:
			return false
		}
	}
	return dots > 0
}

// unescapeLenient decodes every valid %XX escape in s and keeps any other
// "%" as it is, as a server that decodes a second time would.
func unescapeLenient(s string) string {
	if !strings.Contains(s, "%") {
		return s
	}
	var b strings.Builder
	b.Grow(len(s))
	for i := 0; i < len(s); i++ {
		if s[i] == '%' && i+2 < len(s) && isHex(s[i+1]) && isHex(s[i+2]) {
			b.WriteByte(unhex(s[i+1])<<4 | unhex(s[i+2]))
			i += 2
			continue
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

func unhex(c byte) byte {
	switch {
	case c <= '9':
		return c - '0'
	case c <= 'F':
		return c - 'A' + 10
	}
	return c - 'a' + 10
}
