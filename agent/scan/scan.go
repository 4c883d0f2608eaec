// Package scan walks a kubelet root and judges every projected
// service-account token on the node: which pod holds it, and whether it is
// fresh, due, overdue, expired, from the wrong issuer, unreadable, left
// behind by a deleted pod, or foreign (a JWT that is not the pod's
// service-account token). It makes no API request; a token's claims are
// decoded and dropped, and its signature is never read.
package scan

import (
	"cmp"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"time"

	"golang.org/x/sys/unix"

	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/tokenroll/tokenroll/agent/podsapi"
	"github.com/tokenroll/tokenroll/agent/token"
	"github.com/tokenroll/tokenroll/protocol"
)

// Options say what to scan and how to judge it.
type Options struct {
	// Root is the kubelet root directory (/var/lib/kubelet).
	Root string
	// Node names the node: tokens whose claims name another node are not
	// this node's. Empty means not known: the report names the node most
	// tokens name.
	Node string
	// Now is the moment the tokens are judged at.
	Now time.Time
	// ExpectedIssuer is the API server's signing issuer; empty means unknown.
	ExpectedIssuer string
	// Grace is how long past refreshAt a token may be before it is overdue.
	Grace time.Duration
	// Pods are the pods the kubelet runs, by UID, from its Pods API
	// (podsapi.Ask): only their serviceAccountToken projections are judged,
	// and volumes of other pods are orphaned. Nil means not known: a JWT is
	// then a pod's token only when its claims name that pod (and this node),
	// and nothing is judged orphaned.
	Pods map[string]podsapi.Pod
	// PodsAPI is what the Pods API answered; empty means PodsAPIListed when
	// Pods is set, PodsAPIAbsent when it is not.
	PodsAPI protocol.PodsAPI
}

// Token is the verdict on one token file. Fields a file that could not be
// decoded cannot have are left empty (and omitted from JSON). Strings from
// the file or its claims are capped at protocol.MaxClaimLen bytes.
type Token struct {
	PodUID         string    `json:"podUID"`
	Namespace      string    `json:"namespace,omitempty"`
	Pod            string    `json:"pod,omitempty"`
	ServiceAccount string    `json:"serviceAccount,omitempty"`
	Volume         string    `json:"volume"`
	Path           string    `json:"path"`
	Issuer         string    `json:"issuer,omitempty"`
	Audiences      []string  `json:"audiences,omitempty"`
	IssuedAt       time.Time `json:"issuedAt,omitzero"`
	ExpiresAt      time.Time `json:"expiresAt,omitzero"`
	WarnAfter      time.Time `json:"warnAfter,omitzero"`
	TTLSeconds     int64     `json:"ttlSeconds,omitzero"`
	RefreshAt      time.Time `json:"refreshAt,omitzero"`
	// ID names the token by its jti (protocol.TokenID); empty without one.
	ID     string         `json:"id,omitempty"`
	State  protocol.State `json:"state"`
	Reason string         `json:"reason"`
}

// Report is one scan of one node.
type Report struct {
	Node string    `json:"node"`
	Now  time.Time `json:"now"`
	// PodsAPI says where the scan learnt which pods run; when it is not
	// complete (PodsAPI.Complete) the tokens were attributed by their claims
	// and nothing was judged orphaned.
	PodsAPI protocol.PodsAPI       `json:"podsAPI"`
	Tokens  []Token                `json:"tokens"`
	Summary map[protocol.State]int `json:"summary"`
	// Errors are directories that could not be read, or were read only in
	// part (more entries than the scanner reads); not token files.
	Errors []string `json:"errors,omitempty"`
	// Partial says some directory was read only in part (Errors says which).
	Partial bool `json:"partial,omitempty"`
}

// Complete reports whether the scan saw every pod the kubelet runs.
func (r *Report) Complete() bool { return r.PodsAPI.Complete() }

// ProjectedDir is where the kubelet keeps a pod's projected volumes,
// relative to the pod's directory.
const ProjectedDir = "volumes/kubernetes.io~projected"

// Scanner scans repeatedly with one read buffer; it is not safe for
// concurrent use.
type Scanner struct {
	reader *volumeReader
}

// NewScanner returns a Scanner.
func NewScanner() *Scanner { return &Scanner{reader: newVolumeReader()} }

