package audit

import "testing"

func TestJTIFromCredentialID(t *testing.T) {
	for _, tc := range []struct {
		id   string
		jti  string
		want bool
	}{
		{"JTI=3f1c-77", "3f1c-77", true},
		{"JTI=", "", false},
		{"X509SHA256=ab12", "", false},
		{"", "", false},
	} {
		jti, ok := JTIFromCredentialID(tc.id)
		if jti != tc.jti || ok != tc.want {
			t.Errorf("JTIFromCredentialID(%q) = %q, %v; want %q, %v", tc.id, jti, ok, tc.jti, tc.want)
		}
	}
}
