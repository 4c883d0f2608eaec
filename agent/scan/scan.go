// Package scan walks a kubelet root and judges every projected
// service-account token on the node: which pod holds it, and whether it is
// fresh, due, overdue, expired, from the wrong issuer, unreadable or left
// behind by a deleted pod. It makes no API request; token bytes are decoded
// and dropped.
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

	"github.com/tokenroll/tokenroll/agent/token"
	"github.com/tokenroll/tokenroll/protocol"
)

// Options say what to scan and how to judge it.
type Options struct {
	// Root is the kubelet root directory (/var/lib/kubelet).
	Root string
	// Node names the node in the report; empty means the node the tokens
	// themselves name.
	Node string
	// Now is the moment the tokens are judged at.
	Now time.Time
	// ExpectedIssuer is the API server's signing issuer; empty means unknown.
	ExpectedIssuer string
	// Grace is how long past refreshAt a token may be before it is overdue.
	Grace time.Duration
	// LivePods is the set of pod UIDs the kubelet runs, from its Pods API;
	// nil means unknown, and nothing is judged orphaned.
	LivePods map[string]bool
}

// Token is the verdict on one token file. Fields a file that could not be
// decoded cannot have are left empty (and omitted from JSON).
type Token struct {
	PodUID         string         `json:"podUID"`
	Namespace      string         `json:"namespace,omitempty"`
	Pod            string         `json:"pod,omitempty"`
	ServiceAccount string         `json:"serviceAccount,omitempty"`
	Volume         string         `json:"volume"`
	Path           string         `json:"path"`
	Issuer         string         `json:"issuer,omitempty"`
	Audiences      []string       `json:"audiences,omitempty"`
	IssuedAt       time.Time      `json:"issuedAt,omitzero"`
	ExpiresAt      time.Time      `json:"expiresAt,omitzero"`
	WarnAfter      time.Time      `json:"warnAfter,omitzero"`
	TTLSeconds     int64          `json:"ttlSeconds,omitzero"`
	RefreshAt      time.Time      `json:"refreshAt,omitzero"`
	State          protocol.State `json:"state"`
	Reason         string         `json:"reason"`
}

// Report is one scan of one node.
type Report struct {
	Node    string                 `json:"node"`
	Now     time.Time              `json:"now"`
	Tokens  []Token                `json:"tokens"`
	Summary map[protocol.State]int `json:"summary"`
	// Errors are directories that could not be read (not token files).
	Errors []string `json:"errors,omitempty"`
}

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
	r := &Report{Node: opts.Node, Now: now, Tokens: []Token{}, Summary: map[protocol.State]int{}}
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
		vols, err := s.reader.readNames(vfd)
		if err != nil {
			r.Errors = append(r.Errors, fmt.Sprintf("reading %s: %v", volsDir, err))
		}
		orphaned := opts.LivePods != nil && !opts.LivePods[uid]
		for _, vol := range vols {
			_, err := s.reader.readVolume(vfd, vol, filepath.Join(volsDir, vol), func(rel string, data []byte, problem string) {
				t, node, ok := judgeFile(uid, vol, rel, data, problem, orphaned, now, opts)
				if !ok {
					return
				}
				if node != "" && !orphaned {
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
	if r.Node == "" {
		best := 0
		for n, c := range nodes {
			if n != "" && (c > best || c == best && n < r.Node) {
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

// judgeFile turns one file into a Token and the node its claims name, or
// reports false when the file is not a token (ca.crt, namespace).
func judgeFile(uid, vol, rel string, data []byte, problem string, orphaned bool, now time.Time, opts Options) (Token, string, bool) {
	t := Token{PodUID: uid, Volume: vol, Path: rel}
	if problem == "" && !token.LooksLikeJWT(data) {
		return t, "", false
	}
	var claims token.Claims
	var err error
	if problem == "" {
		claims, err = token.Parse(data)
		if err != nil {
			problem = err.Error()
		}
	}
	if problem == "" {
		t.Namespace, t.Pod, t.ServiceAccount = claims.Namespace, claims.PodName, claims.ServiceAccount
		t.Issuer, t.Audiences = claims.Issuer, claims.Audiences
		t.IssuedAt, t.ExpiresAt, t.WarnAfter = claims.IssuedAt, claims.Expires, claims.WarnAfter
		t.TTLSeconds = int64(claims.TTL() / time.Second)
		t.RefreshAt = claims.RefreshAt()
	}
	switch {
	case orphaned:
		t.State, t.Reason = protocol.StateOrphaned, "the kubelet does not run this pod; a volume left behind"
	case problem != "":
		t.State, t.Reason = protocol.StateInvalid, problem
	default:
		v := token.Judge(claims, now, opts.ExpectedIssuer, opts.Grace)
		t.State, t.Reason = v.State, v.Reason
	}
	return t, claims.NodeName, true
}
