// Package apps tells which pods' applications still present a stale
// service-account token (app-stale), which fail to authenticate
// (app-failing), and which tokenroll has not seen authenticate at all
// (unobserved), from the API server's audit events and the pods it follows.
// The Detector is a pure state machine on an injected clock; Run feeds it
// the pods and reports what it finds.
package apps

import (
	"container/heap"
	"encoding/binary"
	"encoding/hex"
	"hash/maphash"
	"iter"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/clock"

	"github.com/tokenroll/tokenroll/audit"
	"github.com/tokenroll/tokenroll/protocol"
)

// Condition is what the detector finds of a pod's application.
type Condition string

// The conditions. A pod may be app-stale and app-failing at once (two
// containers); healthy is observed and neither.
const (
	// AppStale: its app keeps presenting a token the kubelet has replaced,
	// longer than the grace after the replacement: it does not reload its
	// token file, and an issuer change will break it.
	AppStale Condition = "app-stale"
	// AppFailing: requests from its pod IP keep failing authentication.
	AppFailing Condition = "app-failing"
	// Unobserved: no request authenticated with its token in the window.
	Unobserved Condition = "unobserved"
	Healthy    Condition = "healthy"
)

// Pod is what the detector needs of a pod (PodFrom makes it).
type Pod struct {
	UID       types.UID
	Namespace string
	Name      string
	Node      string
	IPs       []netip.Addr
	// HostNetwork pods share their node's IP: a failed request from it is
	// never theirs to carry.
	HostNetwork bool
	// Running: the phase is Running. Only running pods with a token source
	// are followed (counted healthy, unobserved, ...).
	Running bool
	// Workload is the owning workload, "Deployment/web", or "" for a bare
	// pod.
	Workload string
	// TokenAudiences has one entry per projected serviceAccountToken source
	// of the pod: its audience, "" for the API server's own.
	TokenAudiences []string
	// ShortLivedTokens: a token source of the pod asks for something else
	// than the API server's audience and exactly ExtendedSeconds, so its
	// token expires within its requested time of being issued (only that
	// request, the kube-api-access default, gets a token valid for a year
	// from an API server with --service-account-extend-token-expiration,
	// on by default).
	ShortLivedTokens bool
}

// ExtendedSeconds is the expirationSeconds of the kube-api-access volume
// that every pod gets by default, the one the API server extends to a
// year.
const ExtendedSeconds = 3607

func (p *Pod) followed() bool { return p.Running && len(p.TokenAudiences) > 0 }

// Config configures a Detector.
type Config struct {
	// Grace: a replaced token presented this long after its replacement
	// makes the pod app-stale.
	Grace time.Duration
	// FailingGrace: failed authentication lasting this long makes the pod
	// app-failing (zero: Grace). It is shorter than Grace: an app that
	// still authenticates with a replaced token works and may be given
	// time, one whose every request is refused is down now; client-go
	// reads the token file again on a 401, so a reloading app stops
	// failing within one request of the kubelet's new token.
	FailingGrace time.Duration
	// Window: evidence older than this is forgotten; a pod with no
	// authenticated request in it is unobserved.
	Window time.Duration
	// RepeatEvents: a pod entering the same condition again within this
	// time gets no second Event.
	RepeatEvents time.Duration
	Clock        clock.PassiveClock
}

// Bounds on what one pod keeps, whatever the events: the kubelet issues
// one token per projected source per refresh, so a handful covers every
// source of a pod through several refreshes.
const (
	maxIssued    = 8
	maxOther     = 4
	maxPresented = 8
	maxVolume    = protocol.MaxTokenIDsPerPod
	// maxForeign tokens issued by someone other than a kubelet, for a pod
	// the audit event does not name, are remembered across all pods.
	maxForeign = 4096
)

// volumeSlack: a token first presented less than this before the detector
// learnt what the pod's volumes hold may be newer than what they held
// then (the agent scans, then writes; the coordinator sees it after).
const volumeSlack = 10 * time.Second

// EventResult classifies what became of an audit event, for a counter.
type EventResult int

// The results.
const (
	// Counted: attributed to a followed pod and used.
	Counted EventResult = iota
	// UnknownPod: no pod the detector knows (by UID or IP).
	UnknownPod
	// Ignored: not attributable, or not evidence (a token issued by
	// someone other than the pod's node, an IP several pods share, a
	// failed request from before the pod had that IP).
	Ignored
	numResults
)

var resultNames = [numResults]string{"counted", "unknown_pod", "ignored"}

func (r EventResult) String() string { return resultNames[r] }

// kinds indexes event counts: unknown kinds count under 0.
var kindNames = [...]string{"other", "presented", "issued", "auth_failed"}

