package inject

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"net"
	"sync"
	"time"
)

// certBackdate is how far before its issue a self-managed certificate's
// validity starts, for clocks a little behind ours.
const certBackdate = 5 * time.Minute

// selfCertConfig is the self-managed certificate mode's configuration.
type selfCertConfig struct {
	// webhookConfig names the MutatingWebhookConfiguration whose webhooks'
	// caBundle the injector keeps up to date.
	webhookConfig string
	// dnsNames and ips are the serving certificate's subject alternative
	// names (the Service's DNS names; an IP when the webhook is called by url).
	dnsNames []string
	ips      []net.IP
	// certValidity is the serving certificate's lifetime; it is renewed
	// after two thirds of it.
	certValidity time.Duration
	// caValidity is the lifetime of the injector's CA; a new CA is made when
	// the current one would expire before a new serving certificate would.
	caValidity time.Duration
	// propagation is how long a new CA is in the caBundle before a
	// certificate it signed is served, for the API servers to load it.
	propagation time.Duration
}

// caBundleStore reads and updates the caBundle of the webhooks of a
// MutatingWebhookConfiguration (kubeClient in production).
type caBundleStore interface {
	// caBundles returns each webhook's name and caBundle, and the
	// configuration's resourceVersion.
	caBundles(ctx context.Context, config string) (names []string, bundles [][]byte, resourceVersion string, err error)
	// setCABundle sets every named webhook's caBundle to bundle, if the
	// configuration is still at resourceVersion (else errConflict).
	setCABundle(ctx context.Context, config, resourceVersion string, names []string, bundle []byte) error
}

// errConflict is setCABundle's error when the configuration changed since
// it was read.
var errConflict = errors.New("the webhook configuration changed meanwhile")

// keyPair is a certificate and its key.
type keyPair struct {
	cert *x509.Certificate
	key  crypto.Signer
	pem  []byte // the certificate, PEM-encoded
}

// selfCerts is the self-managed certificate mode: the injector keeps its
// own CA, publishes it in the webhook's caBundle, and serves a certificate
// that CA signed, renewed before it expires. Every replica has its own CA:
// the caBundle holds each replica's CA (a CA is kept there until it
// expires, so a replica's rotation never removes another's), and a new CA
// is published, then given time to reach the API servers, before a
// certificate it signed is served. Safe for concurrent use.
type selfCerts struct {
	cfg     selfCertConfig
	store   caBundleStore
	log     *slog.Logger
	metrics *injectorMetrics
	now     func() time.Time

	mu       sync.RWMutex
	ca       *keyPair
	cert     *tls.Certificate
	issuedAt time.Time // when cert was issued (its NotBefore is backdated)
}

// newSelfCerts makes a CA, publishes it, waits the propagation delay and
// issues the first serving certificate. Publishing is retried until ctx is
// done.
func newSelfCerts(ctx context.Context, cfg selfCertConfig, store caBundleStore, log *slog.Logger, m *injectorMetrics) (*selfCerts, error) {
	s := &selfCerts{cfg: cfg, store: store, log: log, metrics: m, now: time.Now}
	ca, err := newCAKeyPair(s.now(), cfg.caValidity)
	if err != nil {
		return nil, err
	}
	if err := s.publishRetrying(ctx, ca); err != nil {
		return nil, err
	}
	// Like a renewed CA, the first one is given time to reach the API
	// servers before the webhook serves a certificate it signed.
	t := time.NewTimer(cfg.propagation)
	select {
	case <-ctx.Done():
		t.Stop()
		return nil, ctx.Err()
	case <-t.C:
	}
	if err := s.install(ca, false); err != nil {
		return nil, err
	}
	return s, nil
}

// GetCertificate is tls.Config.GetCertificate: the serving certificate in use.
func (s *selfCerts) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.cert, nil
}

// install issues a serving certificate signed by ca and puts it (and ca)
// in use.
func (s *selfCerts) install(ca *keyPair, rotated bool) error {
	now := s.now()
	cert, err := issueServing(ca, now, s.cfg.certValidity, s.cfg.dnsNames, s.cfg.ips)
	if err != nil {
		return err
	}
	s.mu.Lock()
	s.ca, s.cert, s.issuedAt = ca, cert, now
	s.mu.Unlock()
	s.metrics.certInUse(cert, rotated)
	s.log.Info("tls: self-managed certificate in use", slog.String("not_after", notAfter(cert)),
		slog.String("ca_not_after", ca.cert.NotAfter.UTC().Format(time.RFC3339)))
	return nil
}

// renewAt is when the serving certificate in use is renewed: after two
// thirds of its lifetime.
func (s *selfCerts) renewAt() time.Time {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.issuedAt.Add(s.cfg.certValidity * 2 / 3)
}

// run renews the serving certificate (and the CA when needed) until ctx is
// done. A failed renewal is logged and retried; the certificate in use
// stays until then.
func (s *selfCerts) run(ctx context.Context) {
	retry := min(s.cfg.certValidity/20, 10*time.Second)
	next := s.renewAt()
	for {
		t := time.NewTimer(max(0, next.Sub(s.now())))
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		if err := s.rotate(ctx); err != nil {
			if ctx.Err() != nil {
				return
			}
			s.log.Error("tls: cannot renew the self-managed certificate; retrying", slog.String("error", err.Error()))
			next = s.now().Add(retry)
			continue
		}
		next = s.renewAt()
	}
}

