// fleetward-cp runs a real Kubernetes control plane on loopback without
// Docker or a kubelet, for fleetward's tests and local development.
//
//	fleetward-cp pki                 --dir D --port 6443   # CA, certs, SA key, kubeconfig (idempotent)
//	fleetward-cp apiserver           --dir D --port 6443 --etcd-port 2379
//	fleetward-cp controller-manager  --dir D
//	fleetward-cp kubectl ...         # or invoked through a symlink named kubectl
//
// The apiserver subcommand embeds etcd in the same process. The
// controller-manager runs in its own process because both upstream commands
// install process-wide signal handlers, which may only be done once.
package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"flag"
	"fmt"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
	kubectlcmd "k8s.io/kubectl/pkg/cmd"
	apiserver "k8s.io/kubernetes/cmd/kube-apiserver/app"
	kcm "k8s.io/kubernetes/cmd/kube-controller-manager/app"
)

func runKubectl(args []string) {
	cmd := kubectlcmd.NewDefaultKubectlCommand()
	cmd.SetArgs(args)
	if err := cmd.Execute(); err != nil {
		os.Exit(1)
	}
	os.Exit(0)
}

func main() {
	// A matching kubectl for machines without one: `ln -s fleetward-cp kubectl`.
	if filepath.Base(os.Args[0]) == "kubectl" {
		runKubectl(os.Args[1:])
	}
	if len(os.Args) >= 2 && os.Args[1] == "kubectl" {
		runKubectl(os.Args[2:])
	}
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: fleetward-cp pki|apiserver|controller-manager --dir DIR [--port N] [--etcd-port N]")
		os.Exit(2)
	}
	fs := flag.NewFlagSet(os.Args[1], flag.ExitOnError)
	dir := fs.String("dir", "", "state directory (certs, etcd data, kubeconfig)")
	port := fs.Int("port", 6443, "kube-apiserver secure port on 127.0.0.1")
	etcdPort := fs.Int("etcd-port", 2379, "embedded etcd client port on 127.0.0.1 (peer port is +1)")
	_ = fs.Parse(os.Args[2:])
	if *dir == "" {
		fatal(fmt.Errorf("--dir is required"))
	}
	abs, err := filepath.Abs(*dir)
	if err != nil {
		fatal(err)
	}
	switch os.Args[1] {
	case "pki":
		fatal(ensurePKI(abs, *port))
	case "apiserver":
		fatal(runAPIServer(abs, *port, *etcdPort))
	case "controller-manager":
		fatal(runControllerManager(abs))
	default:
		fatal(fmt.Errorf("unknown subcommand %q", os.Args[1]))
	}
}

func fatal(err error) {
	if err != nil {
		fmt.Fprintln(os.Stderr, "fleetward-cp:", err)
		os.Exit(1)
	}
}

func p(dir, name string) string { return filepath.Join(dir, "pki", name) }

func runAPIServer(dir string, port, etcdPort int) error {
	if err := ensurePKI(dir, port); err != nil {
		return err
	}
	cfg := embed.NewConfig()
	cfg.Name = "fleetward"
	cfg.Dir = filepath.Join(dir, "etcd")
	cfg.LogLevel = "error"
	client, _ := url.Parse(fmt.Sprintf("http://127.0.0.1:%d", etcdPort))
	peer, _ := url.Parse(fmt.Sprintf("http://127.0.0.1:%d", etcdPort+1))
	cfg.ListenClientUrls = []url.URL{*client}
	cfg.AdvertiseClientUrls = []url.URL{*client}
	cfg.ListenPeerUrls = []url.URL{*peer}
	cfg.AdvertisePeerUrls = []url.URL{*peer}
	cfg.InitialCluster = fmt.Sprintf("fleetward=%s", peer.String())
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return fmt.Errorf("start etcd: %w", err)
	}
	defer e.Close()
	select {
	case <-e.Server.ReadyNotify():
	case <-time.After(60 * time.Second):
		return fmt.Errorf("etcd did not become ready in 60s")
	}

	cmd := apiserver.NewAPIServerCommand()
	cmd.SetArgs([]string{
		"--etcd-servers=" + client.String(),
		"--bind-address=127.0.0.1",
		"--advertise-address=127.0.0.1",
		fmt.Sprintf("--secure-port=%d", port),
		"--tls-cert-file=" + p(dir, "apiserver.crt"),
		"--tls-private-key-file=" + p(dir, "apiserver.key"),
		"--client-ca-file=" + p(dir, "ca.crt"),
		"--service-account-key-file=" + p(dir, "sa.key"),
		"--service-account-signing-key-file=" + p(dir, "sa.key"),
		"--service-account-issuer=https://kubernetes.default.svc",
		"--service-cluster-ip-range=10.96.0.0/16",
		"--authorization-mode=RBAC",
		// The Endpoints of the "kubernetes" Service may not hold a loopback
		// address; nothing here needs them.
		"--endpoint-reconciler-type=none",
		// No kubelet exists here, so admission that waits on nodes is moot;
		// priority-and-fairness only costs CPU on a two-core test machine.
		"--enable-priority-and-fairness=false",
		"--profiling=false",
		"--v=0",
	})
	return cmd.Execute()
}

