package main

// `down`, `status` and `env`: act on a plane recorded in a state directory.

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"time"
)

func stateDirFlag(name string) (string, bool) {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	dir := fs.String("state-dir", defaultStateDir(), "state directory of the plane (env S2Z_STATE_DIR)")
	if err := fs.Parse(os.Args[1:]); err != nil {
		return "", false
	}
	abs, err := filepath.Abs(*dir)
	if err != nil {
		return "", false
	}
	return abs, true
}

func runDown() int {
	dir, ok := stateDirFlag("down")
	if !ok {
		return 2
	}
	if n := stopAll(dir, false); n == 0 {
		fmt.Printf("s2z-cluster: nothing running under %s\n", dir)
	} else {
		fmt.Printf("s2z-cluster: stopped %d processes\n", n)
	}
	return 0
}

// stopAll stops every recorded component (SIGTERM, then SIGKILL after 10 s), newest first, and
// removes the recorded state. quiet suppresses progress lines. It returns how many were running.
func stopAll(dir string, quiet bool) int {
	comps := recordedComponents(dir)
	running := 0
	for i := len(comps) - 1; i >= 0; i-- {
		c := comps[i]
		if !ours(c.pid) {
			continue
		}
		running++
		// Negative pid: the whole process group the component leads.
		_ = syscall.Kill(-c.pid, syscall.SIGTERM)
		deadline := time.Now().Add(10 * time.Second)
		for ours(c.pid) && time.Now().Before(deadline) {
			time.Sleep(50 * time.Millisecond)
		}
		if ours(c.pid) {
			_ = syscall.Kill(-c.pid, syscall.SIGKILL)
			for j := 0; j < 100 && ours(c.pid); j++ {
				time.Sleep(20 * time.Millisecond)
			}
		}
		if !quiet {
			fmt.Printf("stopped %s (pid %d)\n", c.name, c.pid)
		}
	}
	// The webhook namespace (Knative's webhook and KServe's manager) and its veth pair, once
	// nothing runs in them.
	removeWebhookNetns(dir)
	_ = os.RemoveAll(pidDir(dir))
	_ = os.Remove(statePath(dir))
	// etcd's data belongs to this plane only; a new `up` starts empty.
	_ = os.RemoveAll(filepath.Join(dir, "etcd"))
	// KServe's webhook certificate and key (kserve.go); `up --kserve` issues new ones.
	_ = os.RemoveAll(filepath.Join(dir, "kserve-tmp"))
	return running
}

func runStatus() int {
	dir, ok := stateDirFlag("status")
	if !ok {
		return 2
	}
	s, err := readState(dir)
	if err != nil {
		fmt.Fprintf(os.Stderr, "s2z-cluster: no plane recorded under %s (%v); start one with: s2z-cluster up\n", dir, err)
		return 1
	}
	fmt.Printf("server:      %s (Kubernetes %s)\n", s.Server, s.Version)
	fmt.Printf("kubeconfig:  %s\nrestricted:  %s\n", s.AdminKubeconfig, s.RestrictedKubeconfig)
	fmt.Printf("nodes:       %d x %d GPUs\nready after: %.1fs\n", s.Nodes, s.GPUsPerNode, s.ReadySeconds)
	if s.Knative {
		fmt.Printf("knative:     %s (knative.dev/serving %s)\n", s.KnativeRelease, s.KnativeModule)
	}
	if s.KServe {
		fmt.Printf("kserve:      %s (built against knative.dev/serving %s)\n", s.KServeVersion, s.KServeServing)
	}
	total := 0
	healthy := true
	for _, c := range recordedComponents(dir) {
		alive := ours(c.pid)
		healthy = healthy && alive
		rss := 0
		if alive {
			rss = groupRSSKiB(c.pid)
		}
		total += rss
		state := "running"
		if !alive {
			state = "DEAD"
		}
		fmt.Printf("%-24s pid %-8d %-8s rss %6.1f MiB\n", c.name, c.pid, state, float64(rss)/1024)
	}
	fmt.Printf("%-24s %26s %6.1f MiB\n", "total", "", float64(total)/1024)
	if !healthy {
		return 1
	}
	return 0
}

func runEnv() int {
	dir, ok := stateDirFlag("env")
	if !ok {
		return 2
	}
	s, err := readState(dir)
	if err != nil {
		fmt.Fprintf(os.Stderr, "s2z-cluster: no plane recorded under %s; start one with: s2z-cluster up\n", dir)
		return 1
	}
	fmt.Printf("export KUBECONFIG=%s\nexport PATH=%s:$PATH\n", s.AdminKubeconfig, s.BinDir)
	return 0
}
