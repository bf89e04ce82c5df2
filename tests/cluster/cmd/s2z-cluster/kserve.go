package main

// `up --kserve`: KServe's own controller manager (the InferenceService, TrainedModel and
// InferenceGraph reconcilers and KServe's webhooks), built by tests/kserve/build from the
// github.com/kserve/kserve Go module, run against this plane on top of real Knative Serving
// (--kserve implies --knative), with upstream's CRDs, inferenceservice-config and webhook
// registrations read from that module.
//
// In serverless mode an InferenceService becomes one Knative Service per component
// (<name>-predictor), whose Revisions s2z's webhook sees like any other. Our only change to
// upstream's settings is the ingress: there is no Istio here, so KServe is told not to make a
// VirtualService (ingress.disableIstioVirtualHost), as upstream documents for other networking
// layers.
//
// The manager's webhook is reached like Knative's: it joins the webhook's network namespace
// (netns.go), and the Service its registrations name resolves, through an EndpointSlice, to that
// namespace's address. KServe expects cert-manager to issue its serving certificate and inject
// the CA into the registrations; here `up` does both.

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// kserveOrder is started after knativeOrder, only with --kserve, and stopped before it.
var kserveOrder = []string{"kserve-manager"}

// Where upstream's manifests put KServe: the namespace the manager reads its ConfigMap from
// (constants.KServeNamespace, from POD_NAMESPACE) and the Service its webhook registrations name
// (config/default/kustomization.yaml's webhookServiceName).
const (
	kserveNamespace      = "kserve"
	kserveWebhookService = "kserve-webhook-server-service"
)

// defaultKServeBinDir is tests/kserve/bin, found from this binary's place in tests/cluster/bin.
func defaultKServeBinDir() string {
	return filepath.Join(filepath.Dir(defaultKnativeBinDir()), "..", "kserve", "bin")
}

// kserveVersion reads what tests/kserve/build recorded: the KServe module version ("v0.17.0")
// and the knative.dev/serving version it was built against.
func kserveVersion(binDir string) (version, serving string, err error) {
	hint := "run tests/kserve/build"
	if _, err := os.Stat(filepath.Join(binDir, "kserve-manager")); err != nil {
		return "", "", fmt.Errorf("KServe is not built (%v): %s", err, hint)
	}
	b, err := os.ReadFile(filepath.Join(binDir, "kserve-version"))
	if err != nil {
		return "", "", fmt.Errorf("KServe is not built (%v): %s", err, hint)
	}
	f := strings.Fields(string(b))
	if len(f) != 2 {
		return "", "", fmt.Errorf("unexpected content in %s: %q", filepath.Join(binDir, "kserve-version"), b)
	}
	return f[0], f[1], nil
}

// kserveIngress is upstream's `ingress` entry of inferenceservice-config with one change:
// disableIstioVirtualHost, since the plane runs no Istio.
const kserveIngress = `{
  "enableGatewayApi": false,
  "kserveIngressGateway": "kserve/kserve-ingress-gateway",
  "ingressGateway": "knative-serving/knative-ingress-gateway",
  "localGateway": "knative-serving/knative-local-gateway",
  "localGatewayService": "knative-local-gateway.istio-system.svc.cluster.local",
  "ingressDomain": "example.com",
  "ingressClassName": "istio",
  "domainTemplate": "{{ .Name }}-{{ .Namespace }}.{{ .IngressDomain }}",
  "urlScheme": "http",
  "disableIstioVirtualHost": true,
  "disableIngressCreation": false
}`

// kserveUpstream is what upstream's default kustomization would install, minus the manager's
// Deployment (the process runs here instead), cert-manager's objects (up issues the certificate)
// and the webhook registrations (applied once the webhook has a route and a certificate).
func kserveUpstream(binDir string) ([]byte, error) {
	cfg := filepath.Join(binDir, "config")
	crds := globSorted(filepath.Join(cfg, "crds", "*.yaml"))
	configMap := filepath.Join(cfg, "configmaps", "inferenceservice.yaml")
	if _, err := os.Stat(configMap); err != nil || len(crds) < 5 {
		return nil, fmt.Errorf("upstream KServe manifests missing under %s (%d CRD files, ConfigMap: %v): run tests/kserve/build", cfg, len(crds), err)
	}
	paths := append(crds, configMap)
	out := []byte(fmt.Sprintf("---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: %s\n  labels:\n    control-plane: kserve-controller-manager\n", kserveNamespace))
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			return nil, err
		}
		out = append(out, "---\n"...)
		out = append(out, b...)
		out = append(out, '\n')
	}
	return out, nil
}

// kserveOverrides is our setting on top of upstream's inferenceservice-config, applied under our
// own field manager so that it owns just this key.
func kserveOverrides() string {
	var b strings.Builder
	fmt.Fprintf(&b, "---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: inferenceservice-config\n  namespace: %s\ndata:\n  ingress: |-\n", kserveNamespace)
	for _, line := range strings.Split(kserveIngress, "\n") {
		b.WriteString("    " + line + "\n")
	}
	return b.String()
}

