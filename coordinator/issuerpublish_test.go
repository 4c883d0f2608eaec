package coordinator

import (
	"context"
	"testing"
	"time"

	"go.uber.org/zap"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/kubernetes/fake"
	clienttesting "k8s.io/client-go/testing"

	"github.com/tokenroll/tokenroll/protocol"
)

// The leader publishes the issuer it observed only when the ConfigMap does
// not hold it already: once when it is absent, once per issuer change, a
// read per term, and nothing on the syncs between.
func TestPublishIssuerWritesOnlyChanges(t *testing.T) {
	ctx := context.Background()
	cs := fake.NewClientset()
	c := &Coordinator{cfg: Config{Client: cs, Namespace: "tokenroll", PublishIssuer: true, Log: zap.NewNop()}}
	now := time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)
	requests := func() []string {
		var out []string
		for _, a := range cs.Actions() {
			if a.GetResource().Resource == "configmaps" {
				out = append(out, a.GetVerb())
			}
		}
		cs.ClearActions()
		return out
	}
	published := func() protocol.PublishedIssuer {
		cm, err := cs.CoreV1().ConfigMaps("tokenroll").Get(ctx, protocol.IssuerConfigMapName, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		cs.ClearActions()
		p, err := protocol.ParsePublishedIssuer(cm.Data)
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	observe := func(iss string, at time.Time) {
		c.mu.Lock()
		c.observedIssuer, c.observedIssuerAt = iss, at
		c.mu.Unlock()
	}
	term1 := &term{c: c}
	term1.publishIssuer(ctx, now)
	if r := requests(); len(r) != 0 {
		t.Errorf("no issuer observed yet: requests %v, want none", r)
	}
	observe("https://issuer-1.example", now)
	term1.publishIssuer(ctx, now)
	if r := requests(); len(r) != 2 || r[0] != "get" || r[1] != "create" {
		t.Errorf("first publication: %v, want get, create", r)
	}
	if p := published(); p.Issuer != "https://issuer-1.example" || !p.ObservedAt.Equal(now) {
		t.Errorf("published %+v", p)
	}
	for range 100 {
		term1.publishIssuer(ctx, now.Add(time.Hour))
	}
	if r := requests(); len(r) != 0 {
		t.Errorf("100 syncs with the issuer unchanged: %v, want no request", r)
	}
	// A new leader reads it once and writes nothing.
	term2 := &term{c: c}
	term2.publishIssuer(ctx, now.Add(time.Hour))
	term2.publishIssuer(ctx, now.Add(time.Hour))
	if r := requests(); len(r) != 1 || r[0] != "get" {
		t.Errorf("a new term with the issuer published: %v, want one get", r)
	}
	// The issuer changes: one update; a failed one is retried a minute on.
	changed := now.Add(2 * time.Hour)
	observe("https://issuer-2.example", changed)
	fail := true
	cs.PrependReactor("update", "configmaps", func(clienttesting.Action) (bool, runtime.Object, error) {
		if fail {
			return true, nil, apierrors.NewConflict(schema.GroupResource{Resource: "configmaps"}, protocol.IssuerConfigMapName, nil)
		}
		return false, nil, nil
	})
	term2.publishIssuer(ctx, changed)
	term2.publishIssuer(ctx, changed.Add(30*time.Second))
	if r := requests(); len(r) != 2 || r[1] != "update" {
		t.Errorf("a failed update and a sync 30 s later: %v, want get, update and nothing more", r)
	}
	fail = false
	term2.publishIssuer(ctx, changed.Add(publishRetry))
	if r := requests(); len(r) != 2 || r[0] != "get" || r[1] != "update" {
		t.Errorf("retry: %v, want get, update", r)
	}
	if p := published(); p.Issuer != "https://issuer-2.example" || !p.ObservedAt.Equal(changed) {
		t.Errorf("published %+v after the change", p)
	}
	// Someone wrote something invalid: the next term puts it right.
	cm, _ := cs.CoreV1().ConfigMaps("tokenroll").Get(ctx, protocol.IssuerConfigMapName, metav1.GetOptions{})
	cm.Data = map[string]string{protocol.IssuerKey: "nonsense"}
	if _, err := cs.CoreV1().ConfigMaps("tokenroll").Update(ctx, cm, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	(&term{c: c}).publishIssuer(ctx, changed.Add(time.Hour))
	if p := published(); p.Issuer != "https://issuer-2.example" {
		t.Errorf("published %+v after a new term found it overwritten", p)
	}
	// An issuer that is not one agents accept is not published.
	observe("http://issuer-3.example", changed.Add(2*time.Hour))
	(&term{c: c}).publishIssuer(ctx, changed.Add(2*time.Hour))
	for _, v := range requests() {
		if v != "get" {
			t.Errorf("an invalid issuer was written (%s)", v)
		}
	}
	// Off: nothing.
	c.cfg.PublishIssuer = false
	observe("https://issuer-4.example", changed.Add(3*time.Hour))
	(&term{c: c}).publishIssuer(ctx, changed.Add(3*time.Hour))
	if r := requests(); len(r) != 0 {
		t.Errorf("publishing off: %v", r)
	}
}
