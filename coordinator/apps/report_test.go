package apps

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/zap"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
	"k8s.io/client-go/tools/events"
)

type reportFixture struct {
	*harness
	client   *fake.Clientset
	recorder *events.FakeRecorder
	reg      *prometheus.Registry
	r        *Reporter
}

func newReportFixture(t *testing.T, pods ...Pod) *reportFixture {
	f := &reportFixture{harness: newHarness(t, pods...), client: fake.NewClientset(), recorder: events.NewFakeRecorder(100), reg: prometheus.NewRegistry()}
	f.r = &Reporter{Client: f.client, Namespace: "tokenroll", Recorder: f.recorder, Metrics: NewMetrics(f.reg), Log: zap.NewNop(),
		Clock: f.clock, Grace: grace, Window: window, StatusInterval: 30 * time.Second, StatusRefresh: 5 * time.Minute}
	return f
}

// report evaluates and reports, and returns the API writes and Events it
// made.
func (f *reportFixture) report() (writes, evs []string) {
	f.t.Helper()
	f.client.ClearActions()
	if err := f.r.Report(context.Background(), f.eval()); err != nil {
		f.t.Fatal(err)
	}
	for _, a := range f.client.Actions() {
		name := ""
		switch a := a.(type) {
		case k8stesting.CreateAction: // an update too
			name = a.GetObject().(metav1.Object).GetName()
		case k8stesting.GetAction:
			name = a.GetName()
		}
		writes = append(writes, a.GetVerb()+" "+a.GetResource().Resource+" "+name)
	}
	for {
		select {
		case e := <-f.recorder.Events:
			evs = append(evs, e)
		default:
			return writes, evs
		}
	}
}

func (f *reportFixture) status() Status {
	f.t.Helper()
	st, err := ReadStatus(context.Background(), f.client, "tokenroll")
	if err != nil || st == nil {
		f.t.Fatalf("reading the status: %v, %v", st, err)
	}
	return *st
}

func (f *reportFixture) expectMetrics(want string) {
	f.t.Helper()
	if err := testutil.GatherAndCompare(f.reg, strings.NewReader(want), "tokenroll_app_stale_pods", "tokenroll_app_failing_pods",
		"tokenroll_app_unobserved_pods", "tokenroll_app_followed_pods"); err != nil {
		f.t.Error(err)
	}
}

func expectStrings(t *testing.T, what string, got, want []string) {
	t.Helper()
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("%s:\n got %q\nwant %q", what, got, want)
	}
}

