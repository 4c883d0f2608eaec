// Package e2e holds the end-to-end tests of the OpenShift documentation's
// procedure on the sandbox's real kubelets: whole runs of tokenroll-agent and
// tokenroll-coordinator processes against the pinned kubelet code, apart
// from the packages they test so that `go test ./...` runs them beside the
// other slow packages.
package e2e
