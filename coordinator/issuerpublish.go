package coordinator

import (
	"context"
	"fmt"
	"time"

	"go.uber.org/zap"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/tokenroll/tokenroll/protocol"
)

// publishRetry is the least time between two attempts to publish the
// issuer after one failed; syncs come far more often.
const publishRetry = time.Minute

// issuerPublication is what one term knows of the ConfigMap the issuer is
// published in.
type issuerPublication struct {
	// holds is the issuer the ConfigMap is known to hold ("": not read by
	// this term yet).
	holds string
	// retryAt: after a failure, no attempt before it.
	retryAt time.Time
}

// publishIssuer gives the agents the issuer this process observed with the
// gate open, in ConfigMap protocol.IssuerConfigMapName of its namespace,
// which every agent watches instead of reading OIDC discovery on a timer.
// It writes only when the issuer differs from what the ConfigMap holds (read
// once per term): an issuer change, or a ConfigMap absent or changed by
// someone else. A failure is logged and retried on a sync publishRetry
// later; meanwhile an agent that finds tokens of an issuer it does not
// expect reads discovery itself.
func (t *term) publishIssuer(ctx context.Context, now time.Time) {
	c := t.c
	if !c.cfg.PublishIssuer {
		return
	}
	c.mu.Lock()
	iss, at := c.observedIssuer, c.observedIssuerAt
	c.mu.Unlock()
	p := &t.published
	if iss == "" || iss == p.holds || now.Before(p.retryAt) {
		return
	}
	pub := protocol.PublishedIssuer{Issuer: iss, ObservedAt: at}
	wrote, err := c.writeIssuer(ctx, pub)
	if err != nil {
		p.retryAt = now.Add(publishRetry)
		c.cfg.Log.Warn("publishing the issuer for the agents; retried in a minute (agents read OIDC discovery meanwhile when their tokens disagree)",
			zap.String("issuer", iss), zap.Error(err))
		return
	}
	p.holds = iss
	if wrote {
		c.cfg.Log.Info("published the issuer for the agents", zap.String("issuer", iss), zap.Time("observedAt", at),
			zap.String("configMap", c.cfg.Namespace+"/"+protocol.IssuerConfigMapName))
	}
}

// writeIssuer makes the ConfigMap hold pub, and says whether that took a
// write.
func (c *Coordinator) writeIssuer(ctx context.Context, pub protocol.PublishedIssuer) (bool, error) {
	if err := protocol.ValidateIssuer(pub.Issuer); err != nil {
		return false, fmt.Errorf("the issuer OIDC discovery serves cannot be published: %w", err)
	}
	cms := c.cfg.Client.CoreV1().ConfigMaps(c.cfg.Namespace)
	name := c.cfg.Namespace + "/" + protocol.IssuerConfigMapName
	cm, err := cms.Get(ctx, protocol.IssuerConfigMapName, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		cm = &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: protocol.IssuerConfigMapName, Namespace: c.cfg.Namespace,
			Labels: map[string]string{"app.kubernetes.io/name": "tokenroll", "app.kubernetes.io/component": "coordinator"}},
			Data: pub.Data()}
		if _, err := cms.Create(ctx, cm, metav1.CreateOptions{FieldManager: "tokenroll-coordinator"}); err != nil {
			return false, fmt.Errorf("creating ConfigMap %s: %w", name, err)
		}
		return true, nil
	case err != nil:
		return false, fmt.Errorf("reading ConfigMap %s: %w", name, err)
	}
	if got, err := protocol.ParsePublishedIssuer(cm.Data); err == nil && got.Issuer == pub.Issuer {
		return false, nil // a previous leader published it
	}
	cm = cm.DeepCopy()
	cm.Data = pub.Data()
	// The resourceVersion read makes a concurrent writer's change a
	// conflict, retried on a later sync, not a lost update.
	if _, err := cms.Update(ctx, cm, metav1.UpdateOptions{FieldManager: "tokenroll-coordinator"}); err != nil {
		return false, fmt.Errorf("updating ConfigMap %s: %w", name, err)
	}
	return true, nil
}
