// Package metrics builds each process's own Prometheus registry (never the
// global one) and serves it with health endpoints, shutting down cleanly.
package metrics

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/pprof"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promauto"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.uber.org/zap"

	"github.com/tokenroll/tokenroll/internal/version"
)

// Namespace prefixes every tokenroll metric.
const Namespace = "tokenroll"

// NewRegistry returns a registry with the Go runtime, process and build-info
// collectors; component is "agent" or "coordinator".
func NewRegistry(component string) *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	promauto.With(reg).NewGaugeVec(prometheus.GaugeOpts{
		Namespace: Namespace,
		Name:      "build_info",
		Help:      "Always 1; labels carry the tokenroll version, commit, Go version and component.",
	}, []string{"version", "commit", "goversion", "component"}).
		WithLabelValues(version.Version, version.Commit, version.GoVersion(), component).Set(1)
	return reg
}

// Server serves /metrics, /healthz and /readyz, and /debug/pprof/ once
// EnableProfiling is called.
type Server struct {
	srv   *http.Server
	mux   *http.ServeMux
	ln    net.Listener
	ready atomic.Bool
	log   *zap.Logger

	mu     sync.Mutex
	checks []healthCheck
}

type healthCheck struct {
	name  string
	check func(*http.Request) error
}

// AddHealthCheck makes /healthz fail while check fails.
func (s *Server) AddHealthCheck(name string, check func(*http.Request) error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.checks = append(s.checks, healthCheck{name, check})
}

// NewServer listens on addr at once, so a bad address is an error before
// any work starts; Serve then answers on it.
func NewServer(addr string, reg *prometheus.Registry, log *zap.Logger) (*Server, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("listening for metrics on %s: %w", addr, err)
	}
	mux := http.NewServeMux()
	s := &Server{ln: ln, mux: mux, log: log}
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg, ErrorLog: zap.NewStdLog(log)}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		checks := slices.Clone(s.checks)
		s.mu.Unlock()
		for _, c := range checks {
			if err := c.check(r); err != nil {
				http.Error(w, fmt.Sprintf("%s: %v", c.name, err), http.StatusServiceUnavailable)
				return
			}
		}
		_, _ = w.Write([]byte("ok"))
	})
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		if !s.ready.Load() {
			http.Error(w, "not ready", http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte("ok"))
	})
	s.srv = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	return s, nil
}

// EnableProfiling serves Go's net/http/pprof handlers under /debug/pprof/.
// They are registered on this server's mux: importing net/http/pprof also
// registers them on http.DefaultServeMux, which nothing here serves. The
// profiles show stack traces and the process's command line, so they are
// off unless a person asks for them.
func (s *Server) EnableProfiling() {
	s.mux.HandleFunc("/debug/pprof/", pprof.Index)
	s.mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	s.mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	s.mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	s.mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
}

// Addr is the address the server listens on.
func (s *Server) Addr() string { return s.ln.Addr().String() }

// SetReady sets what /readyz answers.
func (s *Server) SetReady(ready bool) { s.ready.Store(ready) }

// Run serves until ctx ends, then shuts down with a fresh timeout (the
// cancelled ctx would cut in-flight scrapes).
func (s *Server) Run(ctx context.Context) error {
	errc := make(chan error, 1)
	go func() { errc <- s.srv.Serve(s.ln) }()
	select {
	case err := <-errc:
		return fmt.Errorf("metrics server: %w", err)
	case <-ctx.Done():
	}
	shutdownCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := s.srv.Shutdown(shutdownCtx); err != nil {
		return fmt.Errorf("shutting down metrics server: %w", err)
	}
	if err := <-errc; err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}
