package upstream_test

import (
	"errors"
	"math/rand"
	"reflect"
	"strings"
	"testing"
	"testing/quick"
	"time"

	"github.com/seed-a88e5317/resilience-sidecar/internal/upstream"
)

// knownBypasses are paths that some server or proxy normalises to a place
// outside the base path, or to another resource, while a check that decodes
// once and compares segments with ".." lets them through.
var knownBypasses = []string{
	"/..;/admin",                        // Tomcat/Jetty: ";..." stripped, then ".."
	"/a/..;x=1/..;/admin",               // the same, with parameters
	"/a;jsessionid=1/../admin",          // ";" in a segment before a ".."
	"/%3b/admin",                        // an encoded ";"
	"/%2e%2e/admin",                     // encoded ".."
	"/%2E%2e%2Fadmin",                   // encoded "../"
	"/a/..%2f..%2fadmin",                // encoded slashes hide ".."
	"/%252e%252e/admin",                 // double-encoded ".."
	"/%25252e%25252e/admin",             // triple-encoded ".."
	"/a/%252e%252e%252fadmin",           // double-encoded "../"
	"/a/%252fadmin",                     // double-encoded slash
	"/%c0%ae%c0%ae/admin",               // overlong UTF-8 "."
	"/%e0%80%ae%e0%80%ae/admin",         // the 3-byte overlong "."
	"/%25c0%25ae%25c0%25ae/admin",       // double-encoded overlong "."
	"/%ef%bc%8e%ef%bc%8e/admin",         // fullwidth "．．", folded to ".." by some servers
	"/..%20/admin",                      // Windows drops trailing spaces
	"/a\\..\\admin",                     // "\" as "/" on Windows servers
	"/a%5c..%5cadmin",                   // encoded backslashes
	"/a%255c..%255cadmin",               // double-encoded backslashes
	"/./admin",                          // "."
	"/a/%2e/admin",                      // encoded "."
	"//evil.example/x",                  // a URL without its scheme
	"/%2f%2fevil.example/x",             // the same, encoded
	"/admin%00.json",                    // NUL: C servers stop reading there
	"/admin%2500.json",                  // double-encoded NUL
	"/a%0d%0aX-Injected:%201",           // CR LF
	"/..",                               // plain ".."
	"/a/../../admin",                    // plain "..", twice
	"/a/.../admin",                      // dots only, which Windows trims to nothing
	"/%2e%2e%3b/admin",                  // encoded "..;"
	"/%252e%252e%253b/admin",            // double-encoded "..;"
	"/a/%25%32%65%25%32%65/admin",       // "%2e%2e" spelled with escapes
	"/a/%25%32%35%32%65%25%32%35%32%65", // "%252e%252e" spelled with escapes
	"/a/%25252525252525252541",          // "A" percent-encoded nine times
}

// TestKnownBypassesRefused: every known normalisation bypass is refused as
// not naming a configured target, and none reaches the upstream.
func TestKnownBypassesRefused(t *testing.T) {
	srv := newServer(t, status(200))
	e := newEnv(t, srv.URL+"/api")
	for _, p := range knownBypasses {
		_, err := do(t, e, upstream.Request{Path: p})
		var re *upstream.RequestError
		if !errors.As(err, &re) || re.Field != "path" || !re.Target || !errors.Is(err, upstream.ErrUnknownTarget) {
			t.Errorf("path %q: err = %v, want a refused target on field path", p, err)
		}
		if cerr := upstream.CheckPath(p); cerr == nil || err == nil || cerr.Error() != err.Error() {
			t.Errorf("path %q: CheckPath = %v, Do = %v; want the same refusal", p, cerr, err)
		}
	}
	if n := srv.hits.Load(); n != 0 {
		t.Fatalf("%d refused paths reached the upstream", n)
	}
}

// TestLegitimatePathsPass: paths that merely look unusual are sent byte for
// byte under the base path.
func TestLegitimatePathsPass(t *testing.T) {
	srv := newServer(t, status(200))
	e := newEnv(t, srv.URL+"/api")
	paths := []string{
		"", "/", "/a/b.c/..d/x..", "/.well-known/x", "/%E2%82%AC", "/100%25", "/100%25zz",
		"/a-b_c~d/e%20f", "/a//b", "/v1/items/42", "/x.json", "/%2525", "/a%3Fb", "/a%23b",
	}
	for i, p := range paths {
		resp, err := do(t, e, upstream.Request{Path: p})
		if err != nil || resp.Status != 200 {
			t.Errorf("path %q: %+v, %v", p, resp, err)
			continue
		}
		want := "/api" + p
		if p == "" {
			want = "/api/"
		}
		if got := srv.request(i).URL.EscapedPath(); got != want {
			t.Errorf("path %q reached the upstream as %q, want %q", p, got, want)
		}
	}
}

