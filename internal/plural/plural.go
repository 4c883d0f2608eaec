// Package plural writes counts for people: "1 node", "3 nodes", the one
// way tokenroll's messages, Events, status lines and tables say how many
// of a thing there are.
package plural

import "strconv"

// integer is any count: a length, a counter.
type integer interface {
	~int | ~int32 | ~int64 | ~uint | ~uint32 | ~uint64
}

// Count is n followed by noun, plural unless n is 1: "1 node", "0 nodes",
// "2 audit events". The noun is given in the singular, and every noun
// tokenroll counts takes an "s" in the plural.
func Count[N integer](n N, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	if n < 0 {
		return strconv.FormatInt(int64(n), 10) + " " + noun + "s"
	}
	return strconv.FormatUint(uint64(n), 10) + " " + noun + "s"
}
