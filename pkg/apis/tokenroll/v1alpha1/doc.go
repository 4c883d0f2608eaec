// Package v1alpha1 is the tokenroll.io/v1alpha1 API: RolloutPolicy (how a
// pool of nodes may be remediated) and TokenRollout (what a person asked
// of one rollout, and what became of it). The CRDs in deploy/ are generated
// from these types by hack/update-codegen.sh.
//
// +k8s:deepcopy-gen=package
// +groupName=tokenroll.io
package v1alpha1
