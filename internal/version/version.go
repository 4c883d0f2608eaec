// Package version holds what the build stamped into the binary.
package version

import "runtime"

// Set with -ldflags "-X github.com/tokenroll/tokenroll/internal/version.Version=..." by the Makefile.
var (
	Version = "v0.0.0-dev"
	Commit  = "unknown"
)

// GoVersion is the Go release the binary was built with.
func GoVersion() string { return runtime.Version() }