// Detector keeps, per pod, the evidence of its tokens and judges it.
// Observe and the pod methods are safe to call concurrently.
type Detector struct {
	cfg  Config
	seed maphash.Seed

	mu   sync.Mutex
	pods map[types.UID]*podState
	// byIP names the pod (any, hostNetwork included) holding each IP that
	// one pod holds, sharedIP lists the pods holding each IP that several
	// do (hostNetwork pods of a node): a failed request is attributed only
	// when exactly one non-hostNetwork pod holds its source IP. Nearly
	// every pod has an IP of its own, and every pod is indexed: no slice
	// each.
	byIP     map[netip.Addr]types.UID
	sharedIP map[netip.Addr][]types.UID
	counts   [len(kindNames)][numResults]uint64
	// foreign are tokens issued, for a pod the event does not name, to
	// someone other than a kubelet: never judged (a ring).
	foreign  map[uint64]struct{}
	foreignQ [maxForeign]uint64
	nForeign int
	// started is when the detector was made: it knows nothing of tokens
	// issued before. last is the latest evaluation.
	started time.Time
	last    *Result

	// dirty are the pods to judge at the next evaluation; due orders the
	// others by when time alone changes their judgement.
	dirty []*podState
	due   dueHeap
	// The totals of every pod's last judgement, kept as pods are judged
	// again, and whether they changed since the last evaluation copied
	// them into its result.
	tot     totals
	changed bool
	// judgeAll judges every pod at each evaluation, as if each were
	// dirty: the reference the incremental evaluation is tested against.
	judgeAll bool
}

type totals struct {
	followed, healthy, unobserved, stale, failing int
	nodes                                         map[string]NodeCounts
	staleNS, failingNS                            map[string]int
	problems                                      map[*podState]struct{}
}

type issuedToken struct {
	jti uint64
	aud uint64
	at  time.Time
	// seq orders issuances the clock does not.
	seq int
}

type presentedToken struct {
	jti uint64
	// id is the token's protocol.TokenID, as the agent reports it.
	id          uint64
	first, last time.Time
}

// volumeToken is a token the pod's volumes held, as its node's agent
// reported it.
type volumeToken struct {
	id       uint64
	issuedAt stamp
}

type podState struct {
	// pod is read only, replaced whole.
	pod *Pod
	// audCount counts the pod's token sources per audience key: only a
	// key held by exactly one source names a token unambiguously.
	audCount []audienceCount
	// issued are tokens the pod's node's kubelet was issued for a source
	// the spec names once; other are tokens issued for the pod that are
	// not (another principal's TokenRequest, a CSI driver's audience, an
	// ambiguous source): never judged. Rings, oldest overwritten, grown
	// as evidence comes: most pods hold one or two of each, or none.
	*evidence
	// volume are the tokens the pod's volumes held as of volumeAt, when
	// the detector learnt them from the agent's report (zero: never).
	volume   []volumeToken
	volumeAt stamp
	// lastAuth is the last authenticated request (event time).
	lastAuth stamp
	// staleFirst..staleLast is the current run of stale presentations;
	// replacedAt is when the token presented last was replaced, and
	// issuedBy when it was issued at the latest.
	staleFirst, staleLast, replacedAt, issuedBy stamp
	// failFirst..failLast is the current run of failed requests.
	failFirst, failLast stamp
	// ipSince is when the detector learnt the pod's IPs: failed requests
	// from before were another pod's.
	ipSince stamp
	// What the last Evaluate reported, and since when.
	stale, failing           bool
	staleSince, failingSince stamp
	// lastEvent is when an Event was last asked for, per condition
	// (0: stale, 1: failing).
	lastEvent [2]stamp

	// Evaluation: a pod is judged again only when something of it
	// changed (dirty) or when time alone changes its judgement (due, when
	// a piece of its evidence leaves the window): the others count as
	// they did. counted says its last judgement is in the detector's
	// totals, observed is that judgement's. listed: the list replacePods
	// is given holds it.
	dirty, counted, observed, deleted, listed bool
	due                                       stamp
	// dueAt is its index in the detector's due heap (-1: not in it).
	dueAt int
}

// stamp is a time as nanoseconds since the Unix epoch, 0 for the zero
// time: a podState holds over a dozen times, and every pod of the cluster
// has one.
type stamp int64

func stampOf(t time.Time) stamp {
	if t.IsZero() {
		return 0
	}
	return stamp(t.UnixNano())
}

func (s stamp) t() time.Time {
	if s == 0 {
		return time.Time{}
	}
	return time.Unix(0, int64(s)).UTC()
}

// evidence is what audit events told of a pod's tokens: most pods never
// authenticate, and a podState without it is a quarter smaller. Read it
// through ev, write it through evw.
type evidence struct {
	issued    []issuedToken
	nIssued   int
	other     []uint64
	nOther    int
	presented []presentedToken
	nPres     int
	// gone are the IDs of tokens an earlier report of the agent's held
	// and a later one did not: the kubelet replaced them.
	gone  []uint64
	nGone int
}

