// Package clitest runs a program's command tree in a test as its main
// would. Only tests import it.
package clitest

import (
	"bytes"
	"context"
	"strings"
	"testing"

	"github.com/tokenroll/tokenroll/internal/cli"
)

// Run runs the program with args and returns its exit status, stdout and
// stderr.
func Run(t testing.TB, newCommand cli.NewCommand, args ...string) (int, string, string) {
	t.Helper()
	var out, errOut bytes.Buffer
	code := cli.Execute(context.Background(), newCommand(&out, &errOut), args)
	return code, out.String(), errOut.String()
}

// Usage is a bad invocation and what its error must name.
type Usage struct {
	Args []string
	Want []string
}

// ExpectUsage runs the program with each case's arguments and fails t
// unless it exits with the usage status and its stderr names every string
// the case wants.
func ExpectUsage(t testing.TB, newCommand cli.NewCommand, cases ...Usage) {
	t.Helper()
	for _, c := range cases {
		code, _, stderr := Run(t, newCommand, c.Args...)
		if code != cli.ExitUsage {
			t.Errorf("%v: exit %d, want %d", c.Args, code, cli.ExitUsage)
		}
		for _, w := range c.Want {
			if !strings.Contains(stderr, w) {
				t.Errorf("%v: stderr does not name %q:\n%s", c.Args, w, stderr)
			}
		}
	}
}
