package benchkit

import (
	"strings"
	"testing"
)

// Every request comes once, at its first stage, with what it was for;
// an API server's own lines and a last line cut short are passed over,
// a broken line before others is not.
func TestReadAudit(t *testing.T) {
	log := strings.Join([]string{
		`I1201 10:00:00.000000   1 server.go:1] an API server's own line`,
		`{"kind":"Event","auditID":"1","stage":"ResponseStarted","requestURI":"/api/v1/nodes?watch=true","verb":"watch","user":{"username":"c"},"objectRef":{"resource":"nodes","apiVersion":"v1"}}`,
		`{"kind":"Event","auditID":"1","stage":"ResponseComplete","requestURI":"/api/v1/nodes?watch=true","verb":"watch","user":{"username":"c"},"objectRef":{"resource":"nodes","apiVersion":"v1"}}`,
		`{"kind":"Event","auditID":"2","stage":"ResponseComplete","requestURI":"/apis/coordination.k8s.io/v1/namespaces/t/leases/l","verb":"update","user":{"username":"c"},"objectRef":{"resource":"leases","apiGroup":"coordination.k8s.io"}}`,
		`{"kind":"Event","auditID":"3","stage":"ResponseComplete","requestURI":"/api/v1/nodes/n1/status","verb":"patch","user":{"username":"c"},"objectRef":{"resource":"nodes","subresource":"status"}}`,
		`{"kind":"Event","auditID":"4","stage":"ResponseComplete","requestURI":"/openid/v1/jwks?x=1","verb":"get","user":{"username":"d"}}`,
		`{"kind":"EventList"}`,
		`{"kind":"Event","auditID":"5","stage":"ResponseCom`,
	}, "\n")
	var got []string
	err := ReadAudit(strings.NewReader(log), func(ev AuditEvent) {
		got = append(got, ev.AuditID+" "+ev.Stage+" "+ev.Verb+" "+ev.What()+" "+ev.User.Username)
	})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"1 ResponseStarted watch nodes c",
		"2 ResponseComplete update leases.coordination.k8s.io c",
		"3 ResponseComplete patch nodes/status c",
		"4 ResponseComplete get /openid/v1/jwks d",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("got\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if err := ReadAudit(strings.NewReader(`{"kind":`+"\n"+`{"kind":"Event"}`), func(AuditEvent) {}); err == nil || !strings.Contains(err.Error(), "line 1") {
		t.Errorf("a broken line before another: %v, want an error naming line 1", err)
	}
}
