package coordinator

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"

	v1alpha1 "github.com/tokenroll/tokenroll/pkg/apis/tokenroll/v1alpha1"
	apifake "github.com/tokenroll/tokenroll/pkg/generated/clientset/versioned/fake"
	"github.com/tokenroll/tokenroll/protocol"
)

// BenchmarkRolloutSync is one sync of a leader during a kubelet-restart
// rollout of every node, nothing having changed since the last sync: a
// tenth of the nodes acting (restarted, their agents' reports still
// stale, so each is verified again), a third done, the rest pending
// behind --max-unavailable. Each sync reads every planned node's record
// and the acting nodes' reports.
// Run: go test -run '^$' -bench RolloutSync -cpu 1 ./coordinator/
func BenchmarkRolloutSync(b *testing.B) {
	for _, size := range []int{500, 5000} {
		b.Run(fmt.Sprintf("nodes=%d", size), func(b *testing.B) {
			f := newIdleFleet(b, size)
			r := &Rollout{ID: "bench", Trigger: TriggerManual + " (alice)", Strategy: KubeletRestart, Phase: RolloutRunning, Issuer: newIssuer,
				CreatedAt: planNow.Add(-time.Hour), UpdatedAt: planNow.Add(-time.Hour)}
			stale, err := json.Marshal(expiredReport())
			if err != nil {
				b.Fatal(err)
			}
			for i := range size {
				n := fleetNode(i, 2)
				r.Nodes = append(r.Nodes, PlannedNode{Name: n.Name, Strategy: KubeletRestart, Reason: "requested by alice"})
				st := protocol.NodeState{Rollout: r.ID, Strategy: KubeletRestart, CordonedByUs: true,
					StartedAt: planNow.Add(-10 * time.Minute), StepAt: planNow.Add(-5 * time.Minute)}
				switch {
				case i%10 == 0:
					st.Step, st.Request, st.StepAt = protocol.StepActing, fmt.Sprintf("req-%d", i), planNow
					status, err := json.Marshal(protocol.Status{ID: st.Request, Action: protocol.ActionKubeletRestart, Phase: protocol.PhaseDone})
					if err != nil {
						b.Fatal(err)
					}
					n.Annotations[protocol.AnnotationStatus] = string(status)
					n.Annotations[protocol.AnnotationTokens] = string(stale)
					n.Spec.Unschedulable = true
				case i%3 == 0:
					st.Step = protocol.StepDone
				default:
					continue
				}
				raw, err := json.Marshal(st)
				if err != nil {
					b.Fatal(err)
				}
				n.Annotations[protocol.AnnotationNodeState] = string(raw)
				f.update(b, n)
			}
			o := &v1alpha1.TokenRollout{ObjectMeta: metav1.ObjectMeta{Name: r.ID, Generation: 1, CreationTimestamp: metav1.Time{Time: r.CreatedAt}},
				Spec: v1alpha1.TokenRolloutSpec{State: v1alpha1.StateRunning}}
			o.Status.ObservedGeneration = 1
			setStatus(&o.Status, r, planNow)
			ctx := context.Background()
			o, err = f.t.c.cfg.Rollouts.TokenrollV1alpha1().TokenRollouts().Create(ctx, o, metav1.CreateOptions{})
			if err != nil {
				b.Fatal(err)
			}
			// As the term's own write, which the fake's records (without
			// resource versions) would never supersede.
			f.t.written[o.Name] = o
			for range 5 {
				if _, err := f.t.sync(ctx); err != nil {
					b.Fatal(err)
				}
			}
			if st := StateOf(f.t.recordList()); st.Rollout == nil || st.Rollout.ID != r.ID || len(st.Rollout.Nodes) != size {
				b.Fatalf("the rollout synced is %+v, want %s of %d nodes", st.Rollout, r.ID, size)
			}
			client := f.t.c.cfg.Client.(*fake.Clientset)
			rollouts := f.t.c.cfg.Rollouts.(*apifake.Clientset)
			calls := len(client.Actions()) + len(rollouts.Actions())
			b.ResetTimer()
			for range b.N {
				if _, err := f.t.sync(ctx); err != nil {
					b.Fatal(err)
				}
			}
			b.StopTimer()
			// Nothing changed: a sync that wrote would measure its write.
			if n := len(client.Actions()) + len(rollouts.Actions()) - calls; n > 0 {
				b.Errorf("%d syncs of an unchanged rollout called the API %d times, want none: %v", b.N, n, rollouts.Actions()[len(rollouts.Actions())-1])
			}
		})
	}
}
