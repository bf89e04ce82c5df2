// The plane's Service network, as kube-proxy and cluster DNS provide it in a real cluster: with
// --kubeconfig, s2z-podnet watches Services and Endpoints, answers DNS queries for
// <service>.<namespace>.svc.<domain> with the Service's ClusterIP, and relays each TCP connection
// to a ClusterIP:port (routed here like the pod CIDR) to a ready endpoint of that Service port, as
// kube-proxy's userspace mode did. Knative's autoscaler needs both: before it scales a revision to
// zero it probes http://<revision>.<namespace>.svc.cluster.local/healthz to see that the activator
// is in the revision's path (pkg/reconciler/autoscaling/kpa/scaler.go, activatorProbe).

package main

import (
	"context"
	"errors"
	"fmt"
	"log"
	"math/rand/v2"
	"net"
	"strings"
	"time"

	"golang.org/x/net/dns/dnsmessage"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/clientcmd"

	"s2z.dev/tests/knative/internal/relay"
)

// serviceNetwork answers for Service names and virtual IPs from the apiserver's Services and
// Endpoints.
type serviceNetwork struct {
	cidr      *net.IPNet
	domain    string
	services  corelisters.ServiceLister
	endpoints corelisters.EndpointsLister
}

// startServiceNetwork starts the informers and waits for their first list.
func startServiceNetwork(ctx context.Context, kubeconfig, cidr, domain string) (*serviceNetwork, error) {
	_, ipnet, err := net.ParseCIDR(cidr)
	if err != nil {
		return nil, fmt.Errorf("failed to parse --service-cidr %q: %w", cidr, err)
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return nil, fmt.Errorf("failed to load %s: %w", kubeconfig, err)
	}
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("failed to make a client: %w", err)
	}
	factory := informers.NewSharedInformerFactory(client, 0)
	sn := &serviceNetwork{
		cidr:      ipnet,
		domain:    strings.TrimSuffix(domain, "."),
		services:  factory.Core().V1().Services().Lister(),
		endpoints: factory.Core().V1().Endpoints().Lister(),
	}
	factory.Start(ctx.Done())
	for typ, ok := range factory.WaitForCacheSync(ctx.Done()) {
		if !ok {
			return nil, fmt.Errorf("failed to list %v from the apiserver", typ)
		}
	}
	return sn, nil
}

// isVirtual reports whether a connection was made to a Service IP rather than a pod IP.
func (sn *serviceNetwork) isVirtual(ip net.IP) bool { return sn != nil && sn.cidr.Contains(ip) }

// backend picks a ready endpoint for clusterIP:port, as kube-proxy would (at random).
func (sn *serviceNetwork) backend(clusterIP string, port int32) (string, error) {
	all, err := sn.services.List(labels.Everything())
	if err != nil {
		return "", err
	}
	for _, svc := range all {
		if svc.Spec.ClusterIP != clusterIP {
			continue
		}
		for _, sp := range svc.Spec.Ports {
			if sp.Port != port || sp.Protocol != corev1.ProtocolTCP {
				continue
			}
			eps, err := sn.endpoints.Endpoints(svc.Namespace).Get(svc.Name)
			if err != nil {
				return "", fmt.Errorf("service %s/%s: %w", svc.Namespace, svc.Name, err)
			}
			var targets []string
			for _, subset := range eps.Subsets {
				for _, ep := range subset.Ports {
					if ep.Name != sp.Name {
						continue
					}
					for _, a := range subset.Addresses {
						targets = append(targets, net.JoinHostPort(a.IP, fmt.Sprint(ep.Port)))
					}
				}
			}
			if len(targets) == 0 {
				return "", fmt.Errorf("service %s/%s port %d has no ready endpoint", svc.Namespace, svc.Name, port)
			}
			return targets[rand.IntN(len(targets))], nil
		}
		return "", fmt.Errorf("service %s/%s has no TCP port %d", svc.Namespace, svc.Name, port)
	}
	return "", fmt.Errorf("no service has the IP %s", clusterIP)
}

