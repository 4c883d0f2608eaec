// Command tokenroll-agent is the node agent a DaemonSet runs on every node;
// see `tokenroll-agent --help`.
package main

import (
	"os"

	"github.com/tokenroll/tokenroll/cmd/tokenroll-agent/app"
	"github.com/tokenroll/tokenroll/internal/cli"
)

func main() { os.Exit(cli.Main(app.NewCommand)) }
