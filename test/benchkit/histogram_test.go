package benchkit

import (
	"math"
	"os"
	"testing"
)

const durations = `# TYPE apiserver_request_duration_seconds histogram
apiserver_request_duration_seconds_bucket{verb="GET",resource="nodes",le="0.1"} 90
apiserver_request_duration_seconds_bucket{verb="GET",resource="nodes",le="1"} 99
apiserver_request_duration_seconds_bucket{verb="GET",resource="nodes",le="+Inf"} 100
apiserver_request_duration_seconds_sum{verb="GET",resource="nodes"} 12
apiserver_request_duration_seconds_count{verb="GET",resource="nodes"} 100
apiserver_request_duration_seconds_bucket{verb="WATCH",resource="nodes",le="0.1"} 0
apiserver_request_duration_seconds_bucket{verb="WATCH",resource="nodes",le="1"} 0
apiserver_request_duration_seconds_bucket{verb="WATCH",resource="nodes",le="+Inf"} 50
apiserver_request_duration_seconds_sum{verb="WATCH",resource="nodes"} 5000
apiserver_request_duration_seconds_count{verb="WATCH",resource="nodes"} 50
tokenroll_plan_sync_duration_seconds_bucket{le="0.001"} 3
tokenroll_plan_sync_duration_seconds_bucket{le="0.01"} 4
tokenroll_plan_sync_duration_seconds_bucket{le="+Inf"} 4
tokenroll_plan_sync_duration_seconds_sum 0.02
tokenroll_plan_sync_duration_seconds_count 4
`

func TestHistogram(t *testing.T) {
	noWatch := func(l map[string]string) bool { return l["verb"] != "WATCH" }
	h, err := ParseHistogram([]byte(durations), "apiserver_request_duration_seconds", noWatch)
	if err != nil {
		t.Fatal(err)
	}
	if h.Count != 100 || h.Sum != 12 || h.Buckets[0.1] != 90 {
		t.Fatalf("histogram %+v: want the GET series alone", h)
	}
	if q := h.Quantile(0.5); math.Abs(q-0.1*50/90) > 1e-9 {
		t.Errorf("median %v, want %v (linear in the first bucket)", q, 0.1*50/90)
	}
	if q := h.Quantile(0.99); math.Abs(q-1) > 1e-9 {
		t.Errorf("p99 %v, want 1 (the 99th observation is the last of the 1 s bucket)", q)
	}
	if q := h.Quantile(0.999); q != 1 {
		t.Errorf("p99.9 %v, want the largest finite bound, 1", q)
	}
	if m := h.MaxBound(); !math.IsInf(m, 1) {
		t.Errorf("max bound %v, want +Inf (one observation past 1 s)", m)
	}
	all, err := ParseHistogram([]byte(durations), "apiserver_request_duration_seconds", nil)
	if err != nil || all.Count != 150 {
		t.Errorf("all series: count %v (%v), want 150", all.Count, err)
	}
	before := h
	before.Buckets = map[float64]float64{0.1: 80, 1: 80, math.Inf(1): 80}
	before.Count, before.Sum = 80, 2
	d := h.Minus(before)
	if d.Count != 20 || d.Buckets[0.1] != 10 || d.Buckets[1] != 19 || d.Sum != 10 {
		t.Errorf("difference %+v", d)
	}
	s, err := ParseHistogram([]byte(durations), "tokenroll_plan_sync_duration_seconds", nil)
	if err != nil || s.Count != 4 || s.MaxBound() != 0.01 {
		t.Errorf("unlabelled histogram %+v (%v): want 4 observations, the largest at most 0.01", s, err)
	}
	if !math.IsNaN((Histogram{}).Quantile(0.5)) || (Histogram{Buckets: map[float64]float64{1: 0}}).MaxBound() != 0 {
		t.Error("an empty histogram has a quantile or a maximum")
	}
	if _, err := ParseHistogram([]byte(durations), "nope", nil); err == nil {
		t.Error("a missing histogram parsed")
	}
}

func TestReadProc(t *testing.T) {
	u, err := ReadProc(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if u.RSSBytes < 1<<20 || u.CPUSeconds < 0 {
		t.Errorf("this process: %+v, want at least 1 MiB resident", u)
	}
	if _, err := ReadProc(1 << 30); err == nil {
		t.Error("a process that does not exist was read")
	}
}
