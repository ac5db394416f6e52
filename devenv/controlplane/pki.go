package main

// The local cluster's certificates and kubeconfigs. One CA signs
// everything; each component gets the identity the upstream RBAC
// defaults (and the node authorizer) expect, so permissions work as in a
// real cluster. Existing files are kept, so restarts keep the same
// identities; a leaf certificate whose names no longer match what is
// asked for (e.g. a new API address) is re-issued from the same CA.

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"slices"
	"time"
)

type pkiParams struct {
	port     int
	apiIP    net.IP
	nodeName string
	nodeIP   net.IP // nil: no node, no kubelet certificates
}

func p(dir, name string) string { return filepath.Join(dir, "pki", name) }

type leaf struct {
	file  string // pki/<file>.crt and .key
	cn    string
	orgs  []string
	usage x509.ExtKeyUsage
	dns   []string
	ips   []net.IP
}

// kubeconfigs: file name -> certificate it authenticates with.
var kubeconfigs = map[string]string{
	"kubeconfig":                    "admin",
	"controller-manager.kubeconfig": "controller-manager",
	"scheduler.kubeconfig":          "scheduler",
	"kubelet.kubeconfig":            "kubelet",
	"proxy.kubeconfig":              "proxy",
}

func ensurePKI(dir string, pp pkiParams) error {
	if err := os.MkdirAll(filepath.Join(dir, "pki"), 0o700); err != nil {
		return err
	}
	caCert, caKey, err := ensureCA(dir)
	if err != nil {
		return err
	}
	ips := []net.IP{net.ParseIP("127.0.0.1"), net.ParseIP("10.96.0.1"), pp.apiIP}
	leaves := []leaf{
		{file: "apiserver", cn: "kube-apiserver", usage: x509.ExtKeyUsageServerAuth,
			dns: []string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local"},
			ips: ips},
		{file: "admin", cn: "fleetward-admin", orgs: []string{"system:masters"}, usage: x509.ExtKeyUsageClientAuth},
		{file: "controller-manager", cn: "system:kube-controller-manager", usage: x509.ExtKeyUsageClientAuth},
		{file: "scheduler", cn: "system:kube-scheduler", usage: x509.ExtKeyUsageClientAuth},
		{file: "proxy", cn: "system:kube-proxy", usage: x509.ExtKeyUsageClientAuth},
		// The apiserver's identity towards the kubelet (logs, exec, port-forward).
		{file: "apiserver-kubelet-client", cn: "kube-apiserver-kubelet-client", orgs: []string{"system:masters"},
			usage: x509.ExtKeyUsageClientAuth},
	}
	if pp.nodeIP != nil {
		leaves = append(leaves,
			leaf{file: "kubelet", cn: "system:node:" + pp.nodeName, orgs: []string{"system:nodes"}, usage: x509.ExtKeyUsageClientAuth},
			leaf{file: "kubelet-serving", cn: pp.nodeName, usage: x509.ExtKeyUsageServerAuth,
				dns: []string{pp.nodeName}, ips: []net.IP{pp.nodeIP}},
		)
	}
	for _, l := range leaves {
		if err := ensureLeaf(dir, l, caCert, caKey); err != nil {
			return fmt.Errorf("%s certificate: %w", l.file, err)
		}
	}
	if err := ensureSAKey(dir); err != nil {
		return err
	}
	server := fmt.Sprintf("https://%s", net.JoinHostPort(pp.apiIP.String(), fmt.Sprint(pp.port)))
	for file, cert := range kubeconfigs {
		if _, err := os.Stat(p(dir, cert+".crt")); err != nil {
			continue // e.g. no node yet
		}
		if err := writeKubeconfig(filepath.Join(dir, file), server, p(dir, "ca.crt"), p(dir, cert+".crt"), p(dir, cert+".key")); err != nil {
			return err
		}
	}
	return nil
}

func ensureCA(dir string) (*x509.Certificate, *ecdsa.PrivateKey, error) {
	if cert, key, err := loadCertKey(p(dir, "ca.crt"), p(dir, "ca.key")); err == nil {
		return cert, key, nil
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: "fleetward-local-ca"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().AddDate(10, 0, 0),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, nil, err
	}
	if err := writeCertKey(p(dir, "ca.crt"), p(dir, "ca.key"), der, key); err != nil {
		return nil, nil, err
	}
	cert, err := x509.ParseCertificate(der)
	return cert, key, err
}

// ensureLeaf issues l unless a certificate with the same subject and names,
// signed by this CA, is already there.
func ensureLeaf(dir string, l leaf, ca *x509.Certificate, caKey *ecdsa.PrivateKey) error {
	certPath, keyPath := p(dir, l.file+".crt"), p(dir, l.file+".key")
	if cur, _, err := loadCertKey(certPath, keyPath); err == nil && sameLeaf(cur, l, ca) {
		return nil
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial(),
		Subject:      pkix.Name{CommonName: l.cn, Organization: l.orgs},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().AddDate(10, 0, 0),
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage:  []x509.ExtKeyUsage{l.usage},
		DNSNames:     l.dns,
		IPAddresses:  l.ips,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		return err
	}
	return writeCertKey(certPath, keyPath, der, key)
}

func sameLeaf(cur *x509.Certificate, l leaf, ca *x509.Certificate) bool {
	if cur.CheckSignatureFrom(ca) != nil || cur.Subject.CommonName != l.cn ||
		!slices.Equal(cur.Subject.Organization, l.orgs) || !slices.Equal(cur.DNSNames, l.dns) {
		return false
	}
	return slices.EqualFunc(cur.IPAddresses, l.ips, func(a, b net.IP) bool { return a.Equal(b) })
}

func ensureSAKey(dir string) error {
	if _, err := os.Stat(p(dir, "sa.key")); err == nil {
		return nil
	}
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return err
	}
	der := x509.MarshalPKCS1PrivateKey(key)
	return os.WriteFile(p(dir, "sa.key"), pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: der}), 0o600)
}

func serial() *big.Int {
	n, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	return n
}

func loadCertKey(certPath, keyPath string) (*x509.Certificate, *ecdsa.PrivateKey, error) {
	certPEM, err := os.ReadFile(certPath)
	if err != nil {
		return nil, nil, err
	}
	keyPEM, err := os.ReadFile(keyPath)
	if err != nil {
		return nil, nil, err
	}
	cb, _ := pem.Decode(certPEM)
	kb, _ := pem.Decode(keyPEM)
	if cb == nil || kb == nil {
		return nil, nil, fmt.Errorf("%s or %s is not PEM", certPath, keyPath)
	}
	cert, err := x509.ParseCertificate(cb.Bytes)
	if err != nil {
		return nil, nil, err
	}
	key, err := x509.ParseECPrivateKey(kb.Bytes)
	return cert, key, err
}

func writeCertKey(certPath, keyPath string, der []byte, key *ecdsa.PrivateKey) error {
	if err := os.WriteFile(certPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		return err
	}
	kb, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return err
	}
	return os.WriteFile(keyPath, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}), 0o600)
}

func writeKubeconfig(path, server, ca, cert, key string) error {
	kc := fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: fleetward-local
  cluster:
    server: %s
    certificate-authority: %s
users:
- name: fleetward-user
  user:
    client-certificate: %s
    client-key: %s
contexts:
- name: fleetward-local
  context:
    cluster: fleetward-local
    user: fleetward-user
current-context: fleetward-local
`, server, ca, cert, key)
	return os.WriteFile(path, []byte(kc), 0o600)
}
