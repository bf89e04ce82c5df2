// Command s2z-cluster is a multi-call binary holding a whole local Kubernetes control plane, built
// from the upstream Go modules: etcd, kube-apiserver, kube-controller-manager, kube-scheduler,
// KWOK and kubectl, plus the `up`, `down` and `status` launcher that runs each of them as its own
// process.
//
// It dispatches on its first argument ("s2z-cluster kube-apiserver --flags...") or, busybox-style,
// on the name it was invoked as, so a symlink named `kubectl` behaves like kubectl.
package main

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// components maps a subcommand to its entry point. Each entry point sees os.Args with the
// component name in position 0, exactly as its upstream main would.
var components = map[string]func() int{
	"etcd":                    runEtcd,
	"kube-apiserver":          runAPIServer,
	"kube-controller-manager": runControllerManager,
	"kube-scheduler":          runScheduler,
	"kubectl":                 runKubectl,
	"kwok":                    runKwok,
	"up":                      runUp,
	"down":                    runDown,
	"status":                  runStatus,
	"env":                     runEnv,
	"cert":                    runCert,
}

func main() {
	name := filepath.Base(os.Args[0])
	if _, ok := components[name]; !ok || name == "up" || name == "down" {
		if len(os.Args) < 2 {
			usage()
			os.Exit(2)
		}
		name = os.Args[1]
		os.Args = os.Args[1:]
	}
	run, ok := components[name]
	if !ok {
		fmt.Fprintf(os.Stderr, "s2z-cluster: unknown command %q\n", name)
		usage()
		os.Exit(2)
	}
	os.Exit(run())
}

func usage() {
	names := make([]string, 0, len(components))
	for n := range components {
		names = append(names, n)
	}
	sort.Strings(names)
	fmt.Fprintf(os.Stderr, "usage: s2z-cluster <%s> [flags]\n", strings.Join(names, "|"))
	fmt.Fprintln(os.Stderr, "  up      start the local control plane (see `s2z-cluster up --help`)")
	fmt.Fprintln(os.Stderr, "  down    stop it and remove every process it started; safe to run twice")
	fmt.Fprintln(os.Stderr, "  status  print the endpoints, kubeconfigs and memory of a running plane")
	fmt.Fprintln(os.Stderr, "  env     print shell exports (KUBECONFIG, PATH) for a running plane")
}
