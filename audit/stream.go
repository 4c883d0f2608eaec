package audit

import (
	"encoding/binary"
	"hash/maphash"
	"sync"
	"time"

	"go.uber.org/zap"
	"k8s.io/utils/clock"
)

// Source names, a metric label.
const (
	SourceWebhook = "webhook"
	SourceLog     = "log"
)

// dedupeWindow is how many recent requests are remembered to drop a second
// copy of one: an API server resends a webhook batch it got no answer for,
// and a cluster may feed tokenroll both ways. Two generations of this many
// 8-byte keys: memory does not grow with the event rate.
const dedupeWindow = 1 << 16

// String names a Kind in metrics.
func (k Kind) String() string {
	switch k {
	case Presented:
		return "presented"
	case Issued:
		return "issued"
	case AuthFailed:
		return "auth_failed"
	}
	return "unknown"
}

var kinds = []Kind{Presented, Issued, AuthFailed}

// stream is where every source delivers: one sink, called by one source at
// a time, a second copy of a request dropped, and everything counted.
type stream struct {
	sink    Sink
	metrics *Metrics
	log     *zap.Logger
	clock   clock.PassiveClock

	mu sync.Mutex
	// The dedupe key is a keyed hash: the audit ID is the client's to
	// choose (the Audit-ID header), so a key of the audit ID alone would
	// let one client's request hide another's. With everything kept in the
	// key, only a true copy collides, and the seed is secret.
	seed      maphash.Seed
	cur, prev map[uint64]struct{}
	lastLog   map[string]time.Time
	quiet     map[string]int
}

func newStream(sink Sink, m *Metrics, log *zap.Logger, clk clock.PassiveClock) *stream {
	return &stream{
		sink: sink, metrics: m, log: log, clock: clk,
		seed: maphash.MakeSeed(),
		cur:  make(map[uint64]struct{}), prev: map[uint64]struct{}{},
		lastLog: map[string]time.Time{}, quiet: map[string]int{},
	}
}

func (s *stream) key(ev *Event) uint64 {
	var h maphash.Hash
	h.SetSeed(s.seed)
	var b [8]byte
	binary.LittleEndian.PutUint64(b[:], uint64(ev.Kind)<<32|uint64(uint32(ev.Code)))
	_, _ = h.Write(b[:])
	for _, str := range []string{string(ev.AuditID), ev.User, ev.JTI, string(ev.Pod.UID), ev.Pod.Name, ev.Pod.Namespace} {
		_, _ = h.WriteString(str)
		_ = h.WriteByte(0)
	}
	ip, _ := ev.SourceIP.MarshalBinary()
	_, _ = h.Write(ip)
	return h.Sum64()
}

// deliver hands ev to the sink unless the same request was delivered
// within the window.
func (s *stream) deliver(source string, ev Event) {
	s.mu.Lock()
	defer s.mu.Unlock()
	k := s.key(&ev)
	_, inCur := s.cur[k]
	_, inPrev := s.prev[k]
	if inCur || inPrev {
		s.metrics.skipped.WithLabelValues(source, string(SkipDuplicate)).Inc()
		return
	}
	if len(s.cur) >= dedupeWindow {
		s.prev, s.cur = s.cur, make(map[uint64]struct{}, dedupeWindow)
	}
	s.cur[k] = struct{}{}
	s.metrics.events.WithLabelValues(source, ev.Kind.String()).Inc()
	s.metrics.lastEvent.WithLabelValues(source).Set(float64(ev.Time.UnixNano()) / 1e9)
	s.sink.Observe(ev)
}

// skipped counts an event that yields none, and logs why (never what it
// held): a cluster sends thousands of irrelevant events a second, so those
// are only counted, and the rest logged at most once a minute per reason.
func (s *stream) skipped(source string, err error, where ...zap.Field) {
	r := ReasonOf(err)
	s.metrics.skipped.WithLabelValues(source, string(r)).Inc()
	switch r {
	case SkipIrrelevant, SkipStage, SkipDuplicate:
		return
	}
	s.logLimited(source+"/"+string(r), "Skipped an audit event", err,
		append(where, zap.String("source", source), zap.String("reason", string(r)))...)
}

// skippedLog logs a failure to read a log, at most once a minute per kind.
func (s *stream) skippedLog(op string, err error, log *zap.Logger) {
	s.logLimitedTo(log, "log/"+op, "Reading an audit log failed; retrying at the next poll", err, zap.String("op", op))
}

func (s *stream) logLimited(key, msg string, err error, fields ...zap.Field) {
	s.logLimitedTo(s.log, key, msg, err, fields...)
}

func (s *stream) logLimitedTo(log *zap.Logger, key, msg string, err error, fields ...zap.Field) {
	s.mu.Lock()
	now := s.clock.Now()
	if last, ok := s.lastLog[key]; ok && now.Sub(last) < time.Minute {
		s.quiet[key]++
		s.mu.Unlock()
		return
	}
	s.lastLog[key] = now
	more := s.quiet[key]
	s.quiet[key] = 0
	s.mu.Unlock()
	log.Info(msg, append(fields, zap.String("detail", err.Error()), zap.Int("alsoSinceLastLog", more))...)
}
