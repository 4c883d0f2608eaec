package policy

import (
	"strings"
	"testing"
	"time"

	v1alpha1 "github.com/tokenroll/tokenroll/pkg/apis/tokenroll/v1alpha1"
)

func mustWindows(t *testing.T, ws ...v1alpha1.MaintenanceWindow) []Window {
	t.Helper()
	c, err := ParseWindows(ws)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func at(s string) time.Time {
	t, err := time.Parse(time.RFC3339, s)
	if err != nil {
		panic(err)
	}
	return t
}

func TestWindows(t *testing.T) {
	weekNights := v1alpha1.MaintenanceWindow{Days: []v1alpha1.Weekday{"Monday", "Tuesday"}, Start: "22:00", End: "06:00", TimeZone: "Europe/Paris"}
	saturday := v1alpha1.MaintenanceWindow{Days: []v1alpha1.Weekday{"Saturday"}, Start: "10:00", End: "12:00", TimeZone: "UTC"}
	daily := v1alpha1.MaintenanceWindow{Start: "13:00", End: "14:00"}
	cases := []struct {
		name         string
		ws           []v1alpha1.MaintenanceWindow
		now          string
		open         bool
		closes, next string
	}{
		// 2026-11-30 is a Monday; Paris is UTC+1 in winter.
		{"before the first night", []v1alpha1.MaintenanceWindow{weekNights}, "2026-11-30T20:00:00Z", false, "", "2026-11-30T21:00:00Z"},
		{"in the first night", []v1alpha1.MaintenanceWindow{weekNights}, "2026-11-30T21:00:00Z", true, "2026-12-01T05:00:00Z", ""},
		{"past midnight, still Monday's window", []v1alpha1.MaintenanceWindow{weekNights}, "2026-12-01T04:59:59Z", true, "2026-12-01T05:00:00Z", ""},
		{"closed at its end", []v1alpha1.MaintenanceWindow{weekNights}, "2026-12-01T05:00:00Z", false, "", "2026-12-01T21:00:00Z"},
		{"Tuesday night's ends Wednesday; next Monday", []v1alpha1.MaintenanceWindow{weekNights}, "2026-12-02T06:00:00Z", false, "", "2026-12-07T21:00:00Z"},
		{"several: the sooner opens next", []v1alpha1.MaintenanceWindow{weekNights, saturday}, "2026-12-02T06:00:00Z", false, "", "2026-12-05T10:00:00Z"},
		{"several: one open", []v1alpha1.MaintenanceWindow{weekNights, saturday}, "2026-12-05T11:00:00Z", true, "2026-12-05T12:00:00Z", ""},
		{"every day in UTC by default", []v1alpha1.MaintenanceWindow{daily}, "2026-12-03T14:30:00Z", false, "", "2026-12-04T13:00:00Z"},
		{"no windows: always open", nil, "2026-12-03T14:30:00Z", true, "", ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			st := At(mustWindows(t, c.ws...), at(c.now))
			if st.Open != c.open {
				t.Errorf("open = %v, want %v", st.Open, c.open)
			}
			if (c.closes == "") != st.Closes.IsZero() || (c.closes != "" && !st.Closes.Equal(at(c.closes))) {
				t.Errorf("closes %v, want %q", st.Closes.UTC(), c.closes)
			}
			if (c.next == "") != st.Next.IsZero() || (c.next != "" && !st.Next.Equal(at(c.next))) {
				t.Errorf("next %v, want %q", st.Next.UTC(), c.next)
			}
		})
	}
}

// A start that a daylight-saving change skips opens at the instant after
// it, and the window still closes at its local end.
func TestWindowAcrossDaylightSaving(t *testing.T) {
	// Europe/Paris springs forward on 2027-03-28 at 02:00 to 03:00.
	ws := mustWindows(t, v1alpha1.MaintenanceWindow{Days: []v1alpha1.Weekday{"Sunday"}, Start: "02:30", End: "04:00", TimeZone: "Europe/Paris"})
	st := At(ws, at("2027-03-28T00:00:00Z"))
	if st.Open || !st.Next.Equal(at("2027-03-28T01:30:00Z")) {
		t.Errorf("before the change: %+v, want next 01:30Z (03:30 CEST)", st)
	}
	st = At(ws, at("2027-03-28T01:45:00Z"))
	if !st.Open || !st.Closes.Equal(at("2027-03-28T02:00:00Z")) {
		t.Errorf("during: %+v, want open until 02:00Z (04:00 CEST)", st)
	}
}

func TestParseWindowsNamesEveryProblem(t *testing.T) {
	_, err := ParseWindows([]v1alpha1.MaintenanceWindow{
		{Start: "01:00", End: "02:00", TimeZone: "Mars/Olympus_Mons"},
		{Start: "01:00", End: "02:00"},
		{Start: "1:00", End: "01:00"},
	})
	if err == nil {
		t.Fatal("accepted")
	}
	for _, want := range []string{`windows[0]: time zone "Mars/Olympus_Mons" is not in the coordinator's time zone database`, `windows[2]: start: "1:00" is not a time of day`} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("%v\nlacks %q", err, want)
		}
	}
	if strings.Contains(err.Error(), "windows[1]") {
		t.Errorf("a good window was named: %v", err)
	}
}
