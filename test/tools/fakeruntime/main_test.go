package main

import (
	"context"
	"net/netip"
	"testing"

	kubeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
	fakeremote "k8s.io/cri-client/pkg/fake"
)

// Each sandbox gets an address of its own from the range, never the
// network or broadcast address, and one freed is not given again at once.
func TestEachSandboxGetsItsOwnIP(t *testing.T) {
	rt := &runtime{RemoteRuntime: fakeremote.NewFakeRemoteRuntime(), ipRange: netip.MustParsePrefix("127.1.1.0/29")}
	ctx := context.Background()
	run := func(name string) (string, string) {
		t.Helper()
		resp, err := rt.RunPodSandbox(ctx, &kubeapi.RunPodSandboxRequest{Config: &kubeapi.PodSandboxConfig{
			Metadata: &kubeapi.PodSandboxMetadata{Name: name, Namespace: "apps", Uid: "uid-" + name}}})
		if err != nil {
			t.Fatalf("sandbox %s: %v", name, err)
		}
		st, err := rt.PodSandboxStatus(ctx, &kubeapi.PodSandboxStatusRequest{PodSandboxId: resp.PodSandboxId})
		if err != nil {
			t.Fatal(err)
		}
		return resp.PodSandboxId, st.Status.Network.Ip
	}
	ids := map[string]string{}
	for i, want := range []string{"127.1.1.1", "127.1.1.2", "127.1.1.3", "127.1.1.4", "127.1.1.5", "127.1.1.6"} {
		id, ip := run(string(rune('a' + i)))
		if ip != want {
			t.Fatalf("sandbox %d got %s, want %s", i, ip, want)
		}
		ids[ip] = id
	}
	if _, err := rt.RunPodSandbox(ctx, &kubeapi.RunPodSandboxRequest{Config: &kubeapi.PodSandboxConfig{
		Metadata: &kubeapi.PodSandboxMetadata{Name: "full", Namespace: "apps", Uid: "uid-full"}}}); err == nil {
		t.Fatal("a seventh sandbox in a /29 got an address")
	}
	if _, err := rt.RemovePodSandbox(ctx, &kubeapi.RemovePodSandboxRequest{PodSandboxId: ids["127.1.1.3"]}); err != nil {
		t.Fatal(err)
	}
	if _, ip := run("g"); ip != "127.1.1.3" {
		t.Errorf("after a sandbox left: %s, want its 127.1.1.3", ip)
	}
}
