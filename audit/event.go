// Package audit reads the kube-apiserver's audit events and keeps, of each,
// only what tokenroll needs to tell which pods present which service-account
// credentials: who presented a token and which token it was (its jti, never
// the token), which token the kubelet was issued for which pod, and which
// requests failed authentication.
//
// Sources (a webhook endpoint, an audit log tail) deliver Events; nothing
// here stores an audit event whole, and no request body, response body or
// token ever leaves the parser.
package audit

import (
	"net/netip"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/types"
)

// The keys the API server puts in user.extra of a request authenticated
// with a pod-bound service-account token, and the annotation it puts on the
// kubelet's TokenRequest.
const (
	ExtraPodName      = "authentication.kubernetes.io/pod-name"
	ExtraPodUID       = "authentication.kubernetes.io/pod-uid"
	ExtraNodeName     = "authentication.kubernetes.io/node-name"
	ExtraCredentialID = "authentication.kubernetes.io/credential-id"

	AnnotationIssuedCredentialID = "authentication.kubernetes.io/issued-credential-id"

	// credentialIDPrefix starts a credential ID that names a token by its
	// jti claim: "JTI=<jti>".
	credentialIDPrefix = "JTI="
)

// Kind says what an Event is evidence of.
type Kind int

const (
	// Presented: a request authenticated with a pod-bound service-account
	// token. Pod and JTI say whose token and which one.
	Presented Kind = iota + 1
	// Issued: a TokenRequest the API server answered with a new token
	// bound to a pod (the kubelet refreshing a projected volume when User
	// is system:node:<node>). Pod (from the request's boundObjectRef, so
	// only at audit level Request or above), JTI and Audiences say which.
	Issued
	// AuthFailed: a request refused with 401. Only SourceIP says from
	// where; there is no user.
	AuthFailed
)

// PodRef names the pod a credential is bound to. Node is empty when the
// event does not say (an Issued event names no node).
type PodRef struct {
	Namespace string
	Name      string
	UID       types.UID
	Node      string
}

// Event is what tokenroll keeps of one audit event at stage
// ResponseComplete (or Panic). Strings are capped in length by the parser.
type Event struct {
	Kind Kind
	// AuditID identifies the request across stages and API servers' logs.
	AuditID types.UID
	// Time is the stage timestamp.
	Time time.Time
	// User is user.username (system:serviceaccount:NS:NAME for Presented,
	// system:node:NODE for the kubelet's Issued); empty for AuthFailed.
	User string
	// SourceIP is the last of sourceIPs: the peer of the API server's
	// connection, which the client cannot choose (the entries before it
	// come from X-Forwarded-For and X-Real-Ip, which any client sets).
	// Invalid when absent or unparsable.
	SourceIP netip.Addr
	// Code is responseStatus.code.
	Code int32
	// Pod is the pod the credential is bound to (Presented, Issued).
	Pod PodRef
	// JTI is the token's jti claim, from credential-id (Presented) or
	// issued-credential-id (Issued). An identifier, not a secret, but
	// kept out of logs and metric labels all the same.
	JTI string
	// Audiences are the audiences asked for in an Issued TokenRequest.
	Audiences []string
}

// Sink receives the Events a source reads. Sources deliver to it one at a
// time (never concurrently), in the order they read them; Observe must not
// block for long, as it holds up every source.
type Sink interface {
	Observe(Event)
}

// Standby is a Sink that may not keep events for now: a coordinator
// replica that does not lead. The webhook asks it before reading a batch
// and answers 503, so that the API server sends the batch again (its
// webhook backend retries 5xx answers with a backoff), on a new
// connection that the Service routes to the replica that leads. A log
// source is not asked: every replica reads the logs, and only the leader's
// events count.
type Standby interface {
	Sink
	// Accepting says whether events delivered now are kept.
	Accepting() bool
}

// JTIFromCredentialID returns the jti a credential ID ("JTI=<jti>") names,
// and false for any other form of credential ID (an x509 certificate's, a
// legacy token's).
func JTIFromCredentialID(id string) (string, bool) {
	jti, ok := strings.CutPrefix(id, credentialIDPrefix)
	if !ok || jti == "" {
		return "", false
	}
	return jti, true
}
