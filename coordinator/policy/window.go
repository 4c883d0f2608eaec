// Package policy is the scheduling side of a RolloutPolicy: which policy
// covers a node, whether its windows are open, which nodes may start now
// (pools, zones, blocking pods and alerts), and what its webhooks are
// told. Its rules are pure functions of their inputs and a time; the
// coordinator reads the cluster and writes what they decide.
package policy

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	v1alpha1 "github.com/tokenroll/tokenroll/pkg/apis/tokenroll/v1alpha1"
)

// Window is a compiled MaintenanceWindow.
type Window struct {
	// days[d] tells whether the window opens on weekday d (time.Weekday).
	days       [7]bool
	start, end int // minutes after midnight
	loc        *time.Location
}

var weekdays = map[v1alpha1.Weekday]time.Weekday{
	"Sunday": time.Sunday, "Monday": time.Monday, "Tuesday": time.Tuesday, "Wednesday": time.Wednesday,
	"Thursday": time.Thursday, "Friday": time.Friday, "Saturday": time.Saturday,
}

// ParseWindows compiles a policy's windows, naming every one that cannot
// be used. The schema checks their form; the time zone database is the
// coordinator's, so an unknown zone is only found here.
func ParseWindows(ws []v1alpha1.MaintenanceWindow) ([]Window, error) {
	out := make([]Window, 0, len(ws))
	var errs []error
	for i, w := range ws {
		c, err := parseWindow(w)
		if err != nil {
			errs = append(errs, fmt.Errorf("windows[%d]: %w", i, err))
			continue
		}
		out = append(out, c)
	}
	return out, errors.Join(errs...)
}

func parseWindow(w v1alpha1.MaintenanceWindow) (Window, error) {
	var c Window
	var errs []error
	var err, startErr, endErr error
	if c.start, startErr = clockMinutes(w.Start); startErr != nil {
		errs = append(errs, fmt.Errorf("start: %w", startErr))
	}
	if c.end, endErr = clockMinutes(w.End); endErr != nil {
		errs = append(errs, fmt.Errorf("end: %w", endErr))
	}
	if startErr == nil && endErr == nil && c.start == c.end {
		errs = append(errs, errors.New("end equals start"))
	}
	tz := w.TimeZone
	if tz == "" {
		tz = "UTC"
	}
	if c.loc, err = time.LoadLocation(tz); err != nil {
		errs = append(errs, fmt.Errorf("time zone %q is not in the coordinator's time zone database: use an IANA name like Europe/Paris", tz))
	}
	if len(w.Days) == 0 {
		for d := range c.days {
			c.days[d] = true
		}
	}
	for _, d := range w.Days {
		wd, ok := weekdays[d]
		if !ok {
			errs = append(errs, fmt.Errorf("day %q is not a weekday name", d))
			continue
		}
		c.days[wd] = true
	}
	return c, errors.Join(errs...)
}

// clockMinutes parses HH:MM.
func clockMinutes(s string) (int, error) {
	h, m, ok := strings.Cut(s, ":")
	hh, err1 := strconv.Atoi(h)
	mm, err2 := strconv.Atoi(m)
	if !ok || len(h) != 2 || len(m) != 2 || err1 != nil || err2 != nil || hh > 23 || mm > 59 || hh < 0 || mm < 0 {
		return 0, fmt.Errorf("%q is not a time of day HH:MM", s)
	}
	return hh*60 + mm, nil
}

// WindowState is what a policy's windows say at one moment.
type WindowState struct {
	// Open: a node may start now.
	Open bool
	// Closes is when the open window closes (zero: no windows, always
	// open); Next is when the next window opens while none is (zero:
	// open, or no window ever opens).
	Closes, Next time.Time
}

// At says whether any of ws is open at now, and when that changes. No
// windows: always open.
func At(ws []Window, now time.Time) WindowState {
	if len(ws) == 0 {
		return WindowState{Open: true}
	}
	var st WindowState
	for _, w := range ws {
		open, closes, next := w.at(now)
		switch {
		case open:
			st.Open = true
			if closes.After(st.Closes) {
				st.Closes = closes
			}
		case !next.IsZero() && (st.Next.IsZero() || next.Before(st.Next)):
			st.Next = next
		}
	}
	if st.Open {
		st.Next = time.Time{}
	}
	return st
}

// at looks at the window's openings from the day before now (one that
// runs past midnight may still be open) to eight days on, in the window's
// time zone. time.Date resolves a start that a daylight-saving change
// skips to the instant after it.
func (w Window) at(now time.Time) (open bool, closes, next time.Time) {
	local := now.In(w.loc)
	y, m, d := local.Date()
	for i := -1; i <= 8; i++ {
		day := time.Date(y, m, d+i, 0, 0, 0, 0, w.loc)
		if !w.days[day.Weekday()] {
			continue
		}
		from := time.Date(y, m, d+i, w.start/60, w.start%60, 0, 0, w.loc)
		endDay := d + i
		if w.end <= w.start {
			endDay++
		}
		to := time.Date(y, m, endDay, w.end/60, w.end%60, 0, 0, w.loc)
		switch {
		case !now.Before(from) && now.Before(to):
			return true, to, time.Time{}
		case from.After(now) && next.IsZero():
			next = from
		}
	}
	return false, time.Time{}, next
}
