package sandbox

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"

	"github.com/tokenroll/tokenroll/coordinator/apps"
)

// AppStaleGrace is the coordinators' --app-stale-grace in the sandbox: the
// shortest that keeps a reloading app off the list. Such an app reads its
// file again a minute after its last read and sends its next request
// within appInterval+appIntervalJitter, so it may present a replaced
// token up to a little over a minute; a quarter of a minute more is the
// margin. The default, two minutes, would make every run wait longer for
// the same answer.
const AppStaleGrace = 75 * time.Second

// detectSlack is how long after the grace a report may take: the
// coordinator judges every apps.DefaultOptions().Interval, and the audit
// log, its reader and the Event's way through the API server take a few
// seconds more.
var detectSlack = apps.DefaultOptions().Interval + 10*time.Second

// AppDetection is how well the coordinator's app detection found the pods
// the sandbox started with a caching app, judged by the sandbox: what the
// coordinator reported (Events on Pods, its status ConfigMap) against what
// the apps did.
type AppDetection struct {
	// TruePositives are caching pods reported app-stale or app-failing
	// after their token went bad; FalsePositives any other pod reported
	// (or a caching pod reported before anything went wrong for it).
	TruePositives  int `json:"truePositives"`
	FalsePositives int `json:"falsePositives"`
	// FalseNegatives are caching pods whose token was replaced (or
	// refused) while their app ran on for the grace and the slack after it,
	// and that were never reported.
	FalseNegatives int `json:"falseNegatives"`
	// SecondsToDetect spans the true positives, from the pod's first
	// token refresh (its volume holding another token than the one its app
	// read) to the first report; for a pod reported before its refresh
	// (its old token refused since the issuer change), from its app's
	// first refused request.
	SecondsToDetect Spread `json:"secondsToDetect"`
	// WaitSeconds is how long the scenario waited for the reports, the
	// time detection adds to a run (not written to the JSON).
	WaitSeconds float64 `json:"-"`
}

// appReport is the first report of a pod by the coordinator.
type appReport struct {
	At        time.Time
	Namespace string
	Name      string
	Condition string
}

// reportWatcher records when the coordinator first reported each pod
// app-stale or app-failing: a Warning Event it recorded on the Pod, or the
// pod listed in its status ConfigMap, whichever the sandbox saw first.
type reportWatcher struct {
	mu    sync.Mutex
	first map[types.UID]appReport
	now   func() time.Time
}

// watchReports starts following the coordinator's reports; it returns once
// its caches are synced.
func watchReports(ctx context.Context, client kubernetes.Interface) (*reportWatcher, error) {
	w := &reportWatcher{first: map[types.UID]appReport{}, now: time.Now}
	ef := informers.NewSharedInformerFactory(client, 0)
	evs := ef.Events().V1().Events().Informer()
	cf := informers.NewSharedInformerFactoryWithOptions(client, 0, informers.WithNamespace(Namespace))
	cms := cf.Core().V1().ConfigMaps().Informer()
	onEvent := func(o any) {
		if e, ok := o.(*eventsv1.Event); ok {
			w.event(e)
		}
	}
	onCM := func(o any) {
		if cm, ok := o.(*corev1.ConfigMap); ok {
			w.status(cm)
		}
	}
	if _, err := evs.AddEventHandler(cache.ResourceEventHandlerFuncs{AddFunc: onEvent, UpdateFunc: func(_, o any) { onEvent(o) }}); err != nil {
		return nil, err
	}
	if _, err := cms.AddEventHandler(cache.ResourceEventHandlerFuncs{AddFunc: onCM, UpdateFunc: func(_, o any) { onCM(o) }}); err != nil {
		return nil, err
	}
	ef.Start(ctx.Done())
	cf.Start(ctx.Done())
	if !cache.WaitForCacheSync(ctx.Done(), evs.HasSynced, cms.HasSynced) {
		return nil, fmt.Errorf("watching the coordinator's app reports: caches did not sync: %w", context.Cause(ctx))
	}
	return w, nil
}

// event takes an Event the coordinator recorded on a Pod as it found the
// pod app-stale or app-failing.
func (w *reportWatcher) event(e *eventsv1.Event) {
	if e.ReportingController != "tokenroll-coordinator" || e.Regarding.Kind != "Pod" ||
		(e.Reason != apps.ReasonAppStale && e.Reason != apps.ReasonAppFailing) {
		return
	}
	cond := string(apps.AppStale)
	if e.Reason == apps.ReasonAppFailing {
		cond = string(apps.AppFailing)
	}
	w.note(e.Regarding.UID, appReport{Namespace: e.Regarding.Namespace, Name: e.Regarding.Name, Condition: cond})
}

// status takes the coordinator's status ConfigMap: every pod it lists.
func (w *reportWatcher) status(cm *corev1.ConfigMap) {
	if cm.Name != apps.ConfigMapName || cm.Data[apps.StatusKey] == "" {
		return
	}
	var st apps.Status
	if err := json.Unmarshal([]byte(cm.Data[apps.StatusKey]), &st); err != nil {
		return
	}
	for _, p := range st.Pods {
		w.note(types.UID(p.UID), appReport{Namespace: p.Namespace, Name: p.Name, Condition: strings.Join(p.Conditions, ",")})
	}
}

func (w *reportWatcher) note(uid types.UID, r appReport) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if _, ok := w.first[uid]; ok {
		return
	}
	r.At = w.now()
	w.first[uid] = r
}

