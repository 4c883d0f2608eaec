// Command tokenroll is the node agent, the coordinator and the operator's
// tools in one binary; see `tokenroll --help`.
package main

import (
	"os"

	"github.com/tokenroll/tokenroll/cmd/tokenroll/app"
)

func main() {
	os.Exit(app.Main(os.Args[1:], os.Stdout, os.Stderr))
}