// none is the evidence of a pod without any: read only.
var none evidence

func (ps *podState) ev() *evidence {
	if ps.evidence == nil {
		return &none
	}
	return ps.evidence
}

func (ps *podState) evw() *evidence {
	if ps.evidence == nil {
		ps.evidence = &evidence{}
	}
	return ps.evidence
}

type audienceCount struct {
	key uint64
	n   int
}

// sources is how many of the pod's token sources have audience key aud.
func (ps *podState) sources(aud uint64) int {
	for _, a := range ps.audCount {
		if a.key == aud {
			return a.n
		}
	}
	return 0
}

// ring puts v at position n of a ring of at most size entries, growing
// it until it is full.
func ring[T any](r []T, n, size int, v T) []T {
	if len(r) < size {
		return append(r, v)
	}
	r[n%size] = v
	return r
}

// NewDetector checks cfg and makes a Detector.
func NewDetector(cfg Config) *Detector {
	if cfg.Clock == nil {
		cfg.Clock = clock.RealClock{}
	}
	return &Detector{cfg: cfg, seed: maphash.MakeSeed(), pods: map[types.UID]*podState{}, byIP: map[netip.Addr]types.UID{}, sharedIP: map[netip.Addr][]types.UID{},
		foreign: map[uint64]struct{}{}, started: cfg.Clock.Now(),
		tot: totals{nodes: map[string]NodeCounts{}, staleNS: map[string]int{}, failingNS: map[string]int{}, problems: map[*podState]struct{}{}}}
}

// tokenID is protocol.TokenID(jti) as a number.
func tokenID(jti string) uint64 {
	id, _ := parseTokenID(protocol.TokenID(jti))
	return id
}

func parseTokenID(s string) (uint64, bool) {
	b, err := hex.DecodeString(s)
	if err != nil || len(b) != 8 {
		return 0, false
	}
	return binary.BigEndian.Uint64(b), true
}

// SetVolumeTokens takes what node's agent reported its pods' volumes hold
// (protocol.TokenReport.TokenIDs), as learnt now: the tokens app detection
// matches presented credentials with when the audit events do not name the
// pod a token was issued for (OpenShift's default audit profile). A pod on
// another node is not this agent's to report on; pods not known yet are
// left for its next report.
func (d *Detector) SetVolumeTokens(node string, pods map[string][]string) {
	now := d.cfg.Clock.Now()
	d.mu.Lock()
	defer d.mu.Unlock()
	for uid, entries := range pods {
		ps := d.pods[types.UID(uid)]
		if ps == nil || ps.pod.Node != node {
			continue
		}
		vol := make([]volumeToken, 0, min(len(entries), maxVolume))
		for _, e := range entries[:min(len(entries), maxVolume)] {
			id, at, ok := protocol.ParseTokenIDEntry(e)
			if !ok {
				continue
			}
			n, _ := parseTokenID(id)
			vol = append(vol, volumeToken{id: n, issuedAt: stampOf(at)})
		}
		for _, v := range ps.volume {
			if !slices.ContainsFunc(vol, func(n volumeToken) bool { return n.id == v.id }) && !slices.Contains(ps.ev().gone, v.id) {
				e := ps.evw()
				e.gone = ring(e.gone, e.nGone, maxVolume, v.id)
				e.nGone++
			}
		}
		ps.volume, ps.volumeAt = vol, stampOf(now)
		d.markDirty(ps)
		// What the pod presented before is judged again against it.
		for _, p := range ps.ev().presented {
			d.judgeByVolume(ps, p, p.last)
		}
	}
}

// judgeByVolume judges a token the pod presented at t against what its
// volumes held, and reports whether it found it stale: a token not among
// them was not in the pod's volumes any more, and the app presents a token
// the kubelet replaced, if it was presented before the detector learnt
// them, or an earlier report held it (the kubelet refreshed the token
// within volumeSlack of its first presentation the detector saw, as soon
// after the coordinator starts). The grace runs from the newest token the
// volumes hold. Tokens issued to someone other than the pod's kubelet are
// never judged. Called with d.mu held.
func (d *Detector) judgeByVolume(ps *podState, p presentedToken, t time.Time) bool {
	if ps.volumeAt == 0 || len(ps.volume) == 0 {
		return false
	}
	if !p.first.Before(ps.volumeAt.t().Add(-volumeSlack)) && !slices.Contains(ps.ev().gone, p.id) {
		return false
	}
	if _, ok := d.foreign[p.jti]; ok || slices.Contains(ps.ev().other, p.jti) {
		return false
	}
	var replacedAt time.Time
	for _, v := range ps.volume {
		if v.id == p.id {
			return false
		}
		if v.issuedAt.t().After(replacedAt) {
			replacedAt = v.issuedAt.t()
		}
	}
	if t.Before(replacedAt.Add(d.cfg.Grace)) {
		return false
	}
	d.markStale(ps, t, replacedAt, p.first)
	return true
}

