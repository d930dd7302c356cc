package testcert

import (
	"crypto/tls"
	"crypto/x509"
	"testing"
)

func TestSelfSignedVerifiesForEachHost(t *testing.T) {
	cert, pool := SelfSigned(t, "mail.example.net", "127.0.0.1")
	if cn := cert.Leaf.Subject.CommonName; cn != "mail.example.net" {
		t.Errorf("common name %q, want the first host", cn)
	}
	for _, host := range []string{"mail.example.net", "127.0.0.1"} {
		if _, err := cert.Leaf.Verify(x509.VerifyOptions{DNSName: host, Roots: pool}); err != nil {
			t.Errorf("%s: %v", host, err)
		}
	}
	if _, err := cert.Leaf.Verify(x509.VerifyOptions{DNSName: "other.example.net", Roots: pool}); err == nil {
		t.Error("verified for a host it was not made for")
	}
}

func TestCAIssuesServerAndClientCertificates(t *testing.T) {
	ca := NewCA(t, "odmr test CA")
	server := ca.Server(t, "provider.test", "localhost", "127.0.0.1")
	if _, err := server.Leaf.Verify(x509.VerifyOptions{DNSName: "localhost", Roots: ca.Pool}); err != nil {
		t.Errorf("server: %v", err)
	}
	client := ca.Client(t, "alice")
	opts := x509.VerifyOptions{Roots: ca.Pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	if _, err := client.Leaf.Verify(opts); err != nil {
		t.Errorf("client: %v", err)
	}
	if cn := client.Leaf.Subject.CommonName; cn != "alice" {
		t.Errorf("client common name %q, want alice", cn)
	}
	if _, err := client.Leaf.Verify(x509.VerifyOptions{Roots: NewCA(t, "other CA").Pool}); err == nil {
		t.Error("verified by a CA that did not sign it")
	}
}

func TestPEMLoads(t *testing.T) {
	ca := NewCA(t, "odmr test CA")
	certPEM, keyPEM := PEM(t, ca.Server(t, "localhost"))
	if _, err := tls.X509KeyPair(certPEM, keyPEM); err != nil {
		t.Error(err)
	}
	if !x509.NewCertPool().AppendCertsFromPEM(ca.PEM()) {
		t.Error("the CA's PEM holds no certificate")
	}
}
