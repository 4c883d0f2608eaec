package cli

import (
	"strconv"
	"unicode"

	"github.com/tokenroll/tokenroll/protocol"
)

// Cell is s as a table cell: truncated, and quoted with its control and
// non-printable characters escaped when it has any (a tab or newline would
// also break the columns), so nothing read from a node or the cluster can
// rewrite the terminal. "" is "-".
func Cell(s string) string {
	if s == "" {
		return "-"
	}
	s = protocol.Truncate(s)
	for _, r := range s {
		if !unicode.IsPrint(r) {
			return strconv.Quote(s)
		}
	}
	return s
}