func runControllerManager(dir string) error {
	kc := filepath.Join(dir, "kubeconfig")
	cmd := kcm.NewControllerManagerCommand()
	cmd.SetArgs([]string{
		"--kubeconfig=" + kc,
		"--authentication-kubeconfig=" + kc,
		"--authorization-kubeconfig=" + kc,
		"--bind-address=127.0.0.1",
		"--secure-port=0",
		"--leader-elect=false",
		// Garbage collection (ownerReferences) and namespace cleanup are what
		// the operator's tests rely on; pods never run here, so the workload
		// controllers stay off.
		"--controllers=garbagecollector,namespace,serviceaccount,serviceaccount-token",
		"--service-account-private-key-file=" + p(dir, "sa.key"),
		"--root-ca-file=" + p(dir, "ca.crt"),
		"--use-service-account-credentials=false",
		"--v=0",
	})
	return cmd.Execute()
}

// ensurePKI writes a CA, the apiserver serving cert, an admin client cert
// (group system:masters), a service-account key and an admin kubeconfig.
// Existing files are kept so restarts keep the same identity.
func ensurePKI(dir string, port int) error {
	if err := os.MkdirAll(filepath.Join(dir, "pki"), 0o700); err != nil {
		return err
	}
	if _, err := os.Stat(p(dir, "ca.crt")); err == nil {
		return writeKubeconfig(dir, port)
	}
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	caTmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: "fleetward-local-ca"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().AddDate(10, 0, 0),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return err
	}
	caCert, _ := x509.ParseCertificate(caDER)
	if err := writeCertKey(p(dir, "ca.crt"), p(dir, "ca.key"), caDER, caKey); err != nil {
		return err
	}
	issue := func(name string, tmpl *x509.Certificate) error {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return err
		}
		tmpl.SerialNumber = serial()
		tmpl.NotBefore = time.Now().Add(-time.Hour)
		tmpl.NotAfter = time.Now().AddDate(10, 0, 0)
		tmpl.KeyUsage = x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment
		der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, caKey)
		if err != nil {
			return err
		}
		return writeCertKey(p(dir, name+".crt"), p(dir, name+".key"), der, key)
	}
	if err := issue("apiserver", &x509.Certificate{
		Subject:     pkix.Name{CommonName: "kube-apiserver"},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames:    []string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc"},
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1"), net.ParseIP("10.96.0.1")},
	}); err != nil {
		return err
	}
	if err := issue("admin", &x509.Certificate{
		Subject:     pkix.Name{CommonName: "fleetward-admin", Organization: []string{"system:masters"}},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}); err != nil {
		return err
	}
	saKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return err
	}
	saDER := x509.MarshalPKCS1PrivateKey(saKey)
	if err := os.WriteFile(p(dir, "sa.key"), pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: saDER}), 0o600); err != nil {
		return err
	}
	return writeKubeconfig(dir, port)
}

func serial() *big.Int {
	n, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	return n
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

func writeKubeconfig(dir string, port int) error {
	kc := fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: fleetward-local
  cluster:
    server: https://127.0.0.1:%d
    certificate-authority: %s
users:
- name: fleetward-admin
  user:
    client-certificate: %s
    client-key: %s
contexts:
- name: fleetward-local
  context:
    cluster: fleetward-local
    user: fleetward-admin
current-context: fleetward-local
`, port, p(dir, "ca.crt"), p(dir, "admin.crt"), p(dir, "admin.key"))
	return os.WriteFile(filepath.Join(dir, "kubeconfig"), []byte(kc), 0o600)
}
