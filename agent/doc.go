// Package agent is the node agent: it judges every projected
// service-account token on its node by the kubelet's rotation rules, reports
// the result as metrics and a Node condition, and acts on the coordinator's
// requests for its node. Built in issues 3 and 4.
package agent
