package benchkit

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net/url"
	"time"
)

// AuditEvent is the part of an audit.k8s.io/v1 Event the benchmarks read.
type AuditEvent struct {
	AuditID    string `json:"auditID"`
	Stage      string `json:"stage"`
	RequestURI string `json:"requestURI"`
	Verb       string `json:"verb"`
	User       struct {
		Username string `json:"username"`
	} `json:"user"`
	ObjectRef *struct {
		Resource    string `json:"resource"`
		Subresource string `json:"subresource"`
		APIGroup    string `json:"apiGroup"`
	} `json:"objectRef"`
	RequestReceivedTimestamp time.Time `json:"requestReceivedTimestamp"`
	StageTimestamp           time.Time `json:"stageTimestamp"`
}

// Resource is the request's resource (nil outside the resource API).
func (e *AuditEvent) Resource() *RequestKey {
	if e.ObjectRef == nil || e.ObjectRef.Resource == "" {
		return nil
	}
	return &RequestKey{Group: e.ObjectRef.APIGroup, Resource: e.ObjectRef.Resource, Subresource: e.ObjectRef.Subresource}
}

// What names what the request is for: its resource as ResourceName names
// it, or outside the resource API its path without the query.
func (e *AuditEvent) What() string {
	if r := e.Resource(); r != nil {
		return ResourceName(*r)
	}
	if u, err := url.Parse(e.RequestURI); err == nil {
		return u.Path
	}
	return e.RequestURI
}

// ReadAudit calls each with every request an audit log (JSON lines) holds,
// once per request: a request logged at several stages (a watch, when its
// response starts and when it ends) is given at the first. Lines that are
// no JSON object are skipped (an API server's own log may hold the audit
// log among its lines), and so is a last line cut short (the server may be
// writing it); any other line that does not parse is an error.
func ReadAudit(r io.Reader, each func(AuditEvent)) error {
	seen := map[string]bool{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64*1024), 4*1024*1024)
	var pending error // a line that did not parse, an error unless it was the last
	for line := 1; sc.Scan(); line++ {
		b := sc.Bytes()
		if len(b) == 0 || b[0] != '{' {
			continue
		}
		if pending != nil {
			return pending
		}
		var ev struct {
			Kind string `json:"kind"`
			AuditEvent
		}
		if err := json.Unmarshal(b, &ev); err != nil {
			pending = fmt.Errorf("parsing the audit event on line %d: %w", line, err)
			continue
		}
		if ev.Kind != "Event" || (ev.AuditID != "" && seen[ev.AuditID]) {
			continue
		}
		seen[ev.AuditID] = true
		each(ev.AuditEvent)
	}
	return sc.Err()
}
