package inject

import "strings"

// patchOp is one RFC 6902 JSON patch operation. The injector only ever
// adds, so a patch built from patchOps cannot drop a field of the Pod, even
// one this package's k8s.io/api version does not know.
type patchOp struct {
	Op    string `json:"op"`
	Path  string `json:"path"`
	Value any    `json:"value"`
}

// add returns the operation that adds value at the JSON pointer made of
// the reference tokens, each escaped as RFC 6901 says.
func add(value any, tokens ...string) patchOp {
	var b strings.Builder
	for _, t := range tokens {
		b.WriteByte('/')
		b.WriteString(escapePointerToken(t))
	}
	return patchOp{Op: "add", Path: b.String(), Value: value}
}

// escapePointerToken escapes one JSON pointer reference token (RFC 6901
// section 3): "~" becomes "~0" and "/" becomes "~1", in that order.
func escapePointerToken(s string) string {
	return strings.ReplaceAll(strings.ReplaceAll(s, "~", "~0"), "/", "~1")
}
