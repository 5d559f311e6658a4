package inject

import (
	"bytes"
	"crypto/x509"
	"encoding/pem"
	"net"
	"testing"
	"time"
)

// TestMergeBundle: the caBundle keeps every unexpired CA once, in order,
// drops expired ones and garbage, and appends the new CA.
func TestMergeBundle(t *testing.T) {
	now := time.Now()
	mk := func(validity time.Duration) *keyPair {
		t.Helper()
		kp, err := newCAKeyPair(now.Add(-time.Hour), validity)
		if err != nil {
			t.Fatal(err)
		}
		return kp
	}
	other, expired, ours := mk(48*time.Hour), mk(30*time.Minute), mk(48*time.Hour)
	cat := func(parts ...[]byte) []byte { return bytes.Join(parts, nil) }
	tests := []struct {
		name    string
		bundles [][]byte
		want    []*keyPair
	}{
		{"empty", nil, []*keyPair{ours}},
		{"keeps another replica's CA", [][]byte{other.pem}, []*keyPair{other, ours}},
		{"drops expired", [][]byte{cat(expired.pem, other.pem)}, []*keyPair{other, ours}},
		{"ours once", [][]byte{cat(ours.pem, other.pem)}, []*keyPair{ours, other}},
		{"union of webhooks, no duplicates", [][]byte{other.pem, cat(other.pem, ours.pem)}, []*keyPair{other, ours}},
		{"garbage ignored", [][]byte{[]byte("not pem"), cat(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: []byte{1, 2}}), other.pem)},
			[]*keyPair{other, ours}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := mergeBundle(tt.bundles, ours, now)
			var want []byte
			for _, kp := range tt.want {
				want = append(want, kp.pem...)
			}
			if !bytes.Equal(got, want) {
				t.Errorf("got %d CAs, want %d:\n%s", bytes.Count(got, []byte("BEGIN")), len(tt.want), got)
			}
		})
	}
}

// TestIssueServing: the serving certificate verifies against its CA for
// each of its names, for server authentication, and not beyond its lifetime.
func TestIssueServing(t *testing.T) {
	now := time.Now()
	ca, err := newCAKeyPair(now, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := issueServing(ca, now, 10*time.Minute, []string{"inj.ns.svc"}, []net.IP{net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca.cert)
	for _, name := range []string{"inj.ns.svc", "127.0.0.1"} {
		if _, err := cert.Leaf.Verify(x509.VerifyOptions{DNSName: name, Roots: roots, CurrentTime: now}); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
	if _, err := cert.Leaf.Verify(x509.VerifyOptions{Roots: roots, CurrentTime: now.Add(11 * time.Minute)}); err == nil {
		t.Error("verifies after its lifetime")
	}
	if _, err := cert.Leaf.Verify(x509.VerifyOptions{DNSName: "other.svc", Roots: roots, CurrentTime: now}); err == nil {
		t.Error("verifies for a name it does not have")
	}
}
