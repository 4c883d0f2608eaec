// Package app wires tokenroll's subcommands: each has an options struct
// with AddFlags and Validate, and a run function that takes the root
// context.
package app

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"go.uber.org/zap"

	"github.com/tokenroll/tokenroll/internal/logging"
)

// Exit statuses.
const (
	ExitOK      = 0
	ExitFailure = 1 // the command ran and found or met a failure
	ExitUsage   = 2 // bad flags, or a subcommand that is not built yet
)

// UsageError is a bad invocation: exit status 2.
type UsageError struct{ Err error }

func (e *UsageError) Error() string { return e.Err.Error() }
func (e *UsageError) Unwrap() error { return e.Err }

// ExitError carries a chosen exit status and an optional message.
type ExitError struct {
	Code int
	Err  error
}

func (e *ExitError) Error() string {
	if e.Err == nil {
		return fmt.Sprintf("exit status %d", e.Code)
	}
	return e.Err.Error()
}
func (e *ExitError) Unwrap() error { return e.Err }

// options is what every subcommand's options struct provides.
type options interface {
	AddFlags(fs *pflag.FlagSet)
	Validate() error
}

// env is what a subcommand's run function gets.
type env struct {
	log    *zap.Logger
	stdout io.Writer
	stderr io.Writer
}

// Main runs tokenroll with args and returns the exit status. It is the one
// place that turns errors into statuses.
func Main(args []string, stdout, stderr io.Writer) int {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	return MainContext(ctx, args, stdout, stderr)
}

// MainContext is Main with the root context given: ending ctx is Ctrl-C.
func MainContext(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	root := NewRootCommand(stdout, stderr)
	root.SetArgs(args)
	err := root.ExecuteContext(ctx)
	if err == nil {
		return ExitOK
	}
	var exit *ExitError
	var usage *UsageError
	switch {
	case errors.As(err, &exit):
		if exit.Err != nil {
			fmt.Fprintf(stderr, "tokenroll: %v\n", exit.Err)
		}
		return exit.Code
	case errors.As(err, &usage):
		fmt.Fprintf(stderr, "tokenroll: %v\nRun 'tokenroll --help' for usage.\n", usage.Err)
		return ExitUsage
	default:
		fmt.Fprintf(stderr, "tokenroll: %v\n", err)
		return ExitFailure
	}
}

// NewRootCommand builds the command tree.
func NewRootCommand(stdout, stderr io.Writer) *cobra.Command {
	logOpts := logging.NewOptions()
	root := &cobra.Command{
		Use:   "tokenroll",
		Short: "Keep bound service-account tokens fresh across a Kubernetes cluster, and repair them safely",
		Long: `tokenroll checks every projected service-account token on every node against the
kubelet's rotation rules and the API server's issuer, exports what it finds as
metrics and Node conditions, and, when tokens must be replaced (an issuer
change, a wedged kubelet, an OS update), restarts kubelets, pods or nodes one
at a time under a Lease, never while the API server is still rolling out.`,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetOut(stdout)
	root.SetErr(stderr)
	logOpts.AddFlags(root.PersistentFlags())
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return &UsageError{Err: err} })
	root.Args = cobra.ArbitraryArgs
	root.RunE = func(cmd *cobra.Command, args []string) error {
		if len(args) > 0 {
			return &UsageError{Err: fmt.Errorf("unknown command %q", args[0])}
		}
		return cmd.Help()
	}

	addTo := func(parent *cobra.Command, use, short, long string, opts options, run func(context.Context, env) error) {
		cmd := &cobra.Command{
			Use:   use,
			Short: short,
			Long:  long,
			Args:  noArgs,
			RunE: func(cmd *cobra.Command, _ []string) error {
				if err := errors.Join(logOpts.Validate(), opts.Validate()); err != nil {
					return &UsageError{Err: err}
				}
				log, err := logOpts.Build(stderr)
				if err != nil {
					return err
				}
				defer func() { _ = log.Sync() }()
				return run(cmd.Context(), env{log: log, stdout: stdout, stderr: stderr})
			},
		}
		opts.AddFlags(cmd.Flags())
		parent.AddCommand(cmd)
	}
	add := func(use, short, long string, opts options, run func(context.Context, env) error) {
		addTo(root, use, short, long, opts, run)
	}

	agent := newAgentOptions()
	add("agent", "Run the node agent (DaemonSet): scan tokens, report, act on requests",
		"The node agent scans every projected service-account token under the kubelet root,\nexports metrics, sets the ServiceAccountTokensStale Node condition, and acts on the\ncoordinator's requests for its node.",
		agent, agent.run)
	coord := newCoordinatorOptions()
	add("coordinator", "Run the leader-elected coordinator (Deployment)",
		"The coordinator holds a Lease, waits for the API server's revision to settle, plans\nwhich nodes need work and runs cordon, drain, act, verify, uncordon one node at a time.",
		coord, coord.run)
	scan := newScanOptions()
	add("scan", "Scan this node's projected tokens once and print what was found",
		"scan reads every projected service-account token under --kubelet-root and judges\nit by the kubelet's rotation rules: fresh, refresh-due, overdue, expired,\nissuer-mismatch, clock-skew, invalid or orphaned.",
		scan, scan.run)
	status := newStatusOptions()
	add("status", "Print the revision gate, the rollout and each node's phase",
		"status reads the cluster's Nodes and tokenroll's objects and prints the gate, the\nrollout and each node's phase and stale-token count as a table.",
		status, status.run)
	rollout := &cobra.Command{Use: "rollout", Short: "Plan, start, pause, resume or cancel a rollout",
		Long: "rollout talks to the coordinator through its state ConfigMap: plan prints what would\nbe done; start asks for a rollout; pause, resume and cancel steer the current one.", Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return cmd.Help() }}
	root.AddCommand(rollout)
	for _, rc := range rolloutCommands() {
		addTo(rollout, rc.use, rc.short, rc.long, rc.opts, rc.opts.run)
	}
	addSandboxCommands(root, addTo)
	ver := newVersionOptions()
	add("version", "Print the version", "Print tokenroll's version, commit and Go version.", ver, ver.run)
	return root
}

func noArgs(cmd *cobra.Command, args []string) error {
	if len(args) > 0 {
		return &UsageError{Err: fmt.Errorf("%s takes no arguments, got %q", cmd.CommandPath(), args)}
	}
	return nil
}
