// Command tokenroll is what a person runs: scan a node's tokens, read the
// cluster's status, plan and steer rollouts; see `tokenroll --help`.
package main

import (
	"os"

	"github.com/tokenroll/tokenroll/cmd/tokenroll/app"
	"github.com/tokenroll/tokenroll/internal/cli"
)

func main() { os.Exit(cli.Main(app.NewCommand)) }
