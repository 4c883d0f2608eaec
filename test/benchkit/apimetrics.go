// Package benchkit holds what the benchmarks under test/ share: reading the
// API server's request counters and latency histogram from its /metrics,
// and a process's CPU time and resident memory from /proc.
package benchkit

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"sort"
	"strconv"
	"strings"

	"k8s.io/client-go/kubernetes"
)

// RequestKey is one series of apiserver_request_total, without the labels
// that never vary here (component, dry_run).
type RequestKey struct {
	Verb        string `json:"verb"`
	Group       string `json:"group,omitempty"`
	Resource    string `json:"resource,omitempty"`
	Subresource string `json:"subresource,omitempty"`
	Code        string `json:"code"`
}

// Counts is a reading of apiserver_request_total by series.
type Counts map[RequestKey]float64

// ScrapeRequests reads apiserver_request_total from the /metrics of the API
// server client talks to. The read is itself a request, counted in the
// next reading as a GET with no resource (see WithoutScrapes).
func ScrapeRequests(ctx context.Context, client kubernetes.Interface) (Counts, error) {
	body, err := client.CoreV1().RESTClient().Get().AbsPath("/metrics").DoRaw(ctx)
	if err != nil {
		return nil, fmt.Errorf("reading /metrics of the coordinator's API server: %w", err)
	}
	return ParseRequests(body)
}

const requestMetric = "apiserver_request_total"

// ParseRequests picks apiserver_request_total out of the Prometheus text
// format; it needs none of the rest.
func ParseRequests(body []byte) (Counts, error) {
	out := Counts{}
	sc := bufio.NewScanner(bytes.NewReader(body))
	sc.Buffer(make([]byte, 0, 64*1024), 1024*1024)
	for sc.Scan() {
		line := sc.Text()
		rest, ok := strings.CutPrefix(line, requestMetric+"{")
		if !ok {
			continue
		}
		labels, value, err := splitSample(rest)
		if err != nil {
			return nil, fmt.Errorf("parsing %q: %w", line, err)
		}
		v, err := strconv.ParseFloat(value, 64)
		if err != nil {
			return nil, fmt.Errorf("parsing the value of %q: %w", line, err)
		}
		k := RequestKey{Verb: labels["verb"], Group: labels["group"], Resource: labels["resource"],
			Subresource: labels["subresource"], Code: labels["code"]}
		out[k] += v
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no %s in the API server's /metrics", requestMetric)
	}
	return out, nil
}

// splitSample parses `a="x",b="y\"z"} 12` (after the opening brace) into
// its labels and value.
func splitSample(s string) (map[string]string, string, error) {
	labels := map[string]string{}
	for {
		s = strings.TrimLeft(s, ", ")
		if rest, ok := strings.CutPrefix(s, "}"); ok {
			value, _, _ := strings.Cut(strings.TrimSpace(rest), " ") // drop a timestamp
			return labels, value, nil
		}
		name, rest, ok := strings.Cut(s, "=")
		if !ok || !strings.HasPrefix(rest, `"`) {
			return nil, "", fmt.Errorf("label %q has no quoted value", name)
		}
		var val strings.Builder
		i := 1
		for ; i < len(rest) && rest[i] != '"'; i++ {
			if rest[i] == '\\' && i+1 < len(rest) {
				i++
				switch rest[i] {
				case 'n':
					val.WriteByte('\n')
				default:
					val.WriteByte(rest[i])
				}
				continue
			}
			val.WriteByte(rest[i])
		}
		if i >= len(rest) {
			return nil, "", fmt.Errorf("label %q is not terminated", name)
		}
		labels[name] = val.String()
		s = rest[i+1:]
	}
}

// Minus is c - before, series by series.
func (c Counts) Minus(before Counts) Counts {
	out := Counts{}
	for k, v := range c {
		if d := v - before[k]; d != 0 {
			out[k] = d
		}
	}
	return out
}

// WithoutScrapes removes n reads of /metrics: GETs with no resource that
// succeeded.
func (c Counts) WithoutScrapes(n int) Counts {
	out := Counts{}
	for k, v := range c {
		out[k] = v
	}
	k := RequestKey{Verb: "GET", Code: "200"}
	if out[k] -= float64(n); out[k] <= 0 {
		delete(out, k)
	}
	return out
}

func (c Counts) Total() float64 {
	var t float64
	for _, v := range c {
		t += v
	}
	return t
}

// IsLease tells the Lease requests: the leader election's renewals (nothing
// else the coordinator does touches a Lease) and the API server's renewals
// of its own identity lease; neither is work per node.
func IsLease(k RequestKey) bool { return k.Group == "coordination.k8s.io" && k.Resource == "leases" }

// Split returns the leader election's Lease requests and the rest.
func (c Counts) Split() (lease, rest Counts) {
	lease, rest = Counts{}, Counts{}
	for k, v := range c {
		if IsLease(k) {
			lease[k] = v
		} else {
			rest[k] = v
		}
	}
	return lease, rest
}

// RequestRow is one line of the breakdown.
type RequestRow struct {
	Verb string `json:"verb"`
	// Resource is group/resource/subresource as kubectl names it
	// (pods/eviction, leases.coordination.k8s.io); empty for a path
	// outside the resource API (discovery, OIDC discovery).
	Resource string `json:"resource"`
	// Codes Counts the responses by status code.
	Codes   map[string]float64 `json:"codes"`
	Count   float64            `json:"count"`
	PerNode float64            `json:"perNode"`
}

func ResourceName(k RequestKey) string {
	r := k.Resource
	if r == "" {
		return ""
	}
	if k.Group != "" {
		r += "." + k.Group
	}
	if k.Subresource != "" {
		r += "/" + k.Subresource
	}
	return r
}

// Rows groups by verb and resource, largest first.
func (c Counts) Rows(nodes int) []RequestRow {
	byKey := map[[2]string]*RequestRow{}
	for k, v := range c {
		id := [2]string{k.Verb, ResourceName(k)}
		r := byKey[id]
		if r == nil {
			r = &RequestRow{Verb: k.Verb, Resource: id[1], Codes: map[string]float64{}}
			byKey[id] = r
		}
		r.Codes[k.Code] += v
		r.Count += v
	}
	out := make([]RequestRow, 0, len(byKey))
	for _, r := range byKey {
		r.PerNode = r.Count / float64(nodes)
		out = append(out, *r)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Count != out[j].Count {
			return out[i].Count > out[j].Count
		}
		if out[i].Resource != out[j].Resource {
			return out[i].Resource < out[j].Resource
		}
		return out[i].Verb < out[j].Verb
	})
	return out
}
