package app

import (
	"strings"
	"testing"
	"time"

	"github.com/tokenroll/tokenroll/coordinator"
	"github.com/tokenroll/tokenroll/protocol"
)

// A check's message carries what the cluster said (the gate's message
// quotes API errors and object names): printed raw, a newline would start
// a row of its own and an escape sequence would reach the terminal.
func TestPreflightTableEscapesMessages(t *testing.T) {
	now := time.Date(2026, 11, 27, 10, 0, 0, 0, time.UTC)
	const hostile = "pod kube-system/kube-apiserver-evil\nok\tFAIL\x1b[2Jgone"
	in := fixture(t, now, "https://i.test", coordinator.GateState{Provider: "static-pods", Message: hostile},
		map[string]*protocol.TokenReport{"a": {Issuer: "https://i.test"}})
	rep := buildPreflight(in)
	var b strings.Builder
	if err := writePreflightTable(&b, rep); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	if strings.ContainsAny(out, "\x1b\t") {
		t.Errorf("a raw escape or tab reached the table:\n%q", out)
	}
	for _, line := range strings.Split(out, "\n") {
		if strings.HasPrefix(line, "ok") || strings.HasPrefix(line, "gone") {
			t.Errorf("the message's newline started a line of its own: %q\n%s", line, out)
		}
	}
	if !strings.Contains(out, `\nok\tFAIL\x1b[2Jgone`) {
		t.Errorf("the message is not shown, escaped:\n%s", out)
	}
}