// Scan judges every projected token under opts.Root. It fails only when the
// root itself cannot be read; anything wrong below it is in the report.
func (s *Scanner) Scan(opts Options) (*Report, error) {
	now := opts.Now.UTC().Truncate(time.Second)
	podsDir := filepath.Join(opts.Root, "pods")
	pods, err := os.ReadDir(podsDir)
	if errors.Is(err, fs.ErrNotExist) {
		if _, rootErr := os.Stat(opts.Root); rootErr != nil {
			return nil, fmt.Errorf("kubelet root %s: %w (is --kubelet-root right?)", opts.Root, rootErr)
		}
		pods, err = nil, nil // a node with no pods yet
	}
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", podsDir, err)
	}
	r := &Report{Node: opts.Node, Now: now, PodsAPI: opts.PodsAPI, Tokens: []Token{}, Summary: map[protocol.State]int{}}
	listed := opts.Pods != nil
	switch {
	case r.PodsAPI == "" && listed:
		r.PodsAPI = protocol.PodsAPIListed
	case r.PodsAPI == "":
		r.PodsAPI = protocol.PodsAPIAbsent
	}
	s.reader.partial = s.reader.partial[:0]
	nodes := map[string]int{}
	for _, pod := range pods {
		if !pod.IsDir() {
			continue
		}
		uid := pod.Name()
		volsDir := filepath.Join(podsDir, uid, ProjectedDir)
		vfd, err := unix.Open(volsDir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ENOTDIR) {
			continue
		}
		if err != nil {
			r.Errors = append(r.Errors, fmt.Sprintf("reading %s: %v", volsDir, err))
			continue
		}
		if listed && len(opts.Pods) == 0 {
			// The kubelet lists no pods while this one has projected
			// volumes: just restarted, or not telling. Believing it would
			// make every token orphaned and the node look clean.
			listed, r.PodsAPI = false, protocol.PodsAPIEmpty
		}
		vols, truncated, err := s.reader.readNames(vfd)
		if err != nil {
			r.Errors = append(r.Errors, fmt.Sprintf("reading %s: %v", volsDir, err))
		}
		if truncated {
			r.Errors = append(r.Errors, fmt.Sprintf("%q holds more than %d volumes; only the first %d were read, and tokens in the rest are not judged", volsDir, maxDirEntries, maxDirEntries))
			r.Partial = true
		}
		spec, live := opts.Pods[uid]
		p := podFiles{uid: uid, spec: spec, listed: listed && live, orphaned: listed && !live}
		for _, vol := range vols {
			var direct []string
			if p.listed {
				direct = spec.TokenPaths[vol]
			}
			_, err := s.reader.readVolume(vfd, vol, filepath.Join(volsDir, vol), direct, func(rel string, claims []byte, problem string) {
				t, node, ok := p.judge(vol, rel, claims, problem, slices.Contains(direct, rel), now, opts)
				if !ok {
					return
				}
				if node != "" {
					nodes[node]++
				}
				r.Tokens = append(r.Tokens, t)
			})
			if err != nil {
				r.Errors = append(r.Errors, err.Error())
			}
		}
		unix.Close(vfd)
	}
	if len(s.reader.partial) > 0 {
		r.Errors = append(r.Errors, s.reader.partial...)
		r.Partial = true
	}
	if r.Node == "" {
		best := 0
		for n, c := range nodes {
			if c > best || c == best && n < r.Node {
				r.Node, best = n, c
			}
		}
	}
	for _, t := range r.Tokens {
		r.Summary[t.State]++
	}
	slices.SortFunc(r.Tokens, func(a, b Token) int {
		return cmp.Or(
			cmp.Compare(a.State.Severity(), b.State.Severity()),
			cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Pod, b.Pod),
			cmp.Compare(a.PodUID, b.PodUID), cmp.Compare(a.Volume, b.Volume), cmp.Compare(a.Path, b.Path))
	})
	return r, nil
}

// podFiles is what the scan knows of one pod directory.
type podFiles struct {
	uid  string
	spec podsapi.Pod
	// listed: the kubelet listed this pod, so spec says which of its files
	// are service-account tokens. orphaned: the kubelet listed its pods and
	// not this one. Neither: pods are not known, claims decide.
	listed, orphaned bool
}

// Reasons of the foreign state.
const (
	reasonNotProjection = "not a serviceAccountToken projection of this pod (a ConfigMap, Secret or downward API item); not judged"
	reasonNoPod         = "its claims name no pod: not a pod's service-account token; not judged"
	reasonOtherPod      = "its claims name another pod than the one whose volume holds it; not judged"
	reasonOtherNode     = "its claims name another node; not judged"
	reasonBadName       = "its claims carry a namespace, pod or service account name that is not a Kubernetes name; not judged"
)

