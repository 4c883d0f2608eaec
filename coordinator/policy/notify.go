package policy

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"k8s.io/utils/clock"

	v1alpha1 "github.com/tokenroll/tokenroll/pkg/apis/tokenroll/v1alpha1"
)

// Event is what a webhook is told.
type Event struct {
	Type    v1alpha1.NotificationEvent `json:"event"`
	Rollout string                     `json:"rollout"`
	Policy  string                     `json:"policy,omitempty"`
	Node    string                     `json:"node,omitempty"`
	Message string                     `json:"message"`
	Time    time.Time                  `json:"time"`
}

// Target is one webhook of one policy.
type Target struct {
	Policy, Name string
	// URL is the webhook's address, read from its Secret: a credential,
	// so it appears in no log or error.
	URL    string
	Format v1alpha1.NotificationFormat
	Events []v1alpha1.NotificationEvent
}

// Wants tells whether the webhook is told of events of type e: the ones
// it lists, or, when it lists none, all but NodeDone.
func (t Target) Wants(e v1alpha1.NotificationEvent) bool {
	if len(t.Events) == 0 {
		return e != v1alpha1.NotifyNodeDone
	}
	return slices.Contains(t.Events, e)
}

// Body is what the webhook receives for ev: tokenroll's JSON document, or
// a Slack incoming-webhook message.
func Body(format v1alpha1.NotificationFormat, ev Event) ([]byte, error) {
	if format == v1alpha1.NotificationSlack {
		return json.Marshal(map[string]string{"text": SlackText(ev)})
	}
	return json.Marshal(struct {
		Source string `json:"source"`
		Event
	}{"tokenroll", ev})
}

// SlackText is an event as one line of Slack mrkdwn.
func SlackText(ev Event) string {
	icon := map[v1alpha1.NotificationEvent]string{
		v1alpha1.NotifyRolloutStarted: ":arrow_forward:", v1alpha1.NotifyRolloutHalted: ":octagonal_sign:",
		v1alpha1.NotifyNodeDone: ":white_check_mark:", v1alpha1.NotifyRolloutComplete: ":tada:", v1alpha1.NotifyDeadlineAtRisk: ":warning:",
	}[ev.Type]
	s := fmt.Sprintf("%s *tokenroll %s* rollout `%s`", icon, ev.Type, ev.Rollout)
	if ev.Node != "" {
		s += fmt.Sprintf(" node `%s`", ev.Node)
	}
	if ev.Policy != "" {
		s += fmt.Sprintf(" (policy %s)", ev.Policy)
	}
	return s + ": " + ev.Message
}

// NotifierConfig configures a Notifier.
type NotifierConfig struct {
	// Client sends the requests (nil: one with a 10 s timeout).
	Client *http.Client
	Clock  clock.Clock
	// QueueSize bounds the deliveries waiting; when full, the oldest is
	// dropped (0: 256).
	QueueSize int
	// Attempts is how many times a delivery is tried (0: 5); Backoff the
	// first wait between tries, doubled after each (0: 1 s), at most a
	// minute.
	Attempts int
	Backoff  time.Duration
	Registry prometheus.Registerer
	Log      *zap.Logger
}

// Notifier delivers events to webhooks in the background: Notify never
// blocks, a delivery that fails is retried with backoff, and when the
// queue is full the oldest delivery waiting is dropped and counted.
type Notifier struct {
	cfg     NotifierConfig
	results *prometheus.CounterVec

	mu    sync.Mutex
	queue []delivery
	wake  chan struct{}
}

type delivery struct {
	target Target
	ev     Event
}

// Delivery results (the result label of tokenroll_notifications_total).
const (
	ResultSent    = "sent"
	ResultFailed  = "failed"
	ResultDropped = "dropped"
)

