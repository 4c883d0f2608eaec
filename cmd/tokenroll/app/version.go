package app

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/spf13/pflag"

	"github.com/tokenroll/tokenroll/internal/cli"
	"github.com/tokenroll/tokenroll/internal/version"
)

// versionOptions configure `tokenroll version`.
type versionOptions struct {
	// Output is text or json.
	Output string
}

func newVersionOptions() *versionOptions { return &versionOptions{Output: "text"} }

func (o *versionOptions) AddFlags(fs *pflag.FlagSet) {
	fs.StringVarP(&o.Output, "output", "o", o.Output, "Output format: text or json.")
}

func (o *versionOptions) Validate() error { return cli.CheckOneOf("output", o.Output, "text", "json") }

func (o *versionOptions) run(_ context.Context, e cli.Env) error {
	if o.Output == "json" {
		enc := json.NewEncoder(e.Stdout)
		return enc.Encode(map[string]string{"version": version.Version, "commit": version.Commit, "goVersion": version.GoVersion()})
	}
	_, err := fmt.Fprintf(e.Stdout, "tokenroll %s (commit %s, %s)\n", version.Version, version.Commit, version.GoVersion())
	return err
}
