// Command tokenroll-sandbox runs the OpenShift documentation's procedure
// for changing the service-account issuer end to end on a local cluster,
// with the real tokenroll-agent and tokenroll-coordinator; see
// `tokenroll-sandbox --help`.
package main

import (
	"os"

	"github.com/tokenroll/tokenroll/cmd/tokenroll-sandbox/app"
	"github.com/tokenroll/tokenroll/internal/cli"
)

func main() { os.Exit(cli.Main(app.NewCommand)) }
