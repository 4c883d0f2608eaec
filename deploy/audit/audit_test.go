package audit

import (
	"os"
	"slices"
	"strings"
	"testing"

	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/yaml"
)

// The policy's rules as far as these checks need (the API server itself
// loads the whole file in the audit package's integration test).
type policy struct {
	APIVersion string   `json:"apiVersion"`
	Kind       string   `json:"kind"`
	OmitStages []string `json:"omitStages"`
	Rules      []struct {
		Level      string   `json:"level"`
		Verbs      []string `json:"verbs"`
		UserGroups []string `json:"userGroups"`
		OmitStages []string `json:"omitStages"`
		Resources  []struct {
			Group     string   `json:"group"`
			Resources []string `json:"resources"`
		} `json:"resources"`
	} `json:"rules"`
}

func TestPolicy(t *testing.T) {
	var p policy
	if err := yaml.UnmarshalStrict(Policy, &p, yaml.DisallowUnknownFields); err != nil {
		t.Fatal(err)
	}
	if p.APIVersion != "audit.k8s.io/v1" || p.Kind != "Policy" || !slices.Equal(p.OmitStages, []string{"RequestReceived"}) {
		t.Errorf("policy header %s %s omitStages %v", p.APIVersion, p.Kind, p.OmitStages)
	}
	for i, r := range p.Rules {
		// The response of a TokenRequest is the token.
		if r.Level == "RequestResponse" {
			t.Errorf("rule %d logs responses", i)
		}
		// A failed authentication is audited at ResponseStarted only.
		if len(r.UserGroups) == 0 && slices.Contains(r.OmitStages, "ResponseStarted") {
			t.Errorf("rule %d would drop failed authentications", i)
		}
	}
	first := p.Rules[0]
	if first.Level != "Request" || !slices.Equal(first.Verbs, []string{"create"}) || len(first.Resources) != 1 ||
		first.Resources[0].Group != "" || !slices.Equal(first.Resources[0].Resources, []string{"serviceaccounts/token"}) {
		t.Errorf("the first rule is not Request for create serviceaccounts/token: %+v", first)
	}
	if last := p.Rules[len(p.Rules)-1]; last.Level != "Metadata" || len(last.UserGroups) != 0 {
		t.Errorf("the last rule does not catch failed authentications: %+v", last)
	}
}

func TestWebhookKubeconfig(t *testing.T) {
	data, err := os.ReadFile("webhook-kubeconfig.yaml")
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := clientcmd.Load(data)
	if err != nil {
		t.Fatal(err)
	}
	ctx := cfg.Contexts[cfg.CurrentContext]
	if ctx == nil || cfg.Clusters[ctx.Cluster] == nil || cfg.AuthInfos[ctx.AuthInfo] == nil {
		t.Fatalf("current context %q does not name a cluster and a user", cfg.CurrentContext)
	}
	c, u := cfg.Clusters[ctx.Cluster], cfg.AuthInfos[ctx.AuthInfo]
	if !strings.HasPrefix(c.Server, "https://") || c.CertificateAuthority == "" || u.ClientCertificate == "" || u.ClientKey == "" || u.Token != "" {
		t.Errorf("want an https server, its CA and a client certificate (no token): %+v %+v", c, u)
	}
}