// rotate issues a new serving certificate. When the CA would expire before
// the new certificate, a new CA is made and published first, and used only
// after the propagation delay. The CA in use is published again either way,
// which repairs a caBundle that someone overwrote.
func (s *selfCerts) rotate(ctx context.Context) error {
	s.mu.RLock()
	ca := s.ca
	s.mu.RUnlock()
	now := s.now()
	if ca.cert.NotAfter.Sub(now) < s.cfg.certValidity+s.cfg.propagation+s.cfg.certValidity/3 {
		next, err := newCAKeyPair(now, s.cfg.caValidity)
		if err != nil {
			return err
		}
		if err := s.publish(ctx, next); err != nil {
			return fmt.Errorf("publish the new CA: %w", err)
		}
		s.log.Info("tls: new CA published; waiting before serving a certificate it signed",
			slog.Duration("propagation", s.cfg.propagation))
		t := time.NewTimer(s.cfg.propagation)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
		ca = next
	} else if err := s.publish(ctx, ca); err != nil {
		return fmt.Errorf("check the caBundle: %w", err)
	}
	return s.install(ca, true)
}

// publishRetrying is publish, retried every second (conflicts at once)
// until it succeeds or ctx is done.
func (s *selfCerts) publishRetrying(ctx context.Context, ca *keyPair) error {
	for {
		err := s.publish(ctx, ca)
		if err == nil {
			return nil
		}
		s.log.Warn("tls: cannot publish the CA in the webhook's caBundle; retrying",
			slog.String("webhook_configuration", s.cfg.webhookConfig), slog.String("error", err.Error()))
		t := time.NewTimer(time.Second)
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("publish the CA in %s: %w (last error: %w)", s.cfg.webhookConfig, ctx.Err(), err)
		case <-t.C:
		}
	}
}

// publish makes every webhook's caBundle hold ca and the unexpired CAs it
// already held (other replicas', and this one's previous), patching it only
// if that changes it. A conflicting concurrent update is retried at once.
func (s *selfCerts) publish(ctx context.Context, ca *keyPair) error {
	for {
		names, bundles, rv, err := s.store.caBundles(ctx, s.cfg.webhookConfig)
		if err != nil {
			return err
		}
		if len(names) == 0 {
			return fmt.Errorf("MutatingWebhookConfiguration %s has no webhooks", s.cfg.webhookConfig)
		}
		want := mergeBundle(bundles, ca, s.now())
		same := true
		for _, b := range bundles {
			if !bytes.Equal(b, want) {
				same = false
			}
		}
		if same {
			return nil
		}
		err = s.store.setCABundle(ctx, s.cfg.webhookConfig, rv, names, want)
		s.metrics.caBundleUpdated(err)
		if errors.Is(err, errConflict) {
			continue
		}
		if err == nil {
			s.log.Info("tls: caBundle updated", slog.String("webhook_configuration", s.cfg.webhookConfig),
				slog.Int("cas", bytes.Count(want, []byte("-----BEGIN CERTIFICATE-----"))))
		}
		return err
	}
}

// mergeBundle is the CAs of bundles that are unexpired at now (each once,
// in order of first appearance), then ca if it was not among them, as PEM.
func mergeBundle(bundles [][]byte, ca *keyPair, now time.Time) []byte {
	var out bytes.Buffer
	seen := map[string]bool{}
	add := func(c *x509.Certificate) {
		if seen[string(c.Raw)] || !now.Before(c.NotAfter) {
			return
		}
		seen[string(c.Raw)] = true
		_ = pem.Encode(&out, &pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
	}
	for _, b := range bundles {
		for rest := b; ; {
			var block *pem.Block
			block, rest = pem.Decode(rest)
			if block == nil {
				break
			}
			if c, err := x509.ParseCertificate(block.Bytes); err == nil && block.Type == "CERTIFICATE" {
				add(c)
			}
		}
	}
	add(ca.cert)
	return out.Bytes()
}

// newCAKeyPair makes a self-signed CA valid from now for validity.
func newCAKeyPair(now time.Time, validity time.Duration) (*keyPair, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate the CA key: %w", err)
	}
	serial, err := randSerial()
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: "resilience-sidecar-injector CA " + now.UTC().Format(time.RFC3339)},
		NotBefore:             now.Add(-certBackdate),
		NotAfter:              now.Add(validity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, fmt.Errorf("create the CA certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("parse the CA certificate: %w", err)
	}
	return &keyPair{cert: cert, key: key, pem: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}, nil
}

// issueServing makes a serving certificate for dnsNames and ips, signed by
// ca, valid from now for validity.
func issueServing(ca *keyPair, now time.Time, validity time.Duration, dnsNames []string, ips []net.IP) (*tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate the serving key: %w", err)
	}
	serial, err := randSerial()
	if err != nil {
		return nil, err
	}
	cn := "resilience-injector"
	if len(dnsNames) > 0 {
		cn = dnsNames[0]
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: cn},
		NotBefore:    now.Add(-certBackdate),
		NotAfter:     now.Add(validity),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames:     dnsNames,
		IPAddresses:  ips,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		return nil, fmt.Errorf("create the serving certificate: %w", err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("parse the serving certificate: %w", err)
	}
	return &tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, nil
}

func randSerial() (*big.Int, error) {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 126))
	if err != nil {
		return nil, fmt.Errorf("serial number: %w", err)
	}
	return n.Add(n, big.NewInt(1)), nil
}
