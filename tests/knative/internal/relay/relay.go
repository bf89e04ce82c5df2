// Package relay copies bytes both ways between two connections, for the plumbing programs of the
// local plane (s2z-knative-run's apiserver relay, s2z-podnet's Service relay).
package relay

import (
	"io"
	"net"
	"sync"
)

// Pipe copies a to b and b to a until both directions end, half-closing each side's write end
// when its source is done, so that a request/response protocol sees the end of a request.
func Pipe(a, b net.Conn) {
	var wg sync.WaitGroup
	wg.Add(2)
	copyHalf := func(dst, src net.Conn) {
		defer wg.Done()
		_, _ = io.Copy(dst, src)
		if cw, ok := dst.(interface{ CloseWrite() error }); ok {
			_ = cw.CloseWrite()
		}
	}
	go copyHalf(a, b)
	go copyHalf(b, a)
	wg.Wait()
}
