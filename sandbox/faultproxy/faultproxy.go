// Package faultproxy is an HTTP reverse proxy on loopback in front of a
// real kube-apiserver that answers chosen requests with a fault: a 500, a
// 429 with Retry-After, or no answer at all after the request reached the
// server (the client's timeout ends it). Tests and the sandbox put it
// between tokenroll's processes and the control plane to show what
// transient faults do to a real run. Only tests and the sandbox import it.
//
// One proxy speaks for one identity: clients reach it over plain HTTP on
// 127.0.0.1 with no credentials, and it forwards as the identity of the
// rest.Config it was built with (a client certificate cannot pass through
// a proxy that reads the requests).
package faultproxy

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
)

// Fault is what the proxy does instead of answering.
type Fault string

const (
	// ServerError answers 500 InternalError without forwarding.
	ServerError Fault = "500"
	// Throttle answers 429 TooManyRequests with Retry-After without
	// forwarding.
	Throttle Fault = "429"
	// Hang forwards the request, drops the server's answer and holds the
	// connection until the client gives up: a write that landed and whose
	// answer was lost.
	Hang Fault = "hang"
)

// Rule picks requests and the fault they get. Empty selectors match any.
type Rule struct {
	// Verb is the request's verb as RBAC names it: get, list, watch,
	// create, update, patch, delete, deletecollection.
	Verb string
	// Resource and Subresource as in the request's path ("nodes",
	// "status").
	Resource, Subresource string
	Fault                 Fault
	// RetryAfter is the Retry-After, in seconds, of a Throttle.
	RetryAfter int
	// Skip lets the first Skip matching requests through; then Count
	// requests get the fault (0: no limit), each with Probability (0: 1).
	Skip, Count int
	Probability float64
}

// Request is what a rule matches.
type Request struct {
	Verb, Resource, Subresource, Namespace, Name string
}

func (r Rule) matches(q Request) bool {
	return (r.Verb == "" || r.Verb == q.Verb) && (r.Resource == "" || r.Resource == q.Resource) &&
		(r.Subresource == "" || r.Subresource == q.Subresource)
}

// Injection is one fault injected.
type Injection struct {
	Rule    int
	Fault   Fault
	Request Request
}

// Proxy is a running fault proxy.
type Proxy struct {
	srv       *http.Server
	ln        net.Listener
	upstream  *url.URL
	transport http.RoundTripper
	forward   *httputil.ReverseProxy
	done      chan struct{}
	closeOnce sync.Once

	mu       sync.Mutex
	rules    []Rule
	seen     []int // matching requests per rule
	rng      *rand.Rand
	injected []Injection
}

// New starts a proxy on 127.0.0.1 that forwards to the API server upstream
// names, as upstream's identity, injecting faults as rules say (the first
// rule that matches and fires wins); seed fixes the draws of Probability.
func New(upstream *rest.Config, seed uint64, rules ...Rule) (*Proxy, error) {
	u, err := url.Parse(upstream.Host)
	if err != nil || u.Host == "" {
		return nil, fmt.Errorf("faultproxy: upstream host %q is not a URL", upstream.Host)
	}
	up := rest.CopyConfig(upstream)
	up.UserAgent = "" // the client's own passes through
	rt, err := rest.TransportFor(up)
	if err != nil {
		return nil, fmt.Errorf("faultproxy: a transport for %s: %w", upstream.Host, err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	p := &Proxy{ln: ln, upstream: u, transport: rt, done: make(chan struct{}), rules: rules, seen: make([]int, len(rules)),
		rng: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))}
	p.forward = &httputil.ReverseProxy{
		Rewrite:       func(pr *httputil.ProxyRequest) { pr.SetURL(u) },
		Transport:     rt,
		FlushInterval: -1, // watches stream
		// A client ending its watch is no news.
		ErrorLog: log.New(io.Discard, "", 0),
	}
	p.srv = &http.Server{Handler: p, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = p.srv.Serve(ln) }()
	return p, nil
}

// URL is where clients reach the proxy.
func (p *Proxy) URL() string { return "http://" + p.ln.Addr().String() }

// Config is a client configuration for the proxy, with base's rate limits
// and timeout.
func (p *Proxy) Config(base *rest.Config) *rest.Config {
	return &rest.Config{Host: p.URL(), QPS: base.QPS, Burst: base.Burst, Timeout: base.Timeout, UserAgent: base.UserAgent}
}

// Injected returns every fault injected so far.
func (p *Proxy) Injected() []Injection {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]Injection(nil), p.injected...)
}

// Close stops the proxy; hung requests end.
func (p *Proxy) Close() {
	p.closeOnce.Do(func() {
		close(p.done)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = p.srv.Shutdown(ctx)
	})
}