// kserveWebhookRegistrations fills in upstream's registrations: kustomize's placeholders for the
// Service, and the CA bundle cert-manager's cainjector would have written.
func kserveWebhookRegistrations(binDir, caBundle string) ([]byte, error) {
	b, err := os.ReadFile(filepath.Join(binDir, "config", "webhooks", "manifests.yaml"))
	if err != nil {
		return nil, err
	}
	s := strings.NewReplacer("$(webhookServiceName)", kserveWebhookService, "$(kserveNamespace)", kserveNamespace).Replace(string(b))
	if n := strings.Count(s, "- clientConfig:\n"); n == 0 || n != strings.Count(s, "clientConfig:") {
		return nil, fmt.Errorf("unexpected layout of %s: every webhook should start with `- clientConfig:`", filepath.Join(binDir, "config", "webhooks", "manifests.yaml"))
	}
	s = strings.ReplaceAll(s, "- clientConfig:\n", "- clientConfig:\n      caBundle: "+caBundle+"\n")
	return []byte(s), nil
}

// kserveProbe is an InferenceService for a server-side dry run, which passes through KServe's
// defaulting and validating webhooks: both answering means the manager serves.
const kserveProbe = `apiVersion: serving.kserve.io/v1beta1
kind: InferenceService
metadata:
  name: s2z-webhook-probe
  namespace: default
spec:
  predictor:
    minReplicas: 1
    containers:
      - name: kserve-container
        image: example.invalid/s2z/probe:1
`

// installKServe applies upstream's namespace, CRDs and ConfigMap, then our ingress setting.
func installKServe(o upOptions, kubectl func(stdin []byte, args ...string) error) error {
	upstream, err := kserveUpstream(o.kserveBinDir)
	if err != nil {
		return err
	}
	if err := kubectl(upstream, "apply", "--server-side", "--force-conflicts", "--field-manager=kserve-release", "-f", "-"); err != nil {
		return err
	}
	if err := kubectl([]byte(kserveOverrides()), "apply", "--server-side", "--force-conflicts", "--field-manager=s2z-cluster", "-f", "-"); err != nil {
		return err
	}
	return kubectl(nil, "wait", "--for=condition=Established", "--timeout=60s",
		"crd/inferenceservices.serving.kserve.io", "crd/servingruntimes.serving.kserve.io",
		"crd/clusterservingruntimes.serving.kserve.io", "crd/trainedmodels.serving.kserve.io",
		"crd/inferencegraphs.serving.kserve.io")
}

// startKServe issues the webhook's certificate, routes and registers the webhook, and starts the
// manager in the webhook network namespace, waiting until its webhooks answer the apiserver.
func startKServe(ctx context.Context, o upOptions, admin string, ports map[string]int,
	kubectl func(stdin []byte, args ...string) error) error {
	netns, err := readWebhookNetns(o.stateDir)
	if err != nil {
		return err
	}
	if err := freePorts(ports, "kserve-webhook", "kserve-metrics", "kserve-health"); err != nil {
		return err
	}
	// controller-runtime's webhook server reads tls.crt and tls.key from
	// $TMPDIR/k8s-webhook-server/serving-certs (webhook.Options.CertDir's default), which
	// upstream's Deployment mounts from cert-manager's Secret.
	tmp := filepath.Join(o.stateDir, "kserve-tmp")
	certDir := filepath.Join(tmp, "k8s-webhook-server", "serving-certs")
	svc := kserveWebhookService + "." + kserveNamespace + ".svc"
	if err := writeServingCert(certDir, []string{svc, svc + ".cluster.local"}); err != nil {
		return fmt.Errorf("issue KServe's webhook certificate: %w", err)
	}
	caBundle, err := os.ReadFile(filepath.Join(certDir, "ca-bundle.b64"))
	if err != nil {
		return err
	}
	// Routed like Knative's webhook (webhookRoute in knative.go).
	route := webhookRoute(kserveNamespace, kserveWebhookService, kserveWebhookService+"-s2z", "", netns.innerIP(), ports["kserve-webhook"])
	if err := kubectl([]byte(route), "apply", "--server-side", "--force-conflicts", "-f", "-"); err != nil {
		return err
	}
	registrations, err := kserveWebhookRegistrations(o.kserveBinDir, string(caBundle))
	if err != nil {
		return err
	}
	if err := kubectl(registrations, "apply", "--server-side", "--force-conflicts", "--field-manager=kserve-release", "-f", "-"); err != nil {
		return err
	}

	// The environment upstream's Deployment (config/manager/manager.yaml) gives the manager.
	env := append(os.Environ(),
		"POD_NAMESPACE="+kserveNamespace,
		"SECRET_NAME=kserve-webhook-server-cert",
		"KUBECONFIG="+admin,
		"TMPDIR="+tmp,
	)
	// The webhook's namespace already relays the apiserver (the Knative webhook's --forward).
	if err := spawnBinary(o.stateDir, "kserve-manager", filepath.Join(o.knativeBinDir, "s2z-knative-run"), env,
		"--netns", "--join="+netns.path(), "--",
		filepath.Join(o.kserveBinDir, "kserve-manager"),
		fmt.Sprintf("--webhook-port=%d", ports["kserve-webhook"]),
		fmt.Sprintf("--metrics-addr=127.0.0.1:%d", ports["kserve-metrics"]),
		fmt.Sprintf("--health-probe-addr=127.0.0.1:%d", ports["kserve-health"]),
	); err != nil {
		return err
	}
	return waitFor(ctx, "KServe webhook", func() error {
		return kubectl([]byte(kserveProbe), "create", "--dry-run=server", "-f", "-")
	})
}
