// fleetward-coredns is CoreDNS with only the plugins the local cluster's
// DNS uses: Service and Pod names from the API server (kubernetes), health
// and readiness endpoints, metrics, a cache and reloads of the Corefile.
// There is deliberately no `forward` plugin: names outside cluster.local
// get no answer, because nothing on this machine may reach other hosts.
//
// Importing a plugin's package registers it; the directive order is
// CoreDNS's own (core/dnsserver), the documented way to build a smaller
// CoreDNS without editing plugin.cfg.
package main

import (
	"github.com/coredns/coredns/coremain"
	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/loadbalance"
	_ "github.com/coredns/coredns/plugin/log"
	_ "github.com/coredns/coredns/plugin/loop"
	_ "github.com/coredns/coredns/plugin/metrics"
	_ "github.com/coredns/coredns/plugin/ready"
	_ "github.com/coredns/coredns/plugin/reload"
)

func main() {
	coremain.Run()
}
