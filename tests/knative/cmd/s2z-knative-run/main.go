// Command s2z-knative-run starts one Knative Serving binary for `s2z-cluster up --knative`, and
// stays its parent so the launcher can record, watch and stop it.
//
//	s2z-knative-run [--netns [--join=/run/netns/NAME] [--forward=127.0.0.1:PORT] [--hosts=FILE] [--resolv=FILE]] -- BINARY ARGS...
//
// Knative's binaries are written to run one per pod, so several of them bind fixed ports on all
// addresses: the controller serves health probes on :8080 (knative.dev/pkg/injection
// HealthCheckDefaultPort) and the autoscaler serves its stat websocket on :8080
// (cmd/autoscaler statsServerAddr). On one host the second one to start exits with "address
// already in use". With --netns the binary gets its own network namespace, as it would in a pod:
// nothing in it reaches the host's network except the address given to --forward (the
// apiserver): a second copy of this program, inside the namespace, listens on that address and
// relays each connection over a Unix socket to this one, which dials the same address on the host.
// Without root, the namespace is made inside a new user namespace (where the kernel allows it).
// With --join, the binary runs in an existing named network namespace instead of a new one (the
// launcher makes one for the webhook, joined to the host by a veth pair; this needs root).
// With --hosts, the binary also gets its own mount namespace, with FILE bind-mounted on
// /etc/hosts, as `ip netns exec` does with /etc/netns/NAME/hosts: the activator dials the
// autoscaler by its Service's DNS name (autoscaler.knative-serving.svc.cluster.local), and the
// plane has no cluster DNS, so the name is written there. --resolv does the same for
// /etc/resolv.conf, to point a binary at the plane's DNS for Service names (s2z-podnet).
// The Knative binary itself runs unmodified.
//
// This program is our own plumbing; it is not part of Knative.
package main

import (
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"s2z.dev/tests/knative/internal/relay"
)

// netnsChild is the hidden first argument of the side that runs inside the new namespace.
const netnsChild = "__netns-child"

func main() {
	if len(os.Args) > 1 && os.Args[1] == netnsChild {
		os.Exit(runNetnsChild(os.Args[2:]))
	}
	os.Exit(run())
}

func run() int {
	fs := flag.NewFlagSet("s2z-knative-run", flag.ContinueOnError)
	netns := fs.Bool("netns", false, "run the binary in its own network namespace")
	forward := fs.String("forward", "", "with --netns: a host address (the apiserver's) made reachable at the same address inside the namespace")
	join := fs.String("join", "", "with --netns: join this existing network namespace (a path such as /run/netns/NAME) instead of making a new one")
	hosts := fs.String("hosts", "", "with --netns: bind-mount this file on /etc/hosts in a mount namespace of the binary's own")
	resolv := fs.String("resolv", "", "with --netns: bind-mount this file on /etc/resolv.conf in a mount namespace of the binary's own")
	if err := fs.Parse(os.Args[1:]); err != nil {
		return 2
	}
	argv := fs.Args()
	if len(argv) == 0 {
		fmt.Fprintln(os.Stderr, "usage: s2z-knative-run [--netns [--join=/run/netns/NAME] [--forward=127.0.0.1:PORT] [--hosts=FILE] [--resolv=FILE]] -- BINARY ARGS...")
		return 2
	}
	if (*forward != "" || *join != "" || *hosts != "" || *resolv != "") && !*netns {
		fmt.Fprintln(os.Stderr, "s2z-knative-run: --forward, --join, --hosts and --resolv need --netns")
		return 2
	}
	if !*netns {
		return supervise(argv, nil)
	}

	// The two sides of the relay meet on a Unix socket: a socket path is reachable from every
	// network namespace, a TCP address only from its own.
	self, err := os.Executable()
	if err != nil {
		fmt.Fprintf(os.Stderr, "s2z-knative-run: %v\n", err)
		return 1
	}
	childArgs := []string{self, netnsChild}
	if *forward != "" {
		dir, err := os.MkdirTemp("", "s2z-knative-run-")
		if err != nil {
			fmt.Fprintf(os.Stderr, "s2z-knative-run: %v\n", err)
			return 1
		}
		defer os.RemoveAll(dir)
		sock := filepath.Join(dir, "relay.sock")
		ln, err := net.Listen("unix", sock)
		if err != nil {
			fmt.Fprintf(os.Stderr, "s2z-knative-run: %v\n", err)
			return 1
		}
		defer ln.Close()
		go relayAll(ln, "tcp", *forward)
		childArgs = append(childArgs, "--listen="+*forward, "--relay="+sock)
	}
	namespaces := newNetns
	if *join != "" {
		namespaces = joinNetns(*join)
	}
	mounts := false
	for flagName, file := range map[string]string{"hosts": *hosts, "resolv": *resolv} {
		if file == "" {
			continue
		}
		abs, err := filepath.Abs(file)
		if err == nil {
			_, err = os.Stat(abs)
		}
		if err != nil {
			fmt.Fprintf(os.Stderr, "s2z-knative-run: --%s: %v\n", flagName, err)
			return 2
		}
		childArgs = append(childArgs, "--"+flagName+"="+abs)
		mounts = true
	}
	if mounts {
		namespaces = withMountNamespace(namespaces)
	}
	childArgs = append(childArgs, "--")
	return supervise(append(childArgs, argv...), namespaces)
}

