package main

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/tokenroll/tokenroll/test/benchkit"
)

func TestFigures(t *testing.T) {
	before := benchkit.Counts{{Verb: "PATCH", Resource: "nodes", Code: "200"}: 1}
	after := benchkit.Counts{
		{Verb: "PATCH", Resource: "nodes", Code: "200"}:                              11,
		{Verb: "PUT", Group: "coordination.k8s.io", Resource: "leases", Code: "200"}: 4,
		{Verb: "GET", Code: "200"}:                                                   1, // the first reading
	}
	d := after.Minus(before).WithoutScrapes(1)
	f := newRequestFigures(d, AuditFigures{CoordinatorRows: []AuditRow{{Verb: "patch", What: "nodes", Count: 10}, {Verb: "get", What: "/api/v1", Count: 5}}}, 5, time.Second)
	if f.Total != 14 || f.Lease != 4 || f.PerNode != 2 || !f.GoalMet || f.Unattributed != 4 {
		t.Errorf("figures %+v: want 14 in all, 4 Lease, 2 per node, 4 unattributed (the Lease is not audited here)", f)
	}
	if len(f.Rows) != 2 || f.Rows[0].Resource != "nodes" || f.Rows[1].Resource != "leases.coordination.k8s.io" {
		t.Errorf("rows %+v", f.Rows)
	}
}

func TestReadAudit(t *testing.T) {
	path := filepath.Join(t.TempDir(), "kube-apiserver-1.log")
	lines := `I1127 10:31:05.123 some klog line
{"kind":"Event","stage":"ResponseComplete","requestURI":"/api/v1/nodes/n1","verb":"patch","user":{"username":"tokenroll-coordinator"},"objectRef":{"resource":"nodes","apiVersion":"v1"},"stageTimestamp":"2026-11-27T10:31:06.000000Z"}
{"kind":"Event","stage":"ResponseComplete","requestURI":"/api/v1?timeout=32s","verb":"get","user":{"username":"tokenroll-coordinator"},"stageTimestamp":"2026-11-27T10:31:06.500000Z"}
{"kind":"Event","stage":"ResponseComplete","requestURI":"/apis/coordination.k8s.io/v1/namespaces/tokenroll/leases/x","verb":"update","user":{"username":"tokenroll-coordinator"},"objectRef":{"resource":"leases","apiGroup":"coordination.k8s.io"},"stageTimestamp":"2026-11-27T10:31:07.000000Z"}
{"kind":"Event","stage":"ResponseComplete","requestURI":"/apis/policy/v1/poddisruptionbudgets","verb":"list","user":{"username":"system:apiserver"},"objectRef":{"resource":"poddisruptionbudgets","apiGroup":"policy"},"stageTimestamp":"2026-11-27T10:31:07.000000Z"}
{"kind":"Event","stage":"ResponseComplete","requestURI":"/api/v1/nodes/n1","verb":"patch","user":{"username":"tokenroll-coordinator"},"objectRef":{"resource":"nodes"},"stageTimestamp":"2026-11-27T10:32:00.000000Z"}
`
	if err := os.WriteFile(path, []byte(lines), 0o600); err != nil {
		t.Fatal(err)
	}
	from := time.Date(2026, 11, 27, 10, 31, 0, 0, time.UTC)
	a, err := readAudit(path, from, from.Add(time.Minute), 2)
	if err != nil {
		t.Fatal(err)
	}
	if a.Coordinator != 3 || a.CoordinatorLease != 1 || a.PerNode != 1 || a.Loopback != 1 {
		t.Errorf("audit %+v: want 3 coordinator requests (1 Lease, 1 per node) and 1 loopback in the window", a)
	}
	found := false
	for _, r := range a.CoordinatorRows {
		if r.What == "/api/v1" && r.Verb == "get" && r.Count == 1 {
			found = true
		}
	}
	if !found {
		t.Errorf("no GET /api/v1 row (query dropped) in %+v", a.CoordinatorRows)
	}
}
