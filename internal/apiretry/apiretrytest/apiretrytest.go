// Package apiretrytest is a clock for tests of code that retries with
// apiretry: it records each wait asked of it and ends it at once, so a test
// asserts the schedule without sleeping. Only tests import it.
package apiretrytest

import (
	"sync"
	"time"

	clocktesting "k8s.io/utils/clock/testing"
)

// Clock is a fake clock whose After returns a channel that has fired, and
// moves the time on by the wait, which it records.
type Clock struct {
	*clocktesting.FakeClock
	mu    sync.Mutex
	waits []time.Duration
}

// NewClock starts at t.
func NewClock(t time.Time) *Clock { return &Clock{FakeClock: clocktesting.NewFakeClock(t)} }

// After records d, steps the clock by it and returns a fired channel.
func (c *Clock) After(d time.Duration) <-chan time.Time {
	c.mu.Lock()
	c.waits = append(c.waits, d)
	c.mu.Unlock()
	c.Step(d)
	ch := make(chan time.Time, 1)
	ch <- c.Now()
	return ch
}

// Waits returns the waits asked for since the last call.
func (c *Clock) Waits() []time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	w := c.waits
	c.waits = nil
	return w
}