// relay connects a connection made to a Service IP to one of its endpoints.
func (sn *serviceNetwork) relay(in net.Conn) {
	defer in.Close()
	local, ok := in.LocalAddr().(*net.TCPAddr)
	if !ok {
		return
	}
	target, err := sn.backend(local.IP.String(), int32(local.Port))
	if err != nil {
		// As kube-proxy's REJECT rule for a Service without endpoints: the connection closes.
		log.Printf("s2z-podnet: %v", err)
		return
	}
	out, err := net.DialTimeout("tcp", target, 5*time.Second)
	if err != nil {
		log.Printf("s2z-podnet: failed to reach %s for %s: %v", target, local, err)
		return
	}
	defer out.Close()
	relay.Pipe(in, out)
}

// splitListener hands connections made to a Service IP to the relay and the rest (to pod IPs)
// to the HTTP server that Accepts from it.
type splitListener struct {
	net.Listener
	sn    *serviceNetwork
	conns chan net.Conn
	errs  chan error
}

func newSplitListener(ln net.Listener, sn *serviceNetwork) net.Listener {
	if sn == nil {
		return ln
	}
	s := &splitListener{Listener: ln, sn: sn, conns: make(chan net.Conn), errs: make(chan error, 1)}
	go s.run()
	return s
}

func (s *splitListener) run() {
	for {
		c, err := s.Listener.Accept()
		if err != nil {
			s.errs <- err
			return
		}
		if a, ok := c.LocalAddr().(*net.TCPAddr); ok && s.sn.isVirtual(a.IP) {
			go s.sn.relay(c)
			continue
		}
		s.conns <- c
	}
}

func (s *splitListener) Accept() (net.Conn, error) {
	select {
	case c := <-s.conns:
		return c, nil
	case err := <-s.errs:
		return nil, err
	}
}

// serveDNS answers A queries for <service>.<namespace>.svc.<domain> with the Service's
// ClusterIP, and every other name with NXDOMAIN (there is nothing else to resolve here).
func (sn *serviceNetwork) serveDNS(ctx context.Context, addr string) error {
	pc, err := net.ListenPacket("udp", addr)
	if err != nil {
		return fmt.Errorf("failed to listen for DNS on %s: %w", addr, err)
	}
	go func() {
		<-ctx.Done()
		pc.Close()
	}()
	buf := make([]byte, 1500)
	for {
		n, from, err := pc.ReadFrom(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			return err
		}
		if reply, err := sn.answer(buf[:n]); err == nil {
			_, _ = pc.WriteTo(reply, from)
		}
	}
}

func (sn *serviceNetwork) answer(query []byte) ([]byte, error) {
	var p dnsmessage.Parser
	h, err := p.Start(query)
	if err != nil {
		return nil, err
	}
	q, err := p.Question()
	if err != nil {
		return nil, err
	}
	h.Response, h.Authoritative, h.RecursionAvailable = true, true, false
	ip, known := sn.lookup(q.Name.String())
	if !known {
		h.RCode = dnsmessage.RCodeNameError
	}
	b := dnsmessage.NewBuilder(nil, h)
	b.EnableCompression()
	if err := b.StartQuestions(); err != nil {
		return nil, err
	}
	if err := b.Question(q); err != nil {
		return nil, err
	}
	if err := b.StartAnswers(); err != nil {
		return nil, err
	}
	// A known name asked for another type (AAAA) gets an empty answer, as from CoreDNS.
	if known && q.Type == dnsmessage.TypeA {
		var a [4]byte
		copy(a[:], ip.To4())
		err := b.AResource(dnsmessage.ResourceHeader{Name: q.Name, Class: dnsmessage.ClassINET, TTL: 5}, dnsmessage.AResource{A: a})
		if err != nil {
			return nil, err
		}
	}
	return b.Finish()
}

// lookup resolves <service>.<namespace>.svc.<domain>.
func (sn *serviceNetwork) lookup(name string) (net.IP, bool) {
	rest, ok := strings.CutSuffix(strings.ToLower(name), ".svc."+sn.domain+".")
	if !ok {
		return nil, false
	}
	parts := strings.Split(rest, ".")
	if len(parts) != 2 {
		return nil, false
	}
	svc, err := sn.services.Services(parts[1]).Get(parts[0])
	if err != nil {
		return nil, false
	}
	ip := net.ParseIP(svc.Spec.ClusterIP).To4()
	if ip == nil {
		return nil, false
	}
	return ip, true
}