// NewNotifier builds a notifier; Run delivers.
func NewNotifier(cfg NotifierConfig) *Notifier {
	if cfg.Client == nil {
		cfg.Client = &http.Client{Timeout: 10 * time.Second}
	}
	if cfg.Clock == nil {
		cfg.Clock = clock.RealClock{}
	}
	if cfg.QueueSize <= 0 {
		cfg.QueueSize = 256
	}
	if cfg.Attempts <= 0 {
		cfg.Attempts = 5
	}
	if cfg.Backoff <= 0 {
		cfg.Backoff = time.Second
	}
	if cfg.Log == nil {
		cfg.Log = zap.NewNop()
	}
	if cfg.Registry == nil {
		cfg.Registry = prometheus.NewRegistry()
	}
	n := &Notifier{cfg: cfg, wake: make(chan struct{}, 1)}
	n.results = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "tokenroll_notifications_total",
		Help: "Webhook notifications by result: sent, failed (every attempt failed) or dropped (the queue was full; the oldest waiting is dropped)."},
		[]string{"result"})
	for _, r := range []string{ResultSent, ResultFailed, ResultDropped} {
		n.results.WithLabelValues(r)
	}
	cfg.Registry.MustRegister(n.results)
	return n
}

// Notify queues ev for every target that wants it.
func (n *Notifier) Notify(targets []Target, ev Event) {
	n.mu.Lock()
	for _, t := range targets {
		if !t.Wants(ev.Type) {
			continue
		}
		if len(n.queue) >= n.cfg.QueueSize {
			old := n.queue[0]
			n.queue = n.queue[1:]
			n.results.WithLabelValues(ResultDropped).Inc()
			n.cfg.Log.Warn("notification queue full; dropped the oldest notification", zap.String("policy", old.target.Policy),
				zap.String("webhook", old.target.Name), zap.String("event", string(old.ev.Type)))
		}
		n.queue = append(n.queue, delivery{target: t, ev: ev})
	}
	n.mu.Unlock()
	select {
	case n.wake <- struct{}{}:
	default:
	}
}

// Pending is how many deliveries wait.
func (n *Notifier) Pending() int {
	n.mu.Lock()
	defer n.mu.Unlock()
	return len(n.queue)
}

// Run delivers until ctx ends; what is still queued then is not sent.
func (n *Notifier) Run(ctx context.Context) {
	for {
		n.mu.Lock()
		var d *delivery
		if len(n.queue) > 0 {
			d = &n.queue[0]
			n.queue = n.queue[1:]
		}
		n.mu.Unlock()
		if d == nil {
			select {
			case <-ctx.Done():
				return
			case <-n.wake:
			}
			continue
		}
		n.deliver(ctx, *d)
	}
}

func (n *Notifier) deliver(ctx context.Context, d delivery) {
	body, err := Body(d.target.Format, d.ev)
	if err != nil {
		n.results.WithLabelValues(ResultFailed).Inc()
		return
	}
	wait := n.cfg.Backoff
	for attempt := 1; ; attempt++ {
		retry, err := n.post(ctx, d.target.URL, body)
		if err == nil {
			n.results.WithLabelValues(ResultSent).Inc()
			return
		}
		if !retry || attempt >= n.cfg.Attempts || ctx.Err() != nil {
			n.results.WithLabelValues(ResultFailed).Inc()
			n.cfg.Log.Warn("notification not delivered; the rollout goes on", zap.String("policy", d.target.Policy),
				zap.String("webhook", d.target.Name), zap.String("event", string(d.ev.Type)), zap.Int("attempts", attempt), zap.Error(err))
			return
		}
		select {
		case <-ctx.Done():
		case <-n.cfg.Clock.After(wait):
		}
		wait = min(2*wait, time.Minute)
	}
}

// post sends one request. Its error never holds the URL (a Slack webhook's
// URL is its credential); retry tells whether trying again may help.
func (n *Notifier) post(ctx context.Context, u string, body []byte) (retry bool, err error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u, bytes.NewReader(body))
	if err != nil {
		return false, errors.New("the webhook URL is not a valid URL")
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "tokenroll-coordinator")
	resp, err := n.cfg.Client.Do(req)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return true, fmt.Errorf("posting to the webhook: %w", err)
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	_ = resp.Body.Close()
	switch {
	case resp.StatusCode/100 == 2:
		return false, nil
	case resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode >= 500:
		return true, fmt.Errorf("the webhook answered %s", resp.Status)
	default:
		return false, fmt.Errorf("the webhook answered %s; not retried", resp.Status)
	}
}
