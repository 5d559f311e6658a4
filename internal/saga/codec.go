package saga

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/seed-a88e5317/resilience-sidecar/internal/upstream"
)

// wireStep is a recorded step as the log keeps it: written once, never
// changed. Its encoding is deterministic, so a retried RecordStep is
// recognised by comparing encodings.
type wireStep struct {
	Name     string      `json:"n"`
	Upstream string      `json:"u"`
	Method   string      `json:"m"`
	Path     string      `json:"p"`
	Query    string      `json:"q,omitempty"`
	Headers  [][2]string `json:"h,omitempty"`
	Body     []byte      `json:"b,omitempty"`
}

// encodeStep is the log's form of a step.
func encodeStep(name string, c Compensation) string {
	w := wireStep{Name: name, Upstream: c.Upstream, Method: c.Method, Path: c.Path, Query: c.Query, Body: c.Body}
	for _, h := range c.Headers {
		w.Headers = append(w.Headers, [2]string{h.Name, h.Value})
	}
	b, err := json.Marshal(w)
	if err != nil {
		// Strings and bytes always marshal (invalid UTF-8 is replaced,
		// but names and values are checked to be UTF-8 before this).
		panic(fmt.Sprintf("saga: encode step: %v", err))
	}
	return string(b)
}

// decodeStep reads encodeStep's output.
func decodeStep(s string) (string, Compensation, error) {
	var w wireStep
	if err := json.Unmarshal([]byte(s), &w); err != nil {
		return "", Compensation{}, fmt.Errorf("saga: corrupt step record: %w", err)
	}
	c := Compensation{Upstream: w.Upstream, Method: w.Method, Path: w.Path, Query: w.Query, Body: w.Body}
	for _, h := range w.Headers {
		c.Headers = append(c.Headers, upstream.Header{Name: h[0], Value: h[1]})
	}
	return w.Name, c, nil
}

func encodeMetadata(md map[string]string) string {
	if len(md) == 0 {
		return ""
	}
	b, err := json.Marshal(md) // keys sorted
	if err != nil {
		panic(fmt.Sprintf("saga: encode metadata: %v", err))
	}
	return string(b)
}

func decodeMetadata(s string) (map[string]string, error) {
	if s == "" {
		return nil, nil
	}
	var md map[string]string
	if err := json.Unmarshal([]byte(s), &md); err != nil {
		return nil, fmt.Errorf("saga: corrupt metadata: %w", err)
	}
	return md, nil
}

// IdempotencyKey is the Idempotency-Key sent with a step's compensation:
// "<saga_id>:<step>". The header takes 1-512 printable ASCII characters, and
// the key must tell apart every (saga, step) pair, so: '%', space and bytes
// outside printable ASCII are percent-encoded in both parts, and ':' too in
// the step (so the last ':' separates the two). A key longer than 512
// bytes after that is "sha256:" and the hex SHA-256 of saga_id, NUL, step.
// Plain ASCII ids and step names without ':' or '%' give the plain form.
func IdempotencyKey(sagaID, step string) string {
	key := escapeKey(sagaID, false) + ":" + escapeKey(step, true)
	if len(key) <= upstream.MaxIdempotencyKey {
		return key
	}
	sum := sha256.Sum256([]byte(sagaID + "\x00" + step))
	return "sha256:" + hex.EncodeToString(sum[:])
}

func escapeKey(s string, colon bool) string {
	need := func(c byte) bool { return c <= ' ' || c > '~' || c == '%' || colon && c == ':' }
	if !strings.ContainsFunc(s, func(r rune) bool { return r > '~' || need(byte(r)) }) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if c := s[i]; need(c) {
			fmt.Fprintf(&b, "%%%02X", c)
		} else {
			b.WriteByte(c)
		}
	}
	return b.String()
}

// cloneSaga copies s so that the copy shares nothing mutable with it.
func cloneSaga(s Saga) Saga {
	s.Metadata = maps.Clone(s.Metadata)
	if s.Steps != nil {
		steps := make([]Step, len(s.Steps))
		for i, st := range s.Steps {
			steps[i] = cloneStep(st)
		}
		s.Steps = steps
	}
	return s
}

func cloneStep(st Step) Step {
	st.Compensation.Headers = slices.Clone(st.Compensation.Headers)
	st.Compensation.Body = slices.Clone(st.Compensation.Body)
	st.TraceContext = maps.Clone(st.TraceContext)
	return st
}
