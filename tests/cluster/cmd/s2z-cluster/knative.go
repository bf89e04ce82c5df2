package main

// `up --knative`: the real Knative Serving webhook, controller, autoscaler and activator, built
// by tests/knative/build from the knative.dev/serving Go module, run as separate processes against
// this plane, with upstream's CRDs, ConfigMaps and webhook registrations read from that module,
// and s2z-podnet answering for every KWOK pod as its queue-proxy (netns.go has the network).
//
// So the scale loop is Knative's own: the autoscaler scrapes each pod's stats, scales idle
// revisions to zero, and the activator, sent a request for a revision at zero, reports it and
// scales it back up, then proxies the request to the new pod.
//
// s2z-podnet also plays cluster DNS and kube-proxy for the autoscaler, which probes each
// revision's public Service for the activator before scaling it to zero.
//
// Not run: an ingress and the net-* controllers. Routes therefore wait for an Ingress that
// nothing reconciles, and a ksvc never becomes Ready; requests go to the activator directly, with
// the headers an ingress would set.

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"time"
)

// knativeOrder is started after startOrder, only with --knative; like startOrder, it is stopped
// in reverse.
var knativeOrder = []string{"knative-webhook", "knative-controller", "knative-podnet", "knative-autoscaler", "knative-activator"}

// allComponents is every component a plane may record, in start order.
func allComponents() []string {
	return append(append(append([]string{}, startOrder...), knativeOrder...), kserveOrder...)
}

// Fixed ports inside s2z-kn-N, as in the pods upstream's Deployments make: the autoscaler's stat
// websocket (cmd/autoscaler statsServerAddr) and the activator's HTTP/1 and h2c ports
// (networking.BackendHTTPPort, BackendHTTP2Port). Each binary also serves pprof, on 8008 by
// default; two share the namespace, so the activator's moves.
const (
	autoscalerStatsPort     = 8080
	activatorHTTPPort       = 8012
	activatorH2CPort        = 8013
	activatorProfilingPort  = 8009
	autoscalerProfilingPort = 8008
)

// knativeResolv is /etc/resolv.conf for the autoscaler (s2z-knative-run --resolv): s2z-podnet
// answers Service names at the pod network's address.
func knativeResolv(dns net.IP) string {
	return fmt.Sprintf("nameserver %s\nsearch knative-serving.svc.cluster.local svc.cluster.local cluster.local\noptions ndots:5\n", dns)
}

// activatorHosts is /etc/hosts for the activator (s2z-knative-run --hosts): it dials the
// autoscaler by its Service's name, and the autoscaler listens in the same namespace.
const activatorHosts = `127.0.0.1 localhost
127.0.0.1 autoscaler.knative-serving.svc.cluster.local autoscaler.knative-serving.svc autoscaler.knative-serving autoscaler
`

// defaultKnativeBinDir is tests/knative/bin, found from this binary's place in tests/cluster/bin.
func defaultKnativeBinDir() string {
	self, err := os.Executable()
	if err != nil {
		return filepath.Join("tests", "knative", "bin")
	}
	if resolved, err := filepath.EvalSymlinks(self); err == nil {
		self = resolved
	}
	return filepath.Clean(filepath.Join(filepath.Dir(self), "..", "..", "knative", "bin"))
}

// knativeRelease reads what tests/knative/build recorded: the release ("knative-v1.23.0") and
// the knative.dev/serving module version ("v0.50.0").
func knativeRelease(binDir string) (release, module string, err error) {
	for _, name := range []string{"controller", "autoscaler", "webhook", "activator", "s2z-knative-run", "s2z-podnet"} {
		if _, err := os.Stat(filepath.Join(binDir, name)); err != nil {
			return "", "", fmt.Errorf("Knative is not built (%v): run tests/knative/build", err)
		}
	}
	b, err := os.ReadFile(filepath.Join(binDir, "knative-version"))
	if err != nil {
		return "", "", fmt.Errorf("Knative is not built (%v): run tests/knative/build", err)
	}
	f := strings.Fields(string(b))
	if len(f) != 2 {
		return "", "", fmt.Errorf("unexpected content in %s: %q", filepath.Join(binDir, "knative-version"), b)
	}
	return f[0], f[1], nil
}

var yamlSeparator = regexp.MustCompile(`(?m)^---[ \t]*$`)

// withoutCRDsOf drops our minimal stand-ins for the CRDs of these API groups from the fixtures,
// for a plane that installs upstream's (Knative's; with --kserve also KServe's).
func withoutCRDsOf(fixtures []byte, groups ...string) []byte {
	var out bytes.Buffer
	for _, doc := range yamlSeparator.Split(string(fixtures), -1) {
		crd := strings.Contains(doc, "kind: CustomResourceDefinition")
		upstream := false
		for _, g := range groups {
			upstream = upstream || strings.Contains(doc, "group: "+g+"\n")
		}
		if strings.TrimSpace(doc) == "" || (crd && upstream) {
			continue
		}
		out.WriteString("---\n")
		out.WriteString(strings.TrimLeft(doc, "\n"))
		if !strings.HasSuffix(doc, "\n") {
			out.WriteString("\n")
		}
	}
	return out.Bytes()
}