// Exactly what each transition writes: one Event on the Pod, the gauges,
// and one ConfigMap write; nothing when nothing changed; no Node write,
// ever.
func TestReportWritesPerTransition(t *testing.T) {
	cache, web := testPod("cache", "n1", "10.1.0.6"), testPod("web", "n2", "10.1.0.7")
	f := newReportFixture(t, cache, web)

	// First look: both pods unobserved; the status is created.
	writes, evs := f.report()
	expectStrings(t, "first writes", writes, []string{"create configmaps tokenroll-apps"})
	expectStrings(t, "first events", evs, nil)
	f.expectMetrics(`
# HELP tokenroll_app_followed_pods Running pods with a projected service-account token that the leader's app detection follows.
# TYPE tokenroll_app_followed_pods gauge
tokenroll_app_followed_pods 2
# HELP tokenroll_app_unobserved_pods Running pods with a projected service-account token that made no authenticated request in --app-window (never counted healthy).
# TYPE tokenroll_app_unobserved_pods gauge
tokenroll_app_unobserved_pods 2
`)
	if st := f.status(); st.Followed != 2 || st.Unobserved != 2 || len(st.Pods) != 0 || st.Nodes["n1"] != [4]int{1, 0, 0, 0} {
		t.Errorf("first status %+v", st)
	}

	// Both apps present their token; the caching one's is then replaced.
	f.issue("cache", "c1")
	f.issue("web", "w1")
	f.clock.Step(time.Minute)
	f.issue("cache", "c2")
	f.issue("web", "w2")
	replaced := f.clock.Now()
	for range 14 {
		f.present("cache", "c1")
		f.present("web", "w2")
		f.clock.Step(10 * time.Second)
	}
	writes, evs = f.report()
	expectStrings(t, "writes when cache turns app-stale", writes, []string{"update configmaps tokenroll-apps"})
	expectStrings(t, "events when cache turns app-stale", evs, []string{"Warning AppStaleToken its app still presents a service-account token the kubelet replaced at " +
		replaced.Format(time.RFC3339) + "; the app does not reload its token file and will fail once the issuer that signed the old token is no longer trusted: make it reload the file (client-go does every minute), or restart the pod"})
	f.expectMetrics(`
# HELP tokenroll_app_followed_pods Running pods with a projected service-account token that the leader's app detection follows.
# TYPE tokenroll_app_followed_pods gauge
tokenroll_app_followed_pods 2
# HELP tokenroll_app_stale_pods Pods whose app keeps presenting a service-account token the kubelet replaced more than --app-stale-grace ago (it does not reload its token file), by namespace: the 20 with the most, the rest under (other).
# TYPE tokenroll_app_stale_pods gauge
tokenroll_app_stale_pods{namespace="apps"} 1
# HELP tokenroll_app_unobserved_pods Running pods with a projected service-account token that made no authenticated request in --app-window (never counted healthy).
# TYPE tokenroll_app_unobserved_pods gauge
tokenroll_app_unobserved_pods 0
`)
	st := f.status()
	if len(st.Pods) != 1 || st.Pods[0].Name != "cache" || st.Pods[0].Workload != "Deployment/cache" || fmt.Sprint(st.Pods[0].Conditions) != "[app-stale]" ||
		!st.Pods[0].ReplacedAt.Equal(replaced) || st.Healthy != 1 || st.Stale != 1 || st.Nodes["n1"] != [4]int{1, 0, 1, 0} || st.Nodes["n2"] != [4]int{1, 1, 0, 0} {
		t.Errorf("status with cache app-stale: %+v", st)
	}

	// Nothing changes: no Event, no write.
	f.present("cache", "c1")
	f.present("web", "w2")
	f.clock.Step(time.Minute)
	writes, evs = f.report()
	expectStrings(t, "writes when nothing changed", writes, nil)
	expectStrings(t, "events when nothing changed", evs, nil)

	// The stale pod is deleted: its series goes, the status is rewritten,
	// no Event (there is no pod to hold it).
	f.d.DeletePod(cache.UID)
	writes, evs = f.report()
	expectStrings(t, "writes after the delete", writes, []string{"update configmaps tokenroll-apps"})
	expectStrings(t, "events after the delete", evs, nil)
	f.expectMetrics(`
# HELP tokenroll_app_followed_pods Running pods with a projected service-account token that the leader's app detection follows.
# TYPE tokenroll_app_followed_pods gauge
tokenroll_app_followed_pods 1
# HELP tokenroll_app_unobserved_pods Running pods with a projected service-account token that made no authenticated request in --app-window (never counted healthy).
# TYPE tokenroll_app_unobserved_pods gauge
tokenroll_app_unobserved_pods 0
`)
	if st := f.status(); len(st.Pods) != 0 || st.Stale != 0 || st.Followed != 1 {
		t.Errorf("status after the delete: %+v", st)
	}

	// web fails past the grace, then authenticates again: a Warning, then
	// a Normal Event, each with its write.
	for range 14 {
		f.fail("10.1.0.7")
		f.clock.Step(10 * time.Second)
	}
	writes, evs = f.report()
	expectStrings(t, "writes when web fails", writes, []string{"update configmaps tokenroll-apps"})
	failedSince := replaced.Add(14*10*time.Second + time.Minute)
	expectStrings(t, "events when web fails", evs, []string{"Warning AppAuthFailing requests from this pod's IP have failed authentication (401) since " +
		failedSince.Format(time.RFC3339) + "; if its app cached its service-account token, restart the pod"})
	if v := testutil.ToFloat64(f.r.Metrics.failing.WithLabelValues("apps")); v != 1 {
		t.Errorf("tokenroll_app_failing_pods{namespace=apps} = %v; want 1", v)
	}
	f.present("web", "w3")
	f.clock.Step(30 * time.Second)
	writes, evs = f.report()
	expectStrings(t, "writes when web recovers", writes, []string{"update configmaps tokenroll-apps"})
	expectStrings(t, "events when web recovers", evs, []string{"Normal AppAuthRecovered requests from this pod's IP no longer fail authentication"})
	if n := testutil.CollectAndCount(f.r.Metrics.failing); n != 0 {
		t.Errorf("tokenroll_app_failing_pods has %d series after recovery; want none", n)
	}
	for _, a := range f.client.Actions() {
		if a.GetResource().Resource == "nodes" {
			t.Errorf("app detection wrote a Node: %v", a)
		}
	}
}

