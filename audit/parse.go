package audit

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/types"
	sigsjson "sigs.k8s.io/json"

	"github.com/tokenroll/tokenroll/protocol"
)

// Limits on what the parser accepts and keeps.
const (
	// MaxEventBytes is the largest single audit event parsed. Events at
	// Metadata level are a few KiB; the TokenRequests logged at Request
	// level are smaller still.
	MaxEventBytes = 256 << 10
	// MaxAudiences bounds the audiences kept of one TokenRequest.
	MaxAudiences = 8
	// maxRequestObjectBytes bounds the request body decoded for the bound
	// pod; a TokenRequest is a few hundred bytes.
	maxRequestObjectBytes = 16 << 10

	apiVersionV1 = "audit.k8s.io/v1"
)

// SkipReason says why an audit event yields no Event. The set is fixed:
// it is a metric label.
type SkipReason string

const (
	// SkipMalformed: not JSON, or a field of the wrong type.
	SkipMalformed SkipReason = "malformed"
	// SkipTooLarge: larger than MaxEventBytes (or, for a batch, than the
	// webhook's body limit).
	SkipTooLarge SkipReason = "too_large"
	// SkipUnsupported: not an audit.k8s.io/v1 Event (another apiVersion or
	// kind, or the legacy text format).
	SkipUnsupported SkipReason = "unsupported"
	// SkipStage: a stage tokenroll does not read (RequestReceived, and
	// ResponseStarted except for a failed authentication, which has no
	// later stage).
	SkipStage SkipReason = "stage"
	// SkipInvalid: says it is one of the kinds tokenroll reads but lacks
	// what that kind needs (a pod-bound user without a pod UID, a
	// credential ID that is not a jti, no timestamp).
	SkipInvalid SkipReason = "invalid"
	// SkipIrrelevant: a well-formed event of no kind tokenroll reads (most
	// of them).
	SkipIrrelevant SkipReason = "irrelevant"
	// SkipDuplicate: the same request already delivered (a webhook batch
	// sent again, or read by two sources).
	SkipDuplicate SkipReason = "duplicate"
)

// SkipReasons lists every SkipReason, for metrics.
var SkipReasons = []SkipReason{SkipMalformed, SkipTooLarge, SkipUnsupported, SkipStage, SkipInvalid, SkipIrrelevant, SkipDuplicate}

// SkipError is why an audit event was skipped. Its message never quotes
// the event: only field names, sizes and offsets.
type SkipError struct {
	Reason SkipReason
	Detail string
}

func (e *SkipError) Error() string { return string(e.Reason) + ": " + e.Detail }

func skip(r SkipReason, format string, args ...any) *SkipError {
	return &SkipError{Reason: r, Detail: fmt.Sprintf(format, args...)}
}

// ReasonOf returns the SkipReason of an error from Parse, SkipMalformed
// for any other error.
func ReasonOf(err error) SkipReason {
	var s *SkipError
	if errors.As(err, &s) {
		return s.Reason
	}
	return SkipMalformed
}

// wireEvent is the part of an audit.k8s.io/v1 Event tokenroll reads. Every
// other field (request and response objects above all) is skipped by the
// decoder and never held.
type wireEvent struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	AuditID    string `json:"auditID"`
	Stage      string `json:"stage"`
	Verb       string `json:"verb"`
	User       struct {
		Username string    `json:"username"`
		Extra    wireExtra `json:"extra"`
	} `json:"user"`
	SourceIPs []string `json:"sourceIPs"`
	ObjectRef *struct {
		Resource    string `json:"resource"`
		Namespace   string `json:"namespace"`
		APIGroup    string `json:"apiGroup"`
		Subresource string `json:"subresource"`
	} `json:"objectRef"`
	ResponseStatus *struct {
		Code int32 `json:"code"`
	} `json:"responseStatus"`
	// RequestObject is decoded further only for a TokenRequest.
	RequestObject  json.RawMessage `json:"requestObject"`
	StageTimestamp string          `json:"stageTimestamp"`
	Annotations    struct {
		IssuedCredentialID *string `json:"authentication.kubernetes.io/issued-credential-id"`
	} `json:"annotations"`
}

// wireExtra is the part of user.extra tokenroll reads. Fields, not a map:
// the decoder then allocates nothing for the other keys. The tags must
// stay equal to the Extra* constants (TestWireExtraTags).
type wireExtra struct {
	PodName      []string `json:"authentication.kubernetes.io/pod-name"`
	PodUID       []string `json:"authentication.kubernetes.io/pod-uid"`
	NodeName     []string `json:"authentication.kubernetes.io/node-name"`
	CredentialID []string `json:"authentication.kubernetes.io/credential-id"`
}

