package coordinator

import (
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/tokenroll/tokenroll/pkg/apis/tokenroll/v1alpha1"
)

// A rollout first expected to end after the previous issuer's trust tells
// the policies' webhooks that ask for DeadlineAtRisk, once: the alert keeps
// saying it after that.
func TestDeadlineAtRiskIsNotifiedOnce(t *testing.T) {
	for _, c := range []struct {
		name     string
		deadline time.Duration
		want     int
	}{
		{"the estimate passes the deadline", 20 * time.Minute, 1},
		{"the estimate meets the deadline", 2 * time.Hour, 0},
	} {
		t.Run(c.name, func(t *testing.T) {
			f, _ := deadlineFixture(t, c.deadline, intstr.IntOrString{})
			hooks := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: testNS, Name: "hooks"}, Data: map[string][]byte{"ops": []byte("http://127.0.0.1:1/hook")}}
			if err := f.tracker.Add(hooks); err != nil {
				t.Fatal(err)
			}
			one := intstr.FromInt32(1)
			f.leadWithPolicies(defaultPolicy(v1alpha1.RolloutPolicySpec{MaxUnavailable: &one, Notifications: []v1alpha1.Notification{{
				Name: "ops", URLSecretRef: v1alpha1.SecretKeyRef{Name: "hooks", Key: "ops"}, Events: []v1alpha1.NotificationEvent{v1alpha1.NotifyDeadlineAtRisk}}}}))
			f.sync()
			f.sync()
			if got := f.term.c.notifier.Pending(); got != c.want {
				t.Errorf("%d DeadlineAtRisk notifications queued; want %d", got, c.want)
			}
		})
	}
}
