package controlplane

import (
	"context"
	"fmt"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// StartForTest starts a control plane for an integration test, stopped when
// the test ends. It skips under -short, and fails (never skips) when the
// binaries are missing, so CI cannot pass without running it.
func StartForTest(t testing.TB, cfg Config) *ControlPlane {
	t.Helper()
	if testing.Short() {
		t.Skip("integration test: needs a real control plane (run without -short)")
	}
	if cfg.Binaries == (Binaries{}) {
		b, err := FindBinaries("")
		if err != nil {
			t.Fatal(err)
		}
		cfg.Binaries = b
	}
	if cfg.Dir == "" {
		cfg.Dir = t.TempDir()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cp, err := Start(ctx, cfg)
	if err != nil {
		t.Fatalf("starting control plane: %v", err)
	}
	t.Cleanup(cp.Stop)
	return cp
}

// PrepareNamespace does for a namespace what kube-controller-manager would,
// for a test that starts none (see StartControllers): it creates the
// namespace, its "default" service account and the kube-root-ca.crt
// ConfigMap that every pod's kube-api-access volume reads.
func (cp *ControlPlane) PrepareNamespace(ctx context.Context, namespace string) error {
	client, err := kubernetes.NewForConfig(cp.AdminConfig())
	if err != nil {
		return err
	}
	create := func(what string, err error) error {
		if err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("creating %s in namespace %s: %w", what, namespace, err)
		}
		return nil
	}
	_, err = client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: namespace}}, metav1.CreateOptions{})
	if err := create("the namespace", err); err != nil {
		return err
	}
	_, err = client.CoreV1().ServiceAccounts(namespace).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "default"}}, metav1.CreateOptions{})
	if err := create("service account default", err); err != nil {
		return err
	}
	_, err = client.CoreV1().ConfigMaps(namespace).Create(ctx, &corev1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{Name: "kube-root-ca.crt"},
		Data:       map[string]string{"ca.crt": string(cp.CACert())},
	}, metav1.CreateOptions{})
	return create("configmap kube-root-ca.crt", err)
}