// withMountNamespace adds a new mount namespace to a namespace request, for --hosts.
func withMountNamespace(namespaces func(*exec.Cmd, bool) error) func(*exec.Cmd, bool) error {
	return func(cmd *exec.Cmd, withUser bool) error {
		if err := namespaces(cmd, withUser); err != nil {
			return err
		}
		cmd.SysProcAttr.Cloneflags |= syscall.CLONE_NEWNS
		return nil
	}
}

// bindFiles runs in the child's own mount namespace: it stops mounts from propagating back to
// the host's, then bind-mounts each file on its target (/etc/hosts, /etc/resolv.conf).
func bindFiles(files map[string]string) error {
	if len(files) == 0 {
		return nil
	}
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		return fmt.Errorf("make / private in the new mount namespace: %w", err)
	}
	for target, file := range files {
		if err := unix.Mount(file, target, "", unix.MS_BIND, ""); err != nil {
			return fmt.Errorf("bind-mount %s on %s: %w", file, target, err)
		}
	}
	return nil
}

// joinNetns moves the thread that starts the child (locked to its goroutine by supervise, and
// discarded with it) into the network namespace at path; the child inherits it.
func joinNetns(path string) func(*exec.Cmd, bool) error {
	return func(cmd *exec.Cmd, withUser bool) error {
		if withUser {
			return fmt.Errorf("joining %s needs root", path)
		}
		fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("open %s: %w", path, err)
		}
		defer unix.Close(fd)
		if err := unix.Setns(fd, unix.CLONE_NEWNET); err != nil {
			return fmt.Errorf("join %s: %w", path, err)
		}
		return nil
	}
}

// newNetns is the namespace request for the child: a new network namespace, plus a new user
// namespace when this process may not create a network namespace by itself (not root).
func newNetns(cmd *exec.Cmd, withUser bool) error {
	cmd.SysProcAttr.Cloneflags = syscall.CLONE_NEWNET
	if withUser {
		cmd.SysProcAttr.Cloneflags |= syscall.CLONE_NEWUSER
		// Root inside the user namespace only, so that the child may bring its loopback up.
		cmd.SysProcAttr.UidMappings = []syscall.SysProcIDMap{{ContainerID: 0, HostID: os.Getuid(), Size: 1}}
		cmd.SysProcAttr.GidMappings = []syscall.SysProcIDMap{{ContainerID: 0, HostID: os.Getgid(), Size: 1}}
	}
	return nil
}

