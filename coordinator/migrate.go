package coordinator

import (
	"context"
	"encoding/json"
	"fmt"

	"go.uber.org/zap"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// LegacyConfigMapName is the ConfigMap, in the coordinator's namespace,
// where coordinators before the TokenRollout kept the rollout state
// (data key legacyStateKey); migrate turns it into TokenRollouts.
const (
	LegacyConfigMapName = "tokenroll-rollout"
	legacyStateKey      = "state.json"
)

// legacyState is what that ConfigMap held; only what a TokenRollout
// records is read.
type legacyState struct {
	Rollout *Rollout      `json:"rollout,omitempty"`
	Last    *Rollout      `json:"last,omitempty"`
	Start   *StartRequest `json:"start,omitempty"`
}

// migrate makes TokenRollouts of the legacy rollout ConfigMap, once: the
// current and the last rollout keep their IDs, phases and plans (a pending
// start request is not carried over: the CLI that made it says to run it
// again), and the ConfigMap is deleted once they are written. A
// TokenRollout that already exists is left as it is, so a migration cut
// short is finished by the next leader.
func (c *Coordinator) migrate(ctx context.Context) error {
	cms := c.cfg.Client.CoreV1().ConfigMaps(c.cfg.Namespace)
	cm, err := cms.Get(ctx, LegacyConfigMapName, metav1.GetOptions{})
	if apierrors.IsNotFound(err) || apierrors.IsForbidden(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("reading the legacy rollout state (ConfigMap %s/%s) to migrate it to TokenRollouts: %w", c.cfg.Namespace, LegacyConfigMapName, err)
	}
	var old legacyState
	if raw := cm.Data[legacyStateKey]; raw != "" {
		if err := json.Unmarshal([]byte(raw), &old); err != nil {
			return fmt.Errorf("ConfigMap %s/%s key %s is not valid rollout state, so it cannot be migrated to TokenRollouts: %w; delete it (kubectl -n %s delete configmap %s) and the coordinator starts afresh",
				c.cfg.Namespace, LegacyConfigMapName, legacyStateKey, err, c.cfg.Namespace, LegacyConfigMapName)
		}
	}
	if _, err := c.store.Update(ctx, func(st *State) error {
		for _, r := range []*Rollout{old.Last, old.Rollout} {
			if r == nil {
				continue
			}
			switch {
			case st.Rollout != nil && st.Rollout.ID == r.ID, st.Last != nil && st.Last.ID == r.ID:
			case st.Rollout == nil || st.Rollout.CreatedAt.Before(r.CreatedAt):
				st.Last, st.Rollout = st.Rollout, r
			}
		}
		return nil
	}); err != nil {
		return fmt.Errorf("migrating the rollout state of ConfigMap %s/%s to TokenRollouts: %w", c.cfg.Namespace, LegacyConfigMapName, err)
	}
	if err := cms.Delete(ctx, LegacyConfigMapName, metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &cm.UID}}); err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("deleting ConfigMap %s/%s after migrating it to TokenRollouts: %w", c.cfg.Namespace, LegacyConfigMapName, err)
	}
	c.cfg.Log.Info("migrated the rollout state from its ConfigMap to TokenRollouts", zap.String("configMap", LegacyConfigMapName),
		zap.Bool("rollout", old.Rollout != nil), zap.Bool("last", old.Last != nil), zap.Bool("startRequestDropped", old.Start != nil))
	return nil
}
