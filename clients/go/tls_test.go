// The Go client over TLS to a real server started with --tls-cert/--tls-key (a certificate for
// 127.0.0.1 signed by a CA made for the test): Options.TLS with that CA as root reaches it, a
// plaintext client does not.

package tariff_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	tariff "github.com/tariff/tariff/clients/go"
)

// writeTLSFiles writes a certificate for 127.0.0.1 signed by a CA of its own, and its key; it returns their paths
// and the CA.
func writeTLSFiles(t *testing.T) (certPath, keyPath string, roots *x509.CertPool) {
	t.Helper()
	ca := newTestCA(t)
	certPath, keyPath = ca.issue(t, "server", 2, x509.ExtKeyUsageServerAuth)
	roots = x509.NewCertPool()
	roots.AddCert(ca.cert)
	return certPath, keyPath, roots
}

func TestTLS(t *testing.T) {
	certPath, keyPath, roots := writeTLSFiles(t)
	secure := tariff.Options{TLS: &tls.Config{RootCAs: roots}}
	srv := startServerWith(t, secure, "--tls-cert", certPath, "--tls-key", keyPath)
	ctx := context.Background()

	balance, err := newClient(t, srv.target(), secure).GetBalance(ctx, customer)
	if err != nil || balance.GetCustomerId() != customer {
		t.Fatalf("over TLS: %v, %v", balance, err)
	}
	plaintext := newClient(t, srv.target(), tariff.Options{Timeout: 2 * time.Second})
	if _, err := plaintext.GetBalance(ctx, customer); status.Code(err) != codes.Unavailable {
		t.Fatalf("plaintext to a TLS server: %v, want UNAVAILABLE", err)
	}
}

// testCA issues certificates for the TLS tests: a CA of its own.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
}

func newTestCA(t *testing.T) testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	template := &x509.Certificate{
		SerialNumber: big.NewInt(10), Subject: pkix.Name{CommonName: "tariff mutual TLS test CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, template, template, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return testCA{cert: cert, key: key}
}

// issue writes a certificate for 127.0.0.1 with this usage, signed by the CA, and its key: it returns their paths.
func (ca testCA) issue(t *testing.T, name string, serial int64, usage x509.ExtKeyUsage) (certPath, keyPath string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	template := &x509.Certificate{
		SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: name},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{usage},
	}
	der, err := x509.CreateCertificate(rand.Reader, template, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	certPath, keyPath = filepath.Join(dir, name+".pem"), filepath.Join(dir, name+".key")
	if err := os.WriteFile(certPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyPath, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		t.Fatal(err)
	}
	return certPath, keyPath
}

// README "Reliability and security": Go, `tariff.Options{TLS: &tls.Config{RootCAs, Certificates}}` for mutual TLS.
func TestMutualTLS(t *testing.T) {
	ca := newTestCA(t)
	serverCert, serverKey := ca.issue(t, "server", 11, x509.ExtKeyUsageServerAuth)
	clientCert, clientKey := ca.issue(t, "client", 12, x509.ExtKeyUsageClientAuth)
	caPath := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(caPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.cert.Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca.cert)
	certificate, err := tls.LoadX509KeyPair(clientCert, clientKey)
	if err != nil {
		t.Fatal(err)
	}
	mutual := tariff.Options{TLS: &tls.Config{RootCAs: roots, Certificates: []tls.Certificate{certificate}}}
	srv := startServerWith(t, mutual, "--tls-cert", serverCert, "--tls-key", serverKey, "--tls-client-ca", caPath)
	ctx := context.Background()

	balance, err := newClient(t, srv.target(), mutual).GetBalance(ctx, customer)
	if err != nil || balance.GetCustomerId() != customer {
		t.Fatalf("with a client certificate: %v, %v", balance, err)
	}
	anonymous := newClient(t, srv.target(), tariff.Options{TLS: &tls.Config{RootCAs: roots}, Timeout: 2 * time.Second})
	if _, err := anonymous.GetBalance(ctx, customer); status.Code(err) != codes.Unavailable {
		t.Fatalf("without a client certificate: %v, want UNAVAILABLE", err)
	}
}
