package controlplane

import (
	"net"
	"testing"
	"time"
)

// The API servers see a client's own loopback address through the load
// balancer, so that they can attribute a request to the pod that sent it.
func TestBalancerKeepsTheSourceAddress(t *testing.T) {
	backend, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer backend.Close()
	seen := make(chan string, 1)
	go func() {
		c, err := backend.Accept()
		if err != nil {
			return
		}
		seen <- c.RemoteAddr().(*net.TCPAddr).IP.String()
		c.Close()
	}()
	b, err := newBalancer()
	if err != nil {
		t.Fatal(err)
	}
	defer b.close()
	b.set(0, backend.Addr().String())
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.1.2.3")}, Timeout: 2 * time.Second}
	c, err := d.Dial("tcp", b.addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	select {
	case ip := <-seen:
		if ip != "127.1.2.3" {
			t.Errorf("the API server saw %s, want the client's 127.1.2.3", ip)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the balancer never reached the server")
	}
}