// Parse reads a request's verb, resource, subresource, namespace and name
// from its method and path, as the API server's request info does for the
// core (/api/v1) and group (/apis/GROUP/VERSION) paths.
func Parse(r *http.Request) Request {
	parts := strings.Split(strings.Trim(r.URL.Path, "/"), "/")
	switch {
	case len(parts) >= 2 && parts[0] == "api":
		parts = parts[2:]
	case len(parts) >= 3 && parts[0] == "apis":
		parts = parts[3:]
	default:
		return Request{Verb: strings.ToLower(r.Method)}
	}
	var q Request
	if len(parts) >= 3 && parts[0] == "namespaces" {
		q.Namespace, parts = parts[1], parts[2:]
	}
	if len(parts) > 0 {
		q.Resource = parts[0]
	}
	if len(parts) > 1 {
		q.Name = parts[1]
	}
	if len(parts) > 2 {
		q.Subresource = parts[2]
	}
	switch r.Method {
	case http.MethodGet, http.MethodHead:
		switch {
		case q.Name != "":
			q.Verb = "get"
		case r.URL.Query().Get("watch") == "true" || r.URL.Query().Get("watch") == "1":
			q.Verb = "watch"
		default:
			q.Verb = "list"
		}
	case http.MethodPost:
		q.Verb = "create"
	case http.MethodPut:
		q.Verb = "update"
	case http.MethodPatch:
		q.Verb = "patch"
	case http.MethodDelete:
		q.Verb = "delete"
		if q.Name == "" {
			q.Verb = "deletecollection"
		}
	}
	return q
}

// pick returns the index of the rule whose fault r gets, or -1.
func (p *Proxy) pick(q Request) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	for i, rule := range p.rules {
		if !rule.matches(q) {
			continue
		}
		p.seen[i]++
		n := p.seen[i] - rule.Skip
		if n <= 0 || (rule.Count > 0 && n > rule.Count) {
			continue
		}
		if rule.Probability > 0 && p.rng.Float64() >= rule.Probability {
			continue
		}
		p.injected = append(p.injected, Injection{Rule: i, Fault: rule.Fault, Request: q})
		return i
	}
	return -1
}

func (p *Proxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	q := Parse(r)
	i := p.pick(q)
	if i < 0 {
		p.forward.ServeHTTP(w, r)
		return
	}
	p.mu.Lock()
	rule := p.rules[i]
	p.mu.Unlock()
	switch rule.Fault {
	case ServerError:
		writeStatus(w, http.StatusInternalServerError, metav1.StatusReasonInternalError, 0,
			fmt.Sprintf("faultproxy: injected server error on %s %s", q.Verb, q.Resource))
	case Throttle:
		w.Header().Set("Retry-After", strconv.Itoa(rule.RetryAfter))
		writeStatus(w, http.StatusTooManyRequests, metav1.StatusReasonTooManyRequests, rule.RetryAfter,
			fmt.Sprintf("faultproxy: injected throttling on %s %s", q.Verb, q.Resource))
	case Hang:
		p.hang(w, r)
	default:
		writeStatus(w, http.StatusInternalServerError, metav1.StatusReasonInternalError, 0, "faultproxy: unknown fault "+string(rule.Fault))
	}
}

// hang forwards r to the server whatever the client does meanwhile, drops
// the answer, and holds the client until it gives up or the proxy closes.
func (p *Proxy) hang(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(r.Body)
	if err == nil {
		out := r.Clone(context.WithoutCancel(r.Context()))
		out.Body = io.NopCloser(bytes.NewReader(body))
		out.URL.Scheme, out.URL.Host, out.Host, out.RequestURI = p.upstream.Scheme, p.upstream.Host, p.upstream.Host, ""
		if resp, err := p.transport.RoundTrip(out); err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
	}
	select {
	case <-r.Context().Done():
		return
	case <-p.done:
	}
	// Closing: end the exchange without an answer, not with an empty 200.
	if hj, ok := w.(http.Hijacker); ok {
		if c, _, err := hj.Hijack(); err == nil {
			c.Close()
		}
	}
}

func writeStatus(w http.ResponseWriter, code int, reason metav1.StatusReason, retryAfter int, msg string) {
	st := metav1.Status{TypeMeta: metav1.TypeMeta{Kind: "Status", APIVersion: "v1"}, Status: metav1.StatusFailure,
		Code: int32(code), Reason: reason, Message: msg}
	if retryAfter > 0 {
		st.Details = &metav1.StatusDetails{RetryAfterSeconds: int32(retryAfter)}
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(st)
}
