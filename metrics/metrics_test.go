package metrics

import (
	"context"
	"errors"
	"io"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil/promlint"
	"go.uber.org/zap"
)

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

func TestServerServesLintCleanMetricsAndHealth(t *testing.T) {
	reg := NewRegistry("agent")
	s, err := NewServer("127.0.0.1:0", reg, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	base := "http://" + s.Addr()

	code, body := get(t, base+"/metrics")
	if code != http.StatusOK || !strings.Contains(body, `tokenroll_build_info{commit=`) || !strings.Contains(body, `component="agent"`) {
		t.Fatalf("/metrics: %d\n%s", code, body)
	}
	problems, err := promlint.New(strings.NewReader(body)).Lint()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		if strings.HasPrefix(p.Metric, Namespace+"_") {
			t.Errorf("metric lint: %s: %s", p.Metric, p.Text)
		}
	}

	if code, _ := get(t, base+"/healthz"); code != http.StatusOK {
		t.Errorf("/healthz: %d", code)
	}
	var wedged atomic.Bool
	s.AddHealthCheck("leaderElection", func(*http.Request) error {
		if wedged.Load() {
			return errors.New("failed election to renew leadership on lease tokenroll-coordinator")
		}
		return nil
	})
	if code, _ := get(t, base+"/healthz"); code != http.StatusOK {
		t.Errorf("/healthz with a passing check: %d", code)
	}
	wedged.Store(true)
	if code, body := get(t, base+"/healthz"); code != http.StatusServiceUnavailable || !strings.Contains(body, "leaderElection: failed election") {
		t.Errorf("/healthz with a failing check: %d %q, want 503 naming the check", code, body)
	}
	wedged.Store(false)
	if code, _ := get(t, base+"/readyz"); code != http.StatusServiceUnavailable {
		t.Errorf("/readyz before ready: %d, want 503", code)
	}
	s.SetReady(true)
	if code, _ := get(t, base+"/readyz"); code != http.StatusOK {
		t.Errorf("/readyz when ready: %d", code)
	}

	cancel()
	if err := <-done; err != nil {
		t.Errorf("Run after cancel: %v", err)
	}
	if resp, err := http.Get(base + "/healthz"); err == nil {
		resp.Body.Close()
		t.Error("server still answers after shutdown")
	}
}

func TestNewServerRejectsABadAddress(t *testing.T) {
	if _, err := NewServer("127.0.0.1:notaport", NewRegistry("agent"), zap.NewNop()); err == nil || !strings.Contains(err.Error(), "127.0.0.1:notaport") {
		t.Errorf("got %v, want an error naming the address", err)
	}
}

// /debug/pprof/ is served only once profiling is enabled, on the server's
// own mux.
func TestServerServesProfilesOnlyWhenEnabled(t *testing.T) {
	for _, c := range []struct {
		profiling bool
		want      int
	}{{false, http.StatusNotFound}, {true, http.StatusOK}} {
		s, err := NewServer("127.0.0.1:0", NewRegistry("coordinator"), zap.NewNop())
		if err != nil {
			t.Fatal(err)
		}
		if c.profiling {
			s.EnableProfiling()
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- s.Run(ctx) }()
		base := "http://" + s.Addr()
		for _, path := range []string{"/debug/pprof/", "/debug/pprof/cmdline", "/debug/pprof/goroutine?debug=1"} {
			if code, _ := get(t, base+path); code != c.want {
				t.Errorf("profiling %v: %s answered %d, want %d", c.profiling, path, code, c.want)
			}
		}
		if c.profiling {
			if _, body := get(t, base+"/debug/pprof/goroutine?debug=1"); !strings.Contains(body, "metrics.(*Server).Run") {
				t.Errorf("/debug/pprof/goroutine?debug=1 does not show this server's goroutine:\n%s", body)
			}
		}
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run after cancel: %v", err)
		}
	}
}
