// fleetward-cp runs a real one-node Kubernetes cluster without Docker, for
// fleetward's tests and local development. Every component is the upstream
// command, built from the k8s.io/kubernetes module into this one binary:
//
//	fleetward-cp pki                 --dir D --port 6443 --api-ip IP --node-name N --node-ip IP
//	fleetward-cp apiserver           --dir D --port 6443 --etcd-port 2379 --api-ip IP
//	fleetward-cp controller-manager  --dir D
//	fleetward-cp scheduler  <kube-scheduler flags>
//	fleetward-cp kubelet    <kubelet flags>
//	fleetward-cp proxy      <kube-proxy flags>
//	fleetward-cp provisioner --dir D --volumes DIR   # PersistentVolumes for the one node
//	fleetward-cp cri-reset  unix:///path/containerd.sock # stop and remove every pod sandbox
//	fleetward-cp kubectl ...         # or invoked through a symlink named kubectl
//
// The apiserver subcommand embeds etcd in the same process. Each component
// runs in a process of its own because the upstream commands install
// process-wide signal handlers, which may only be done once. The node's
// flags and configuration files are written by devenv/dev.sh, so tuning
// them needs no rebuild of this binary.
package main

import (
	"context"
	"flag"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"
	"go.etcd.io/etcd/server/v3/embed"
	"k8s.io/component-base/cli"
	_ "k8s.io/component-base/logs/json/register"
	kubectlcmd "k8s.io/kubectl/pkg/cmd"
	apiserver "k8s.io/kubernetes/cmd/kube-apiserver/app"
	kcm "k8s.io/kubernetes/cmd/kube-controller-manager/app"
	proxy "k8s.io/kubernetes/cmd/kube-proxy/app"
	scheduler "k8s.io/kubernetes/cmd/kube-scheduler/app"
	kubelet "k8s.io/kubernetes/cmd/kubelet/app"
)

const usage = "usage: fleetward-cp pki|apiserver|controller-manager --dir DIR ... | scheduler|kubelet|proxy|kubectl ARGS..."

func main() {
	// A matching kubectl for machines without one: `ln -s fleetward-cp kubectl`.
	if filepath.Base(os.Args[0]) == "kubectl" {
		passthrough(kubectlcmd.NewDefaultKubectlCommand(), os.Args[1:])
	}
	if len(os.Args) < 2 {
		fatal(fmt.Errorf("%s", usage))
	}
	sub, rest := os.Args[1], os.Args[2:]
	switch sub {
	case "kubectl":
		passthrough(kubectlcmd.NewDefaultKubectlCommand(), rest)
	case "scheduler":
		passthrough(scheduler.NewSchedulerCommand(), rest)
	case "kubelet":
		passthrough(kubelet.NewKubeletCommand(context.Background()), rest)
	case "proxy":
		passthrough(proxy.NewProxyCommand(), rest)
	case "cri-reset":
		if len(rest) != 1 {
			fatal(fmt.Errorf("usage: fleetward-cp cri-reset unix:///path/to/containerd.sock"))
		}
		fatal(runCRIReset(rest[0]))
		os.Exit(0)
	}

	fs := flag.NewFlagSet(sub, flag.ExitOnError)
	dir := fs.String("dir", "", "state directory (certs, etcd data, kubeconfigs)")
	port := fs.Int("port", 6443, "kube-apiserver secure port")
	etcdPort := fs.Int("etcd-port", 2379, "embedded etcd client port on 127.0.0.1 (peer port is +1)")
	apiIP := fs.String("api-ip", "127.0.0.1", "address the apiserver binds to and advertises; pods reach it there")
	nodeName := fs.String("node-name", "fleetward-node", "name of the node (kubelet identity)")
	nodeIP := fs.String("node-ip", "", "the node's IP (kubelet serving certificate)")
	volumes := fs.String("volumes", "", "provisioner: directory that holds the PersistentVolumes")
	_ = fs.Parse(rest)
	if *dir == "" {
		fatal(fmt.Errorf("--dir is required"))
	}
	abs, err := filepath.Abs(*dir)
	if err != nil {
		fatal(err)
	}
	ip := net.ParseIP(*apiIP)
	if ip == nil {
		fatal(fmt.Errorf("--api-ip %q is not an IP address", *apiIP))
	}
	switch sub {
	case "pki":
		fatal(ensurePKI(abs, pkiParams{port: *port, apiIP: ip, nodeName: *nodeName, nodeIP: net.ParseIP(*nodeIP)}))
	case "apiserver":
		fatal(runAPIServer(abs, *port, *etcdPort, ip))
	case "controller-manager":
		fatal(runControllerManager(abs))
	case "provisioner":
		if *volumes == "" {
			fatal(fmt.Errorf("--volumes is required"))
		}
		fatal(runProvisioner(filepath.Join(abs, "kubeconfig"), *volumes))
	default:
		fatal(fmt.Errorf("unknown subcommand %q; %s", sub, usage))
	}
}