// readManifests concatenates YAML files in name order, with the release version written into
// the `app.kubernetes.io/version: devel` labels, as upstream's release process does.
func readManifests(release string, paths ...string) ([]byte, error) {
	version := strings.TrimPrefix(release, "knative-v")
	var out bytes.Buffer
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			return nil, err
		}
		b = bytes.ReplaceAll(b, []byte("app.kubernetes.io/version: devel"), []byte(fmt.Sprintf("app.kubernetes.io/version: %q", version)))
		out.WriteString("---\n")
		out.Write(b)
		out.WriteString("\n")
	}
	return out.Bytes(), nil
}

func globSorted(pattern string) []string {
	m, _ := filepath.Glob(pattern)
	sort.Strings(m)
	return m
}

// knativeUpstream is what the release YAML would install, minus the Deployments (the processes
// run here instead) and minus the webhook registrations (applied once the webhook has a route).
func knativeUpstream(binDir, release string) ([]byte, error) {
	cfg := filepath.Join(binDir, "config")
	paths := []string{filepath.Join(cfg, "100-namespace.yaml")}
	paths = append(paths, globSorted(filepath.Join(cfg, "crds", "*.yaml"))...)
	paths = append(paths, globSorted(filepath.Join(cfg, "configmaps", "*.yaml"))...)
	paths = append(paths, filepath.Join(cfg, "webhooks", "secret.yaml"))
	if len(paths) < 10 {
		return nil, fmt.Errorf("upstream manifests missing under %s: run tests/knative/build", cfg)
	}
	return readManifests(release, paths...)
}

func knativeWebhookRegistrations(binDir, release string) ([]byte, error) {
	w := filepath.Join(binDir, "config", "webhooks")
	return readManifests(release,
		filepath.Join(w, "defaulting.yaml"),
		filepath.Join(w, "resource-validation.yaml"),
		filepath.Join(w, "configmap-validation.yaml"))
}

// queueImage is the queue-proxy image written into config-deployment. KWOK's pods never pull an
// image, so it is a digest reference on a reserved domain (.invalid), which Knative uses as is:
// nothing ever contacts a registry. The digest is derived from the module version, for a stable
// value per release.
func queueImage(module string) string {
	sum := sha256.Sum256([]byte("knative.dev/serving/cmd/queue@" + module))
	return "example.invalid/knative.dev/serving/cmd/queue@sha256:" + hex.EncodeToString(sum[:])
}

// knativeOverrides are our settings on top of upstream's ConfigMaps (config-autoscaler is
// rendered by configAutoscaler, as for the fixture plane).
func knativeOverrides(module string) string {
	return fmt.Sprintf(`---
apiVersion: v1
kind: ConfigMap
metadata:
  name: config-deployment
  namespace: knative-serving
data:
  queue-sidecar-image: %s
  # Images on these registries are used by tag, without resolving a digest (which would contact
  # the registry). Images given by digest are never resolved anyway.
  registries-skipping-tag-resolving: "kind.local,ko.local,dev.local,example.invalid,example.com"
`, queueImage(module))
}

// knativeWebhookRoute makes Knative's webhook reachable for the apiserver. Its registrations name
// the Service knative-serving/webhook, and its own reconciler insists on a Service reference.
func knativeWebhookRoute(ip net.IP, port int) string {
	return webhookRoute("knative-serving", "webhook", "webhook-s2z",
		"    app.kubernetes.io/component: webhook\n    app.kubernetes.io/name: knative-serving\n", ip, port)
}

// webhookRoute is a Service for a webhook that runs in the plane's webhook network namespace
// (netns.go) and its EndpointSlice. The apiserver runs with --enable-aggregator-routing, so it
// dials the Service's EndpointSlice address, and checks the certificate the webhook serves for
// <service>.<namespace>.svc. An EndpointSlice refuses loopback addresses, hence the webhook's
// address in its own network namespace, reached over a veth pair. labels are extra lines for the
// Service's labels, indented by four spaces.
func webhookRoute(namespace, service, slice, labels string, ip net.IP, port int) string {
	return fmt.Sprintf(`---
apiVersion: v1
kind: Service
metadata:
  name: %[3]s
  namespace: %[4]s
  labels:
%[6]s    s2z.dev/out-of-cluster: "true"
spec:
  ports:
    - name: https-webhook
      port: 443
      targetPort: %[2]d
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: %[5]s
  namespace: %[4]s
  labels:
    kubernetes.io/service-name: %[3]s
    endpointslice.kubernetes.io/managed-by: s2z.dev
addressType: IPv4
endpoints:
  - addresses: ["%[1]s"]
    conditions:
      ready: true
ports:
  - name: https-webhook
    port: %[2]d
    protocol: TCP
`, ip.String(), port, service, namespace, slice, labels)
}

