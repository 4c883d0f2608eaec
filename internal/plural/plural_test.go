package plural

import "testing"

func TestCount(t *testing.T) {
	for _, c := range []struct {
		n          int
		noun, want string
	}{
		{1, "node", "1 node"},
		{0, "node", "0 nodes"},
		{2, "node", "2 nodes"},
		{-1, "node", "-1 nodes"},
		{1 << 40, "node", "1099511627776 nodes"},
		{1, "audit event", "1 audit event"},
		{3, "audit event", "3 audit events"},
	} {
		if got := Count(c.n, c.noun); got != c.want {
			t.Errorf("Count(%d, %q) = %q; want %q", c.n, c.noun, got, c.want)
		}
	}
}

func TestCountUnsigned(t *testing.T) {
	if got := Count(uint64(1), "audit event"); got != "1 audit event" {
		t.Errorf("Count(uint64(1)) = %q", got)
	}
	if got := Count(uint64(1<<63), "audit event"); got != "9223372036854775808 audit events" {
		t.Errorf("Count(uint64(1<<63)) = %q", got)
	}
}
