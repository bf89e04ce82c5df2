package main

// `up`: start etcd, kube-apiserver, kube-controller-manager, kube-scheduler and KWOK as separate
// processes on free loopback ports, install the fixtures, and wait until nodes are Ready. With
// --knative, also the real Knative Serving webhook, controller, autoscaler and activator
// (knative.go); with --kserve, also KServe's controller manager (kserve.go).

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	_ "embed"
	"errors"
	"flag"
	"fmt"
	mrand "math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

//go:embed fixtures/crds.yaml
var crdsYAML []byte

//go:embed fixtures/base.yaml
var baseYAML []byte

// startOrder is also the reverse of the stop order.
var startOrder = []string{"etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok"}

type upOptions struct {
	stateDir         string
	nodes            int
	gpusPerNode      int
	gpuProduct       string
	allowZeroInitial bool
	foreground       bool
	timeout          time.Duration
	knative          bool
	knativeBinDir    string
	knativeRelease   string // filled from <knativeBinDir>/knative-version
	knativeModule    string
	kserve           bool
	kserveBinDir     string
	kserveVersion    string // filled from <kserveBinDir>/kserve-version
	kserveServing    string
}

func defaultStateDir() string {
	if d := os.Getenv("S2Z_STATE_DIR"); d != "" {
		return d
	}
	return filepath.Join(".state", "cluster")
}