// activatorRoute is activator-service with the Endpoints a Service selecting the activator's
// pod would get. The ServerlessService reconciler copies these into each revision's public
// Endpoints when the activator is in the path; it reads v1 Endpoints.
func activatorRoute(ip net.IP) string {
	return fmt.Sprintf(`---
apiVersion: v1
kind: Service
metadata:
  name: activator-service
  namespace: knative-serving
  labels:
    app: activator
    app.kubernetes.io/component: activator
    app.kubernetes.io/name: knative-serving
    s2z.dev/out-of-cluster: "true"
spec:
  ports:
    - {name: http-profiling, port: 8008, targetPort: %[3]d}
    - {name: http, port: 80, targetPort: %[2]d}
    - {name: http2, port: 81, targetPort: %[4]d}
---
apiVersion: v1
kind: Endpoints
metadata:
  name: activator-service
  namespace: knative-serving
  labels:
    app: activator
    s2z.dev/out-of-cluster: "true"
subsets:
  - addresses: [{ip: "%[1]s"}]
    ports:
      - {name: http-profiling, port: %[3]d, protocol: TCP}
      - {name: http, port: %[2]d, protocol: TCP}
      - {name: http2, port: %[4]d, protocol: TCP}
`, ip.String(), activatorHTTPPort, activatorProfilingPort, activatorH2CPort)
}

// activatorReady asks the activator's health handler, as a kubelet's readiness probe does.
func activatorReady(ctx context.Context, ip string) error {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, fmt.Sprintf("http://%s:%d/healthz", ip, activatorHTTPPort), nil)
	if err != nil {
		return err
	}
	req.Header.Set("User-Agent", "kube-probe/s2z-cluster")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("activator health: HTTP %d: %s", resp.StatusCode, strings.TrimSpace(string(body)))
	}
	return nil
}

// installKnative applies upstream's namespace, CRDs, ConfigMaps and webhook Secret, under their
// own field manager so that our settings, applied next, override only what they set.
func installKnative(o upOptions, kubectl func(stdin []byte, args ...string) error) error {
	upstream, err := knativeUpstream(o.knativeBinDir, o.knativeRelease)
	if err != nil {
		return err
	}
	if err := kubectl(upstream, "apply", "--server-side", "--force-conflicts", "--field-manager=knative-release", "-f", "-"); err != nil {
		return err
	}
	return kubectl(nil, "wait", "--for=condition=Established", "crd", "-l", "knative.dev/crd-install=true", "--timeout=60s")
}

