package coordinator

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	v1alpha1 "github.com/tokenroll/tokenroll/pkg/apis/tokenroll/v1alpha1"
	"github.com/tokenroll/tokenroll/protocol"
)

// statusSizeBound is what a TokenRollout of a 5,000-node rollout may take,
// serialized as JSON (custom resources are stored as JSON: there is no
// protobuf encoding of them). etcd refuses an object above 1.5 MiB
// (--max-request-bytes), counting all of it: besides the status, the spec
// (up to 1,000 nodeNames of 253 bytes, about 260 KiB) and the metadata with
// its managed fields. The status is rewritten as the nodes progress, each
// rewrite sent to etcd and to every watcher whole: a third of the limit
// leaves room for the rest and keeps those rewrites cheap.
const statusSizeBound = 512 << 10

// A 5,000-node rollout's TokenRollout stays under statusSizeBound from its
// plan to its end, with its nodes' names as long as cloud providers make
// them and, for the nodes that keep their details, every detail at its
// longest.
func TestTokenRolloutStatusSizeAt5000Nodes(t *testing.T) {
	const n = 5000
	long := func(k int) string { return strings.Repeat("x", k) }
	name := func(i int) string {
		return fmt.Sprintf("ip-10-%03d-%03d-%03d.eu-central-1.compute.internal", i/65536, i/256%256, i%256)
	}
	plan := func() *Rollout {
		r := &Rollout{ID: "r-20261127-120000-ab12", Trigger: TriggerIssuer, Strategy: Reboot, Phase: RolloutRunning, Issuer: newIssuer,
			CreatedAt: t0, UpdatedAt: t0, Message: long(4096), Steered: long(1024), Apps: long(1024)}
		for i := range n {
			r.Nodes = append(r.Nodes, PlannedNode{Name: name(i), Strategy: Reboot, Reason: long(1024), Deadline: t0.Add(24 * time.Hour), Would: long(1024)})
		}
		return r
	}
	// step gives node i its step, as fillProgress would from its record.
	write := func(r *Rollout, step func(i int) protocol.Step) *v1alpha1.TokenRollout {
		o := &v1alpha1.TokenRollout{ObjectMeta: metav1.ObjectMeta{Name: r.ID}}
		setStatus(&o.Status, r, t0)
		for i := range o.Status.Nodes {
			nr := &o.Status.Nodes[i]
			nr.Step, nr.Reason, nr.Action = v1alpha1.NodeStep(step(i)), long(64), long(512)
			nr.LastTransitionTime = &metav1.Time{Time: t0.Add(time.Duration(i) * time.Second)}
			if step(i) == "pending" {
				nr.Reason, nr.Action, nr.LastTransitionTime = "", "", nil
			}
		}
		compactNodes(&o.Status)
		// As the next write reads it back and writes it again.
		setStatus(&o.Status, rolloutOf(o), t0)
		return o
	}
	for _, tc := range []struct {
		name string
		step func(i int) protocol.Step
	}{
		{"planned", func(int) protocol.Step { return "pending" }},
		{"all done", func(int) protocol.Step { return protocol.StepDone }},
		{"halted, with unresolved, excluded and dry-run nodes", func(i int) protocol.Step {
			switch {
			case i == 0:
				return protocol.StepHalted
			case i%10 == 1:
				return protocol.StepUnresolved
			case i%10 == 2:
				return protocol.StepExcluded
			case i%10 == 3:
				return protocol.StepDryRun
			case i%10 == 4:
				return protocol.StepActing
			case i > 4000:
				return "pending"
			}
			return protocol.StepDone
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := write(plan(), tc.step)
			b, err := json.Marshal(o)
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("%d nodes: %d bytes of JSON (%.0f%% of the bound)", n, len(b), 100*float64(len(b))/statusSizeBound)
			if len(b) > statusSizeBound {
				t.Errorf("the TokenRollout of a %d-node rollout is %d bytes of JSON, above %d", n, len(b), statusSizeBound)
			}
			detailed := 0
			for _, nr := range o.Status.Nodes {
				if nr.Message != "" || nr.Action != "" || nr.Would != "" {
					detailed++
				}
			}
			if len(o.Status.Nodes) != n || detailed > v1alpha1.MaxDetailedNodes {
				t.Errorf("%d nodes, %d with details; want %d, at most %d with details", len(o.Status.Nodes), detailed, n, v1alpha1.MaxDetailedNodes)
			}
			if got := rolloutOf(o); len(got.Nodes) != n || got.Nodes[n-1].Name != name(n-1) || got.Nodes[n-1].Strategy != Reboot {
				t.Errorf("the plan read back: %d nodes, the last %+v", len(got.Nodes), got.Nodes[n-1])
			}
		})
	}
}