// holds reports whether the pod's volumes held the token with ID id when
// the detector learnt them at or after at.
func (ps *podState) holds(id uint64, at time.Time) bool {
	return !ps.volumeAt.t().Before(at) && slices.ContainsFunc(ps.volume, func(v volumeToken) bool { return v.id == id })
}

// markStale records a stale presentation at t of a token replaced at
// replacedAt, issued by issuedBy at the latest (a token is issued before
// it is first presented). Called with d.mu held.
func (d *Detector) markStale(ps *podState, t, replacedAt, issuedBy time.Time) {
	if ps.staleLast == 0 || t.Sub(ps.staleLast.t()) > d.cfg.Window {
		ps.staleFirst = stampOf(t)
	}
	if t.After(ps.staleLast.t()) {
		ps.staleLast, ps.replacedAt, ps.issuedBy = stampOf(t), stampOf(replacedAt), stampOf(issuedBy)
	}
}

// noteForeign remembers a token issued to someone other than a kubelet.
// Called with d.mu held.
func (d *Detector) noteForeign(jti uint64) {
	if _, ok := d.foreign[jti]; ok {
		return
	}
	i := d.nForeign % maxForeign
	if d.nForeign >= maxForeign {
		delete(d.foreign, d.foreignQ[i])
	}
	d.foreignQ[i] = jti
	d.foreign[jti] = struct{}{}
	d.nForeign++
}

// Started is when the detector was made: tokens issued before are not
// known to it, so it cannot tell whether an app presents them late.
func (d *Detector) Started() time.Time { return d.started }

// Last is the latest evaluation (nil: none yet). Its maps and slices are
// shared: read them only.
func (d *Detector) Last() *Result {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.last
}

func (d *Detector) hash(s string) uint64 { return maphash.String(d.seed, s) }

// audKey names a set of audiences whatever their order; no audience (the
// API server's) has its own key.
func (d *Detector) audKey(auds []string) uint64 {
	switch len(auds) {
	case 0:
		return d.hash("")
	case 1:
		return d.hash(auds[0])
	}
	s := slices.Clone(auds)
	slices.Sort(s)
	return d.hash(strings.Join(slices.Compact(s), "\x00"))
}

// SetPod adds or updates a pod; a pod that has ended is dropped.
func (d *Detector) SetPod(p Pod, ended bool) { d.setPod(&p, ended) }

// setPod is SetPod keeping p itself, which nothing may change after.
func (d *Detector) setPod(p *Pod, ended bool) {
	if ended {
		d.DeletePod(p.UID)
		return
	}
	now := d.cfg.Clock.Now()
	d.mu.Lock()
	defer d.mu.Unlock()
	d.setPodLocked(p, now)
}

// replacePods makes the pods listed the detector's pods, as setPod does
// each, and deletes those it holds that the list does not (or lists
// ended): what a relist of every pod of the cluster tells. A pod listed
// keeps its state, by UID. Each pod is set under the lock on its own, so
// audit events are not held up for the whole list; the pods are the
// caller's alone meanwhile (a pod SetPod gives the detector during
// replacePods may be deleted).
func (d *Detector) replacePods(list iter.Seq2[*Pod, bool]) {
	for p, ended := range list {
		if ended {
			// Not marked listed: deleted below, if the detector holds it.
			continue
		}
		now := d.cfg.Clock.Now()
		d.mu.Lock()
		d.setPodLocked(p, now).listed = true
		d.mu.Unlock()
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, ps := range d.pods {
		if ps.listed {
			ps.listed = false
		} else {
			d.deleteLocked(ps)
		}
	}
}

// setPodLocked is setPod for a pod that has not ended. Called with d.mu
// held.
func (d *Detector) setPodLocked(p *Pod, now time.Time) *podState {
	ps := d.pods[p.UID]
	switch {
	case ps == nil:
		ps = &podState{ipSince: stampOf(now), dueAt: -1}
		d.pods[p.UID] = ps
	case !slices.Equal(ps.pod.IPs, p.IPs) || ps.pod.HostNetwork != p.HostNetwork:
		d.unindex(ps)
		ps.ipSince, ps.failFirst, ps.failLast = stampOf(now), 0, 0
	default:
		d.unindex(ps)
	}
	if ps.counted {
		// Counted under what it was: its node, namespace or phase may
		// change.
		d.count(ps, -1)
	}
	d.markDirty(ps)
	ps.pod = p
	ps.audCount = ps.audCount[:0]
	for _, a := range p.TokenAudiences {
		key := d.audKey(nil)
		if a != "" {
			key = d.audKey([]string{a})
		}
		if i := slices.IndexFunc(ps.audCount, func(c audienceCount) bool { return c.key == key }); i >= 0 {
			ps.audCount[i].n++
		} else {
			ps.audCount = append(ps.audCount, audienceCount{key: key, n: 1})
		}
	}
	for _, ip := range p.IPs {
		if other, ok := d.byIP[ip]; ok {
			delete(d.byIP, ip)
			d.sharedIP[ip] = []types.UID{other, p.UID}
		} else if uids, ok := d.sharedIP[ip]; ok {
			d.sharedIP[ip] = append(uids, p.UID)
		} else {
			d.byIP[ip] = p.UID
		}
	}
	return ps
}

func (d *Detector) unindex(ps *podState) {
	for _, ip := range ps.pod.IPs {
		if d.byIP[ip] == ps.pod.UID {
			delete(d.byIP, ip)
			continue
		}
		uids := slices.DeleteFunc(d.sharedIP[ip], func(u types.UID) bool { return u == ps.pod.UID })
		switch len(uids) {
		case 0:
			delete(d.sharedIP, ip)
		case 1:
			delete(d.sharedIP, ip)
			d.byIP[ip] = uids[0]
		default:
			d.sharedIP[ip] = uids
		}
	}
}

// holding is the pod holding ip, when exactly one does. Called with d.mu
// held.
func (d *Detector) holding(ip netip.Addr) (uid types.UID, n int) {
	if uid, ok := d.byIP[ip]; ok {
		return uid, 1
	}
	return "", len(d.sharedIP[ip])
}

// DeletePod drops everything known of a pod.
func (d *Detector) DeletePod(uid types.UID) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if ps := d.pods[uid]; ps != nil {
		d.deleteLocked(ps)
	}
}

