package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"
)

// pkiFiles are the paths of the key material written by generatePKI.
type pkiFiles struct {
	CACert, CAKey           string // CA: trusted by clients (kubeconfig), KCM's root CA and CSR signer
	ServingCert, ServingKey string // kube-apiserver's HTTPS certificate, signed by the CA
	SAKey, SAPub            string // ServiceAccount token signing key pair
	caPEM                   []byte
}

// generatePKI writes a throw-away CA, a serving certificate for the loopback
// addresses (and the in-cluster names of the "kubernetes" Service), and a
// ServiceAccount signing key pair into dir. We make our own CA instead of
// relying on kube-apiserver's --cert-dir self-signing so that the kubeconfig
// can carry the CA and clients verify TLS for real (no insecure-skip-tls-verify).
// ECDSA P-256 keys are used because they are generated in microseconds.
func generatePKI(dir string, serviceIP net.IP, extraIPs ...net.IP) (*pkiFiles, error) {
	p := &pkiFiles{
		CACert: filepath.Join(dir, "ca.crt"), CAKey: filepath.Join(dir, "ca.key"),
		ServingCert: filepath.Join(dir, "apiserver.crt"), ServingKey: filepath.Join(dir, "apiserver.key"),
		SAKey: filepath.Join(dir, "sa.key"), SAPub: filepath.Join(dir, "sa.pub"),
	}
	now := time.Now().Add(-time.Hour) // tolerate small clock skew
	notAfter := now.Add(365 * 24 * time.Hour)

	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "kindex-testenv-ca"},
		NotBefore:             now,
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return nil, fmt.Errorf("create CA certificate: %w", err)
	}
	caCert, err := x509.ParseCertificate(caDER)
	if err != nil {
		return nil, err
	}

	srvKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	srvTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2),
		Subject:      pkix.Name{CommonName: "kube-apiserver"},
		NotBefore:    now,
		NotAfter:     notAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IPAddresses:  append([]net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback, serviceIP}, extraIPs...),
		DNSNames: []string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc",
			"kubernetes.default.svc.cluster.local"},
	}
	srvDER, err := x509.CreateCertificate(rand.Reader, srvTmpl, caCert, &srvKey.PublicKey, caKey)
	if err != nil {
		return nil, fmt.Errorf("create serving certificate: %w", err)
	}

	saKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	saPub, err := x509.MarshalPKIXPublicKey(&saKey.PublicKey)
	if err != nil {
		return nil, err
	}

	p.caPEM = pemBytes("CERTIFICATE", caDER)
	writes := []struct {
		path string
		data []byte
	}{
		{p.CACert, p.caPEM},
		{p.CAKey, mustECKeyPEM(caKey)},
		{p.ServingCert, pemBytes("CERTIFICATE", srvDER)},
		{p.ServingKey, mustECKeyPEM(srvKey)},
		{p.SAKey, mustECKeyPEM(saKey)},
		{p.SAPub, pemBytes("PUBLIC KEY", saPub)},
	}
	for _, w := range writes {
		if err := os.WriteFile(w.path, w.data, 0o600); err != nil {
			return nil, err
		}
	}
	return p, nil
}

func pemBytes(typ string, der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
}

// mustECKeyPEM encodes an EC key in the "EC PRIVATE KEY" form that both
// kube-apiserver and kube-controller-manager parse. Marshalling a freshly
// generated P-256 key cannot fail.
func mustECKeyPEM(k *ecdsa.PrivateKey) []byte {
	der, err := x509.MarshalECPrivateKey(k)
	if err != nil {
		panic(err)
	}
	return pemBytes("EC PRIVATE KEY", der)
}
