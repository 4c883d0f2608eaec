package kubeletsim

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/clock"
)

// The kubelet token manager's constants (pkg/kubelet/token/token_manager.go).
const (
	maxTTL    = 24 * time.Hour
	maxJitter = 10 * time.Second
)

// tokenManager caches TokenRequests the way the kubelet does: the cache key
// has no issuer, so an issuer change is invisible until a token's own
// refresh time.
type tokenManager struct {
	client kubernetes.Interface
	clock  clock.Clock

	mu             sync.Mutex
	cache          map[string]cachedToken
	stopRefreshing bool
}

type cachedToken struct {
	podUID types.UID
	tr     *authenticationv1.TokenRequest
}

func newTokenManager(client kubernetes.Interface, clk clock.Clock) *tokenManager {
	return &tokenManager{client: client, clock: clk, cache: map[string]cachedToken{}}
}

func cacheKey(name, namespace string, tr *authenticationv1.TokenRequest) string {
	var exp int64
	if tr.Spec.ExpirationSeconds != nil {
		exp = *tr.Spec.ExpirationSeconds
	}
	var ref authenticationv1.BoundObjectReference
	if tr.Spec.BoundObjectRef != nil {
		ref = *tr.Spec.BoundObjectRef
	}
	return fmt.Sprintf("%q/%q/%#v/%#v/%#v", name, namespace, tr.Spec.Audiences, exp, ref)
}

// requiresRefresh is the kubelet's rule: refresh once older than 24 h or
// within 20% of the requested lifetime of expiry, less a jitter of 0-9 s.
func requiresRefresh(now time.Time, tr *authenticationv1.TokenRequest, jitter time.Duration) bool {
	if tr.Spec.ExpirationSeconds == nil {
		return false
	}
	exp := tr.Status.ExpirationTimestamp.Time
	iat := exp.Add(-time.Duration(*tr.Spec.ExpirationSeconds) * time.Second)
	if now.After(iat.Add(maxTTL - jitter)) {
		return true
	}
	return now.After(exp.Add(-time.Duration((*tr.Spec.ExpirationSeconds*20)/100)*time.Second - jitter))
}

func jitter() time.Duration {
	return time.Duration(rand.Float64()*maxJitter.Seconds()) * time.Second
}

// get returns the token for the request, from the cache when it does not yet
// need a refresh, as the kubelet's GetServiceAccountToken does. A failed
// refresh falls back to a cached token that has not expired.
func (m *tokenManager) get(ctx context.Context, namespace, name string, podUID types.UID, tr *authenticationv1.TokenRequest) (*authenticationv1.TokenRequest, error) {
	key := cacheKey(name, namespace, tr)
	m.mu.Lock()
	cached, ok := m.cache[key]
	frozen := m.stopRefreshing
	m.mu.Unlock()
	now := m.clock.Now()
	if ok && (frozen || !requiresRefresh(now, cached.tr, jitter())) {
		return cached.tr, nil
	}
	out, err := m.client.CoreV1().ServiceAccounts(namespace).CreateToken(ctx, name, tr, metav1.CreateOptions{})
	if err != nil {
		if ok && now.Before(cached.tr.Status.ExpirationTimestamp.Time) {
			return cached.tr, nil
		}
		return nil, fmt.Errorf("requesting a token for service account %s/%s: %w", namespace, name, err)
	}
	m.mu.Lock()
	m.cache[key] = cachedToken{podUID: podUID, tr: out}
	m.mu.Unlock()
	return out, nil
}

// forgetPod drops a deleted pod's tokens.
func (m *tokenManager) forgetPod(uid types.UID) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for k, v := range m.cache {
		if v.podUID == uid {
			delete(m.cache, k)
		}
	}
}

// clear empties the cache, as a kubelet restart or a reboot does.
func (m *tokenManager) clear() {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.cache = map[string]cachedToken{}
}

func (m *tokenManager) setStopRefreshing(stop bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.stopRefreshing = stop
}
