package benchkit

import (
	"testing"
)

const exposition = `# HELP apiserver_request_total [STABLE] Counter of apiserver requests.
# TYPE apiserver_request_total counter
apiserver_request_total{code="200",component="apiserver",dry_run="",group="",resource="nodes",scope="resource",subresource="",verb="PATCH",version="v1"} 7
apiserver_request_total{code="409",component="apiserver",dry_run="",group="",resource="nodes",scope="resource",subresource="",verb="PATCH",version="v1"} 1
apiserver_request_total{code="201",component="apiserver",dry_run="",group="",resource="pods",scope="resource",subresource="eviction",verb="POST",version="v1"} 2
apiserver_request_total{code="200",component="apiserver",dry_run="",group="coordination.k8s.io",resource="leases",scope="resource",subresource="",verb="PUT",version="v1"} 3
apiserver_request_total{code="200",component="",dry_run="",group="",resource="",scope="",subresource="/metrics",verb="GET",version=""} 4
apiserver_request_total{code="200",component="apiserver",dry_run="",group="",resource="with\"quote",scope="resource",subresource="",verb="GET",version="v1"} 1 1700000000000
apiserver_request_duration_seconds_count{verb="GET"} 99
`

func TestParseRequests(t *testing.T) {
	c, err := ParseRequests([]byte(exposition))
	if err != nil {
		t.Fatal(err)
	}
	want := Counts{
		{Verb: "PATCH", Resource: "nodes", Code: "200"}:                              7,
		{Verb: "PATCH", Resource: "nodes", Code: "409"}:                              1,
		{Verb: "POST", Resource: "pods", Subresource: "eviction", Code: "201"}:       2,
		{Verb: "PUT", Group: "coordination.k8s.io", Resource: "leases", Code: "200"}: 3,
		{Verb: "GET", Subresource: "/metrics", Code: "200"}:                          4,
		{Verb: "GET", Resource: `with"quote`, Code: "200"}:                           1,
	}
	if len(c) != len(want) {
		t.Fatalf("got %d series %v, want %d", len(c), c, len(want))
	}
	for k, v := range want {
		if c[k] != v {
			t.Errorf("%+v: got %v, want %v", k, c[k], v)
		}
	}
	if _, err := ParseRequests([]byte("apiserver_request_total{verb=\"GET} 1\n")); err == nil {
		t.Error("an unterminated label value parsed")
	}
	if _, err := ParseRequests([]byte("# nothing here\n")); err == nil {
		t.Error("an exposition without the metric parsed")
	}
}