// wireTokenRequest is the part of a TokenRequest's body tokenroll reads:
// what was asked for. A request carries no token (status is the
// response's), and status is not decoded.
type wireTokenRequest struct {
	Spec struct {
		Audiences      []string `json:"audiences"`
		BoundObjectRef *struct {
			Kind string `json:"kind"`
			Name string `json:"name"`
			UID  string `json:"uid"`
		} `json:"boundObjectRef"`
	} `json:"spec"`
}

type wireList struct {
	APIVersion string            `json:"apiVersion"`
	Kind       string            `json:"kind"`
	Items      []json.RawMessage `json:"items"`
}

// decode is the case-sensitive decoder the API server itself uses, so a
// key that differs only in case cannot shadow the real one.
func decode(data []byte, v any) error {
	if err := sigsjson.UnmarshalCaseSensitivePreserveInts(data, v); err != nil {
		return describeJSONError(err)
	}
	return nil
}

// describeJSONError rewords a decoding error without quoting the input.
func describeJSONError(err error) error {
	var typ *json.UnmarshalTypeError
	if errors.As(err, &typ) {
		return skip(SkipMalformed, "field %q is a JSON %s, want %s", typ.Field, typ.Value, typ.Type)
	}
	// The decoder's syntax errors quote the offending character: not
	// repeated, as it may be part of a token.
	return skip(SkipMalformed, "not valid JSON")
}

// ParseList parses an audit.k8s.io/v1 EventList, as the webhook backend
// sends it, and calls emit for each Event of the items and skipped for each
// item that yields none. It fails only when the list itself is not one.
func ParseList(data []byte, emit func(Event), skipped func(error)) error {
	var l wireList
	if err := decode(data, &l); err != nil {
		return err
	}
	if l.APIVersion != apiVersionV1 || l.Kind != "EventList" {
		return skip(SkipUnsupported, "apiVersion %q kind %q, want %s EventList (set --audit-webhook-version=%s)",
			protocol.Truncate(l.APIVersion), protocol.Truncate(l.Kind), apiVersionV1, apiVersionV1)
	}
	var buf [2]Event
	for _, item := range l.Items {
		evs, err := parse(item, true, buf[:0])
		if err != nil {
			skipped(err)
			continue
		}
		for _, ev := range evs {
			emit(ev)
		}
	}
	return nil
}

// Parse parses one audit.k8s.io/v1 Event (one line of an audit log) and
// appends what tokenroll keeps of it to out: usually one Event, two when a
// pod's own token asked for a token bound to a pod. An event that yields
// none is a *SkipError.
func Parse(data []byte, out []Event) ([]Event, error) {
	return parse(data, false, out)
}

func parse(data []byte, inList bool, out []Event) ([]Event, error) {
	if len(data) > MaxEventBytes {
		return out, skip(SkipTooLarge, "event is %d bytes, more than the %d parsed", len(data), MaxEventBytes)
	}
	var w wireEvent
	if err := decode(data, &w); err != nil {
		return out, err
	}
	// A list's items may leave their type to the list.
	untyped := inList && w.APIVersion == "" && w.Kind == ""
	if !untyped && (w.APIVersion != apiVersionV1 || w.Kind != "Event") {
		return out, skip(SkipUnsupported, "apiVersion %q kind %q, want %s Event (the log's --audit-log-format must be json)",
			protocol.Truncate(w.APIVersion), protocol.Truncate(w.Kind), apiVersionV1)
	}
	var code int32
	if w.ResponseStatus != nil {
		code = w.ResponseStatus.Code
	}
	switch w.Stage {
	case "ResponseComplete", "Panic":
	case "ResponseStarted":
		// A failed authentication is audited at ResponseStarted alone;
		// any other request's ResponseStarted (a watch's) is followed by
		// its ResponseComplete, read instead.
		if code != 401 {
			return out, skip(SkipStage, "stage ResponseStarted of a request that did not fail authentication")
		}
	default:
		return out, skip(SkipStage, "stage %q", protocol.Truncate(w.Stage))
	}
	if w.AuditID == "" {
		return out, skip(SkipInvalid, "no auditID")
	}
	ts, err := time.Parse(time.RFC3339Nano, w.StageTimestamp)
	if err != nil {
		return out, skip(SkipInvalid, "stageTimestamp is not an RFC 3339 time")
	}
	base := Event{
		AuditID:  types.UID(protocol.Truncate(w.AuditID)),
		Time:     ts,
		User:     protocol.Truncate(w.User.Username),
		SourceIP: lastIP(w.SourceIPs),
		Code:     code,
	}
	n := len(out)
	if code == 401 {
		ev := base
		ev.Kind = AuthFailed
		ev.User = ""
		return append(out, ev), nil
	}
	if ev, ok, err := presented(&w, base); err != nil {
		return out, err
	} else if ok {
		out = append(out, ev)
	}
	if ev, ok, err := issued(&w, base); err != nil {
		return out[:n], err
	} else if ok {
		out = append(out, ev)
	}
	if len(out) == n {
		return out, skip(SkipIrrelevant, "neither a pod-bound token, a TokenRequest nor a failed authentication")
	}
	return out, nil
}

