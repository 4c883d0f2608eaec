package sandbox

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	k8stypes "k8s.io/apimachinery/pkg/types"
	testingclock "k8s.io/utils/clock/testing"

	"github.com/tokenroll/tokenroll/coordinator/apps"
)

// The coordinator's reports are judged against what the apps did: a
// caching pod reported after its token went bad is a true positive, timed
// from its refresh (or its first refused request when the report came
// first); a reloading pod, a pod without app or a caching pod reported
// before anything went wrong are false positives; a caching pod whose app
// ran on for the grace and the slack after its token went bad, unreported,
// is a false negative, and one that stopped too soon is not judged.
func TestJudgeDetection(t *testing.T) {
	t0 := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	at := func(s int) time.Time { return t0.Add(time.Duration(s) * time.Second) }
	grace := AppStaleGrace
	end := at(300)
	app := func(kind AppKind, pod string, running bool) AppReport {
		return AppReport{Kind: kind, Namespace: "apps", Pod: pod, UID: k8stypes.UID("uid-" + pod), Node: "worker-1", Running: running}
	}
	refreshed := app(AppCaching, "legacy-1", true)
	refreshed.ReplacedAt, refreshed.FirstAuthFailure = at(100), at(90)
	refusedFirst := app(AppCaching, "legacy-2", true)
	refusedFirst.ReplacedAt, refusedFirst.FirstAuthFailure = at(200), at(50)
	missed := app(AppCaching, "legacy-3", true)
	missed.ReplacedAt = at(100)
	tooSoon := app(AppCaching, "legacy-4", false)
	tooSoon.ReplacedAt, tooSoon.StoppedAt = at(100), at(150)
	early := app(AppCaching, "legacy-5", true)
	early.ReplacedAt = at(250)
	untouched := app(AppCaching, "legacy-6", true)
	reloading := app(AppReloading, "web-1", true)
	reloading.ReplacedAt = at(100)
	reports := []AppReport{refreshed, refusedFirst, missed, tooSoon, early, untouched, reloading}
	reported := map[k8stypes.UID]appReport{
		"uid-legacy-1": {At: at(190), Namespace: "apps", Name: "legacy-1", Condition: "app-stale"},
		"uid-legacy-2": {At: at(140), Namespace: "apps", Name: "legacy-2", Condition: "app-failing"},
		"uid-legacy-5": {At: at(200), Namespace: "apps", Name: "legacy-5", Condition: "app-stale"},
		"uid-web-1":    {At: at(200), Namespace: "apps", Name: "web-1", Condition: "app-stale"},
		"uid-none":     {At: at(200), Namespace: "apps", Name: "no-app", Condition: "app-failing"},
	}
	d, failures := judgeDetection(reports, reported, end, grace)
	want := AppDetection{TruePositives: 2, FalsePositives: 3, FalseNegatives: 1, SecondsToDetect: Spread{Median: 90, Max: 90}}
	if d != want {
		t.Errorf("judged %+v, want %+v", d, want)
	}
	all := strings.Join(failures, "\n")
	for _, name := range []string{"apps/legacy-5 (app-stale)", "apps/web-1 (app-stale)", "apps/no-app (app-failing)", "apps/legacy-3 on worker-1"} {
		if !strings.Contains(all, name) {
			t.Errorf("the failures do not name %s:\n%s", name, all)
		}
	}
	for _, name := range []string{"legacy-1", "legacy-2", "legacy-4", "legacy-6"} {
		if strings.Contains(all, name) {
			t.Errorf("the failures name %s, which detection got right or could not judge:\n%s", name, all)
		}
	}

	// Timing: the first refresh; a report before it is timed from the
	// first refused request.
	d, _ = judgeDetection([]AppReport{refreshed, refusedFirst}, map[k8stypes.UID]appReport{
		"uid-legacy-1": {At: at(190)}, "uid-legacy-2": {At: at(260)}}, end, grace)
	if want := (Spread{Median: 75, Max: 90}); d.SecondsToDetect != want {
		t.Errorf("timed %+v, want %+v", d.SecondsToDetect, want)
	}
}

// The wait lasts the grace and the slack after the last change an app saw,
// and ends sooner once every caching pod whose token went bad is reported
// and the coordinator had one evaluation past the grace to report another.
func TestDetectionDue(t *testing.T) {
	t0 := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	at := func(s int) time.Time { return t0.Add(time.Duration(s) * time.Second) }
	grace := AppStaleGrace
	caching := AppReport{Kind: AppCaching, UID: "c", Running: true}
	caching.ReplacedAt, caching.FileChangedAt = at(10), at(10)
	reloading := AppReport{Kind: AppReloading, UID: "r", Running: true}
	reloading.FileChangedAt, reloading.FirstAuthFailure = at(30), at(5)
	stopped := AppReport{Kind: AppReloading, UID: "s"}
	stopped.FileChangedAt = at(500) // a stopped app's changes do not count
	reports := []AppReport{caching, reloading, stopped}
	last := at(30).Add(grace + detectSlack)

	due, done := detectionDue(reports, nil, at(60), grace)
	if !due.Equal(last) || done {
		t.Errorf("nothing reported: due %s done %v; want %s, not done", due, done, last)
	}
	reported := map[k8stypes.UID]appReport{"c": {At: at(95)}}
	if _, done := detectionDue(reports, reported, at(100), grace); done {
		t.Error("the caching pod reported, but the grace after the last change is not over: a reloading pod could still be reported")
	}
	if _, done := detectionDue(reports, reported, at(30).Add(grace+apps.DefaultOptions().Interval), grace); !done {
		t.Error("the caching pod reported and an evaluation past the grace happened: the wait should end")
	}
	if _, done := detectionDue([]AppReport{{Kind: AppReloading, Running: true}}, nil, at(0), grace); !done {
		t.Error("no app saw a change: nothing to wait for")
	}
}