// reports is a copy of the first reports so far.
func (w *reportWatcher) reports() map[types.UID]appReport {
	w.mu.Lock()
	defer w.mu.Unlock()
	out := make(map[types.UID]appReport, len(w.first))
	for k, v := range w.first {
		out[k] = v
	}
	return out
}

// podTruth is what the sandbox knows of one pod that ran a caching app.
type podTruth struct {
	namespace, name, node string
	// replaced is the first refresh of its token while an app ran,
	// refused its app's first 401 (zero: none).
	replaced, refused time.Time
	// evidenceEnd is when the app's evidence could last be seen: the end
	// of the observation for a running app, else when it stopped.
	evidenceEnd time.Time
}

// bad is when the pod's app first presented a token it should not have.
func (p podTruth) bad() time.Time {
	switch {
	case p.replaced.IsZero():
		return p.refused
	case p.refused.IsZero():
		return p.replaced
	}
	return minTime(p.replaced, p.refused)
}

func minTime(a, b time.Time) time.Time {
	if b.Before(a) {
		return b
	}
	return a
}

// cachingTruth gathers, per pod, what its caching apps did (a pod's
// restarted container is another app of the same pod).
func cachingTruth(reports []AppReport, end time.Time) map[types.UID]*podTruth {
	out := map[types.UID]*podTruth{}
	for _, r := range reports {
		if r.Kind != AppCaching {
			continue
		}
		p := out[r.UID]
		if p == nil {
			p = &podTruth{namespace: r.Namespace, name: r.Pod, node: r.Node}
			out[r.UID] = p
		}
		if !r.ReplacedAt.IsZero() && (p.replaced.IsZero() || r.ReplacedAt.Before(p.replaced)) {
			p.replaced = r.ReplacedAt
		}
		if !r.FirstAuthFailure.IsZero() && (p.refused.IsZero() || r.FirstAuthFailure.Before(p.refused)) {
			p.refused = r.FirstAuthFailure
		}
		stop := end
		if !r.Running && !r.StoppedAt.IsZero() {
			stop = r.StoppedAt
		}
		if stop.After(p.evidenceEnd) {
			p.evidenceEnd = stop
		}
	}
	return out
}

// judgeDetection compares the coordinator's reports with the apps' truth
// at end, and names what it got wrong.
func judgeDetection(reports []AppReport, reported map[types.UID]appReport, end time.Time, grace time.Duration) (AppDetection, []string) {
	truth := cachingTruth(reports, end)
	var d AppDetection
	var toDetect []time.Duration
	var wrong, missed []string
	for uid, r := range reported {
		p := truth[uid]
		if p == nil || p.bad().IsZero() || r.At.Before(p.bad()) {
			d.FalsePositives++
			wrong = append(wrong, fmt.Sprintf("%s/%s (%s)", r.Namespace, r.Name, r.Condition))
			continue
		}
		d.TruePositives++
		from := p.replaced
		if from.IsZero() || r.At.Before(from) {
			from = p.refused
		}
		toDetect = append(toDetect, r.At.Sub(from))
	}
	for uid, p := range truth {
		if _, ok := reported[uid]; ok || p.bad().IsZero() || p.evidenceEnd.Sub(p.bad()) < grace+detectSlack {
			continue
		}
		d.FalseNegatives++
		missed = append(missed, fmt.Sprintf("%s/%s on %s (its token went bad at %s)", p.namespace, p.name, p.node, p.bad().UTC().Format(time.RFC3339)))
	}
	d.SecondsToDetect = spread(toDetect)
	var failures []string
	if len(wrong) > 0 {
		slices.Sort(wrong)
		failures = append(failures, fmt.Sprintf("app detection reported %d pod(s) whose app does not cache its token: %s", len(wrong), strings.Join(wrong, ", ")))
	}
	if len(missed) > 0 {
		slices.SortFunc(missed, func(a, b string) int { return cmp.Compare(a, b) })
		failures = append(failures, fmt.Sprintf("app detection missed %d pod(s) whose app caches its token: %s", len(missed), strings.Join(missed, ", ")))
	}
	return d, failures
}

// detectionDue is when the coordinator must have reported every caching
// pod, and had the time to wrongly report any other: the grace and the
// slack after the last token change an app saw (a refresh, or the first
// refused request of an app whose token went bad). done says the wait may
// end sooner: every caching pod whose token went bad is reported and no
// other pod could still be, by now.
func detectionDue(reports []AppReport, reported map[types.UID]appReport, now time.Time, grace time.Duration) (due time.Time, done bool) {
	var last time.Time
	for _, r := range reports {
		if !r.Running {
			continue
		}
		for _, t := range []time.Time{r.FileChangedAt, r.FirstAuthFailure} {
			if t.After(last) {
				last = t
			}
		}
	}
	if last.IsZero() {
		return now, true
	}
	for uid, p := range cachingTruth(reports, now) {
		if _, ok := reported[uid]; !ok && !p.bad().IsZero() && p.evidenceEnd.Equal(now) {
			return last.Add(grace + detectSlack), false
		}
	}
	return last.Add(grace + detectSlack), !now.Before(last.Add(grace + apps.DefaultOptions().Interval))
}

// unreportedCaching names the pods running a caching app that reported
// has no report of.
func unreportedCaching(reports []AppReport, reported map[types.UID]appReport) []string {
	var out []string
	for _, a := range reports {
		if _, ok := reported[a.UID]; a.Kind != AppCaching || !a.Running || ok || slices.Contains(out, a.Namespace+"/"+a.Pod) {
			continue
		}
		out = append(out, a.Namespace+"/"+a.Pod)
	}
	slices.Sort(out)
	return out
}