func runUp() int {
	var o upOptions
	var err error
	fs := flag.NewFlagSet("up", flag.ContinueOnError)
	fs.StringVar(&o.stateDir, "state-dir", defaultStateDir(), "directory for data, logs, certs and kubeconfigs (env S2Z_STATE_DIR)")
	fs.IntVar(&o.nodes, "nodes", 4, "number of fake GPU nodes managed by KWOK")
	fs.IntVar(&o.gpusPerNode, "gpus-per-node", 8, "nvidia.com/gpu capacity of each fake node")
	fs.StringVar(&o.gpuProduct, "gpu-product", "NVIDIA-A100-SXM4-80GB", "value of the nvidia.com/gpu.product node label")
	fs.BoolVar(&o.allowZeroInitial, "allow-zero-initial-scale", true, "Knative config-autoscaler allow-zero-initial-scale")
	fs.BoolVar(&o.foreground, "foreground", false, "stay attached; Ctrl-C stops the plane (default: leave it running in the background)")
	fs.DurationVar(&o.timeout, "timeout", 90*time.Second, "how long to wait for Ready (default 180s with --knative)")
	fs.BoolVar(&o.knative, "knative", false, "also run the real Knative Serving webhook, controller and autoscaler (built by tests/knative/build) with upstream's CRDs and ConfigMaps")
	fs.StringVar(&o.knativeBinDir, "knative-bin-dir", defaultKnativeBinDir(), "where tests/knative/build put the Knative binaries and config")
	fs.BoolVar(&o.kserve, "kserve", false, "also run KServe's controller manager and webhooks (built by tests/kserve/build) with upstream's CRDs and inferenceservice-config; implies --knative")
	fs.StringVar(&o.kserveBinDir, "kserve-bin-dir", defaultKServeBinDir(), "where tests/kserve/build put the KServe manager and config")
	if err := fs.Parse(os.Args[1:]); err != nil {
		return 2
	}
	timeoutSet := false
	fs.Visit(func(f *flag.Flag) { timeoutSet = timeoutSet || f.Name == "timeout" })
	if o.kserve {
		o.knative = true
		if o.kserveVersion, o.kserveServing, err = kserveVersion(o.kserveBinDir); err != nil {
			fmt.Fprintf(os.Stderr, "up: --kserve: %v\n", err)
			return 1
		}
	}
	if o.knative {
		if !timeoutSet {
			o.timeout = 180 * time.Second
		}
		if o.knativeRelease, o.knativeModule, err = knativeRelease(o.knativeBinDir); err != nil {
			fmt.Fprintf(os.Stderr, "up: --knative: %v\n", err)
			return 1
		}
	}
	if o.nodes < 0 || o.gpusPerNode < 0 {
		fmt.Fprintln(os.Stderr, "up: --nodes and --gpus-per-node must be >= 0")
		return 2
	}
	abs, err := filepath.Abs(o.stateDir)
	if err != nil {
		fmt.Fprintf(os.Stderr, "up: %v\n", err)
		return 1
	}
	o.stateDir = abs

	if s, err := readState(o.stateDir); err == nil && planeHealthy(o.stateDir, s) {
		if s.Knative != o.knative || s.KServe != o.kserve {
			fmt.Fprintf(os.Stderr, "up: a plane with knative=%t kserve=%t is already running under %s; stop it (down) or use another --state-dir\n", s.Knative, s.KServe, o.stateDir)
			return 1
		}
		fmt.Printf("s2z-cluster: already running (state %s)\nexport KUBECONFIG=%s\n", o.stateDir, s.AdminKubeconfig)
		return 0
	}
	// Anything left from a crashed or half-started run is stopped and wiped first.
	stopAll(o.stateDir, true)

	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), o.timeout)
	defer cancel()
	s, err := up(ctx, o)
	if err != nil {
		fmt.Fprintf(os.Stderr, "up: failed to start the local control plane: %v\n", err)
		fmt.Fprintf(os.Stderr, "up: logs are in %s; stopping what was started\n", filepath.Join(o.stateDir, "logs"))
		stopAll(o.stateDir, false)
		return 1
	}
	s.ReadySeconds = time.Since(start).Seconds()
	if err := writeState(o.stateDir, s); err != nil {
		fmt.Fprintf(os.Stderr, "up: failed to write state: %v\n", err)
		stopAll(o.stateDir, false)
		return 1
	}
	fmt.Printf("s2z-cluster: Ready in %.1fs: Kubernetes %s, %d fake GPU nodes x %d GPUs\n", s.ReadySeconds, s.Version, s.Nodes, s.GPUsPerNode)
	if s.Knative {
		fmt.Printf("Knative Serving %s (knative.dev/serving %s): webhook, controller, autoscaler, activator; every pod answered by s2z-podnet\n", s.KnativeRelease, s.KnativeModule)
		if s.KServe {
			fmt.Printf("KServe %s (built against knative.dev/serving %s): controller manager and webhooks\n", s.KServeVersion, s.KServeServing)
		}
		fmt.Printf("activator: %s (e.g. curl -H 'Knative-Serving-Namespace: NS' -H 'Knative-Serving-Revision: REVISION' %s/)\n", s.ActivatorURL, s.ActivatorURL)
	}
	fmt.Printf("export KUBECONFIG=%s\n", s.AdminKubeconfig)
	fmt.Printf("export PATH=%s:$PATH\n", s.BinDir)
	fmt.Printf("restricted identity: %s\n", s.RestrictedKubeconfig)

	if !o.foreground {
		self, _ := os.Executable()
		fmt.Printf("running in the background; stop it with: %s down --state-dir %s\n", self, o.stateDir)
		return 0
	}
	fmt.Println("running in the foreground; Ctrl-C stops it")
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	<-sig
	stopAll(o.stateDir, false)
	return 0
}

