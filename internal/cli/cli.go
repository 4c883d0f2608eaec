// Package cli is what tokenroll's programs share around their commands:
// the options interface, the logging flags, usage errors, exit statuses and
// the one place that turns an error into a status.
package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
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
	ExitUsage   = 2 // bad flags or arguments
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

// Options is what every command's options struct provides.
type Options interface {
	// AddFlags registers the options' flags, with their current values as
	// defaults.
	AddFlags(fs *pflag.FlagSet)
	// Validate reports every bad value, each naming its flag.
	Validate() error
}

// Env is what a command's run function gets.
type Env struct {
	Log    *zap.Logger
	Stdout io.Writer
	Stderr io.Writer
}

// RunFunc runs a command with the root context.
type RunFunc func(context.Context, Env) error

// NewCommand builds a program's command tree from its root, writing to
// stdout and stderr.
type NewCommand func(stdout, stderr io.Writer) *cobra.Command

// Main runs a program with the process's arguments, under a context that
// SIGINT and SIGTERM end, and returns its exit status.
func Main(newCommand NewCommand) int {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	return Execute(ctx, newCommand(os.Stdout, os.Stderr), os.Args[1:])
}

// Execute runs root with args under ctx (ending ctx is Ctrl-C) and returns
// the exit status. It is the one place that turns errors into statuses.
func Execute(ctx context.Context, root *cobra.Command, args []string) int {
	root.SetArgs(args)
	err := root.ExecuteContext(ctx)
	if err == nil {
		return ExitOK
	}
	name, stderr := root.Name(), root.ErrOrStderr()
	var exit *ExitError
	var usage *UsageError
	switch {
	case errors.As(err, &exit):
		if exit.Err != nil {
			fmt.Fprintf(stderr, "%s: %v\n", name, exit.Err)
		}
		return exit.Code
	case errors.As(err, &usage):
		fmt.Fprintf(stderr, "%s: %v\nRun '%s --help' for usage.\n", name, usage.Err, name)
		return ExitUsage
	default:
		fmt.Fprintf(stderr, "%s: %v\n", name, err)
		return ExitFailure
	}
}

// Program builds a program's commands: the root and its subcommands share
// the logging flags, and each command validates its options (reporting every
// problem) before it runs.
type Program struct {
	root           *cobra.Command
	log            *logging.Options
	stdout, stderr io.Writer
}

// NewProgram makes the root command of program use.
func NewProgram(use, short, long string, stdout, stderr io.Writer) *Program {
	p := &Program{log: logging.NewOptions(), stdout: stdout, stderr: stderr}
	p.root = &cobra.Command{Use: use, Short: short, Long: long, SilenceUsage: true, SilenceErrors: true}
	p.root.SetOut(stdout)
	p.root.SetErr(stderr)
	p.log.AddFlags(p.root.PersistentFlags())
	p.root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return &UsageError{Err: err} })
	p.root.Args = cobra.ArbitraryArgs
	p.root.RunE = func(cmd *cobra.Command, args []string) error {
		if len(args) > 0 {
			return &UsageError{Err: fmt.Errorf("unknown command %q", args[0])}
		}
		return cmd.Help()
	}
	return p
}

// NewSingle builds the root command of a program that is one command (the
// agent, the coordinator).
func NewSingle(use, short, long string, opts Options, run RunFunc, stdout, stderr io.Writer) *cobra.Command {
	p := NewProgram(use, short, long, stdout, stderr)
	p.Runs(p.Root(), opts, run)
	return p.Root()
}

// Root is the program's root command.
func (p *Program) Root() *cobra.Command { return p.root }

// Runs makes cmd (the root, for a program that is one command) validate
// opts and then run.
func (p *Program) Runs(cmd *cobra.Command, opts Options, run RunFunc) {
	cmd.Args = NoArgs
	takes, ok := opts.(ArgsTaker)
	if ok {
		cmd.Args = cobra.ArbitraryArgs
	}
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		if ok {
			takes.SetArgs(args)
		}
		if err := errors.Join(p.log.Validate(), opts.Validate()); err != nil {
			return &UsageError{Err: err}
		}
		log, err := p.log.Build(p.stderr)
		if err != nil {
			return err
		}
		defer func() { _ = log.Sync() }()
		return run(cmd.Context(), Env{Log: log, Stdout: p.stdout, Stderr: p.stderr})
	}
	opts.AddFlags(cmd.Flags())
}

// Add adds a subcommand under parent that validates opts and then runs.
func (p *Program) Add(parent *cobra.Command, use, short, long string, opts Options, run RunFunc) *cobra.Command {
	cmd := &cobra.Command{Use: use, Short: short, Long: long}
	p.Runs(cmd, opts, run)
	parent.AddCommand(cmd)
	return cmd
}

// Group adds a subcommand under parent that only holds others (it prints
// its help).
func (p *Program) Group(parent *cobra.Command, use, short, long string, hidden bool) *cobra.Command {
	cmd := &cobra.Command{Use: use, Short: short, Long: long, Hidden: hidden, Args: NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return cmd.Help() }}
	parent.AddCommand(cmd)
	return cmd
}

// ArgsTaker is Options that take positional arguments (names), checked by
// its Validate; a command whose options are not one takes none.
type ArgsTaker interface {
	SetArgs(args []string)
}

// NoArgs refuses positional arguments as a usage error.
func NoArgs(cmd *cobra.Command, args []string) error {
	if len(args) > 0 {
		return &UsageError{Err: fmt.Errorf("%s takes no arguments, got %q", cmd.CommandPath(), args)}
	}
	return nil
}