// supervise runs argv as a child, passes SIGTERM and SIGINT on to it, and exits as it did.
func supervise(argv []string, namespaces func(*exec.Cmd, bool) error) int {
	// Signals are caught before the child starts, so none is lost.
	sig := make(chan os.Signal, 4)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)

	startCh := make(chan error, 1)
	doneCh := make(chan error, 1)
	var cmd *exec.Cmd
	go func() {
		// Linux sends Pdeathsig when the *thread* that started the child exits, so that thread
		// stays locked to this goroutine, which lives as long as the child.
		runtime.LockOSThread()
		start := func(withUser bool) error {
			cmd = exec.Command(argv[0], argv[1:]...)
			cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
			cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
			if namespaces != nil {
				if err := namespaces(cmd, withUser); err != nil {
					return err
				}
			}
			return cmd.Start()
		}
		err := start(false)
		if err != nil && namespaces != nil && errors.Is(err, syscall.EPERM) {
			err = start(true)
		}
		startCh <- err
		if err == nil {
			doneCh <- cmd.Wait()
		}
	}()
	if err := <-startCh; err != nil {
		if namespaces != nil {
			err = fmt.Errorf("start %v in a new network namespace: %w", argv[2:], err)
		}
		fmt.Fprintf(os.Stderr, "s2z-knative-run: %v\n", err)
		return 1
	}
	for {
		select {
		case sg := <-sig:
			_ = cmd.Process.Signal(sg)
		case err := <-doneCh:
			var exit *exec.ExitError
			if errors.As(err, &exit) {
				if ws, ok := exit.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
					fmt.Fprintf(os.Stderr, "s2z-knative-run: %s killed by %v\n", argv[0], ws.Signal())
					return 128 + int(ws.Signal())
				}
				return exit.ExitCode()
			}
			if err != nil {
				fmt.Fprintf(os.Stderr, "s2z-knative-run: %v\n", err)
				return 1
			}
			return 0
		}
	}
}

// runNetnsChild runs inside the new network namespace: it brings the loopback interface up,
// listens on --listen and relays each connection to the Unix socket --relay (served by the parent
// in the host's namespace), then runs the Knative binary.
func runNetnsChild(args []string) int {
	fs := flag.NewFlagSet(netnsChild, flag.ContinueOnError)
	listen := fs.String("listen", "", "address to listen on inside the namespace")
	relay := fs.String("relay", "", "Unix socket to relay connections to")
	hosts := fs.String("hosts", "", "file to bind-mount on /etc/hosts (the parent made a mount namespace for it)")
	resolv := fs.String("resolv", "", "file to bind-mount on /etc/resolv.conf (likewise)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	files := map[string]string{}
	if *hosts != "" {
		files["/etc/hosts"] = *hosts
	}
	if *resolv != "" {
		files["/etc/resolv.conf"] = *resolv
	}
	if err := bindFiles(files); err != nil {
		fmt.Fprintf(os.Stderr, "s2z-knative-run: %v\n", err)
		return 1
	}
	if err := loopbackUp(); err != nil {
		fmt.Fprintf(os.Stderr, "s2z-knative-run: bring up lo in the new network namespace: %v\n", err)
		return 1
	}
	if *listen != "" {
		ln, err := net.Listen("tcp", *listen)
		if err != nil {
			fmt.Fprintf(os.Stderr, "s2z-knative-run: %v\n", err)
			return 1
		}
		defer ln.Close()
		go relayAll(ln, "unix", *relay)
	}
	return supervise(fs.Args(), nil)
}

func loopbackUp() error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq("lo")
	if err != nil {
		return err
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		return err
	}
	ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
	return unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr)
}

// relayAll relays every connection accepted on ln to network/address.
func relayAll(ln net.Listener, network, address string) {
	for {
		in, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			fmt.Fprintf(os.Stderr, "s2z-knative-run: accept: %v\n", err)
			time.Sleep(100 * time.Millisecond)
			continue
		}
		go func() {
			defer in.Close()
			out, err := net.DialTimeout(network, address, 10*time.Second)
			if err != nil {
				fmt.Fprintf(os.Stderr, "s2z-knative-run: relay to %s: %v\n", address, err)
				return
			}
			defer out.Close()
			relay.Pipe(in, out)
		}()
	}
}
