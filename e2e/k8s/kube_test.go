package k8s

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// requestTimeout bounds one request to the API server.
const requestTimeout = 30 * time.Second

// kube is a minimal client of the Kubernetes REST API over net/http and
// JSON, authenticated with a bearer token. It speaks to a real API server
// as kubectl would, without client-go.
type kube struct {
	base  string // https://127.0.0.1:PORT
	token string
	hc    *http.Client
}

func newKube(base, token string, caPEM []byte) (*kube, error) {
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return nil, errors.New("no certificate in the API server's CA")
	}
	tr := &http.Transport{
		TLSClientConfig:     &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12},
		ForceAttemptHTTP2:   true,
		MaxIdleConnsPerHost: 4,
	}
	return &kube{base: base, token: token, hc: &http.Client{Transport: tr, Timeout: requestTimeout}}, nil
}

// close drops the client's idle connections.
func (k *kube) close() { k.hc.CloseIdleConnections() }

// apiError is a refusal by the API server: its HTTP code and Status.
type apiError struct {
	code   int
	status metav1.Status
}

func (e *apiError) Error() string {
	return fmt.Sprintf("HTTP %d %s: %s", e.code, e.status.Reason, e.status.Message)
}

// response is what a request got besides its body: the API server's
// admission warnings (the Warning headers, as kubectl prints them).
type response struct {
	warnings []string
}

// do sends method path with in as the JSON body (nil: none) and decodes a
// 2xx answer into out (nil: discarded). A non-2xx answer is an *apiError.
func (k *kube) do(ctx context.Context, method, path, contentType string, in, out any) (response, error) {
	var body io.Reader
	if in != nil {
		data, ok := in.([]byte)
		if !ok {
			var err error
			if data, err = json.Marshal(in); err != nil {
				return response{}, fmt.Errorf("encode %s %s: %w", method, path, err)
			}
		}
		body = bytes.NewReader(data)
	}
	req, err := http.NewRequestWithContext(ctx, method, k.base+path, body)
	if err != nil {
		return response{}, err
	}
	req.Header.Set("Authorization", "Bearer "+k.token)
	req.Header.Set("Accept", "application/json")
	if in != nil {
		if contentType == "" {
			contentType = "application/json"
		}
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := k.hc.Do(req)
	if err != nil {
		return response{}, fmt.Errorf("%s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		return response{}, fmt.Errorf("%s %s: read: %w", method, path, err)
	}
	r := response{warnings: parseWarnings(resp.Header.Values("Warning"))}
	if resp.StatusCode/100 != 2 {
		e := &apiError{code: resp.StatusCode}
		if json.Unmarshal(data, &e.status) != nil || e.status.Message == "" {
			e.status.Message = strings.TrimSpace(string(data))
		}
		return r, e
	}
	if out != nil {
		if err := json.Unmarshal(data, out); err != nil {
			return r, fmt.Errorf("%s %s: decode: %w", method, path, err)
		}
	}
	return r, nil
}

// parseWarnings turns `299 - "text"` header values into their texts.
func parseWarnings(values []string) []string {
	var out []string
	for _, v := range values {
		v = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(v), "299 -"))
		if s, err := strconv.Unquote(v); err == nil {
			v = s
		}
		out = append(out, v)
	}
	return out
}

func (k *kube) create(ctx context.Context, path string, in, out any) (response, error) {
	return k.do(ctx, http.MethodPost, path, "", in, out)
}

func (k *kube) get(ctx context.Context, path string, out any) error {
	_, err := k.do(ctx, http.MethodGet, path, "", nil, out)
	return err
}

// mergePatch applies a JSON merge patch (RFC 7386).
func (k *kube) mergePatch(ctx context.Context, path string, patch, out any) (response, error) {
	return k.do(ctx, http.MethodPatch, path, "application/merge-patch+json", patch, out)
}

// isNotFound reports whether err is the API server's 404.
func isNotFound(err error) bool {
	var e *apiError
	return errors.As(err, &e) && e.code == http.StatusNotFound
}