func up(ctx context.Context, o upOptions) (*State, error) {
	logDir := filepath.Join(o.stateDir, "logs")
	for _, d := range []string{o.stateDir, logDir, pidDir(o.stateDir)} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, err
		}
	}
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	binDir := filepath.Dir(self)
	creds, err := generateCredentials(o.stateDir)
	if err != nil {
		return nil, fmt.Errorf("generate credentials: %w", err)
	}
	ports := map[string]int{}
	if err := freePorts(ports, "etcd-client", "etcd-peer", "apiserver", "kwok"); err != nil {
		return nil, fmt.Errorf("find free ports: %w", err)
	}
	server := fmt.Sprintf("https://127.0.0.1:%d", ports["apiserver"])
	admin := filepath.Join(o.stateDir, "admin.kubeconfig")
	restricted := filepath.Join(o.stateDir, "restricted.kubeconfig")
	if err := os.WriteFile(admin, []byte(kubeconfig(server, creds.caCert, "s2z-admin", creds.adminToken)), 0o600); err != nil {
		return nil, err
	}
	if err := os.WriteFile(restricted, []byte(kubeconfig(server, creds.caCert, "s2z-restricted", creds.restrictedToken)), 0o600); err != nil {
		return nil, err
	}

	etcdURL := fmt.Sprintf("http://127.0.0.1:%d", ports["etcd-client"])
	if err := spawn(o.stateDir, self, "etcd",
		"--data-dir="+filepath.Join(o.stateDir, "etcd"),
		"--listen-client-url="+etcdURL,
		fmt.Sprintf("--listen-peer-url=http://127.0.0.1:%d", ports["etcd-peer"]),
	); err != nil {
		return nil, err
	}
	if err := waitFor(ctx, "etcd", func() error { return httpOK(nil, etcdURL+"/health", "") }); err != nil {
		return nil, err
	}

	apiserverArgs := []string{
		"--etcd-servers=" + etcdURL,
		"--bind-address=127.0.0.1",
		"--advertise-address=127.0.0.1",
		fmt.Sprintf("--secure-port=%d", ports["apiserver"]),
		"--cert-dir=" + filepath.Join(o.stateDir, "apiserver"),
		"--tls-cert-file=" + creds.servingCert,
		"--tls-private-key-file=" + creds.servKey,
		"--client-ca-file=" + creds.caCert,
		"--token-auth-file=" + creds.tokenFile,
		"--authorization-mode=RBAC",
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file=" + creds.saPub,
		"--service-account-signing-key-file=" + creds.saKey,
		"--service-cluster-ip-range=" + serviceCIDR,
		// A loopback advertise address is refused by the default endpoint reconciler.
		"--endpoint-reconciler-type=none",
		"--allow-privileged=true",
		"--profiling=false",
		"--enable-priority-and-fairness=false",
		"--storage-backend=etcd3",
	}
	if o.knative {
		// Knative's webhook is registered by Service: resolve it through its EndpointSlice, as
		// there is no kube-proxy behind a ClusterIP here.
		apiserverArgs = append(apiserverArgs, "--enable-aggregator-routing=true")
	}
	if err := spawn(o.stateDir, self, "kube-apiserver", apiserverArgs...); err != nil {
		return nil, err
	}
	tlsCfg, err := clientTLS(creds.caCert)
	if err != nil {
		return nil, err
	}
	if err := waitFor(ctx, "kube-apiserver", func() error { return httpOK(tlsCfg, server+"/readyz", creds.adminToken) }); err != nil {
		return nil, err
	}

	if err := spawn(o.stateDir, self, "kube-controller-manager",
		"--kubeconfig="+admin,
		"--leader-elect=false",
		"--secure-port=0",
		"--controllers=*",
		"--service-account-private-key-file="+creds.saKey,
		"--root-ca-file="+creds.caCert,
		"--concurrent-replicaset-syncs=10",
		"--concurrent-deployment-syncs=10",
	); err != nil {
		return nil, err
	}
	if err := spawn(o.stateDir, self, "kube-scheduler",
		"--kubeconfig="+admin,
		"--authentication-kubeconfig="+admin,
		"--authorization-kubeconfig="+admin,
		"--leader-elect=false",
		"--secure-port=0",
	); err != nil {
		return nil, err
	}
	kwokArgs := []string{
		"--kubeconfig=" + admin,
		"--manage-all-nodes=false",
		"--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
		"--cidr=" + podCIDR,
		"--node-lease-duration-seconds=40",
		"--node-ip=10.1.0.1",
		fmt.Sprintf("--server-address=127.0.0.1:%d", ports["kwok"]),
	}
	stages, _ := filepath.Glob(filepath.Join(binDir, "kwok-stages", "*.yaml"))
	if len(stages) == 0 {
		return nil, fmt.Errorf("no KWOK stage files in %s: rebuild with tests/cluster/build", filepath.Join(binDir, "kwok-stages"))
	}
	for _, st := range stages {
		kwokArgs = append(kwokArgs, "--config="+st)
	}
	if err := spawn(o.stateDir, self, "kwok", kwokArgs...); err != nil {
		return nil, err
	}

	kubectl := func(stdin []byte, args ...string) error {
		cmd := exec.CommandContext(ctx, self, append([]string{"kubectl", "--kubeconfig=" + admin}, args...)...)
		cmd.Stdin = bytes.NewReader(stdin)
		out, err := cmd.CombinedOutput()
		if err != nil {
			return fmt.Errorf("kubectl %s: %v: %s", strings.Join(args, " "), err, out)
		}
		return nil
	}
	if o.knative {
		// Upstream's CRDs and ConfigMaps first: the fixtures and our settings go on top of them.
		if err := installKnative(o, kubectl); err != nil {
			return nil, err
		}
	}
	if o.kserve {
		if err := installKServe(o, kubectl); err != nil {
			return nil, err
		}
	}
	var fixtures bytes.Buffer
	if o.kserve {
		fixtures.Write(withoutCRDsOf(crdsYAML, "serving.knative.dev", "autoscaling.internal.knative.dev", "serving.kserve.io"))
		fixtures.WriteString(knativeOverrides(o.knativeModule))
	} else if o.knative {
		fixtures.Write(withoutCRDsOf(crdsYAML, "serving.knative.dev", "autoscaling.internal.knative.dev"))
		fixtures.WriteString(knativeOverrides(o.knativeModule))
	} else {
		fixtures.Write(crdsYAML)
	}
	fixtures.Write(baseYAML)
	fixtures.WriteString(configAutoscaler(o.allowZeroInitial))
	fixtures.WriteString(nodesYAML(o.nodes, o.gpusPerNode, o.gpuProduct))
	if err := kubectl(fixtures.Bytes(), "apply", "--server-side", "--force-conflicts", "-f", "-"); err != nil {
		return nil, err
	}
	// Only when a fixture CRD is left: with --kserve every one is upstream's (waited for above),
	// and `kubectl wait -l` fails when nothing matches.
	if bytes.Contains(fixtures.Bytes(), []byte("kind: CustomResourceDefinition")) {
		if err := kubectl(nil, "wait", "--for=condition=Established", "crd", "-l", "s2z.dev/fixture=true", "--timeout=60s"); err != nil {
			return nil, err
		}
	}
	if o.nodes > 0 {
		if err := kubectl(nil, "wait", "--for=condition=Ready", "node", "-l", "type=kwok", "--timeout=60s"); err != nil {
			return nil, err
		}
	}
	// Pods are refused until the serviceaccount controller has made `default`.
	if err := waitFor(ctx, "default ServiceAccount", func() error { return kubectl(nil, "get", "serviceaccount", "default", "-n", "default") }); err != nil {
		return nil, err
	}
	var activator string
	if o.knative {
		if activator, err = startKnative(ctx, o, admin, ports, kubectl); err != nil {
			return nil, err
		}
	}
	if o.kserve {
		if err := startKServe(ctx, o, admin, ports, kubectl); err != nil {
			return nil, err
		}
	}
	version, _ := os.ReadFile(filepath.Join(binDir, "kubernetes-version"))
	return &State{
		Version:              strings.TrimSpace(string(version)),
		Server:               server,
		AdminKubeconfig:      admin,
		RestrictedKubeconfig: restricted,
		CAFile:               creds.caCert,
		BinDir:               binDir,
		Ports:                ports,
		Nodes:                o.nodes,
		GPUsPerNode:          o.gpusPerNode,
		AllowZeroInitial:     o.allowZeroInitial,
		Knative:              o.knative,
		KnativeRelease:       o.knativeRelease,
		KnativeModule:        o.knativeModule,
		KServe:               o.kserve,
		KServeVersion:        o.kserveVersion,
		KServeServing:        o.kserveServing,
		ActivatorURL:         activator,
	}, nil
}

