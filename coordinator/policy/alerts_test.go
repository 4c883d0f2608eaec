package policy

import (
	"strings"
	"testing"

	v1alpha1 "github.com/tokenroll/tokenroll/pkg/apis/tokenroll/v1alpha1"
)

func names(as []Alert) string {
	var s []string
	for _, a := range as {
		s = append(s, a.Name)
	}
	return strings.Join(s, ",")
}

func TestAlertRules(t *testing.T) {
	alerts := []Alert{
		{Name: "NodeDown", State: AlertFiring, Labels: map[string]string{"severity": "critical", "cluster": "eu-1"}},
		{Name: "NodeDownSoon", State: AlertPending, Labels: map[string]string{"severity": "critical"}},
		{Name: "DiskFull", State: AlertFiring, Labels: map[string]string{"severity": "warning"}},
		{Name: "TokenrollOldIssuerTokensTrustEnding", State: AlertFiring, Labels: map[string]string{"severity": "critical"}},
		{Name: "EtcdNoLeader", State: AlertFiring, Labels: map[string]string{"severity": "critical", "cluster": "us-2"}},
	}
	cases := []struct {
		name string
		spec v1alpha1.AlertBlocker
		want string
	}{
		{"every firing alert but tokenroll's", v1alpha1.AlertBlocker{}, "NodeDown,DiskFull,EtcdNoLeader"},
		{"pending too", v1alpha1.AlertBlocker{IncludePending: true}, "NodeDown,NodeDownSoon,DiskFull,EtcdNoLeader"},
		{"names are anchored", v1alpha1.AlertBlocker{AlertNames: []string{"Node.*", "Disk"}, IncludePending: true}, "NodeDown,NodeDownSoon"},
		{"matchers all match", v1alpha1.AlertBlocker{Matchers: []v1alpha1.AlertMatcher{{Label: "severity", Value: "critical"}, {Label: "cluster", Operator: "=~", Value: "eu-.*"}}}, "NodeDown"},
		{"negative matchers", v1alpha1.AlertBlocker{Matchers: []v1alpha1.AlertMatcher{{Label: "severity", Operator: "!=", Value: "warning"}, {Label: "cluster", Operator: "!~", Value: "us-.*"}}}, "NodeDown"},
		{"nothing ignored when ignore is empty", v1alpha1.AlertBlocker{Ignore: []string{}, AlertNames: []string{"Tokenroll.*"}}, "TokenrollOldIssuerTokensTrustEnding"},
	}
	for _, c := range cases {
		r, err := CompileAlertRules(&c.spec)
		if err != nil {
			t.Fatal(err)
		}
		if got := names(r.Blocking(alerts)); got != c.want {
			t.Errorf("%s: %q, want %q", c.name, got, c.want)
		}
	}
	if got := Describe(alerts); got != "NodeDown (firing), NodeDownSoon (pending), DiskFull (firing), and 2 more" {
		t.Errorf("Describe: %q", got)
	}
}

func TestAlertRulesNameEveryBadExpression(t *testing.T) {
	_, err := CompileAlertRules(&v1alpha1.AlertBlocker{AlertNames: []string{"ok", "a("}, Ignore: []string{"*"},
		Matchers: []v1alpha1.AlertMatcher{{Label: "x", Operator: "=~", Value: "[z"}}})
	for _, want := range []string{`alertNames[1] "a("`, `ignore[0] "*"`, `matchers[0] "[z"`} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%v lacks %q", err, want)
		}
	}
}
