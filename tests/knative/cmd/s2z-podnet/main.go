// Command s2z-podnet answers for every KWOK pod of a local plane as that pod's queue-proxy and
// user container would, so that Knative's scale loop runs for real: the autoscaler scrapes each
// pod's stats, and the activator probes each pod and proxies requests to it.
//
//	s2z-podnet [--user-port=8012] [--metrics-port=9090] [--report-period=1s] [--idle-timeout=5m]
//	           [--kubeconfig=FILE --service-cidr=CIDR [--service-ports=80,81] [--dns-addr=:53]]
//
// It runs in a network namespace of its own, where `s2z-cluster up --knative` has routed the
// whole pod CIDR to the loopback device (`ip route add local 10.244.0.0/16 dev lo`), so a socket
// listening on 0.0.0.0 accepts connections for every pod IP. The destination address of each
// connection says which pod is asked. One process serves every pod of the plane; a pod's state
// (its request statistics) is made on first contact and dropped after --idle-timeout without any.
//
// What each pod serves is built from knative.dev/serving's own queue-proxy parts, as
// cmd/queue composes them: the Drainer answers the activator's and the autoscaler's probes with
// health.ProbeHandler, queue.ProxyHandler counts requests in and out (proxied ones, with the
// activator's Knative-Proxy header, apart) in netstats.RequestStats, and every --report-period the
// report goes to queue.ProtobufStatsReporter, which is what the autoscaler reads on :9090/metrics.
// The "user container" behind it answers "Hello from <pod IP>" and, with ?sleep=DURATION, holds
// the request that long first, so that a test can keep a known concurrency on a revision.
//
// With --kubeconfig it also plays the plane's Service network (services.go): cluster DNS for
// Service names, and a relay from each Service IP:port to a ready endpoint.
//
// This program is our own plumbing for the local plane; it is not part of Knative.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"go.opentelemetry.io/otel/trace/noop"
	netheader "knative.dev/networking/pkg/http/header"
	netstats "knative.dev/networking/pkg/http/stats"
	pkghandler "knative.dev/pkg/network/handlers"
	"knative.dev/serving/pkg/queue"
	"knative.dev/serving/pkg/queue/health"
)

// maxSleep bounds ?sleep= so that no request can hold a connection past a test's lifetime.
const maxSleep = 10 * time.Minute

func main() {
	userPort := flag.Int("user-port", 8012, "the queue-proxy's serving port (networking.BackendHTTPPort)")
	metricsPort := flag.Int("metrics-port", 9090, "the queue-proxy's autoscaler metrics port (networking.AutoscalingQueueMetricsPort)")
	period := flag.Duration("report-period", time.Second, "how often each pod's request statistics are reported, as queue-proxy's reportingPeriod")
	idle := flag.Duration("idle-timeout", 5*time.Minute, "drop a pod's state after this long without a request or scrape")
	kubeconfig := flag.String("kubeconfig", "", "also serve Service names and IPs, watching Services and Endpoints with this kubeconfig")
	serviceCIDR := flag.String("service-cidr", "10.0.0.0/16", "with --kubeconfig: the apiserver's --service-cluster-ip-range, routed here")
	servicePorts := flag.String("service-ports", "80,81", "with --kubeconfig: Service ports relayed besides the user and metrics ports (Knative's http and h2c Service ports)")
	dnsAddr := flag.String("dns-addr", ":53", "with --kubeconfig: where cluster DNS answers (UDP)")
	domain := flag.String("cluster-domain", "cluster.local", "with --kubeconfig: the cluster domain of Service names")
	flag.Parse()

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()

	var sn *serviceNetwork
	if *kubeconfig != "" {
		var err error
		if sn, err = startServiceNetwork(ctx, *kubeconfig, *serviceCIDR, *domain); err != nil {
			log.Fatalf("s2z-podnet: %v", err)
		}
		go func() {
			if err := sn.serveDNS(ctx, *dnsAddr); err != nil {
				log.Fatalf("s2z-podnet: %v", err)
			}
		}()
		for _, port := range strings.Split(*servicePorts, ",") {
			ln, err := net.Listen("tcp", ":"+strings.TrimSpace(port))
			if err != nil {
				log.Fatalf("s2z-podnet: failed to listen on Service port %s: %v", port, err)
			}
			go serviceOnly(ln, sn)
		}
	}

	pods := newPods(*period)
	go pods.run(ctx, *period, *idle)

	servers := []*http.Server{
		{Addr: fmt.Sprintf(":%d", *userPort), Handler: http.HandlerFunc(pods.serveUser), ReadHeaderTimeout: 10 * time.Second},
		{Addr: fmt.Sprintf(":%d", *metricsPort), Handler: http.HandlerFunc(pods.serveMetrics), ReadHeaderTimeout: 10 * time.Second},
	}
	errCh := make(chan error, len(servers))
	for _, s := range servers {
		ln, err := net.Listen("tcp", s.Addr)
		if err != nil {
			log.Fatalf("s2z-podnet: failed to listen on %s: %v", s.Addr, err)
		}
		go func(s *http.Server, ln net.Listener) {
			if err := s.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				errCh <- err
			}
		}(s, newSplitListener(ln, sn))
	}
	log.Printf("s2z-podnet: serving every pod IP routed here: user port %d, metrics port %d", *userPort, *metricsPort)

	select {
	case <-ctx.Done():
	case err := <-errCh:
		log.Printf("s2z-podnet: %v", err)
		os.Exit(1)
	}
	shutdown, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for _, s := range servers {
		_ = s.Shutdown(shutdown)
	}
}