// fragments build generated paths: harmless ones, and the pieces of every
// known trick.
var (
	safeFragments  = []string{"a", "b", "api", "admin", "v1", "x.json", "..d", "e..", "-", "_", "~", "%20", "%41", "%E2%82%AC", "100", "="}
	trickFragments = []string{".", "..", "...", ";", "..;", "%2e", "%2E", "%252e", "%25252e", "%2f", "%2F", "%252f", "%5c", "%5C",
		"%255c", "\\", "%c0%ae", "%e0%80%ae", "%25c0%25ae", "%ef%bc%8e", "%00", "%2500", "%3b", "%253b", "%25%32%65", "%25%32%66",
		"%", "%2", "2e", "2f", "%25%", "/", "//", " ", "%0a"}
)

// genPath is a path made of random fragments joined by "/"; safe paths use
// only safeFragments.
type genPath struct {
	path string
	safe bool
}

func (genPath) Generate(r *rand.Rand, _ int) reflect.Value {
	safe := r.Intn(4) == 0
	var b strings.Builder
	for range 1 + r.Intn(6) {
		b.WriteByte('/')
		for range 1 + r.Intn(3) {
			if safe || r.Intn(3) == 0 {
				b.WriteString(safeFragments[r.Intn(len(safeFragments))])
			} else {
				b.WriteString(trickFragments[r.Intn(len(trickFragments))])
			}
		}
	}
	return reflect.ValueOf(genPath{path: b.String(), safe: safe})
}

// hostileNormalise reads an escaped request path the most permissive way
// any common server does: percent-decoding until nothing changes (overlong
// and fullwidth dots read as "."), "\" as "/", ";" parameters dropped,
// trailing spaces and dots-only segments read as "..", NUL ending the
// path, "." and ".." resolved, "//" collapsed. It returns the segments.
func hostileNormalise(p string) []string {
	for {
		next := lenientDecode(p)
		if next == p {
			break
		}
		p = next
	}
	for _, o := range []string{"\xc0\xae", "\xe0\x80\xae", "\uff0e", "\u2024", "\ufe52"} {
		p = strings.ReplaceAll(p, o, ".")
	}
	p = strings.ReplaceAll(p, "\\", "/")
	if i := strings.IndexAny(p, "\x00\r\n"); i >= 0 {
		p = p[:i]
	}
	var out []string
	for _, seg := range strings.Split(p, "/") {
		if i := strings.IndexByte(seg, ';'); i >= 0 {
			seg = seg[:i]
		}
		seg = strings.TrimRight(seg, " ")
		switch {
		case seg == "":
		case strings.Trim(seg, ".") == "" && seg != ".":
			if len(out) > 0 {
				out = out[:len(out)-1]
			} else {
				out = append(out, "<above the root>")
			}
		case seg == ".":
		default:
			out = append(out, seg)
		}
	}
	return out
}

// lenientDecode decodes each valid %XX once; the test's own decoder, so
// that it does not share the code under test.
func lenientDecode(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '%' && i+2 < len(s) {
			var v byte
			ok := true
			for _, c := range []byte{s[i+1], s[i+2]} {
				switch {
				case c >= '0' && c <= '9':
					v = v<<4 | (c - '0')
				case c >= 'a' && c <= 'f':
					v = v<<4 | (c - 'a' + 10)
				case c >= 'A' && c <= 'F':
					v = v<<4 | (c - 'A' + 10)
				default:
					ok = false
				}
			}
			if ok {
				b.WriteByte(v)
				i += 2
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// TestPathPropertyNeverLeavesBase: for generated paths, whatever CheckPath
// accepts stays under the base path however hostilely a server normalises
// it, and every path made only of harmless fragments is accepted.
func TestPathPropertyNeverLeavesBase(t *testing.T) {
	seed := time.Now().UnixNano()
	t.Logf("seed %d", seed)
	accepted, refused := 0, 0
	prop := func(g genPath) bool {
		err := upstream.CheckPath(g.path)
		if err != nil {
			refused++
			if g.safe {
				t.Logf("a harmless path was refused: %q: %v", g.path, err)
				return false
			}
			return errors.Is(err, upstream.ErrInvalidRequest)
		}
		accepted++
		segs := hostileNormalise("/api" + g.path)
		if len(segs) == 0 || segs[0] != "api" {
			t.Logf("accepted %q, which a server can read as /%s", g.path, strings.Join(segs, "/"))
			return false
		}
		for _, s := range segs {
			if strings.Contains(s, "\x00") {
				t.Logf("accepted %q, which holds a NUL", g.path)
				return false
			}
		}
		return true
	}
	if err := quick.Check(prop, &quick.Config{MaxCount: 20000, Rand: rand.New(rand.NewSource(seed))}); err != nil {
		t.Fatal(err)
	}
	if accepted < 1000 || refused < 1000 {
		t.Fatalf("the generator is lopsided: %d accepted, %d refused", accepted, refused)
	}
}