// judge turns one file into a Token and the node its claims name (only for
// a token attributed to this pod), or reports false when the file is not
// one to list (not a JWT; a file of a listed pod that is not its token and
// cannot be read).
func (p podFiles) judge(vol, rel string, claims []byte, problem string, isToken bool, now time.Time, opts Options) (Token, string, bool) {
	t := Token{PodUID: p.uid, Volume: protocol.Truncate(vol), Path: protocol.Truncate(rel)}
	if p.listed {
		t.Namespace, t.Pod, t.ServiceAccount = p.spec.Namespace, p.spec.Name, p.spec.ServiceAccount
	}
	switch {
	case p.listed && !isToken:
		// A tenant's file: what cannot be read, or is no JWT, is none of
		// our business.
		if problem != "" || claims == nil {
			return t, "", false
		}
		c, err := token.ParseClaims(claims)
		if err == nil {
			t.setIssuer(c)
		}
		t.ServiceAccount = "" // the pod's, not this token's
		t.State, t.Reason = protocol.StateForeign, reasonNotProjection
		return t, "", true
	case problem != "":
		t.State, t.Reason = protocol.StateInvalid, problem
		if p.orphaned {
			t.State, t.Reason = protocol.StateOrphaned, reasonOrphaned
		}
		return t, "", true
	case claims == nil && isToken:
		t.State, t.Reason = protocol.StateInvalid, "not a JWT, where the kubelet writes the pod's service-account token"
		return t, "", true
	case claims == nil:
		return t, "", false
	}
	c, err := token.ParseClaims(claims)
	if err != nil {
		t.State, t.Reason = protocol.StateInvalid, err.Error()
		if !isToken {
			t.State, t.Reason = protocol.StateForeign, "its claims cannot be read ("+err.Error()+"); not judged"
		}
		return t, "", true
	}
	t.setIssuer(c)
	if why := p.attribute(c, isToken, opts.Node); why != "" {
		t.Namespace, t.Pod, t.ServiceAccount = "", "", ""
		if p.listed {
			t.Namespace, t.Pod = p.spec.Namespace, p.spec.Name
		}
		t.State, t.Reason = protocol.StateForeign, why
		return t, "", true
	}
	if !p.listed {
		t.Namespace, t.Pod, t.ServiceAccount = c.Namespace, c.PodName, c.ServiceAccount
	}
	t.IssuedAt, t.ExpiresAt, t.WarnAfter = c.IssuedAt, c.Expires, c.WarnAfter
	t.TTLSeconds = int64(c.TTL() / time.Second)
	t.RefreshAt = c.RefreshAt()
	if c.JTI != "" {
		t.ID = protocol.TokenID(c.JTI)
	}
	if p.orphaned {
		t.State, t.Reason = protocol.StateOrphaned, reasonOrphaned
		return t, "", true
	}
	v := token.Judge(c, now, opts.ExpectedIssuer, opts.Grace)
	t.State, t.Reason = v.State, v.Reason
	node := c.NodeName
	if len(validation.IsDNS1123Subdomain(node)) > 0 {
		node = ""
	}
	return t, node, true
}

const reasonOrphaned = "the kubelet does not run this pod; a volume left behind"

// attribute says why a JWT's claims do not make it this pod's token, or ""
// when they do. At one of the paths the pod's spec names, only a claim of
// another pod disqualifies it; elsewhere (pods not known) the claims must
// name this pod's UID, this node when both are known, and Kubernetes names.
func (p podFiles) attribute(c token.Claims, isToken bool, node string) string {
	if isToken {
		if c.PodUID != "" && c.PodUID != p.uid {
			return reasonOtherPod
		}
		return ""
	}
	switch {
	case c.PodUID == "":
		return reasonNoPod
	case c.PodUID != p.uid:
		return reasonOtherPod
	case node != "" && c.NodeName != "" && c.NodeName != node:
		return reasonOtherNode
	case len(validation.IsDNS1123Label(c.Namespace)) > 0, len(validation.IsDNS1123Subdomain(c.PodName)) > 0,
		c.ServiceAccount != "" && len(validation.IsDNS1123Subdomain(c.ServiceAccount)) > 0:
		return reasonBadName
	}
	return ""
}

// setIssuer fills the issuer and audiences, capped for output.
func (t *Token) setIssuer(c token.Claims) {
	t.Issuer = protocol.Truncate(c.Issuer)
	if len(c.Audiences) > 0 {
		t.Audiences = make([]string, len(c.Audiences))
		for i, a := range c.Audiences {
			t.Audiences[i] = protocol.Truncate(a)
		}
	}
}
