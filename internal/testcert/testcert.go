// Package testcert makes the certificates tests serve TLS with: a
// self-signed one, or a CA that issues server and client certificates.
package testcert

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"testing"
	"time"
)

// SelfSigned returns a certificate valid from an hour ago for a day, for
// each of hosts (IP addresses and DNS names alike) and named after the
// first, and a pool that trusts it. It fails the test if the key or
// certificate cannot be made.
func SelfSigned(t testing.TB, hosts ...string) (tls.Certificate, *x509.CertPool) {
	t.Helper()
	key := newKey(t)
	tmpl := template(hosts...)
	tmpl.KeyUsage |= x509.KeyUsageCertSign
	tmpl.IsCA, tmpl.BasicConstraintsValid = true, true
	cert := create(t, tmpl, tmpl, key, key)
	pool := x509.NewCertPool()
	pool.AddCert(cert.Leaf)
	return cert, pool
}

// A CA is a self-signed certificate authority that issues server and
// client certificates.
type CA struct {
	Cert *x509.Certificate
	Pool *x509.CertPool // trusts Cert
	key  *ecdsa.PrivateKey
}

// NewCA returns a CA named cn, valid from an hour ago for a day.
func NewCA(t testing.TB, cn string) *CA {
	t.Helper()
	key := newKey(t)
	tmpl := template(cn)
	tmpl.DNSNames = nil
	tmpl.KeyUsage, tmpl.ExtKeyUsage = x509.KeyUsageCertSign, nil
	tmpl.IsCA, tmpl.BasicConstraintsValid = true, true
	ca := &CA{Cert: create(t, tmpl, tmpl, key, key).Leaf, Pool: x509.NewCertPool(), key: key}
	ca.Pool.AddCert(ca.Cert)
	return ca
}

// Server returns a server certificate signed by ca for each of hosts (IP
// addresses and DNS names alike), named after the first, valid from an
// hour ago for a day.
func (ca *CA) Server(t testing.TB, hosts ...string) tls.Certificate {
	t.Helper()
	return create(t, template(hosts...), ca.Cert, newKey(t), ca.key)
}

// Client returns a client certificate signed by ca whose common name is
// cn, valid from an hour ago for a day.
func (ca *CA) Client(t testing.TB, cn string) tls.Certificate {
	t.Helper()
	tmpl := template(cn)
	tmpl.DNSNames = nil
	tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	return create(t, tmpl, ca.Cert, newKey(t), ca.key)
}

// PEM returns the CA's certificate in PEM, for a file of trusted CAs.
func (ca *CA) PEM() []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.Cert.Raw})
}

// PEM returns the certificate chain of c and its private key in PEM, for
// the files a program loads with tls.LoadX509KeyPair.
func PEM(t testing.TB, c tls.Certificate) (certPEM, keyPEM []byte) {
	t.Helper()
	for _, der := range c.Certificate {
		certPEM = append(certPEM, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})...)
	}
	der, err := x509.MarshalPKCS8PrivateKey(c.PrivateKey)
	if err != nil {
		t.Fatal(err)
	}
	return certPEM, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
}

// template is a server certificate for hosts, named after the first,
// valid from an hour ago for a day, with a random serial number.
func template(hosts ...string) *x509.Certificate {
	serial, err := rand.Int(rand.Reader, big.NewInt(1<<62))
	if err != nil {
		panic(err) // crypto/rand does not fail
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: "odmr test"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	if len(hosts) > 0 {
		tmpl.Subject.CommonName = hosts[0]
	}
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	return tmpl
}

func newKey(t testing.TB) *ecdsa.PrivateKey {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return key
}

// create signs tmpl for key with parent and parentKey.
func create(t testing.TB, tmpl, parent *x509.Certificate, key, parentKey *ecdsa.PrivateKey) tls.Certificate {
	t.Helper()
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, parentKey)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: cert}
}