// startKnative makes the webhook reachable, registers it, and starts the webhook, controller,
// pod network, autoscaler and activator, waiting until each works. It returns the activator's URL.
func startKnative(ctx context.Context, o upOptions, admin string, ports map[string]int,
	kubectl func(stdin []byte, args ...string) error) (string, error) {
	apiPort := ports["apiserver"]
	netns, err := createWebhookNetns(o.stateDir)
	if err != nil {
		return "", err
	}
	if err := freePorts(ports, "knative-webhook", "knative-webhook-profiling"); err != nil {
		return "", err
	}
	route := knativeWebhookRoute(netns.innerIP(), ports["knative-webhook"])
	if err := kubectl([]byte(route), "apply", "--server-side", "--force-conflicts", "-f", "-"); err != nil {
		return "", err
	}
	registrations, err := knativeWebhookRegistrations(o.knativeBinDir, o.knativeRelease)
	if err != nil {
		return "", err
	}
	if err := kubectl(registrations, "apply", "--server-side", "--force-conflicts", "--field-manager=knative-release", "-f", "-"); err != nil {
		return "", err
	}

	run := filepath.Join(o.knativeBinDir, "s2z-knative-run")
	bin := func(name string) string { return filepath.Join(o.knativeBinDir, name) }
	// The environment each Deployment in config/core/deployments gives its container.
	env := func(pod string, extra ...string) []string {
		return append(append(os.Environ(),
			"SYSTEM_NAMESPACE=knative-serving",
			"POD_NAME="+pod,
			"CONFIG_LOGGING_NAME=config-logging",
			"CONFIG_OBSERVABILITY_NAME=config-observability",
		), extra...)
	}
	// The webhook runs in the plane's network namespace (netns.go), where the apiserver reaches it
	// at the namespace's veth address, and where it reaches the apiserver at the same loopback
	// address as on the host, through the relay.
	apiAddr := fmt.Sprintf("--forward=127.0.0.1:%d", apiPort)
	if err := spawnBinary(o.stateDir, "knative-webhook", run,
		env("webhook-s2z",
			"WEBHOOK_NAME=webhook",
			fmt.Sprintf("WEBHOOK_PORT=%d", ports["knative-webhook"]),
			fmt.Sprintf("PROFILING_PORT=%d", ports["knative-webhook-profiling"]),
		),
		"--netns", "--join="+netns.path(), apiAddr, "--", bin("webhook"), "--kubeconfig="+admin); err != nil {
		return "", err
	}
	// Ready when the webhook has reconciled its registrations (CA bundle and rules) and the
	// apiserver gets answers from it: a server-side dry run of a Service goes through both the
	// defaulting and the validating webhook.
	probe := []byte(fmt.Sprintf(`apiVersion: serving.knative.dev/v1
kind: Service
metadata:
  name: s2z-webhook-probe
  namespace: knative-serving
spec:
  template:
    spec:
      containers:
        - image: %s
`, queueImage(o.knativeModule)))
	if err := waitFor(ctx, "Knative webhook", func() error {
		if err := kubectl(nil, "get", "mutatingwebhookconfiguration", "webhook.serving.knative.dev",
			"-o=jsonpath={.webhooks[0].rules[0].resources}", "--allow-missing-template-keys=false"); err != nil {
			return err
		}
		return kubectl(probe, "create", "--dry-run=server", "-f", "-")
	}); err != nil {
		return "", err
	}

	// The controller binds :8080 for health probes, so it gets a network namespace of its own,
	// with only the apiserver reachable (at the same loopback address as on the host).
	if err := spawnBinary(o.stateDir, "knative-controller", run, env("controller-s2z"),
		"--netns", apiAddr, "--", bin("controller"), "--kubeconfig="+admin); err != nil {
		return "", err
	}
	// The pod network, then the autoscaler and the activator, which reach it: they join s2z-kn-N,
	// where the webhook's relay already makes the apiserver reachable.
	if err := spawnBinary(o.stateDir, "knative-podnet", run, os.Environ(),
		"--netns", "--join="+netns.podsPath(), apiAddr, "--",
		bin("s2z-podnet"), "--kubeconfig="+admin, "--service-cidr="+serviceCIDR); err != nil {
		return "", err
	}
	resolv := filepath.Join(o.stateDir, "knative-resolv.conf")
	if err := os.WriteFile(resolv, []byte(knativeResolv(netns.podsInnerIP())), 0o644); err != nil {
		return "", err
	}
	podIP := netns.innerIP().String()
	if err := spawnBinary(o.stateDir, "knative-autoscaler", run,
		env("autoscaler-s2z", "POD_IP="+podIP, fmt.Sprintf("PROFILING_PORT=%d", autoscalerProfilingPort)),
		"--netns", "--join="+netns.path(), "--resolv="+resolv, "--", bin("autoscaler"), "--kubeconfig="+admin); err != nil {
		return "", err
	}
	hosts := filepath.Join(o.stateDir, "activator-hosts")
	if err := os.WriteFile(hosts, []byte(activatorHosts), 0o644); err != nil {
		return "", err
	}
	if err := spawnBinary(o.stateDir, "knative-activator", run,
		env("activator-s2z", "POD_IP="+podIP, fmt.Sprintf("PROFILING_PORT=%d", activatorProfilingPort)),
		"--netns", "--join="+netns.path(), "--hosts="+hosts, "--", bin("activator"), "--kubeconfig="+admin); err != nil {
		return "", err
	}
	// The activator is ready when its stat websocket to the autoscaler is up: that is what it
	// answers a kubelet's readiness probe with. Only then is it put behind activator-service,
	// where the ServerlessService reconciler finds it.
	if err := waitFor(ctx, "Knative activator", func() error {
		return activatorReady(ctx, podIP)
	}); err != nil {
		return "", err
	}
	if err := kubectl([]byte(activatorRoute(netns.innerIP())), "apply", "--server-side", "--force-conflicts", "-f", "-"); err != nil {
		return "", err
	}
	// Each leads its reconcilers through Leases in knative-serving (the autoscaler through one
	// lease per bucket); holding them means running.
	for _, lease := range []string{
		"controller.knative.dev.serving.pkg.reconciler.revision.reconciler.00-of-01",
		"controller.knative.dev.serving.pkg.reconciler.configuration.reconciler.00-of-01",
		"autoscaler-bucket-00-of-01",
	} {
		if err := waitFor(ctx, "Knative lease "+lease, func() error {
			return kubectl(nil, "get", "lease", "-n", "knative-serving", lease,
				"-o=jsonpath={.spec.holderIdentity}", "--allow-missing-template-keys=false")
		}); err != nil {
			return "", err
		}
	}
	return fmt.Sprintf("http://%s:%d", podIP, activatorHTTPPort), nil
}
