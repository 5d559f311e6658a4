package inject

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"

	admissionregv1 "k8s.io/api/admissionregistration/v1"
)

// kubeRequestTimeout bounds one request to the Kubernetes API.
const kubeRequestTimeout = 15 * time.Second

// kubeClient is the injector's only client of the Kubernetes API, used by
// the self-managed certificate mode: it reads and patches one
// MutatingWebhookConfiguration (RBAC: get and patch on that name only). It
// authenticates with a bearer token read from tokenFile at every request,
// so a projected ServiceAccount token's renewals are picked up.
type kubeClient struct {
	base      string // https://host:port
	tokenFile string
	hc        *http.Client
}

// newKubeClient returns a client of the API server at base that trusts the
// CAs in caFile.
func newKubeClient(base, tokenFile, caFile string) (*kubeClient, error) {
	u, err := url.Parse(base)
	if err != nil || u.Scheme != "https" || u.Host == "" {
		return nil, fmt.Errorf("--kube-api: %q is not an https:// URL (outside a Pod, set it)", base)
	}
	caPEM, err := os.ReadFile(caFile)
	if err != nil {
		return nil, fmt.Errorf("--kube-ca-file: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return nil, fmt.Errorf("--kube-ca-file: %s holds no PEM certificate", caFile)
	}
	if _, err := os.Stat(tokenFile); err != nil {
		return nil, fmt.Errorf("--kube-token-file: %w", err)
	}
	tr := &http.Transport{
		TLSClientConfig:     &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12},
		ForceAttemptHTTP2:   true,
		MaxIdleConnsPerHost: 2,
		IdleConnTimeout:     time.Minute,
	}
	return &kubeClient{base: strings.TrimRight(base, "/"), tokenFile: tokenFile,
		hc: &http.Client{Transport: tr, Timeout: kubeRequestTimeout}}, nil
}

// close drops the client's idle connections.
func (k *kubeClient) close() { k.hc.CloseIdleConnections() }

func webhookConfigPath(name string) string {
	return "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/" + url.PathEscape(name)
}

func (k *kubeClient) do(ctx context.Context, method, path, contentType string, body []byte, out any) error {
	token, err := os.ReadFile(k.tokenFile)
	if err != nil {
		return fmt.Errorf("read the API token: %w", err)
	}
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, k.base+path, rd)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+strings.TrimSpace(string(token)))
	req.Header.Set("Accept", "application/json")
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := k.hc.Do(req)
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, path, err)
	}
	switch {
	case resp.StatusCode == http.StatusConflict:
		return errConflict
	case resp.StatusCode/100 != 2:
		var st struct {
			Message string `json:"message"`
		}
		if json.Unmarshal(data, &st) != nil || st.Message == "" {
			st.Message = strings.TrimSpace(string(data))
		}
		return fmt.Errorf("%s %s: HTTP %d: %s", method, path, resp.StatusCode, st.Message)
	}
	if out != nil {
		if err := json.Unmarshal(data, out); err != nil {
			return fmt.Errorf("%s %s: decode: %w", method, path, err)
		}
	}
	return nil
}

func (k *kubeClient) caBundles(ctx context.Context, config string) ([]string, [][]byte, string, error) {
	var cfg admissionregv1.MutatingWebhookConfiguration
	if err := k.do(ctx, http.MethodGet, webhookConfigPath(config), "", nil, &cfg); err != nil {
		return nil, nil, "", err
	}
	var names []string
	var bundles [][]byte
	for _, w := range cfg.Webhooks {
		names = append(names, w.Name)
		bundles = append(bundles, w.ClientConfig.CABundle)
	}
	return names, bundles, cfg.ResourceVersion, nil
}

// setCABundle sends a strategic merge patch (webhooks merge by name) that
// carries resourceVersion, so the API server refuses it (409) if the
// configuration changed since it was read.
func (k *kubeClient) setCABundle(ctx context.Context, config, resourceVersion string, names []string, bundle []byte) error {
	type clientConfig struct {
		CABundle []byte `json:"caBundle"`
	}
	type webhook struct {
		Name         string       `json:"name"`
		ClientConfig clientConfig `json:"clientConfig"`
	}
	patch := struct {
		Metadata struct {
			ResourceVersion string `json:"resourceVersion"`
		} `json:"metadata"`
		Webhooks []webhook `json:"webhooks"`
	}{}
	patch.Metadata.ResourceVersion = resourceVersion
	for _, n := range names {
		patch.Webhooks = append(patch.Webhooks, webhook{Name: n, ClientConfig: clientConfig{CABundle: bundle}})
	}
	body, err := json.Marshal(patch)
	if err != nil {
		return err
	}
	return k.do(ctx, http.MethodPatch, webhookConfigPath(config), "application/strategic-merge-patch+json", body, nil)
}
