// Package app is the tokenroll command a person runs: each subcommand has
// an options struct with AddFlags and Validate, and a run function that
// takes the root context.
package app

import (
	"context"
	"io"

	"github.com/spf13/cobra"

	"github.com/tokenroll/tokenroll/internal/cli"
)

// NewCommand builds the command tree.
func NewCommand(stdout, stderr io.Writer) *cobra.Command {
	p := cli.NewProgram("tokenroll", "Keep bound service-account tokens fresh across a Kubernetes cluster, and repair them safely",
		`tokenroll checks every projected service-account token on every node against the
kubelet's rotation rules and the API server's issuer, exports what it finds as
metrics and Node conditions, and, when tokens must be replaced (an issuer
change, a wedged kubelet, an OS update), restarts kubelets, pods or nodes one
at a time under a Lease, never while the API server is still rolling out.

This command is what a person runs. The node agent and the coordinator are
the programs tokenroll-agent (a DaemonSet) and tokenroll-coordinator (a
Deployment).`, stdout, stderr)
	root := p.Root()
	scan := newScanOptions()
	p.Add(root, "scan", "Scan this node's projected tokens once and print what was found",
		"scan reads every projected service-account token under --kubelet-root and judges\nit by the kubelet's rotation rules: fresh, refresh-due, overdue, expired,\nissuer-mismatch, clock-skew, invalid or orphaned.",
		scan, scan.run)
	status := newStatusOptions()
	p.Add(root, "status", "Print the revision gate, the rollout and each node's phase",
		"status reads the cluster's Nodes and tokenroll's objects and prints the gate, the\nrollout and each node's phase and stale-token count as a table.",
		status, status.run)
	preflight := newPreflightOptions()
	p.Add(root, "preflight", "Before an issuer change: what would break now, and how long the rollout would take",
		preflightLong, preflight, preflight.run)
	rollout := p.Group(root, "rollout", "Plan, start, pause, resume or cancel a rollout",
		"rollout talks to the coordinator through TokenRollouts (tokenroll.io/v1alpha1): plan prints\nwhat would be done; start creates one; pause, resume and cancel set the current one's spec.state.", false)
	for _, rc := range rolloutCommands() {
		p.Add(rollout, rc.use, rc.short, rc.long, rc.opts, rc.opts.run)
	}
	ver := newVersionOptions()
	p.Add(root, "version", "Print the version", "Print tokenroll's version, commit and Go version.", ver, ver.run)
	return root
}

// runner is an options struct that runs its command.
type runner interface {
	cli.Options
	run(context.Context, cli.Env) error
}
