// Package coordinator is the leader-elected controller that gates on the API
// server's revision, plans which nodes need work and runs the per-node
// protocol (cordon, drain, act, verify, uncordon). Built in issue 5.
package coordinator