// The namespace label is bounded: the namespaces with the most app-stale
// pods get a series each, the rest are summed under (other), and a
// namespace's series goes when it has none.
func TestNamespaceLabelsAreBounded(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := NewMetrics(reg)
	counts := map[string]int{}
	for i := range MaxNamespaceLabels + 5 {
		counts[fmt.Sprintf("ns-%02d", i)] = 100 - i
	}
	m.set(Result{StaleByNamespace: counts})
	if n := testutil.CollectAndCount(m.stale); n != MaxNamespaceLabels+1 {
		t.Errorf("%d series; want %d", n, MaxNamespaceLabels+1)
	}
	if v := testutil.ToFloat64(m.stale.WithLabelValues(OtherNamespace)); v != 80+79+78+77+76 {
		t.Errorf("(other) = %v; want the five smallest summed, %d", v, 80+79+78+77+76)
	}
	m.set(Result{StaleByNamespace: map[string]int{"ns-03": 1}})
	if n := testutil.CollectAndCount(m.stale); n != 1 {
		t.Errorf("%d series after all but one namespace cleared; want 1", n)
	}
}

// The status stays bounded however many pods are app-stale.
func TestStatusIsBounded(t *testing.T) {
	res := Result{Now: t0, Nodes: map[string]NodeCounts{}}
	for i := range 20000 {
		p := testPod(fmt.Sprintf("p%05d", i), fmt.Sprintf("node-%04d-%s", i%6000, strings.Repeat("x", 200)), "")
		res.Problems = append(res.Problems, PodProblem{Pod: p, Stale: true, StaleSince: t0.Add(-time.Duration(i) * time.Second)})
		res.Nodes[p.Node] = NodeCounts{Pods: 1, Stale: 1}
	}
	st := BuildStatus(res, grace, window)
	data, err := json.Marshal(st)
	if err != nil {
		t.Fatal(err)
	}
	if len(data) > 900<<10 {
		t.Errorf("status is %d bytes; a ConfigMap holds 1 MiB", len(data))
	}
	if len(st.Pods) != MaxStatusPods || st.PodsOmitted != 20000-MaxStatusPods || st.NodesOmitted == 0 || len(st.Nodes)+st.NodesOmitted != 6000 {
		t.Errorf("pods %d (+%d omitted), nodes %d (+%d omitted)", len(st.Pods), st.PodsOmitted, len(st.Nodes), st.NodesOmitted)
	}
	if st.Pods[0].Name != "p19999" {
		t.Errorf("the longest-standing pod is not listed first: %s", st.Pods[0].Name)
	}
	// The CLI reads what the coordinator wrote.
	client := fake.NewClientset(&corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: ConfigMapName, Namespace: "tokenroll"},
		Data: map[string]string{StatusKey: string(data)}})
	got, err := ReadStatus(context.Background(), client, "tokenroll")
	if err != nil || got == nil || got.PodsOmitted != st.PodsOmitted {
		t.Errorf("ReadStatus: %v, %v", got, err)
	}
}
