package main

// The state directory: what `up` writes and `down`/`status` read back.

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// State is written to <state-dir>/cluster.json once the plane is Ready.
type State struct {
	Version              string         `json:"version"`
	Server               string         `json:"server"`
	AdminKubeconfig      string         `json:"adminKubeconfig"`
	RestrictedKubeconfig string         `json:"restrictedKubeconfig"`
	CAFile               string         `json:"caFile"`
	BinDir               string         `json:"binDir"`
	Ports                map[string]int `json:"ports"`
	Nodes                int            `json:"nodes"`
	GPUsPerNode          int            `json:"gpusPerNode"`
	AllowZeroInitial     bool           `json:"allowZeroInitialScale"`
	Knative              bool           `json:"knative"`
	KnativeRelease       string         `json:"knativeRelease,omitempty"`
	KnativeModule        string         `json:"knativeModule,omitempty"`
	// KServe is set by `up --kserve`: KServe's controller manager runs too (kserve.go).
	KServe        bool   `json:"kserve,omitempty"`
	KServeVersion string `json:"kserveVersion,omitempty"`
	KServeServing string `json:"kserveServing,omitempty"`
	// ActivatorURL is where Knative's activator takes requests (with the Knative-Serving-Namespace
	// and Knative-Serving-Revision headers an ingress would set), reachable from the host.
	ActivatorURL string  `json:"activatorURL,omitempty"`
	ReadySeconds float64 `json:"readySeconds"`
}

func statePath(dir string) string { return filepath.Join(dir, "cluster.json") }

func pidDir(dir string) string { return filepath.Join(dir, "pids") }

func readState(dir string) (*State, error) {
	b, err := os.ReadFile(statePath(dir))
	if err != nil {
		return nil, err
	}
	var s State
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, fmt.Errorf("failed to parse %s: %w", statePath(dir), err)
	}
	return &s, nil
}

func writeState(dir string, s *State) error {
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return err
	}
	tmp := statePath(dir) + ".tmp"
	if err := os.WriteFile(tmp, append(b, '\n'), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, statePath(dir))
}

// component is one recorded process of a running plane.
type component struct {
	name string
	pid  int
}

// components lists the processes recorded under the state directory, in start order.
func recordedComponents(dir string) []component {
	var out []component
	for _, name := range allComponents() {
		b, err := os.ReadFile(filepath.Join(pidDir(dir), name+".pid"))
		if err != nil {
			continue
		}
		pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
		if err != nil || pid <= 0 {
			continue
		}
		out = append(out, component{name: name, pid: pid})
	}
	return out
}

// ours reports whether pid is alive and still one of our components (this binary, or the
// helper that runs a Knative binary), so that a recycled pid is never signalled.
func ours(pid int) bool {
	if err := syscall.Kill(pid, 0); err != nil {
		return false
	}
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return false
	}
	return strings.Contains(string(cmdline), "s2z-cluster") || strings.Contains(string(cmdline), "s2z-knative-run")
}

// rssKiB reads a process's resident set size from /proc.
func rssKiB(pid int) int {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, "VmRSS:") {
			f := strings.Fields(line)
			if len(f) >= 2 {
				n, _ := strconv.Atoi(f[1])
				return n
			}
		}
	}
	return 0
}

// groupRSSKiB is the resident set size of every process in the process group that pid leads: a
// component with the children it started (a Knative binary under its s2z-knative-run).
func groupRSSKiB(pgid int) int {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return rssKiB(pgid)
	}
	total := 0
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			continue
		}
		// pid (comm) state ppid pgrp ...; comm may contain spaces and parentheses.
		rest := string(b)
		if i := strings.LastIndexByte(rest, ')'); i >= 0 {
			rest = rest[i+1:]
		}
		f := strings.Fields(rest)
		if len(f) >= 3 && f[2] == strconv.Itoa(pgid) {
			total += rssKiB(pid)
		}
	}
	return total
}
