package apps

import (
	"fmt"
	"net/netip"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	"k8s.io/apimachinery/pkg/types"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/tokenroll/tokenroll/audit"
)

// BenchmarkObserve feeds a detector following 150,000 pods a stream of
// audit events as a cluster's API servers produce them: mostly requests
// presenting pods' tokens, some issuances, some failures from pod IPs.
// Run: go test -run '^$' -bench Observe -cpu 1 ./coordinator/apps/
func BenchmarkObserve(b *testing.B) {
	const pods = 150000
	clock := clocktesting.NewFakeClock(t0)
	d := NewDetector(Config{Grace: grace, Window: window, RepeatEvents: time.Hour, Clock: clock})
	refs := make([]audit.PodRef, pods)
	ips := make([]netip.Addr, pods)
	for i := range pods {
		p := Pod{UID: types.UID(fmt.Sprintf("uid-%06d", i)), Namespace: fmt.Sprintf("ns-%03d", i%500), Name: fmt.Sprintf("pod-%06d", i),
			Node: fmt.Sprintf("node-%04d", i%5000), Running: true, TokenAudiences: []string{""},
			IPs: []netip.Addr{netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)})}}
		d.SetPod(p, false)
		refs[i] = audit.PodRef{Namespace: p.Namespace, Name: p.Name, UID: p.UID, Node: p.Node}
		ips[i] = p.IPs[0]
	}
	evs := make([]audit.Event, 1<<16)
	for i := range evs {
		k := (i * 7919) % pods
		at := t0.Add(time.Duration(i) * time.Millisecond)
		switch i % 20 {
		case 0:
			evs[i] = audit.Event{Kind: audit.Issued, Time: at, User: "system:node:" + refs[k].Node, Code: 201,
				Pod: audit.PodRef{Namespace: refs[k].Namespace, Name: refs[k].Name, UID: refs[k].UID}, JTI: fmt.Sprintf("jti-%d", i)}
		case 1:
			evs[i] = audit.Event{Kind: audit.AuthFailed, Time: at, Code: 401, SourceIP: ips[k]}
		default:
			evs[i] = audit.Event{Kind: audit.Presented, Time: at, User: "system:serviceaccount:x:y", Code: 200, Pod: refs[k],
				JTI: fmt.Sprintf("jti-%d", i%4096)}
		}
	}
	clock.Step(time.Hour)
	b.ReportAllocs()
	b.ResetTimer()
	cpu0 := cpuTime(b)
	for i := range b.N {
		d.Observe(evs[i%len(evs)])
	}
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "events/s")
	// On a shared machine wall time says little: events per second of
	// this process's CPU time is what one core sustains.
	b.ReportMetric(float64(b.N)/(cpuTime(b)-cpu0).Seconds(), "events/cpu-s")
}

// BenchmarkEvaluate is one evaluation of a detector following 150,000
// pods, as every interval: at idle (nothing changed since the last one),
// after 1% of the pods authenticated (a quiet cluster's audit stream),
// and after every pod did.
// Run: go test -run '^$' -bench Evaluate -cpu 1 ./coordinator/apps/
func BenchmarkEvaluate(b *testing.B) {
	const pods = 150000
	for _, touched := range []int{0, pods / 100, pods} {
		b.Run(fmt.Sprintf("pods=%d/changed=%d", pods, touched), func(b *testing.B) {
			clock := clocktesting.NewFakeClock(t0)
			d := NewDetector(Config{Grace: grace, Window: window, RepeatEvents: time.Hour, Clock: clock})
			refs := make([]audit.PodRef, pods)
			for i := range pods {
				p := Pod{UID: types.UID(fmt.Sprintf("uid-%06d", i)), Namespace: fmt.Sprintf("ns-%03d", i%500), Name: fmt.Sprintf("pod-%06d", i),
					Node: fmt.Sprintf("node-%04d", i%5000), Running: true, TokenAudiences: []string{""}}
				d.SetPod(p, false)
				refs[i] = audit.PodRef{Namespace: p.Namespace, Name: p.Name, UID: p.UID}
				d.Observe(audit.Event{Kind: audit.Presented, Time: t0, Pod: refs[i], JTI: "j"})
			}
			d.Evaluate()
			b.ReportAllocs()
			b.ResetTimer()
			for i := range b.N {
				b.StopTimer()
				clock.Step(10 * time.Second)
				for k := range touched {
					d.Observe(audit.Event{Kind: audit.Presented, Time: clock.Now(), Pod: refs[(i*touched+k)%pods], JTI: "j"})
				}
				b.StartTimer()
				d.Evaluate()
			}
		})
	}
}

// cpuTime is the process's user and system CPU time so far.
func cpuTime(b *testing.B) time.Duration {
	var ru unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
