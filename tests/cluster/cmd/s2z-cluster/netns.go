package main

// The network namespaces of Knative's data path (`up --knative`).
//
// The apiserver reaches Knative's webhook through an EndpointSlice, which refuses loopback
// addresses, and servers here may only be reached on loopback or on addresses inside network
// namespaces we made ourselves. So `up` makes a named network namespace per plane, s2z-kn-N,
// joined to the host by a veth pair on a private /30: 10.213.N.1 on the host side, 10.213.N.2
// inside. Knative's webhook, autoscaler and activator run in it (the activator's address, and the
// one tests send requests to, is 10.213.N.2). Inside, the apiserver is reachable at its host
// loopback address through the Unix socket relay of s2z-knative-run.
//
// Behind it, a second namespace, s2z-kp-N, is the pod and Service network: the whole pod CIDR and
// Service CIDR are routed to its loopback device, so s2z-podnet, listening there on 0.0.0.0,
// answers for every pod IP and relays every Service IP, and serves the plane's DNS at 10.213.N.6.
// s2z-kn-N reaches it over a second veth pair (10.213.N.5 in s2z-kn-N, 10.213.N.6 in s2z-kp-N),
// with routes for both CIDRs, so the autoscaler scrapes pods and probes Services, and the
// activator proxies to pods, at their real addresses. The host has no route to either CIDR (two
// planes use the same ones).
//
// The first namespace's name is recorded in <state>/knative-netns; `down` (and `up`, before
// starting) removes both.

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
)

// webhookNetns is one plane's namespace for Knative's webhook.
type webhookNetns struct {
	index int
}

const netnsPrefix = "s2z-kn-"

var netnsName = regexp.MustCompile(`^` + netnsPrefix + `([0-9]{1,3})$`)

func (n webhookNetns) name() string { return netnsPrefix + strconv.Itoa(n.index) }

// hostLink is the host's end of the veth pair; the other end, inside, is called eth0.
func (n webhookNetns) hostLink() string { return "s2zkn" + strconv.Itoa(n.index) }
func (n webhookNetns) hostIP() net.IP   { return net.IPv4(10, 213, byte(n.index), 1).To4() }
func (n webhookNetns) innerIP() net.IP  { return net.IPv4(10, 213, byte(n.index), 2).To4() }

// path is what setns(2) opens to join the namespace.
func (n webhookNetns) path() string { return filepath.Join("/run/netns", n.name()) }

// The pod network's namespace and its link from s2z-kn-N (called "pods" there, eth0 inside).
func (n webhookNetns) podsName() string    { return podsNetnsPrefix + strconv.Itoa(n.index) }
func (n webhookNetns) podsPath() string    { return filepath.Join("/run/netns", n.podsName()) }
func (n webhookNetns) podsGateway() net.IP { return net.IPv4(10, 213, byte(n.index), 5).To4() }
func (n webhookNetns) podsInnerIP() net.IP { return net.IPv4(10, 213, byte(n.index), 6).To4() }

const podsNetnsPrefix = "s2z-kp-"

// podCIDR is where KWOK gives pods their IPs (kwok --cidr), all answered by s2z-podnet.
const podCIDR = "10.244.0.0/16"

// serviceCIDR is the apiserver's --service-cluster-ip-range. On the Knative plane it is routed
// like the pod CIDR, and s2z-podnet relays each Service IP:port to an endpoint, as kube-proxy
// would. A /16: every revision has two Services.
const serviceCIDR = "10.0.0.0/16"

func netnsRecord(stateDir string) string { return filepath.Join(stateDir, "knative-netns") }