// spawn starts one component as its own process group, logging to <state>/logs/<name>.log.
func spawn(stateDir, self, name string, args ...string) error {
	return spawnBinary(stateDir, name, self, nil, append([]string{name}, args...)...)
}

// spawnBinary is spawn for any binary, with env as its environment (nil: this process's).
func spawnBinary(stateDir, name, bin string, env []string, args ...string) error {
	logFile, err := os.OpenFile(filepath.Join(stateDir, "logs", name+".log"), os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	defer logFile.Close()
	cmd := exec.Command(bin, args...)
	cmd.Env = env
	cmd.Stdout = logFile
	cmd.Stderr = logFile
	cmd.Stdin = nil
	// Its own process group, so `down` can stop it with everything it started, and so Ctrl-C in
	// the terminal that ran `up` does not reach a background plane.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", name, err)
	}
	pid := cmd.Process.Pid
	// Reap the child if it dies while `up` is still running; a zombie would look alive.
	go func() { _ = cmd.Wait() }()
	return os.WriteFile(filepath.Join(pidDir(stateDir), name+".pid"), []byte(strconv.Itoa(pid)+"\n"), 0o644)
}

// freePorts picks a distinct free loopback port for each name. The ports come from below
// Linux's ephemeral range (32768+), so an outgoing connection cannot take one between this
// check and the component's own bind, and every listener stays open until all are chosen, so
// two names never get the same port.
func freePorts(ports map[string]int, names ...string) error {
	var held []net.Listener
	defer func() {
		for _, l := range held {
			_ = l.Close()
		}
	}()
	for _, name := range names {
		found := false
		for try := 0; try < 200 && !found; try++ {
			port := 20000 + mrand.IntN(12000)
			l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
			if err != nil {
				continue
			}
			held = append(held, l)
			ports[name] = port
			found = true
		}
		if !found {
			return fmt.Errorf("no free port for %s in 20000-31999", name)
		}
	}
	return nil
}

