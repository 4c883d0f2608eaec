package main

import (
	"reflect"
	"strings"
	"testing"
	"time"
)

// The audit log gives the coordinator's requests by resource (leases
// apart) and the others' requests outside the resource API by path, each
// request once, within the window.
func TestReadAudit(t *testing.T) {
	log := strings.Join([]string{
		`{"kind":"Event","auditID":"1","stage":"ResponseComplete","requestURI":"/api/v1/nodes/n1","verb":"patch","user":{"username":"tokenroll-coordinator"},"objectRef":{"resource":"nodes","name":"n1","apiVersion":"v1"},"requestReceivedTimestamp":"2026-12-01T10:00:01Z"}`,
		`{"kind":"Event","auditID":"2","stage":"ResponseStarted","requestURI":"/api/v1/nodes?watch=true","verb":"watch","user":{"username":"tokenroll-coordinator"},"objectRef":{"resource":"nodes","apiVersion":"v1"},"requestReceivedTimestamp":"2026-12-01T10:00:02Z"}`,
		`{"kind":"Event","auditID":"2","stage":"ResponseComplete","requestURI":"/api/v1/nodes?watch=true","verb":"watch","user":{"username":"tokenroll-coordinator"},"objectRef":{"resource":"nodes","apiVersion":"v1"},"requestReceivedTimestamp":"2026-12-01T10:00:02Z"}`,
		`{"kind":"Event","auditID":"3","stage":"ResponseComplete","requestURI":"/.well-known/openid-configuration","verb":"get","user":{"username":"tokenroll-coordinator"},"requestReceivedTimestamp":"2026-12-01T10:00:03Z"}`,
		`{"kind":"Event","auditID":"4","stage":"ResponseComplete","requestURI":"/apis/coordination.k8s.io/v1/namespaces/t/leases/l","verb":"update","user":{"username":"tokenroll-coordinator"},"objectRef":{"resource":"leases","apiGroup":"coordination.k8s.io"},"requestReceivedTimestamp":"2026-12-01T10:00:04Z"}`,
		`{"kind":"Event","auditID":"5","stage":"ResponseComplete","requestURI":"/readyz?verbose","verb":"get","user":{"username":"admin"},"requestReceivedTimestamp":"2026-12-01T10:00:05Z"}`,
		`{"kind":"Event","auditID":"6","stage":"ResponseComplete","requestURI":"/api/v1/nodes/n2","verb":"patch","user":{"username":"tokenroll-coordinator"},"objectRef":{"resource":"nodes"},"requestReceivedTimestamp":"2026-12-01T11:00:00Z"}`,
	}, "\n")
	from := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	got, err := readAudit(strings.NewReader(log), "tokenroll-coordinator", from, from.Add(time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	want := audited{user: map[string]int{"PATCH nodes": 1, "WATCH nodes": 1, "GET /.well-known/openid-configuration": 1},
		userLeases: map[string]int{"UPDATE leases.coordination.k8s.io": 1}, othersNonResource: map[string]int{"GET /readyz (admin)": 1}}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got %+v\nwant %+v", got, want)
	}
	if _, err := readAudit(strings.NewReader("{\n{}"), "x", from, from); err == nil {
		t.Error("a broken line was read")
	}
}