// serviceOnly relays the connections to Service IPs on a port no pod serves, and closes the rest.
func serviceOnly(ln net.Listener, sn *serviceNetwork) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		if a, ok := c.LocalAddr().(*net.TCPAddr); ok && sn.isVirtual(a.IP) {
			go sn.relay(c)
			continue
		}
		_ = c.Close()
	}
}

// pod is what one pod's queue-proxy keeps.
type pod struct {
	stats    *netstats.RequestStats
	reporter *queue.ProtobufStatsReporter
	handler  http.Handler
	lastSeen atomic.Int64 // unix nanoseconds
}

// pods is every pod that has been contacted, by IP.
type pods struct {
	period time.Duration
	mu     sync.Mutex
	byIP   map[string]*pod
}

func newPods(period time.Duration) *pods {
	return &pods{period: period, byIP: map[string]*pod{}}
}

// get returns the pod a connection was made to, by the connection's local (destination) address.
func (p *pods) get(r *http.Request) (string, *pod, error) {
	addr, ok := r.Context().Value(http.LocalAddrContextKey).(net.Addr)
	if !ok {
		return "", nil, errors.New("no local address on the connection")
	}
	host, _, err := net.SplitHostPort(addr.String())
	if err != nil {
		return "", nil, err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	q, ok := p.byIP[host]
	if !ok {
		q = p.newPod(host)
		p.byIP[host] = q
	}
	q.lastSeen.Store(time.Now().UnixNano())
	return host, q, nil
}

// newPod composes the queue-proxy handler chain for one pod, in cmd/queue's order (the parts it
// does not need here, such as tracing, timeouts and request logs, left out).
func (p *pods) newPod(ip string) *pod {
	tracer := noop.NewTracerProvider().Tracer("s2z-podnet")
	stats := netstats.NewRequestStats(time.Now())
	// No breaker: each pod takes any concurrency (containerConcurrency 0, Knative's default).
	proxy := queue.ProxyHandler(tracer, nil, stats, userContainer(ip))
	return &pod{
		stats: stats,
		// The pod's name is not known here; its IP names it in the stats, which the autoscaler
		// only averages when it scrapes pods directly.
		reporter: queue.NewProtobufStatsReporter("pod-"+ip, p.period),
		handler: &pkghandler.Drainer{
			HealthCheckUAPrefixes: []string{netheader.ActivatorUserAgent, netheader.AutoscalingUserAgent},
			Inner:                 proxy,
			HealthCheck:           health.ProbeHandler(tracer, func() bool { return true }),
		},
	}
}

func (p *pods) serveUser(w http.ResponseWriter, r *http.Request) {
	_, q, err := p.get(r)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	q.handler.ServeHTTP(w, r)
}

func (p *pods) serveMetrics(w http.ResponseWriter, r *http.Request) {
	_, q, err := p.get(r)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	queue.NewStatsHandler(q.reporter).ServeHTTP(w, r)
}

// run reports every pod's statistics each period, as queue-proxy's report ticker does, and drops
// pods not seen for idle.
func (p *pods) run(ctx context.Context, period, idle time.Duration) {
	t := time.NewTicker(period)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			p.mu.Lock()
			for ip, q := range p.byIP {
				if now.Sub(time.Unix(0, q.lastSeen.Load())) > idle {
					delete(p.byIP, ip)
					continue
				}
				q.reporter.Report(q.stats.Report(now))
			}
			p.mu.Unlock()
		}
	}
}

// userContainer is the revision's container: it answers with the pod's address, after holding
// the request for ?sleep=DURATION (at most maxSleep) when asked.
func userContainer(ip string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if s := r.URL.Query().Get("sleep"); s != "" {
			d, err := time.ParseDuration(s)
			if err != nil || d < 0 || d > maxSleep {
				http.Error(w, fmt.Sprintf("bad sleep %q: want a duration between 0 and %s", s, maxSleep), http.StatusBadRequest)
				return
			}
			select {
			case <-time.After(d):
			case <-r.Context().Done():
				return
			}
		}
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		fmt.Fprintf(w, "Hello from %s\n", ip)
	})
}