func clientTLS(caFile string) (*tls.Config, error) {
	pemBytes, err := os.ReadFile(caFile)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pemBytes) {
		return nil, errors.New("no CA certificate in " + caFile)
	}
	return &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}, nil
}

func httpOK(tlsCfg *tls.Config, url, token string) error {
	client := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{TLSClientConfig: tlsCfg}}
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: HTTP %d", url, resp.StatusCode)
	}
	return nil
}

func waitFor(ctx context.Context, what string, check func() error) error {
	var last error
	for {
		if last = check(); last == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s not ready: %v", what, last)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// planeHealthy reports whether every recorded component is alive and the apiserver answers.
func planeHealthy(dir string, s *State) bool {
	comps := recordedComponents(dir)
	want := len(startOrder)
	if s.Knative {
		want += len(knativeOrder)
	}
	if s.KServe {
		want += len(kserveOrder)
	}
	if len(comps) != want {
		return false
	}
	for _, c := range comps {
		if !ours(c.pid) {
			return false
		}
	}
	tlsCfg, err := clientTLS(s.CAFile)
	if err != nil {
		return false
	}
	kc, err := os.ReadFile(s.AdminKubeconfig)
	if err != nil {
		return false
	}
	token := ""
	for _, line := range strings.Split(string(kc), "\n") {
		if t, ok := strings.CutPrefix(strings.TrimSpace(line), "token: "); ok {
			token = t
		}
	}
	return httpOK(tlsCfg, s.Server+"/readyz", token) == nil
}
