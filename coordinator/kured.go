package coordinator

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/tokenroll/tokenroll/protocol"
)

// AnnotationKuredLock is where kured (the Kubernetes Reboot Daemon) keeps
// its reboot lock, on its own DaemonSet.
const AnnotationKuredLock = "weave.works/kured-node-lock"

// DefaultKuredLock is the DaemonSet kured installs itself as.
var DefaultKuredLock = types.NamespacedName{Namespace: "kube-system", Name: "kured"}

// kuredLockEntry is one holder of kured's lock: the node, and when and for
// how long it took the lock (a TTL of 0 is kured's own --lock-ttl, which we
// cannot know: such a lock never expires here).
type kuredLockEntry struct {
	NodeID  string        `json:"nodeID"`
	Created time.Time     `json:"created"`
	TTL     time.Duration `json:"TTL"`
}

// ParseKuredLock returns the nodes holding kured's lock, from the value of
// AnnotationKuredLock at now: one object with nodeID (kured's single lock)
// or an object listing them under "locks" (--concurrency above 1). Entries
// whose TTL ran out are not holders. "" is no lock. A value it cannot read
// is an error: whoever holds it is unknown.
func ParseKuredLock(value string, now time.Time) ([]string, error) {
	if strings.TrimSpace(value) == "" {
		return nil, nil
	}
	var v struct {
		kuredLockEntry
		Locks *[]kuredLockEntry `json:"locks"`
	}
	if err := json.Unmarshal([]byte(value), &v); err != nil {
		return nil, fmt.Errorf("annotation %s is not kured's JSON lock: %w", AnnotationKuredLock, err)
	}
	entries := []kuredLockEntry{v.kuredLockEntry}
	if v.Locks != nil {
		entries = *v.Locks
	}
	var holders []string
	for _, e := range entries {
		if e.NodeID == "" {
			return nil, fmt.Errorf("annotation %s names no nodeID", AnnotationKuredLock)
		}
		if e.TTL > 0 && !now.Before(e.Created.Add(e.TTL)) {
			continue
		}
		holders = append(holders, protocol.Truncate(e.NodeID))
	}
	return holders, nil
}

// kuredLock is kured's lock as one sync sees it.
type kuredLock struct {
	// holders are the nodes holding it.
	holders map[string]bool
	// err, when set, says why nobody knows who holds it (not read yet, or
	// unreadable): then no node starts.
	err error
}

func (k kuredLock) held(node string) bool { return k.holders[node] }

// mayHold tells whether node holds the lock or may (who does is unknown).
func (k kuredLock) mayHold(node string) bool { return k.err != nil || k.held(node) }

// readKuredLock reads kured's lock from the term's cache of kured's
// DaemonSet (none when --kured-lock is off, or the DaemonSet or its
// annotation is missing).
func (t *term) readKuredLock(now time.Time) kuredLock {
	ref := t.c.cfg.KuredLock
	if t.kured == nil {
		return kuredLock{}
	}
	if t.kuredSynced != nil && !t.kuredSynced() {
		return kuredLock{err: fmt.Errorf("kured's DaemonSet %s has not been read yet (check the coordinator's RBAC: get, list, watch daemonsets in %s)", ref, ref.Namespace)}
	}
	o, ok, err := t.kured.GetByKey(ref.String())
	if err != nil || !ok {
		return kuredLock{}
	}
	ds, _ := o.(*appsv1.DaemonSet)
	if ds == nil {
		return kuredLock{}
	}
	holders, err := ParseKuredLock(ds.Annotations[AnnotationKuredLock], now)
	if err != nil {
		return kuredLock{err: fmt.Errorf("DaemonSet %s: %w", ref, err)}
	}
	k := kuredLock{holders: map[string]bool{}}
	for _, h := range holders {
		k.holders[h] = true
	}
	return k
}

// trimKured keeps only kured's lock of its DaemonSet in the cache.
func trimKured(obj any) (any, error) {
	ds, ok := obj.(*appsv1.DaemonSet)
	if !ok {
		return obj, nil
	}
	out := &appsv1.DaemonSet{TypeMeta: ds.TypeMeta}
	out.Name, out.Namespace, out.UID, out.ResourceVersion = ds.Name, ds.Namespace, ds.UID, ds.ResourceVersion
	if v, ok := ds.Annotations[AnnotationKuredLock]; ok {
		out.Annotations = map[string]string{AnnotationKuredLock: v}
	}
	return out, nil
}

// ParseKuredLockRef reads --kured-lock: NAMESPACE/NAME, or "" (off).
func ParseKuredLockRef(v string) (types.NamespacedName, error) {
	if v == "" {
		return types.NamespacedName{}, nil
	}
	ns, name, ok := strings.Cut(v, "/")
	if !ok || ns == "" || name == "" || strings.Contains(name, "/") {
		return types.NamespacedName{}, errors.New("want NAMESPACE/NAME of kured's DaemonSet, or empty to ignore kured")
	}
	return types.NamespacedName{Namespace: ns, Name: name}, nil
}
