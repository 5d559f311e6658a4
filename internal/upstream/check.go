package upstream

import (
	"fmt"
	"net/http"
	"strconv"
	"strings"
)

// Check runs the checks Do makes before its first attempt, without calling
// anything: it returns the *RequestError Do would return, or nil when Do
// would go on to call the upstream. Saga compensations are checked this way
// when they are recorded, long before they run.
func (c *Caller) Check(r Request) error {
	t, ok := c.targets[r.Upstream]
	if !ok {
		msg := "unknown upstream " + strconv.Quote(r.Upstream)
		if len(c.names) > 0 {
			msg += " (configured: " + strings.Join(c.names, ", ") + ")"
		} else {
			msg += " (the config declares no upstreams)"
		}
		return &RequestError{Field: "upstream", Target: true, Msg: msg}
	}
	method := r.Method
	if method == "" {
		method = http.MethodGet
	}
	if _, known := methods[method]; !known {
		return &RequestError{Field: "method", Msg: fmt.Sprintf("must be one of GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS, got %q", method)}
	}
	if _, err := resolve(t.base, r.Path, r.Query); err != nil {
		return err
	}
	if _, err := buildHeader(r.Headers, r.IdempotencyKey); err != nil {
		return err
	}
	if int64(len(r.Body)) > t.MaxBodyBytes {
		return &RequestError{Field: "body", Msg: fmt.Sprintf("must be at most %d bytes (the upstream's max_body_bytes), got %d", t.MaxBodyBytes, len(r.Body))}
	}
	return nil
}