// presented reads a request authenticated with a pod-bound token from
// user.extra, which only the API server's authenticator sets.
func presented(w *wireEvent, ev Event) (Event, bool, error) {
	extra := &w.User.Extra
	if extra.PodName == nil {
		return ev, false, nil
	}
	podName, podUID, credID, node := first(extra.PodName), first(extra.PodUID), first(extra.CredentialID), first(extra.NodeName)
	ns, ok := serviceAccountNamespace(w.User.Username)
	if !ok {
		return ev, false, skip(SkipInvalid, "user.extra names a pod but the user is not a service account")
	}
	if podName == "" || podUID == "" {
		return ev, false, skip(SkipInvalid, "user.extra names a pod without its name or UID")
	}
	jti, ok := JTIFromCredentialID(credID)
	if !ok {
		return ev, false, skip(SkipInvalid, "user.extra names a pod but its credential ID is not a jti")
	}
	ev.Kind = Presented
	ev.Pod = PodRef{Namespace: protocol.Truncate(ns), Name: protocol.Truncate(podName), UID: types.UID(protocol.Truncate(podUID)), Node: protocol.Truncate(node)}
	ev.JTI = protocol.Truncate(jti)
	return ev, true, nil
}

// issued reads a TokenRequest the API server answered with a token: the
// annotation names the token's jti, the request body (at level Request)
// the pod it is bound to.
func issued(w *wireEvent, ev Event) (Event, bool, error) {
	r := w.ObjectRef
	if w.Verb != "create" || r == nil || r.APIGroup != "" || r.Resource != "serviceaccounts" || r.Subresource != "token" {
		return ev, false, nil
	}
	credID := w.Annotations.IssuedCredentialID
	if credID == nil {
		// Refused, or the API server is older than the annotation.
		return ev, false, nil
	}
	jti, ok := JTIFromCredentialID(*credID)
	if !ok {
		return ev, false, skip(SkipInvalid, "annotation %s is not a jti", AnnotationIssuedCredentialID)
	}
	ev.Kind = Issued
	ev.JTI = protocol.Truncate(jti)
	ev.Pod = PodRef{Namespace: protocol.Truncate(r.Namespace)}
	if len(w.RequestObject) == 0 || string(w.RequestObject) == "null" {
		return ev, true, nil
	}
	if len(w.RequestObject) > maxRequestObjectBytes {
		return ev, false, skip(SkipTooLarge, "TokenRequest body is %d bytes, more than the %d read", len(w.RequestObject), maxRequestObjectBytes)
	}
	var tr wireTokenRequest
	if err := decode(w.RequestObject, &tr); err != nil {
		return ev, false, skip(SkipMalformed, "TokenRequest body: %v", err)
	}
	if ref := tr.Spec.BoundObjectRef; ref != nil && ref.Kind == "Pod" {
		ev.Pod.Name = protocol.Truncate(ref.Name)
		ev.Pod.UID = types.UID(protocol.Truncate(ref.UID))
	}
	if n := len(tr.Spec.Audiences); n > 0 {
		ev.Audiences = make([]string, 0, min(n, MaxAudiences))
		for _, a := range tr.Spec.Audiences[:min(n, MaxAudiences)] {
			ev.Audiences = append(ev.Audiences, protocol.Truncate(a))
		}
	}
	return ev, true, nil
}

func first(v []string) string {
	if len(v) == 0 {
		return ""
	}
	return v[0]
}

// serviceAccountNamespace returns NS of system:serviceaccount:NS:NAME.
func serviceAccountNamespace(user string) (string, bool) {
	rest, ok := strings.CutPrefix(user, "system:serviceaccount:")
	if !ok {
		return "", false
	}
	ns, name, ok := strings.Cut(rest, ":")
	return ns, ok && ns != "" && name != ""
}

func lastIP(ips []string) netip.Addr {
	if len(ips) == 0 {
		return netip.Addr{}
	}
	a, err := netip.ParseAddr(ips[len(ips)-1])
	if err != nil {
		return netip.Addr{}
	}
	return a.Unmap()
}
