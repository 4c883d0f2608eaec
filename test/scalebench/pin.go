package main

import (
	"errors"
	"io"
	"net"
	"strings"
	"sync"
)

// pin is a fixed local address for one API server, which moves to a new
// port each time it restarts: clients pinned to one server (the
// coordinator to its own, so that its requests are counted apart) keep
// their address across the issuer change. It forwards TCP; TLS is between
// the client and the API server.
type pin struct {
	ln     net.Listener
	target func() string // the server's https:// URL, "" while it is down
	mu     sync.Mutex
	conns  map[net.Conn]bool
}

func newPin(target func() string) (*pin, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	p := &pin{ln: ln, target: target, conns: map[net.Conn]bool{}}
	go p.serve()
	return p, nil
}

// URL is the pinned address.
func (p *pin) URL() string { return "https://" + p.ln.Addr().String() }

func (p *pin) serve() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		go p.forward(c)
	}
}

func (p *pin) forward(c net.Conn) {
	addr := strings.TrimPrefix(p.target(), "https://")
	if addr == "" {
		c.Close()
		return
	}
	b, err := net.Dial("tcp", addr)
	if err != nil {
		c.Close()
		return
	}
	p.track(c, b)
	var wg sync.WaitGroup
	for _, dir := range [][2]net.Conn{{b, c}, {c, b}} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, _ = io.Copy(dir[0], dir[1])
			// One side ended: end the other, so the client sees the
			// server go away.
			dir[0].Close()
			dir[1].Close()
		}()
	}
	wg.Wait()
	p.untrack(c, b)
}

func (p *pin) track(conns ...net.Conn) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range conns {
		p.conns[c] = true
	}
}

func (p *pin) untrack(conns ...net.Conn) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range conns {
		delete(p.conns, c)
	}
}

// cut closes every forwarded connection, as the server's host going down
// would: the API server waits for open watches when it shuts down.
func (p *pin) cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for c := range p.conns {
		c.Close()
	}
}

func (p *pin) close() error {
	p.cut()
	if err := p.ln.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
		return err
	}
	return nil
}
