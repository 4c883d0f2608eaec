package coordinator

import (
	"context"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/tokenroll/tokenroll/internal/nodeutil"
	"github.com/tokenroll/tokenroll/protocol"
)

// KubeletRestart restarts the kubelet: its token cache is empty afterwards,
// so every projected token on the node is requested again under the new
// issuer, and no pod restarts.
const KubeletRestart protocol.Strategy = "kubelet-restart"

type kubeletRestart struct{}

func (kubeletRestart) name() protocol.Strategy { return KubeletRestart }

func (kubeletRestart) prepare(context.Context, kubernetes.Interface, *corev1.Node, string) (*preparation, string, error) {
	return nil, "", nil
}

func (kubeletRestart) action() protocol.Action { return protocol.ActionKubeletRestart }

// verify: the agent reports the restart done, the node is Ready, and every
// token is fresh and from the current issuer.
func (kubeletRestart) verify(_ context.Context, _ kubernetes.Interface, in verifyInput) (verdict, error) {
	done := in.status != nil && in.status.Phase == protocol.PhaseDone
	switch tv := tokensVerdict(in); {
	case !done:
		v := waitFor("the agent has not reported the kubelet restarted", HaltActionTimeout)
		v.withinAction = true
		return v, nil
	case !in.ready:
		return waitFor("the node is not Ready", HaltVerifyTimeout), nil
	case !tv.ok:
		return tv, nil
	}
	return verdict{ok: true}, nil
}

// KubeletRestartVerified is the verification the coordinator makes of a
// kubelet restart on n once the agent reports the restart done: ok, or what
// it still waits for. The tests that restart the real kubelet run it on
// what the agent wrote at each moment of the restart.
func KubeletRestartVerified(n *corev1.Node, issuer string) (bool, string) {
	v, _ := kubeletRestart{}.verify(context.Background(), nil, verifyInput{
		node: n, status: &protocol.Status{Phase: protocol.PhaseDone}, issuer: issuer, ready: nodeutil.Ready(n)})
	return v.ok, v.waiting
}
