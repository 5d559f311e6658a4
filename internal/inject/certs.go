package inject

import (
	"crypto/tls"
	"log/slog"
	"os"
	"sync"
	"time"
)

// certReloader serves the key pair in two files and loads it again when
// either file changes (size or modification time), as a Kubernetes Secret
// volume does when cert-manager or a person renews the certificate. A
// renewal that cannot be loaded (say, the key written before the
// certificate) keeps the previous pair in use and is retried at the next
// handshake. Safe for concurrent use.
type certReloader struct {
	certFile, keyFile string
	log               *slog.Logger
	onLoad            func(c *tls.Certificate, rotated bool) // nil: none; called with mu held

	mu     sync.Mutex
	cert   *tls.Certificate
	stamp  [2]fileStamp
	failed [2]fileStamp // the stamps of the last pair that failed to load
}

type fileStamp struct {
	size int64
	mod  time.Time
}

// newCertReloader loads the pair once; an error here is a configuration
// error (missing or mismatched files).
func newCertReloader(certFile, keyFile string, log *slog.Logger) (*certReloader, error) {
	r := &certReloader{certFile: certFile, keyFile: keyFile, log: log}
	stamp, err := r.stat()
	if err != nil {
		return nil, err
	}
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, err
	}
	r.cert, r.stamp = &cert, stamp
	return r, nil
}

func (r *certReloader) stat() ([2]fileStamp, error) {
	var out [2]fileStamp
	for i, f := range []string{r.certFile, r.keyFile} {
		fi, err := os.Stat(f)
		if err != nil {
			return out, err
		}
		out[i] = fileStamp{size: fi.Size(), mod: fi.ModTime()}
	}
	return out, nil
}

// GetCertificate is tls.Config.GetCertificate: the current pair, reloaded
// first if the files changed since it was loaded.
func (r *certReloader) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	stamp, err := r.stat()
	if err != nil || stamp == r.stamp || stamp == r.failed {
		return r.cert, nil
	}
	cert, err := tls.LoadX509KeyPair(r.certFile, r.keyFile)
	if err != nil {
		r.failed = stamp
		r.log.Warn("tls: cannot load the renewed certificate; keeping the previous one", slog.String("error", err.Error()))
		return r.cert, nil
	}
	r.cert, r.stamp = &cert, stamp
	if r.onLoad != nil {
		r.onLoad(r.cert, true)
	}
	r.log.Info("tls: certificate reloaded", slog.String("not_after", notAfter(&cert)))
	return r.cert, nil
}

func notAfter(c *tls.Certificate) string {
	if c.Leaf == nil {
		return ""
	}
	return c.Leaf.NotAfter.UTC().Format(time.RFC3339)
}