// ipTool is iproute2's ip.
func ipTool() (string, error) {
	for _, p := range []string{"/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"} {
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	if p, err := exec.LookPath("ip"); err == nil {
		return p, nil
	}
	return "", errors.New("`ip` (iproute2) not found: up --knative needs it to make the webhook's network namespace")
}

func runIP(args ...string) error {
	ip, err := ipTool()
	if err != nil {
		return err
	}
	out, err := exec.Command(ip, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ip %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// indexFree reports whether nothing on the host uses index n: no namespace, no link and no
// address in 10.213.n.0/24.
func indexFree(n int) bool {
	w := webhookNetns{index: n}
	if _, err := os.Stat(w.path()); err == nil {
		return false
	}
	if _, err := os.Stat(w.podsPath()); err == nil {
		return false
	}
	if _, err := net.InterfaceByName(w.hostLink()); err == nil {
		return false
	}
	_, block, _ := net.ParseCIDR(fmt.Sprintf("10.213.%d.0/24", n))
	addrs, _ := net.InterfaceAddrs()
	for _, a := range addrs {
		if ipn, ok := a.(*net.IPNet); ok && (block.Contains(ipn.IP) || ipn.Contains(block.IP)) {
			return false
		}
	}
	return true
}

// createWebhookNetns makes the namespace with a free index (`ip netns add` fails if another
// plane took the name meanwhile, and the next index is tried), records it under stateDir, and
// wires the veth pair.
func createWebhookNetns(stateDir string) (webhookNetns, error) {
	if os.Geteuid() != 0 {
		return webhookNetns{}, errors.New("up --knative must run as root: Knative's webhook gets a network namespace joined to the host by a veth pair")
	}
	if _, err := ipTool(); err != nil {
		return webhookNetns{}, err
	}
	for n := 0; n < 256; n++ {
		if !indexFree(n) {
			continue
		}
		w := webhookNetns{index: n}
		if err := runIP("netns", "add", w.name()); err != nil {
			if _, statErr := os.Stat(w.path()); statErr == nil {
				continue // taken by another plane meanwhile
			}
			return webhookNetns{}, err
		}
		if err := os.WriteFile(netnsRecord(stateDir), []byte(w.name()+"\n"), 0o644); err != nil {
			w.remove()
			return webhookNetns{}, err
		}
		return w, w.wire()
	}
	return webhookNetns{}, errors.New("no free 10.213.N.0/30 for Knative's webhook namespace (256 in use)")
}

func (w webhookNetns) wire() error {
	host, inner := w.hostIP().String(), w.innerIP().String()
	for _, args := range [][]string{
		{"link", "add", w.hostLink(), "type", "veth", "peer", "name", "eth0", "netns", w.name()},
		{"addr", "add", host + "/30", "dev", w.hostLink()},
		{"link", "set", w.hostLink(), "up"},
		{"-n", w.name(), "addr", "add", inner + "/30", "dev", "eth0"},
		{"-n", w.name(), "link", "set", "eth0", "up"},
		{"-n", w.name(), "link", "set", "lo", "up"},
		// The pod network behind it.
		{"netns", "add", w.podsName()},
		{"-n", w.name(), "link", "add", "pods", "type", "veth", "peer", "name", "eth0", "netns", w.podsName()},
		{"-n", w.name(), "addr", "add", w.podsGateway().String() + "/30", "dev", "pods"},
		{"-n", w.name(), "link", "set", "pods", "up"},
		{"-n", w.podsName(), "addr", "add", w.podsInnerIP().String() + "/30", "dev", "eth0"},
		{"-n", w.podsName(), "link", "set", "eth0", "up"},
		{"-n", w.podsName(), "link", "set", "lo", "up"},
		// Every pod IP and Service IP is local in s2z-kp-N, and routed there from s2z-kn-N; the
		// activator's address in s2z-kn-N (a Service endpoint) is reachable from s2z-kp-N.
		{"-n", w.podsName(), "route", "add", "local", podCIDR, "dev", "lo"},
		{"-n", w.podsName(), "route", "add", "local", serviceCIDR, "dev", "lo"},
		{"-n", w.podsName(), "route", "add", w.innerIP().String() + "/32", "via", w.podsGateway().String()},
		{"-n", w.name(), "route", "add", podCIDR, "via", w.podsInnerIP().String()},
		{"-n", w.name(), "route", "add", serviceCIDR, "via", w.podsInnerIP().String()},
	} {
		if err := runIP(args...); err != nil {
			return err
		}
	}
	return nil
}

// remove deletes the namespace and the veth pair; either may already be gone.
func (w webhookNetns) remove() {
	if _, err := net.InterfaceByName(w.hostLink()); err == nil {
		_ = runIP("link", "del", w.hostLink())
	}
	if _, err := os.Stat(w.path()); err == nil {
		_ = runIP("netns", "del", w.name())
	}
	if _, err := os.Stat(w.podsPath()); err == nil {
		_ = runIP("netns", "del", w.podsName())
	}
}

// readWebhookNetns is the namespace recorded under stateDir by createWebhookNetns.
func readWebhookNetns(stateDir string) (webhookNetns, error) {
	b, err := os.ReadFile(netnsRecord(stateDir))
	if err != nil {
		return webhookNetns{}, fmt.Errorf("no webhook network namespace recorded: %w", err)
	}
	m := netnsName.FindStringSubmatch(strings.TrimSpace(string(b)))
	if m == nil {
		return webhookNetns{}, fmt.Errorf("unexpected content in %s: %q", netnsRecord(stateDir), b)
	}
	n, err := strconv.Atoi(m[1])
	if err != nil || n >= 256 {
		return webhookNetns{}, fmt.Errorf("unexpected content in %s: %q", netnsRecord(stateDir), b)
	}
	return webhookNetns{index: n}, nil
}

// removeWebhookNetns removes the namespace recorded under stateDir, if any.
func removeWebhookNetns(stateDir string) {
	if w, err := readWebhookNetns(stateDir); err == nil {
		w.remove()
	}
	_ = os.Remove(netnsRecord(stateDir))
}