// The watcher takes the coordinator's Warning Events on Pods and its status
// ConfigMap, and keeps each pod's first report; Events of others are not
// reports.
func TestReportWatcher(t *testing.T) {
	now := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	w := &reportWatcher{first: map[k8stypes.UID]appReport{}, now: func() time.Time { return now }}
	ev := func(controller, reason, uid string) *eventsv1.Event {
		return &eventsv1.Event{ReportingController: controller, Reason: reason,
			Regarding: corev1.ObjectReference{Kind: "Pod", Namespace: "apps", Name: "p-" + uid, UID: k8stypes.UID(uid)}}
	}
	w.event(ev("tokenroll-coordinator", apps.ReasonAppStale, "a"))
	w.event(ev("someone-else", apps.ReasonAppStale, "b"))
	w.event(ev("tokenroll-coordinator", apps.ReasonAppStaleCleared, "c"))
	now = now.Add(time.Minute)
	w.event(ev("tokenroll-coordinator", apps.ReasonAppFailing, "a"))
	w.status(&corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: apps.ConfigMapName},
		Data: map[string]string{apps.StatusKey: `{"pods":[{"namespace":"apps","name":"p-d","uid":"d","conditions":["app-failing"]}]}`}})
	got := w.reports()
	if len(got) != 2 {
		t.Fatalf("reports %v, want pods a and d", got)
	}
	if r := got["a"]; r.Condition != "app-stale" || !r.At.Equal(now.Add(-time.Minute)) {
		t.Errorf("pod a: %+v, want its first report, app-stale, a minute ago", r)
	}
	if r := got["d"]; r.Condition != "app-failing" || !r.At.Equal(now) || r.Name != "p-d" {
		t.Errorf("pod d: %+v, want app-failing from the status, now", r)
	}
}

// The sandbox's look at an app's token file: a rewrite with the same token
// is no change; another token is, and the first one that is not the token
// the app started with is its refresh.
func TestNoteFile(t *testing.T) {
	clk := testingclock.NewFakeClock(time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC))
	path := filepath.Join(t.TempDir(), "token")
	write := func(s string) {
		if err := os.WriteFile(path, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	a := &app{tokenPath: path, clock: clk}
	w := fileWatch{first: []byte("one"), last: []byte("one")}
	write("one\n")
	clk.Step(time.Second)
	a.noteFile(&w)
	if !a.stats.FileChangedAt.IsZero() || !a.stats.ReplacedAt.IsZero() {
		t.Fatalf("the same token rewritten counted as a change: %+v", a.stats)
	}
	write("two")
	clk.Step(time.Second)
	replaced := clk.Now()
	a.noteFile(&w)
	write("three")
	clk.Step(time.Second)
	a.noteFile(&w)
	if !a.stats.ReplacedAt.Equal(replaced) || !a.stats.FileChangedAt.Equal(clk.Now()) {
		t.Errorf("replaced at %s, changed at %s; want %s and %s", a.stats.ReplacedAt, a.stats.FileChangedAt, replaced, clk.Now())
	}
}

// Before the issuer changes, the sandbox waits for the coordinator to
// report the running caching apps' pods, each once; the reloading apps and
// the stopped ones are not waited for.
func TestUnreportedCaching(t *testing.T) {
	app := func(kind AppKind, pod string, running bool) AppReport {
		return AppReport{Kind: kind, Namespace: "apps", Pod: pod, UID: k8stypes.UID("uid-" + pod), Running: running}
	}
	reports := []AppReport{app(AppCaching, "legacy-2", true), app(AppCaching, "legacy-1", true), app(AppCaching, "legacy-1", true),
		app(AppCaching, "gone", false), app(AppReloading, "web-1", true)}
	if got, want := unreportedCaching(reports, nil), []string{"apps/legacy-1", "apps/legacy-2"}; !slices.Equal(got, want) {
		t.Errorf("nothing reported: %q, want %q", got, want)
	}
	reported := map[k8stypes.UID]appReport{"uid-legacy-1": {}}
	if got, want := unreportedCaching(reports, reported), []string{"apps/legacy-2"}; !slices.Equal(got, want) {
		t.Errorf("legacy-1 reported: %q, want %q", got, want)
	}
	reported["uid-legacy-2"] = appReport{}
	if got := unreportedCaching(reports, reported); len(got) != 0 {
		t.Errorf("every caching pod reported: %q, want none", got)
	}
}

// The pre-change refresh restarts either kind of node's kubelet.
var _ interface{ RestartKubelet() error } = (*realNode)(nil)
