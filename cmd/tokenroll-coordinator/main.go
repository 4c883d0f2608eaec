// Command tokenroll-coordinator is the leader-elected coordinator a
// Deployment runs; see `tokenroll-coordinator --help`.
package main

import (
	"os"

	"github.com/tokenroll/tokenroll/cmd/tokenroll-coordinator/app"
	"github.com/tokenroll/tokenroll/internal/cli"
)

func main() { os.Exit(cli.Main(app.NewCommand)) }
