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

// writeTLSFiles writes a CA-signed certificate for 127.0.0.1 and its key; it returns their paths and the CA.
func writeTLSFiles(t *testing.T) (certPath, keyPath string, roots *x509.CertPool) {
	t.Helper()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	caTemplate := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "tariff test CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTemplate, caTemplate, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		t.Fatal(err)
	}
	serverKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serverTemplate := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "127.0.0.1"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	serverDER, err := x509.CreateCertificate(rand.Reader, serverTemplate, ca, &serverKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(serverKey)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	certPath, keyPath = filepath.Join(dir, "server.pem"), filepath.Join(dir, "server.key")
	if err := os.WriteFile(certPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: serverDER}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyPath, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		t.Fatal(err)
	}
	roots = x509.NewCertPool()
	roots.AddCert(ca)
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