// deleteLocked is DeletePod. Called with d.mu held.
func (d *Detector) deleteLocked(ps *podState) {
	d.unindex(ps)
	delete(d.pods, ps.pod.UID)
	if ps.counted {
		d.count(ps, -1)
	}
	if ps.dueAt >= 0 {
		heap.Remove(&d.due, ps.dueAt)
	}
	ps.deleted = true
}

// Pods is the number of pods the detector holds state for.
func (d *Detector) Pods() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return len(d.pods)
}

// Observe takes one audit event.
func (d *Detector) Observe(ev audit.Event) {
	now := d.cfg.Clock.Now()
	t := ev.Time
	// A time from the future (a skewed API server) would keep evidence
	// alive past its window; it counts as now.
	if t.IsZero() || t.After(now) {
		t = now
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	var r EventResult
	switch ev.Kind {
	case audit.Presented:
		r = d.presented(&ev, t)
	case audit.Issued:
		r = d.issued(&ev, t)
	case audit.AuthFailed:
		r = d.authFailed(&ev, t)
	default:
		d.counts[0][Ignored]++
		return
	}
	d.counts[ev.Kind][r]++
}

// podFor finds the pod a credential is bound to; a name or node other than
// the pod's with that UID is not evidence about it.
func (d *Detector) podFor(ref audit.PodRef) (*podState, EventResult) {
	ps := d.pods[ref.UID]
	if ps == nil {
		return nil, UnknownPod
	}
	if (ref.Namespace != "" && ref.Namespace != ps.pod.Namespace) || (ref.Name != "" && ref.Name != ps.pod.Name) ||
		(ref.Node != "" && ref.Node != ps.pod.Node) {
		return nil, Ignored
	}
	return ps, Counted
}

func (d *Detector) issued(ev *audit.Event, t time.Time) EventResult {
	if ev.Pod.UID == "" {
		// No bound pod (an audit level below Request, as OpenShift's
		// default profile): the pod's tokens are matched by what its
		// agent reports instead. A token anyone else had issued must still
		// never make a pod look stale.
		if ev.JTI != "" && !strings.HasPrefix(ev.User, "system:node:") {
			d.noteForeign(d.hash(ev.JTI))
			return Ignored
		}
		return UnknownPod
	}
	ps, r := d.podFor(ev.Pod)
	if ps == nil {
		return r
	}
	d.markDirty(ps)
	if ev.JTI == "" || (ev.Code != 0 && (ev.Code < 200 || ev.Code > 299)) {
		return Ignored
	}
	jti := d.hash(ev.JTI)
	aud := d.audKey(ev.Audiences)
	// Only the kubelet of the pod's own node writes the pod's volumes: a
	// token anyone else had issued for the pod (its namespace's users can)
	// must not make the pod's app look stale, so it is only remembered as
	// one never to judge.
	if ps.pod.Node == "" || ev.User != "system:node:"+ps.pod.Node || ps.sources(aud) != 1 {
		e := ps.evw()
		e.other = ring(e.other, e.nOther, maxOther, jti)
		e.nOther++
		return Ignored
	}
	e := ps.evw()
	e.issued = ring(e.issued, e.nIssued, maxIssued, issuedToken{jti: jti, aud: aud, at: t, seq: e.nIssued})
	e.nIssued++
	return Counted
}

// newest is the newest token the kubelet was issued for a source of
// audience key aud (false: none seen).
func (ps *podState) newest(aud uint64) (issuedToken, bool) {
	var best issuedToken
	found := false
	for _, it := range ps.ev().issued {
		if it.aud == aud && (!found || it.at.After(best.at) || (it.at.Equal(best.at) && it.seq > best.seq)) {
			best, found = it, true
		}
	}
	return best, found
}

func (d *Detector) presented(ev *audit.Event, t time.Time) EventResult {
	ps, r := d.podFor(ev.Pod)
	if ps == nil {
		return r
	}
	d.markDirty(ps)
	if t.After(ps.lastAuth.t()) {
		ps.lastAuth = stampOf(t)
	}
	if ev.JTI == "" {
		return Counted
	}
	jti := d.hash(ev.JTI)
	p := ps.see(jti, tokenID(ev.JTI), t)
	first := p.first
	if slices.Contains(ps.ev().other, jti) {
		return Counted
	}
	var newest issuedToken
	known := false
	issuedBy := first
	for _, it := range ps.ev().issued {
		if it.jti == jti {
			newest, known = ps.newest(it.aud)
			if it.at.Before(issuedBy) {
				issuedBy = it.at
			}
			break
		}
	}
	if !known && ps.volumeAt != 0 && d.judgeByVolume(ps, p, t) {
		// Never seen issued with its pod: what the pod's volumes hold,
		// from its agent, says it is not there any more.
		return Counted
	}
	if !known {
		// A token never seen issued was issued before the detector
		// started, or its issuance is still on its way. Judged only when
		// the pod has one token source (so it is that source's), and only
		// if it was presented before the newest issuance: then it is older.
		if len(ps.pod.TokenAudiences) != 1 {
			return Counted
		}
		var ok bool
		for _, a := range ps.audCount {
			newest, ok = ps.newest(a.key)
		}
		// The agent's report may be older than the kubelet's newest
		// issuance (a report whose only change is token IDs waits), so it
		// does not clear the token; one learnt well after it, that holds
		// it, does: the kubelet wrote the token it presents.
		if !ok || !first.Before(newest.at) || ps.holds(p.id, newest.at.Add(volumeSlack)) {
			return Counted
		}
	}
	if newest.jti == jti || t.Before(newest.at.Add(d.cfg.Grace)) {
		return Counted
	}
	d.markStale(ps, t, newest.at, issuedBy)
	return Counted
}

// see records a presentation of jti (id: its protocol.TokenID) and
// returns what is known of it now; the token seen least recently makes
// room.
func (ps *podState) see(jti, id uint64, t time.Time) presentedToken {
	e := ps.evw()
	n := len(e.presented)
	for i := range n {
		p := &e.presented[i]
		if p.jti == jti {
			if t.Before(p.first) {
				p.first = t
			}
			if t.After(p.last) {
				p.last = t
			}
			return *p
		}
	}
	if n < maxPresented {
		e.nPres++
		e.presented = append(e.presented, presentedToken{jti: jti, id: id, first: t, last: t})
		return e.presented[n]
	}
	i := 0
	for j := 1; j < n; j++ {
		if e.presented[j].last.Before(e.presented[i].last) {
			i = j
		}
	}
	e.presented[i] = presentedToken{jti: jti, id: id, first: t, last: t}
	return e.presented[i]
}

func (d *Detector) authFailed(ev *audit.Event, t time.Time) EventResult {
	if !ev.SourceIP.IsValid() {
		return Ignored
	}
	uid, n := d.holding(ev.SourceIP.Unmap())
	switch n {
	case 0:
		return UnknownPod
	case 1:
	default:
		return Ignored
	}
	ps := d.pods[uid]
	if ps.pod.HostNetwork || t.Before(ps.ipSince.t()) {
		return Ignored
	}
	d.markDirty(ps)
	// A run of failures ends with an authenticated request after it, or a
	// window without failures.
	if ps.failLast == 0 || t.Sub(ps.failLast.t()) > d.cfg.Window || ps.lastAuth > ps.failLast {
		ps.failFirst = stampOf(t)
	}
	if t.After(ps.failLast.t()) {
		ps.failLast = stampOf(t)
	}
	return Counted
}

// Transition is a pod entering (Set) or leaving a condition.
type Transition struct {
	Pod       Pod
	Condition Condition
	Set       bool
	// Since is when the evidence began: the first stale presentation,
	// the first failed request.
	Since time.Time
	// ReplacedAt: for app-stale, when the token the app presents was
	// replaced.
	ReplacedAt time.Time
	// Repeat: the pod entered the same condition within RepeatEvents;
	// no new Event is due.
	Repeat bool
}

// PodProblem is a pod that is app-stale or app-failing now.
type PodProblem struct {
	Pod                      Pod
	Stale, Failing           bool
	StaleSince, FailingSince time.Time
	ReplacedAt               time.Time
	// IssuedBy is when the token an app-stale pod presents was issued, at
	// the latest: which issuer signed it, and when it stops working,
	// follow from it.
	IssuedBy time.Time
}

// NodeCounts counts a node's followed pods by what their apps do.
type NodeCounts struct {
	Pods, Healthy, Stale, Failing, Unobserved int
}

// Result is one evaluation of every pod.
type Result struct {
	Now         time.Time
	Transitions []Transition
	// Followed are running pods with a projected token source; Healthy,
	// Unobserved, Stale and Failing count among them (Stale and Failing
	// also count pods not followed: a pod without a token source can fail).
	Followed, Healthy, Unobserved, Stale, Failing int
	Nodes                                         map[string]NodeCounts
	StaleByNamespace, FailingByNamespace          map[string]int
	Problems                                      []PodProblem
	// Events counts audit events by kind name and result since the
	// detector started.
	Events map[string]map[string]uint64
}

// newestToken is when the newest token the detector knows the pod was
// given was issued (zero: none known).
func (ps *podState) newestToken() time.Time {
	var t time.Time
	for _, it := range ps.ev().issued {
		t = laterOf(t, it.at)
	}
	for _, v := range ps.volume {
		t = laterOf(t, v.issuedAt.t())
	}
	return t
}

// failsWithNewToken reports whether the current run of failed requests
// makes the pod app-failing: it went on for failingGrace after the kubelet
// issued the pod a new token during the run (the new token did not help:
// the app does not use it), or for grace whatever the tokens. Failures
// with the token the pod had when they began may be that token's, which
// its node's remediation replaces: a pod whose node waits its turn is
// not judged on them for the shorter grace.
func (ps *podState) failsWithNewToken(grace, failingGrace time.Duration) bool {
	if ps.failLast.t().Sub(ps.failFirst.t()) >= grace {
		return true
	}
	nt := ps.newestToken()
	return nt.After(ps.failFirst.t()) && ps.failLast.t().Sub(nt) >= failingGrace
}

func laterOf(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

func (d *Detector) failingGrace() time.Duration {
	if d.cfg.FailingGrace > 0 {
		return d.cfg.FailingGrace
	}
	return d.cfg.Grace
}

// Evaluate judges the pods at the clock's now and returns what changed
// since the last evaluation, and the totals of every pod. Only the pods
// whose evidence or spec changed since, or whose evidence left the window,
// are judged again: the others' judgement cannot have changed. The caller
// reports it.
func (d *Detector) Evaluate() Result {
	now := d.cfg.Clock.Now()
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.judgeAll {
		for _, ps := range d.pods {
			d.markDirty(ps)
		}
	}
	for len(d.due) > 0 && now.After(d.due[0].due.t()) {
		d.markDirty(heap.Pop(&d.due).(*podState))
	}
	res := Result{Now: now}
	for i, ps := range d.dirty {
		d.dirty[i] = nil
		ps.dirty = false
		if !ps.deleted {
			d.judge(ps, now, &res)
		}
	}
	d.dirty = d.dirty[:0]
	res.Followed, res.Healthy, res.Unobserved, res.Stale, res.Failing = d.tot.followed, d.tot.healthy, d.tot.unobserved, d.tot.stale, d.tot.failing
	if d.changed || d.last == nil {
		// A result's maps are shared with its readers: copied when they
		// changed, the last ones otherwise.
		res.Nodes, res.StaleByNamespace, res.FailingByNamespace = maps.Clone(d.tot.nodes), maps.Clone(d.tot.staleNS), maps.Clone(d.tot.failingNS)
		d.changed = false
	} else {
		res.Nodes, res.StaleByNamespace, res.FailingByNamespace = d.last.Nodes, d.last.StaleByNamespace, d.last.FailingByNamespace
	}
	for ps := range d.tot.problems {
		res.Problems = append(res.Problems, PodProblem{Pod: *ps.pod, Stale: ps.stale, Failing: ps.failing,
			StaleSince: ps.staleSince.t(), FailingSince: ps.failingSince.t(), ReplacedAt: ps.replacedAt.t(), IssuedBy: ps.issuedBy.t()})
	}
	slices.SortFunc(res.Transitions, func(a, b Transition) int {
		return strings.Compare(a.Pod.Namespace+"/"+a.Pod.Name+"/"+string(a.Condition), b.Pod.Namespace+"/"+b.Pod.Name+"/"+string(b.Condition))
	})
	res.Events = map[string]map[string]uint64{}
	for k, name := range kindNames {
		res.Events[name] = map[string]uint64{}
		for r := range numResults {
			res.Events[name][r.String()] = d.counts[k][r]
		}
	}
	last := res
	d.last = &last
	return res
}

// judge judges one pod at now, records its transitions in res, counts it
// in the totals and schedules when time alone would change its judgement.
// Called with d.mu held.
func (d *Detector) judge(ps *podState, now time.Time, res *Result) {
	inWindow := func(s stamp) bool { return s != 0 && now.Sub(s.t()) <= d.cfg.Window }
	stale := inWindow(ps.staleLast)
	failing := ps.failLast != 0 && ps.failsWithNewToken(d.cfg.Grace, d.failingGrace()) &&
		inWindow(ps.failLast) && ps.lastAuth <= ps.failLast
	observed := inWindow(ps.lastAuth)
	recount := !ps.counted || stale != ps.stale || failing != ps.failing || observed != ps.observed
	if recount && ps.counted {
		d.count(ps, -1)
	}
	if stale != ps.stale {
		ps.stale, ps.staleSince = stale, ps.staleFirst
		res.Transitions = append(res.Transitions, d.transition(ps, AppStale, stale, now, 0))
	}
	if failing != ps.failing {
		ps.failing, ps.failingSince = failing, ps.failFirst
		res.Transitions = append(res.Transitions, d.transition(ps, AppFailing, failing, now, 1))
	}
	if !stale {
		ps.staleFirst, ps.staleLast = 0, 0
	}
	ps.observed = observed
	if recount {
		d.count(ps, 1)
	}
	// The next instant a piece of evidence leaves the window.
	var due stamp
	for _, s := range [...]stamp{ps.staleLast, ps.failLast, ps.lastAuth} {
		if inWindow(s) {
			if at := stampOf(s.t().Add(d.cfg.Window)); due == 0 || at < due {
				due = at
			}
		}
	}
	switch {
	case due == 0 && ps.dueAt >= 0:
		heap.Remove(&d.due, ps.dueAt)
	case due == 0:
	case ps.dueAt >= 0:
		ps.due = due
		heap.Fix(&d.due, ps.dueAt)
	default:
		ps.due = due
		heap.Push(&d.due, ps)
	}
}

// count adds (sign 1) or takes away (-1) a pod's last judgement to the
// totals. Called with d.mu held.
func (d *Detector) count(ps *podState, sign int) {
	ps.counted = sign > 0
	d.changed = true
	p := ps.pod
	stale, failing := ps.stale, ps.failing
	if p.followed() {
		nc := d.tot.nodes[p.Node]
		nc.Pods += sign
		d.tot.followed += sign
		switch {
		case stale || failing:
		case ps.observed:
			nc.Healthy += sign
			d.tot.healthy += sign
		default:
			nc.Unobserved += sign
			d.tot.unobserved += sign
		}
		nc.Stale += sign * b2i(stale)
		nc.Failing += sign * b2i(failing)
		if nc == (NodeCounts{}) {
			delete(d.tot.nodes, p.Node)
		} else {
			d.tot.nodes[p.Node] = nc
		}
	}
	if stale {
		d.tot.stale += sign
		addTo(d.tot.staleNS, p.Namespace, sign)
	}
	if failing {
		d.tot.failing += sign
		addTo(d.tot.failingNS, p.Namespace, sign)
	}
	if stale || failing {
		if sign > 0 {
			d.tot.problems[ps] = struct{}{}
		} else {
			delete(d.tot.problems, ps)
		}
	}
}

func addTo(m map[string]int, k string, n int) {
	if m[k]+n == 0 {
		delete(m, k)
	} else {
		m[k] += n
	}
}

// markDirty has the pod judged at the next evaluation. Called with d.mu
// held.
func (d *Detector) markDirty(ps *podState) {
	if !ps.dirty {
		ps.dirty = true
		d.dirty = append(d.dirty, ps)
	}
}

// dueHeap orders pods by when time alone changes their judgement.
type dueHeap []*podState

func (h dueHeap) Len() int           { return len(h) }
func (h dueHeap) Less(i, j int) bool { return h[i].due < h[j].due }
func (h dueHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].dueAt, h[j].dueAt = i, j
}
func (h *dueHeap) Push(x any) {
	ps := x.(*podState)
	ps.dueAt = len(*h)
	*h = append(*h, ps)
}
func (h *dueHeap) Pop() any {
	old := *h
	ps := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	ps.dueAt = -1
	return ps
}

func (d *Detector) transition(ps *podState, c Condition, set bool, now time.Time, i int) Transition {
	tr := Transition{Pod: *ps.pod, Condition: c, Set: set}
	if set {
		if c == AppStale {
			tr.Since, tr.ReplacedAt = ps.staleSince.t(), ps.replacedAt.t()
		} else {
			tr.Since = ps.failingSince.t()
		}
		tr.Repeat = ps.lastEvent[i] != 0 && now.Sub(ps.lastEvent[i].t()) < d.cfg.RepeatEvents
		if !tr.Repeat {
			ps.lastEvent[i] = stampOf(now)
		}
	}
	return tr
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}
