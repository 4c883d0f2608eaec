package policy

import (
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strings"

	v1alpha1 "github.com/tokenroll/tokenroll/pkg/apis/tokenroll/v1alpha1"
)

// Alert is one alert as Prometheus lists it.
type Alert struct {
	Name   string
	State  string // "firing" or "pending"
	Labels map[string]string
}

// The alert states Prometheus reports.
const (
	AlertFiring  = "firing"
	AlertPending = "pending"
)

// AlertRules say which alerts block a pool.
type AlertRules struct {
	names, ignore  []*regexp.Regexp
	matchers       []matcher
	includePending bool
}

type matcher struct {
	label string
	op    v1alpha1.MatchOperator
	value string
	re    *regexp.Regexp
}

// defaultIgnore is the schema's default for ignore, applied here too for
// a policy read without it (tokenroll's own alerts fire because tokens
// are stale: the rollout is their cure).
var defaultIgnore = []string{"Tokenroll.*"}

// CompileAlertRules compiles an alert blocker's expressions, anchored as
// Prometheus anchors its own, naming every one that does not compile.
func CompileAlertRules(a *v1alpha1.AlertBlocker) (*AlertRules, error) {
	r := &AlertRules{includePending: a.IncludePending}
	var errs []error
	compile := func(field string, exprs []string) []*regexp.Regexp {
		var out []*regexp.Regexp
		for i, e := range exprs {
			re, err := regexp.Compile("^(?:" + e + ")$")
			if err != nil {
				errs = append(errs, fmt.Errorf("%s[%d] %q does not compile: %w", field, i, e, err))
				continue
			}
			out = append(out, re)
		}
		return out
	}
	r.names = compile("alertNames", a.AlertNames)
	ignore := a.Ignore
	if ignore == nil {
		ignore = defaultIgnore
	}
	r.ignore = compile("ignore", ignore)
	for i, m := range a.Matchers {
		c := matcher{label: m.Label, op: m.Operator, value: m.Value}
		if c.op == "" {
			c.op = "="
		}
		switch c.op {
		case "=", "!=":
		case "=~", "!~":
			re, err := regexp.Compile("^(?:" + m.Value + ")$")
			if err != nil {
				errs = append(errs, fmt.Errorf("matchers[%d] %q does not compile: %w", i, m.Value, err))
				continue
			}
			c.re = re
		default:
			errs = append(errs, fmt.Errorf("matchers[%d]: operator %q is not =, !=, =~ or !~", i, m.Operator))
			continue
		}
		r.matchers = append(r.matchers, c)
	}
	return r, errors.Join(errs...)
}

func (m matcher) matches(labels map[string]string) bool {
	v := labels[m.label]
	switch m.op {
	case "=":
		return v == m.value
	case "!=":
		return v != m.value
	case "=~":
		return m.re.MatchString(v)
	default:
		return !m.re.MatchString(v)
	}
}

func anyMatch(res []*regexp.Regexp, s string) bool {
	return slices.ContainsFunc(res, func(re *regexp.Regexp) bool { return re.MatchString(s) })
}

// Blocking returns the alerts that block: firing (or pending, with
// includePending), named by alertNames (all when empty), matching every
// matcher, and not ignored.
func (r *AlertRules) Blocking(alerts []Alert) []Alert {
	var out []Alert
	for _, a := range alerts {
		switch {
		case a.State != AlertFiring && (a.State != AlertPending || !r.includePending):
		case len(r.names) > 0 && !anyMatch(r.names, a.Name):
		case anyMatch(r.ignore, a.Name):
		case slices.ContainsFunc(r.matchers, func(m matcher) bool { return !m.matches(a.Labels) }):
		default:
			out = append(out, a)
		}
	}
	return out
}

// Describe names blocking alerts for people: a few of them, with their
// state, and how many more.
func Describe(alerts []Alert) string {
	const show = 3
	var parts []string
	for i, a := range alerts {
		if i == show {
			parts = append(parts, fmt.Sprintf("and %d more", len(alerts)-show))
			break
		}
		parts = append(parts, fmt.Sprintf("%s (%s)", truncate(a.Name, 64), a.State))
	}
	return strings.Join(parts, ", ")
}

// truncate caps a string that came from outside before it reaches a
// message.
func truncate(s string, n int) string {
	s = strings.ToValidUTF8(s, "?")
	if len(s) <= n {
		return s
	}
	return strings.ToValidUTF8(s[:n], "") + "…"
}
