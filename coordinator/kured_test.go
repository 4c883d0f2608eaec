package coordinator

import (
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// kuredDaemonSet is kured's DaemonSet with its lock annotation set to
// lock ("": no annotation).
func kuredDaemonSet(lock string) *appsv1.DaemonSet {
	ds := &appsv1.DaemonSet{ObjectMeta: metav1.ObjectMeta{Namespace: "kube-system", Name: "kured", Annotations: map[string]string{}}}
	if lock != "" {
		ds.Annotations[AnnotationKuredLock] = lock
	}
	return ds
}

// setKuredLock changes kured's lock as kured does.
func (f *fixture) setKuredLock(lock string) {
	f.t.Helper()
	o, err := f.tracker.Get(daemonSetsGVR, "kube-system", "kured")
	if err != nil {
		f.t.Fatal(err)
	}
	ds := o.(*appsv1.DaemonSet)
	delete(ds.Annotations, AnnotationKuredLock)
	if lock != "" {
		ds.Annotations[AnnotationKuredLock] = lock
	}
	if err := f.tracker.Update(daemonSetsGVR, ds, "kube-system"); err != nil {
		f.t.Fatal(err)
	}
}

func TestParseKuredLock(t *testing.T) {
	for _, tc := range []struct {
		name, value string
		want        []string
		err         string
	}{
		{name: "none", value: ""},
		{name: "single", value: `{"nodeID":"n1","metadata":{"unschedulable":false},"created":"2026-11-27T11:00:00Z","TTL":0}`, want: []string{"n1"}},
		{name: "single, TTL not run out", value: `{"nodeID":"n1","created":"2026-11-27T11:30:00Z","TTL":3600000000000}`, want: []string{"n1"}},
		{name: "single, TTL run out", value: `{"nodeID":"n1","created":"2026-11-27T10:00:00Z","TTL":3600000000000}`},
		{name: "multi", value: `{"maxOwners":2,"locks":[{"nodeID":"n1","created":"2026-11-27T11:00:00Z"},{"nodeID":"n2","created":"2026-11-27T10:00:00Z","TTL":60000000000}]}`, want: []string{"n1"}},
		{name: "multi, all released", value: `{"maxOwners":2,"locks":[]}`},
		{name: "not JSON", value: `n1`, err: "not kured's JSON lock"},
		{name: "no node", value: `{"created":"2026-11-27T11:00:00Z"}`, err: "names no nodeID"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseKuredLock(tc.value, t0)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("error %v; want one saying %q", err, tc.err)
				}
				return
			}
			if err != nil || strings.Join(got, ",") != strings.Join(tc.want, ",") {
				t.Fatalf("holders %v, %v; want %v", got, err, tc.want)
			}
		})
	}
}

// A node holding kured's reboot lock is never cordoned: it waits, reported
// with its reason, and starts once kured lets go.
func TestKuredLockHolderIsNotCordoned(t *testing.T) {
	f := newFixture(t, testNode("n1"), kuredDaemonSet(`{"nodeID":"n1","created":"2026-11-27T11:59:00Z","TTL":0}`),
		rolloutConfigMap(rollout(KubeletRestart, "n1")))
	f.cfg.KuredLock = DefaultKuredLock
	f.cfg.MaxUnavailable = intstr.FromInt32(2)
	f.sync()
	f.expectWrites(waitingOn(rollout(KubeletRestart, "n1"), WaitKuredLock,
		"nodes waiting for max-unavailable, the Machine Config daemon, kured's lock or to be Ready (outOfService=1, maxUnavailable=2, nodesWaiting=0, outOfServiceNodes=n1 holds kured's lock, kuredLock=n1)", t0))
	if got := f.counter("tokenroll_rollout_waiting", "reason", WaitKuredLock); got != 1 {
		t.Errorf("tokenroll_rollout_waiting{reason=kured-lock} %v; want 1", got)
	}
	f.clock.Step(time.Minute)
	f.sync()
	f.expectWrites()

	f.setKuredLock("")
	f.clock.Step(time.Minute)
	f.sync()
	f.expectWrites(cordonNode("n1", started(KubeletRestart, true, t0.Add(2*time.Minute))), updateState(stateOf(rollout(KubeletRestart, "n1"))))
}

// A node holding kured's lock fills --max-unavailable like a cordoned one,
// even before kured cordons it.
func TestKuredLockHolderCountsAgainstMaxUnavailable(t *testing.T) {
	f := newFixture(t, testNode("n1"), testNode("n9"), kuredDaemonSet(`{"maxOwners":2,"locks":[{"nodeID":"n9","created":"2026-11-27T11:59:00Z"}]}`),
		rolloutConfigMap(rollout(KubeletRestart, "n1")))
	f.cfg.KuredLock = DefaultKuredLock
	f.sync()
	f.expectWrites(waitingOn(rollout(KubeletRestart, "n1"), WaitMaxUnavailable,
		"nodes waiting for max-unavailable, the Machine Config daemon, kured's lock or to be Ready (outOfService=1, maxUnavailable=1, nodesWaiting=1, outOfServiceNodes=n9 holds kured's lock)", t0))
	f.setKuredLock(`{"maxOwners":2,"locks":[]}`)
	f.sync()
	f.expectWrites(cordonNode("n1", started(KubeletRestart, true, t0)), updateState(stateOf(rollout(KubeletRestart, "n1"))))
}

// A lock nobody can read may name any node: none starts, and the wait says
// why. Without --kured-lock the same DaemonSet is ignored.
func TestUnreadableKuredLockStartsNoNode(t *testing.T) {
	const garbled = `{"nodeID":`
	f := newFixture(t, testNode("n1"), kuredDaemonSet(garbled), rolloutConfigMap(rollout(KubeletRestart, "n1")))
	f.cfg.KuredLock = DefaultKuredLock
	f.sync()
	got := f.writes()
	if len(got) != 1 || got[0].State == nil || got[0].State.Waiting == nil || got[0].State.Waiting.Reason != WaitKuredLock ||
		!strings.Contains(got[0].State.Waiting.Message, "kube-system/kured") || !strings.Contains(got[0].State.Waiting.Message, "not kured's JSON lock") {
		t.Fatalf("writes %v; want only the rollout state waiting on kured-lock with the parse error", got)
	}
	if s := f.steps("n1"); s["n1"] != "" {
		t.Fatalf("n1 at step %q with kured's lock unreadable; want untouched", s["n1"])
	}

	f = newFixture(t, testNode("n1"), kuredDaemonSet(garbled), rolloutConfigMap(rollout(KubeletRestart, "n1")))
	f.sync()
	f.expectWrites(cordonNode("n1", started(KubeletRestart, true, t0)))
}

// Kured taking the lock on a node we cordoned: no action is requested on
// it until kured lets go.
func TestKuredLockTakenAfterCordonRequestsNothing(t *testing.T) {
	f := newFixture(t, testNode("n1"), kuredDaemonSet(""), rolloutConfigMap(rollout(KubeletRestart, "n1")))
	f.cfg.KuredLock = DefaultKuredLock
	f.sync()
	f.expectWrites(cordonNode("n1", started(KubeletRestart, true, t0)))
	f.setKuredLock(`{"nodeID":"n1","created":"2026-11-27T12:00:00Z"}`)
	f.sync()
	f.expectWrites()
	f.setKuredLock("")
	f.sync()
	got := f.writes()
	if len(got) != 1 || got[0].Request == nil {
		t.Fatalf("writes %v; want the request once kured let go", got)
	}
}
