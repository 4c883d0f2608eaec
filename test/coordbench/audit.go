package main

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"time"

	"github.com/tokenroll/tokenroll/test/benchkit"
)

// The audit log says who made each request, which apiserver_request_total
// does not: it tells the coordinator's own requests from those the API
// server makes to itself (an eviction reads PodDisruptionBudgets through
// its loopback client) and shows requests the metric leaves out.
const (
	coordinatorUser = "tokenroll-coordinator"
	loopbackUser    = "system:apiserver"
)

// auditPolicy logs, once each request completes, the coordinator's and
// the API server's own requests, and nothing else.
const auditPolicy = `apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived", "ResponseStarted"]
rules:
- level: Metadata
  users: ["` + coordinatorUser + `", "` + loopbackUser + `"]
- level: None
`

// auditArgs writes the policy into dir and returns the kube-apiserver flags
// that send the audit log to its standard output, which the control plane
// keeps in each server's log file.
func auditArgs(dir string) ([]string, error) {
	path := filepath.Join(dir, "audit-policy.yaml")
	if err := os.WriteFile(path, []byte(auditPolicy), 0o600); err != nil {
		return nil, fmt.Errorf("writing the audit policy: %w", err)
	}
	return []string{"--audit-policy-file=" + path, "--audit-log-path=-", "--audit-log-format=json"}, nil
}

// AuditRow counts one kind of request by one user.
type AuditRow struct {
	Verb string `json:"verb"`
	// What is the resource (as in RequestRow) or, outside the resource
	// API, the path.
	What  string  `json:"what"`
	Count float64 `json:"count"`
}

// AuditFigures are the requests the audit log attributes to the
// coordinator and to the API server itself over one window.
type AuditFigures struct {
	Coordinator float64 `json:"coordinator"`
	// CoordinatorLease is the coordinator's Lease requests, and PerNode its
	// others per node.
	CoordinatorLease float64    `json:"coordinatorLease"`
	PerNode          float64    `json:"perNode"`
	CoordinatorRows  []AuditRow `json:"coordinatorRows"`
	Loopback         float64    `json:"loopback"`
	LoopbackRows     []AuditRow `json:"loopbackRows"`
}

// readAudit counts the audited requests that completed between from and to
// in an API server's log.
func readAudit(logPath string, from, to time.Time, nodes int) (AuditFigures, error) {
	f, err := os.Open(logPath)
	if err != nil {
		return AuditFigures{}, fmt.Errorf("reading the audit log: %w", err)
	}
	defer f.Close()
	type key struct{ user, verb, what string }
	byKey := map[key]float64{}
	err = benchkit.ReadAudit(f, func(ev benchkit.AuditEvent) {
		if ev.Stage != "ResponseComplete" || ev.StageTimestamp.Before(from) || !ev.StageTimestamp.Before(to) {
			return
		}
		byKey[key{ev.User.Username, ev.Verb, ev.What()}]++
	})
	if err != nil {
		return AuditFigures{}, fmt.Errorf("reading the audit log %s: %w", logPath, err)
	}
	var out AuditFigures
	for k, v := range byKey {
		row := AuditRow{Verb: k.verb, What: k.what, Count: v}
		switch k.user {
		case coordinatorUser:
			out.Coordinator += v
			if k.what == "leases.coordination.k8s.io" {
				out.CoordinatorLease += v
			}
			out.CoordinatorRows = append(out.CoordinatorRows, row)
		case loopbackUser:
			out.Loopback += v
			out.LoopbackRows = append(out.LoopbackRows, row)
		}
	}
	out.PerNode = (out.Coordinator - out.CoordinatorLease) / float64(nodes)
	for _, rows := range [][]AuditRow{out.CoordinatorRows, out.LoopbackRows} {
		sort.Slice(rows, func(i, j int) bool {
			if rows[i].Count != rows[j].Count {
				return rows[i].Count > rows[j].Count
			}
			return rows[i].What+rows[i].Verb < rows[j].What+rows[j].Verb
		})
	}
	return out, nil
}
