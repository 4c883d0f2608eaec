package controlplane

import (
	"io"
	"net"
	"sync"
	"time"
)

// balancer is a TCP load balancer in front of the API servers, as a real
// cluster has: TLS passes through it, so every client sees one stable address
// while the servers behind it are restarted one at a time.
type balancer struct {
	ln net.Listener

	mu       sync.Mutex
	backends []string // host:port, "" while that server is down
	next     int
	conns    map[net.Conn]struct{}
	closed   bool
	wg       sync.WaitGroup
}

func newBalancer() (*balancer, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	b := &balancer{ln: ln, conns: map[net.Conn]struct{}{}}
	b.wg.Add(1)
	go b.serve()
	return b, nil
}

func (b *balancer) addr() string { return b.ln.Addr().String() }

// set marks backend i up at addr, or down when addr is "".
func (b *balancer) set(i int, addr string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for len(b.backends) <= i {
		b.backends = append(b.backends, "")
	}
	b.backends[i] = addr
}

func (b *balancer) candidates() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []string
	n := len(b.backends)
	for k := 0; k < n; k++ {
		if a := b.backends[(b.next+k)%n]; a != "" {
			out = append(out, a)
		}
	}
	if n > 0 {
		b.next = (b.next + 1) % n
	}
	return out
}

func (b *balancer) track(c net.Conn, add bool) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if add {
		if b.closed {
			return false
		}
		b.conns[c] = struct{}{}
	} else {
		delete(b.conns, c)
	}
	return true
}

func (b *balancer) serve() {
	defer b.wg.Done()
	for {
		c, err := b.ln.Accept()
		if err != nil {
			return
		}
		b.wg.Add(1)
		go func() {
			defer b.wg.Done()
			b.proxy(c)
		}()
	}
}

func (b *balancer) proxy(client net.Conn) {
	defer client.Close()
	var server net.Conn
	// The servers see the client's own address, as behind a load balancer
	// that keeps the source (every address of 127/8 is local), so that
	// their audit log attributes a request to the pod that sent it.
	dialer := net.Dialer{Timeout: 2 * time.Second}
	if a, ok := client.RemoteAddr().(*net.TCPAddr); ok && a.IP.IsLoopback() {
		dialer.LocalAddr = &net.TCPAddr{IP: a.IP}
	}
	for _, addr := range b.candidates() {
		c, err := dialer.Dial("tcp", addr)
		if err == nil {
			server = c
			break
		}
	}
	if server == nil {
		return
	}
	defer server.Close()
	if !b.track(client, true) {
		return
	}
	b.track(server, true)
	defer b.track(client, false)
	defer b.track(server, false)
	done := make(chan struct{}, 2)
	pipe := func(dst, src net.Conn) {
		_, _ = io.Copy(dst, src)
		if tc, ok := dst.(*net.TCPConn); ok {
			_ = tc.CloseWrite()
		}
		done <- struct{}{}
	}
	go pipe(server, client)
	go pipe(client, server)
	<-done
	<-done
}

// closeBackend cuts every connection to addr, as a server's death would.
func (b *balancer) closeBackend(addr string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for c := range b.conns {
		if c.RemoteAddr().String() == addr {
			c.Close()
		}
	}
}

func (b *balancer) close() {
	b.ln.Close()
	b.mu.Lock()
	b.closed = true
	for c := range b.conns {
		c.Close()
	}
	b.mu.Unlock()
	b.wg.Wait()
}
