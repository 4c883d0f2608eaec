package audit

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"sync"
)

// servingCert is the webhook's serving certificate, read again from its
// files when either changes: cert-manager renews the Secret, the kubelet
// swaps the mounted files (a new inode behind the ..data link), and the
// next TLS handshake presents the new certificate without a restart.
type servingCert struct {
	certFile, keyFile string
	// loaded is told of each certificate read after the first; failed,
	// when changed files cannot be loaded: the last good certificate is
	// served meanwhile, and the files are tried again at the next
	// handshake.
	loaded func(*x509.Certificate)
	failed func(error)

	mu                sync.Mutex
	cert              *tls.Certificate
	certStat, keyStat os.FileInfo
}

// loadServingCert reads the pair once: a bad file is an error at start.
func loadServingCert(certFile, keyFile string, loaded func(*x509.Certificate), failed func(error)) (*servingCert, error) {
	c := &servingCert{certFile: certFile, keyFile: keyFile, loaded: loaded, failed: failed}
	if err := c.reload(); err != nil {
		return nil, err
	}
	return c, nil
}

// GetCertificate is tls.Config.GetCertificate: two stats per handshake,
// and a read only when a file changed.
func (c *servingCert) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	first := c.cert
	if err := c.reloadLocked(); err != nil {
		c.failed(err)
	} else if c.cert != first {
		c.loaded(c.cert.Leaf)
	}
	return c.cert, nil
}

func (c *servingCert) reload() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.reloadLocked()
}

func (c *servingCert) reloadLocked() error {
	cs, err1 := os.Stat(c.certFile)
	ks, err2 := os.Stat(c.keyFile)
	if err := errors.Join(err1, err2); err != nil {
		return fmt.Errorf("reading the audit webhook's serving certificate: %w", err)
	}
	if c.cert != nil && sameFile(c.certStat, cs) && sameFile(c.keyStat, ks) {
		return nil
	}
	// A certificate and a key written one after the other do not match in
	// between: the pair fails to load, and is tried again next time.
	pair, err := tls.LoadX509KeyPair(c.certFile, c.keyFile)
	if err != nil {
		return fmt.Errorf("loading the audit webhook's serving certificate (--audit-webhook-cert %s, --audit-webhook-key %s): %w", c.certFile, c.keyFile, err)
	}
	c.cert, c.certStat, c.keyStat = &pair, cs, ks
	return nil
}

// sameFile tells whether a file is unchanged: the same file (inode),
// modification time and size.
func sameFile(a, b os.FileInfo) bool {
	return a != nil && b != nil && os.SameFile(a, b) && a.ModTime().Equal(b.ModTime()) && a.Size() == b.Size()
}