// passthrough runs an upstream command with the given arguments and exits.
func passthrough(cmd *cobra.Command, args []string) {
	cmd.SetArgs(args)
	os.Exit(cli.Run(cmd))
}

func fatal(err error) {
	if err != nil {
		fmt.Fprintln(os.Stderr, "fleetward-cp:", err)
		os.Exit(1)
	}
}

func runAPIServer(dir string, port, etcdPort int, apiIP net.IP) error {
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

	args := []string{
		"--etcd-servers=" + client.String(),
		"--bind-address=" + apiIP.String(),
		"--advertise-address=" + apiIP.String(),
		fmt.Sprintf("--secure-port=%d", port),
		"--tls-cert-file=" + p(dir, "apiserver.crt"),
		"--tls-private-key-file=" + p(dir, "apiserver.key"),
		"--client-ca-file=" + p(dir, "ca.crt"),
		"--service-account-key-file=" + p(dir, "sa.key"),
		"--service-account-signing-key-file=" + p(dir, "sa.key"),
		"--service-account-issuer=https://kubernetes.default.svc",
		"--service-cluster-ip-range=10.96.0.0/16",
		// The node authorizer and NodeRestriction limit the kubelet to its
		// own node and the objects of the pods bound to it.
		"--authorization-mode=Node,RBAC",
		"--enable-admission-plugins=NodeRestriction",
		"--kubelet-client-certificate=" + p(dir, "apiserver-kubelet-client.crt"),
		"--kubelet-client-key=" + p(dir, "apiserver-kubelet-client.key"),
		"--kubelet-certificate-authority=" + p(dir, "ca.crt"),
		"--kubelet-preferred-address-types=InternalIP",
		// Priority-and-fairness only costs CPU on a two-core test machine.
		"--enable-priority-and-fairness=false",
		"--profiling=false",
		"--v=0",
	}
	if apiIP.IsLoopback() {
		// The "kubernetes" Service may not point at a loopback address; without
		// a node nothing needs it.
		args = append(args, "--endpoint-reconciler-type=none")
	}
	cmd := apiserver.NewAPIServerCommand()
	cmd.SetArgs(args)
	return cmd.Execute()
}

func runControllerManager(dir string) error {
	kc := filepath.Join(dir, "controller-manager.kubeconfig")
	cmd := kcm.NewControllerManagerCommand()
	cmd.SetArgs([]string{
		"--kubeconfig=" + kc,
		"--authentication-kubeconfig=" + kc,
		"--authorization-kubeconfig=" + kc,
		"--bind-address=127.0.0.1",
		"--secure-port=0",
		"--leader-elect=false",
		// Every default controller: Deployments, ReplicaSets, StatefulSets,
		// Jobs, endpoints, garbage collection, namespaces, service-account
		// tokens and the kube-root-ca.crt publisher pods need.
		"--controllers=*",
		// Each controller acts under its own service account, as in a
		// real cluster, so RBAC mistakes show up here too.
		"--use-service-account-credentials=true",
		"--service-account-private-key-file=" + p(dir, "sa.key"),
		"--root-ca-file=" + p(dir, "ca.crt"),
		"--cluster-signing-cert-file=" + p(dir, "ca.crt"),
		"--cluster-signing-key-file=" + p(dir, "ca.key"),
		"--v=0",
	})
	return cmd.Execute()
}
